"""Zone control plane assembly: what `zonemesh-cp run --mode zone|standalone` adds to the common parts.

The data plane side, started in this order and stopped in reverse:
- TLS for the xDS port: ``--xds-tls-cert-file/--xds-tls-key-file``, or a self-signed pair in the
  data dir (``xds.crt`` is then the CA file proxies pass as ``--ca-cert-file``);
- the mesh CA (workload certificates and trusted roots for SDS: shared/ca), DataplaneInsight
  recording (with what each proxy's certificates are) and the certificate expiry watch;
- the xDS reconciler (store changes -> per-proxy snapshots);
- the gRPC server on :5678: ADS (authenticated by dataplane tokens) and dataplane registration;
- the credential watch: open streams whose token a key removal or revocation invalidates are closed.

API routes: ``POST /tokens/dataplane`` and the xDS side's ``/meshes/{mesh}/dataplanes/{name}/_config``,
``_rules`` and ``_policies`` (``dataplanes+insights`` is on every control plane: shared/api/overview.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from zonemesh.shared.api.auth import require_admin
from zonemesh.shared.api.context import MANAGER
from zonemesh.shared.api.errors import error_response
from zonemesh.shared.ca import MeshCA
from zonemesh.shared.ca import keeper as mesh_ca_keeper
from zonemesh.shared.components import Component
from zonemesh.shared.config import Config
from zonemesh.shared.resources.model import Resource, ResourceKey
from zonemesh.shared.runtime import Assembly, ControlPlane
from zonemesh.shared.store import NotFound
from zonemesh.shared.tls import default_hosts, ensure_self_signed
from zonemesh.shared.tokens import dataplane as dataplane_tokens
from zonemesh.zone_cp import admission, ingress, insights, inspect_api
from zonemesh.zone_cp.admission import DataplaneAuthenticator, ReadOnce
from zonemesh.zone_cp.certificates import ExpiryWatch, HeldCertificates
from zonemesh.zone_cp.license import ZoneLicense
from zonemesh.zone_cp.view import ZoneView
from zonemesh.zone_cp.xds import inspection
from zonemesh.zone_cp.xds.cache import SnapshotCache
from zonemesh.zone_cp.xds.context import MeshContext
from zonemesh.zone_cp.xds.crosszone import CrossZoneViews
from zonemesh.zone_cp.xds.dump import dump
from zonemesh.zone_cp.xds.generators import GenerationError
from zonemesh.zone_cp.xds.nacks import NackAttribution
from zonemesh.zone_cp.xds.proxy import ProxyType, node_key
from zonemesh.zone_cp.xds.reconciler import Reconciler
from zonemesh.zone_cp.xds.resources import SHORT_NAMES
from zonemesh.zone_cp.xds.server import Callbacks, TlsFiles, XdsServer
from zonemesh.zone_cp.xds.zoneproxies import ZoneProxyReconciler
from zonemesh.zone_cp.xds.zoneproxies import config_routes as zone_proxy_config_routes

log = structlog.get_logger(__name__)


def xds_tls_files(config: Config) -> TlsFiles:
    """The operator's certificate, else a self-signed one kept in the data dir (blocking)."""
    if config.xds_tls_cert_file:
        return TlsFiles(Path(config.xds_tls_cert_file), Path(config.xds_tls_key_file))
    hosts = default_hosts()
    if config.xds_address not in ("0.0.0.0", "::", ""):
        hosts.append(config.xds_address)
    cert, key = ensure_self_signed(config.resolved_data_dir, "xds", hosts)
    return TlsFiles(cert, key)


class DataPlaneSide:
    """The zone's data plane component, and the API routes that read from it while it runs."""

    def __init__(self, view: ZoneView, license: ZoneLicense | None = None) -> None:
        self.view = view  # the zone's resources in memory (zone_cp/view.py), entered before this side
        self.license = license  # a federated zone's license gate (strict quota), entered before this side
        self.reconciler: Reconciler | None = None
        self.cache: SnapshotCache | None = None
        self.zone_proxies: ZoneProxyReconciler | None = None

    @contextlib.asynccontextmanager
    async def run(self, cp: ControlPlane) -> AsyncIterator[None]:
        tls = await asyncio.to_thread(xds_tls_files, cp.config)
        cache = SnapshotCache()
        nacks = NackAttribution(cache)
        federated = cp.config.mode == "zone" and bool(cp.config.global_address)
        certs = MeshCA(cp.store, generate=not federated)
        recorder = insights.InsightRecorder(
            cp.manager,
            cp.instance_id,
            attribute=nacks.responsible,
            held=HeldCertificates(cache, certs),
            stored=lambda mesh, name: self.view.peek("DataplaneInsight", name, mesh),
        )
        expiry = ExpiryWatch(certs, recorder.connected_held)
        zone = cp.config.zone or "default"
        dataplanes = DataplaneAuthenticator(cp.store, self.license)
        zone_proxy_auth = admission.ZoneProxyAuthenticator(cp.store, zone, federated=federated)
        authenticator = admission.Authenticator(dataplanes, zone_proxy_auth)
        # Streams that replicas no longer alive left open are closed by the leader (insights.StreamFinalizer).
        zone_insights = insights.ZoneProxyInsights(cp.store, cp.instance_id, zone)
        registration = admission.Registration(
            cp.manager, dataplanes, zone_proxy_auth, recorder, cp.instance_id, zone_insights=zone_insights
        )
        # The server holds the callbacks registered below; it runs none before it starts.
        callbacks = Callbacks()
        server = XdsServer(cp.config, cache, authenticator, tls, [registration.add_to], callbacks)
        cross_zone = CrossZoneViews()  # computed by the zone-proxy reconciler, read by the dataplane one
        reconciler = Reconciler(
            self.view,
            cache,
            certs,
            cross_zone=cross_zone,
            # Open streams answer for their tokens before a renewed workload certificate goes out.
            still_admitted=lambda proxies: server.servicer.still_admitted(proxies, ReadOnce(cp.store)),
        )
        zone_proxies = ZoneProxyReconciler(self.view, cache, certs, zone, views=cross_zone)
        dataplane_side = callbacks.only(ProxyType.DATAPLANE)  # DataplaneInsights are for dataplanes
        dataplane_side.stream_open.append(reconciler.on_stream_open)
        dataplane_side.stream_close.append(reconciler.on_stream_close)
        nacks.install(dataplane_side)  # before the recorder's: an ACK is recorded before anything reads it
        recorder.install(dataplane_side)
        callbacks.stream_open.append(zone_proxies.on_stream_open)
        callbacks.stream_close.append(zone_proxies.on_stream_close)
        zone_insights.install(callbacks)  # ZoneIngressInsight/ZoneEgressInsight: liveness of zone proxies
        # Open streams answer for their tokens: checked again when keys or revocations change.
        credentials = admission.CredentialWatch(cp.store, server.servicer)
        async with (
            recorder.running(),
            expiry.running(),
            zone_proxies.running(),
            reconciler,
            server,
            credentials.running(),
        ):
            self.reconciler, self.cache, self.zone_proxies = reconciler, cache, zone_proxies
            log.info("xds_ready", port=server.port, tls_cert=str(tls.cert_path))
            try:
                yield
            finally:
                self.reconciler = self.cache = self.zone_proxies = None

    async def config_handler(self, request: web.Request) -> web.Response:
        """``GET /meshes/{mesh}/dataplanes/{name}/_config``: the xDS config generated for a proxy
        now (Kuma's DataplaneXDSConfig: ``{"xds": ...}``), private keys redacted. ``versions``
        are those of the snapshot last pushed to it (absent while it is not connected). Admin only:
        it shows every endpoint, certificate and policy the proxy gets."""
        await require_admin(request, request.app[MANAGER].store)
        mesh, name = request.match_info["mesh"], request.match_info["name"]
        reconciler, cache = self.reconciler, self.cache
        if reconciler is None or cache is None:
            raise web.HTTPServiceUnavailable(reason="the xDS server is not running")
        if await request.app[MANAGER].store.find("Dataplane", name, mesh) is None:
            raise NotFound(ResourceKey("Dataplane", mesh, name))
        try:
            resources = await reconciler.render(mesh, name)
        except LookupError as exc:  # stored, but not yet seen by the reconciler's watch
            raise web.HTTPServiceUnavailable(reason="not yet known to the xDS server", text=str(exc)) from None
        except GenerationError as exc:
            return error_response(500, "Config generation failed", str(exc))
        body: dict[str, Any] = {"xds": dump(resources)}
        snapshot = cache.snapshot(node_key(mesh, name))
        if snapshot is not None:
            body["versions"] = {SHORT_NAMES[t]: typed.version for t, typed in snapshot.types.items()}
        return web.json_response(body)

    async def _inspected(self, request: web.Request) -> tuple[MeshContext, Resource]:
        """The proxy a ``_rules`` / ``_policies`` request names, and the context generation reads."""
        mesh, name = request.match_info["mesh"], request.match_info["name"]
        reconciler = self.reconciler
        if reconciler is None:
            raise web.HTTPServiceUnavailable(reason="the xDS server is not running")
        if await request.app[MANAGER].store.find("Dataplane", name, mesh) is None:
            raise NotFound(ResourceKey("Dataplane", mesh, name))
        try:
            return reconciler.inspection(mesh, name)
        except LookupError as exc:  # stored, but not yet seen by the reconciler's watch (or invalid)
            raise web.HTTPServiceUnavailable(reason="not yet known to the xDS server", text=str(exc)) from None

    async def rules_handler(self, request: web.Request) -> web.Response:
        """``GET /meshes/{mesh}/dataplanes/{name}/_rules``: per policy type, the conf each policy
        sets for the proxy and which policies it comes from (Kuma's InspectRules, xds/inspection.py).
        An ordinary read, open as reads of the Dataplane and the policies are: it shows their
        content and nothing else (no certificate, key or endpoint)."""
        ctx, dp = await self._inspected(request)
        return web.json_response(inspection.rules(ctx, dp))

    async def policies_handler(self, request: web.Request) -> web.Response:
        """``GET /meshes/{mesh}/dataplanes/{name}/_policies``: the proxy-level confs (Kuma's
        PoliciesList). An ordinary read, as ``_rules``."""
        ctx, dp = await self._inspected(request)
        return web.json_response(inspection.proxy_policies(ctx, dp))

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/meshes/{mesh}/dataplanes/{name}/_config", self.config_handler),
            web.get("/meshes/{mesh}/dataplanes/{name}/_rules", self.rules_handler),
            web.get("/meshes/{mesh}/dataplanes/{name}/_policies", self.policies_handler),
            *zone_proxy_config_routes(lambda: self.zone_proxies),
        ]


def assemble(config: Config) -> Assembly:
    """Every zone replica serves xDS and the API; what must happen once per zone runs on its leader
    (docs/ha.md): the KDS stream to global, the zone ingresses' availableServices, closing the
    streams of dead replicas, and without a global the mesh CAs. Leader components write through
    ``cp.leader_store`` (fenced by the term)."""
    federated = config.mode == "zone" and bool(config.global_address)
    zone = config.zone or "default"
    # License (zone_cp/license.py): entered first, so no proxy joins before the quota gate runs; every
    # replica admits through it (the zone's slots are one etcd key the replicas change in transactions).
    # One in-memory view of the zone's resources (zone_cp/view.py), fed by one store watch: what every
    # part below reads, on every replica.
    view = ZoneView()
    zone_license = ZoneLicense(config, view) if federated else None
    side = DataPlaneSide(view, zone_license)
    assembly = Assembly(
        components=[
            Component("zone-view", view.run),
            *([zone_license.run] if zone_license is not None else []),
            # Without a global, this control plane makes its meshes' CAs and drives their rotations.
            *([] if federated else [Component("mesh-ca", mesh_ca_keeper.component, leader=True)]),
            side.run,
            Component("zone-ingress-services", ingress.component(view), leader=True),
            Component("zone-insight-finalizer", insights.finalizer_component(view), leader=True),
        ],
        routes=[
            *dataplane_tokens.routes(),
            *side.routes(),
            *inspect_api.routes(),
            *admission.token_routes(zone, federated=federated),
        ],
    )
    if zone_license is not None:
        assembly.routes += zone_license.routes()
    if federated:  # one KDS stream per zone to global, from its leader (docs/kds.md); followers read etcd
        from zonemesh.zone_cp.kds_client import ZoneKds

        kds = ZoneKds(config, view)
        assembly.components.append(Component("kds-client", kds.run, leader=True))
        assembly.routes += kds.routes()
    return assembly
