"""Zone ingress and zone egress proxies on the zone control plane: who may run one, how it
registers, and the config it gets.

``zonemesh-dp run --proxy-type ingress|egress`` registers a ZoneIngress/ZoneEgress (no mesh:
one zone proxy serves every mesh) through the same ``DataplaneRegistration`` service as
dataplanes, and opens ADS with node id ``<name>`` and node metadata ``proxyType``. Both carry a
**zone token** whose ``Zone`` is this zone and whose ``Scope`` includes the proxy type
(``shared/tokens/zone.py``), validated against the zone-token signing keys in this control
plane's store. On a federated zone (as in Kuma) they are issued by GLOBAL (``zmctl generate
zone-token --zone Z --scope ingress`` against global's API) and checked against the public keys
and revoked jti global publishes (ZoneTokenTrust, synced by KDS; ``shared/tokens/zone.py``); such
a zone holds no signing key and refuses ``POST /tokens/zone``, pointing to global. A standalone
control plane issues them itself (``POST /tokens/zone``: admin only, restricted to its zone and
to the ingress/egress scopes) and checks them with its own keys.

``ZoneProxyReconciler`` generates their config (``generators/ingress.py``, ``egress.py``) from
the zone's store whenever a mesh, dataplane, ExternalService, ZoneIngress or ZoneEgress
changes, and gives the dataplane reconciler the per-mesh ``CrossZone`` view (other zones'
ingresses, this zone's egress, resolved ExternalService hosts). What it reads goes through
``UsableFilter`` (zone_cp/xds/usable.py): a resource that fails validation (another zone's
ZoneIngress with a port that is not one...) is skipped, logged and counted, and the round goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from zonemesh.proto import dataplane_pb2
from zonemesh.shared.api.auth import require_admin
from zonemesh.shared.api.context import MANAGER
from zonemesh.shared.api.errors import error_response
from zonemesh.shared.api.resources import read_document
from zonemesh.shared.ca.state import STATE_TYPE
from zonemesh.shared.resources.codec import from_universal, parse_json
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource, format_time, now
from zonemesh.shared.resources.registry import REGISTRY
from zonemesh.shared.resources.schema import FieldError, ValidationError
from zonemesh.shared.store import AlreadyExists, Conflict, NotFound, Store
from zonemesh.shared.store.base import Watch
from zonemesh.shared.tokens import dataplane as dptokens
from zonemesh.shared.tokens.tokens import LEEWAY_SECONDS, InvalidToken, TokenValidator
from zonemesh.shared.tokens.zone import (
    TRUST_TYPE,
    ZONE_TOKEN_KEYS,
    ZONE_TOKEN_REVOCATIONS,
    ZoneTokenValidator,
    issue_requested,
)
from zonemesh.zone_cp.admission import (
    AdmissionRefused,
    DataplaneAuthenticator,
    Metadata,
    ReadOnce,
    RegistrationServicer,
    bearer_token,
    check_names,
    dataplane_credentials,
    node_proxy_type,
    signing_key_id,
)
from zonemesh.zone_cp.xds import usable
from zonemesh.zone_cp.xds.cache import Snapshot, SnapshotCache
from zonemesh.zone_cp.xds.context import (
    DATAPLANE,
    EXTERNAL_SERVICE,
    MESH,
    SECRET,
    CertProvider,
    MeshContext,
    WorkloadCert,
)
from zonemesh.zone_cp.xds.crosszone import (
    EGRESS_SERVICE,
    CrossZone,
    CrossZoneViews,
    ZoneContext,
    online,
    resolve_hosts,
)
from zonemesh.zone_cp.xds.generators import egress as egress_generator
from zonemesh.zone_cp.xds.generators import ingress as ingress_generator
from zonemesh.zone_cp.xds.generators.gateway import MESH_GATEWAY_ROUTE_TYPE
from zonemesh.zone_cp.xds.policies import EGRESS_LOCALITY_TYPES, EGRESS_TYPES, ROUTE_TYPES
from zonemesh.zone_cp.xds.proxy import ProxyIdentity, ProxyType, parse_zone_proxy_node_id, zone_proxy_key
from zonemesh.zone_cp.xds.resources import ResourceSet
from zonemesh.zone_cp.xds.server import Admission, AdsServicer, StreamInfo

log = structlog.get_logger(__name__)

RESOURCE_TYPES = {ProxyType.INGRESS.value: "ZoneIngress", ProxyType.EGRESS.value: "ZoneEgress"}
INSIGHT_TYPES = {ProxyType.INGRESS.value: "ZoneIngressInsight", ProxyType.EGRESS.value: "ZoneEgressInsight"}
# What zone proxies are generated from: the meshes and their workloads, the zone proxies, the
# Secrets ExternalService TLS refers to (the egress presents them), the policies with an
# egress hook (policies/: MeshTrafficPermission checks ExternalService callers) or laying out the
# egress's endpoints (MeshLoadBalancingStrategy's failover order), and the routes (the subsets
# they send to get SNI filter chains of their own: ingress.routed_subsets), and the meshes' CA
# states (the egress's certificate and the roots it trusts follow a CA rotation).
INPUTS = (MESH, DATAPLANE, EXTERNAL_SERVICE, SECRET, STATE_TYPE, *RESOURCE_TYPES.values(), *INSIGHT_TYPES.values())
CONTEXT_POLICIES = tuple(dict.fromkeys((*EGRESS_TYPES, *EGRESS_LOCALITY_TYPES, *ROUTE_TYPES, MESH_GATEWAY_ROUTE_TYPE)))
WATCHED = (*INPUTS, *CONTEXT_POLICIES)
MAX_SUBSCRIPTIONS = 5  # older streams of a zone proxy are dropped from its insight


class ZoneProxyAuthenticator:
    """A zone token for this zone, with the proxy type in its scope."""

    def __init__(self, store: Store, zone: str, *, federated: bool = False) -> None:
        self.validator = ZoneTokenValidator(store, published=federated)
        self.zone = zone
        self.federated = federated

    async def check(self, token: str, name: str, proxy_type: str, peer: str = "") -> dict[str, Any]:
        try:
            if not token:
                raise InvalidToken("no token: pass a zone token (scope ingress or egress) with --dataplane-token-file")
            return await self.validator.validate(token, self.zone, scope=proxy_type)
        except InvalidToken as exc:
            log.warning("zone_proxy_auth_refused", name=name, proxy_type=proxy_type, peer=peer, reason=exc.reason)
            raise AdmissionRefused(f"zone token refused: {exc.reason}") from None

    async def recheck(self, store: Store, token: str, proxy_type: str) -> None:
        """The check of ``check`` again, reading keys and revocations through ``store``."""
        try:
            await ZoneTokenValidator(store, published=self.federated).validate(token, self.zone, scope=proxy_type)
        except InvalidToken as exc:
            raise AdmissionRefused(f"zone token refused: {exc.reason}") from None


def zone_credentials(res: Resource) -> bool:
    """Does ``res`` carry zone-token keys or revocations: what zone proxies' tokens are checked
    with (global's published ZoneTokenTrust on a federated zone, this CP's own keys otherwise)?"""
    if res.type == TRUST_TYPE:
        return True
    return res.type == "GlobalSecret" and (
        res.name == ZONE_TOKEN_REVOCATIONS or res.name.startswith(ZONE_TOKEN_KEYS + "-")
    )


class Authenticator:
    """The xDS server's authenticator: zone proxies by zone token, dataplanes as before."""

    def __init__(self, dataplanes: DataplaneAuthenticator, zone_proxies: ZoneProxyAuthenticator) -> None:
        self.dataplanes = dataplanes
        self.zone_proxies = zone_proxies

    async def __call__(self, metadata: Metadata, node: base_pb2.Node) -> Admission:
        proxy_type = node_proxy_type(node)
        if proxy_type not in RESOURCE_TYPES:
            return await self.dataplanes(metadata, node)
        try:
            name = parse_zone_proxy_node_id(node.id)
        except ValueError as exc:
            raise AdmissionRefused(str(exc), grpc.StatusCode.INVALID_ARGUMENT) from None
        token = bearer_token(metadata)
        claims = await self.zone_proxies.check(token, name, proxy_type)

        async def recheck(store: Store) -> None:
            await self.zone_proxies.recheck(store, token, proxy_type)

        identity = ProxyIdentity(mesh="", name=name, proxy_type=ProxyType(proxy_type))
        valid_until = float(claims["exp"]) + LEEWAY_SECONDS
        return Admission(identity, "zone token", valid_until, recheck, str(claims["jti"]), signing_key_id(token))


def _dataplane_of(admission: Admission, *, mesh: str) -> bool:
    return admission.identity.proxy_type is ProxyType.DATAPLANE and admission.identity.mesh == mesh


class CredentialWatch:
    """Checks open xDS streams again when what their tokens are checked with changes, and the xDS
    server closes those that no longer pass. Only the streams the change may affect are checked,
    so that a revocation takes effect within a second however many proxies are connected:

    - a mesh's ``dataplane-token-revocations-<mesh>``: that mesh's streams whose jti is now listed;
    - a mesh's ``dataplane-token-signing-key-<mesh>-<N>`` (added, changed, deleted): that mesh's
      streams whose token names key N;
    - a mesh's DataplaneTokenTrust (global's public keys, synced down): that mesh's streams whose
      token global issued (kid ``global-<N>``);
    - zone-token keys or revocations, or the ZoneTokenTrust global publishes: every zone proxy
      stream (a zone has a few);
    - a Mesh with ``constraints.dataplaneProxy``: that mesh's dataplane streams (a proxy that no
      longer meets them is disconnected, and refused when it reconnects: admission.py).
    """

    WATCHED = ("Secret", "GlobalSecret", TRUST_TYPE, dptokens.TRUST_TYPE, "Mesh")

    def __init__(self, store: Store, servicer: AdsServicer) -> None:
        self.store = store
        self.servicer = servicer

    async def _watch(self) -> None:
        async with self.store.watch(self.WATCHED) as watch:
            async for event in watch:
                res = event.resource
                try:
                    if res.type == "Mesh":
                        if (res.spec.get("constraints") or {}).get("dataplaneProxy"):
                            await self._pass(res, functools.partial(_dataplane_of, mesh=res.name))
                    elif dataplane_credentials(res):
                        await self._pass(res, await self._dataplanes_affected(res, ReadOnce(self.store)))
                    elif res.type == dptokens.TRUST_TYPE:
                        await self._pass(res, functools.partial(_issued_by_global, mesh=res.mesh))
                    elif zone_credentials(res):
                        await self._pass(
                            res, lambda admission: admission.identity.proxy_type is not ProxyType.DATAPLANE
                        )
                except Exception as exc:  # one failed pass must not end the watch: later changes would be missed
                    log.warning("xds_revalidation_failed", secret=f"{res.type}/{res.mesh}/{res.name}", error=str(exc))

    async def _dataplanes_affected(self, res: Resource, view: Store) -> Callable[[Admission], bool]:
        mesh = res.mesh
        keys = dptokens.signing_keys(view, mesh)

        def in_mesh(admission: Admission) -> bool:
            return admission.identity.proxy_type is ProxyType.DATAPLANE and admission.identity.mesh == mesh

        if res.name == dptokens.revocations_secret(mesh):
            revoked = await TokenValidator(keys, res.name).revoked_ids()  # as the validator reads it
            return lambda admission: in_mesh(admission) and admission.token_id in revoked

        def signed_by_it(admission: Admission) -> bool:
            try:
                return keys.secret_name(int(admission.key_id)) == res.name
            except ValueError:
                return True  # cannot tell: check it

        return lambda admission: in_mesh(admission) and signed_by_it(admission)

    async def _pass(self, res: Resource, affected: Callable[[Admission], bool]) -> None:
        closed = await self.servicer.revalidate(affected, ReadOnce(self.store))
        log.info("xds_streams_revalidated", secret=f"{res.type}/{res.mesh}/{res.name}", closed=closed)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CredentialWatch]:
        task = asyncio.create_task(self._watch(), name="xds-credential-watch")
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _issued_by_global(admission: Admission, *, mesh: str) -> bool:
    """A dataplane stream of ``mesh`` whose token global signed (kid ``global-<N>``)."""
    return (
        admission.identity.proxy_type is ProxyType.DATAPLANE
        and admission.identity.mesh == mesh
        and admission.key_id.startswith(dptokens.GLOBAL_KID_PREFIX)
    )


class Registration(RegistrationServicer):
    """DataplaneRegistration for every proxy type: zone proxies here, dataplanes as before."""

    def __init__(
        self,
        manager: ResourceManager,
        authenticator: DataplaneAuthenticator,
        zone_proxies: ZoneProxyAuthenticator,
        insights: Any,
        instance_id: str,
    ) -> None:
        super().__init__(manager, authenticator, insights, instance_id)
        self.zone_proxies = zone_proxies
        self.zone_insights: ZoneProxyInsights | None = None

    async def _admit_zone_proxy(self, context: grpc.aio.ServicerContext[Any, Any], name: str, proxy_type: str) -> None:
        metadata = tuple((m.key, m.value) for m in (context.invocation_metadata() or ()))
        try:
            await self.zone_proxies.check(bearer_token(metadata), name, proxy_type, context.peer())
        except AdmissionRefused as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))

    async def Register(
        self, request: dataplane_pb2.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dataplane_pb2.RegisterResponse:
        type_name = RESOURCE_TYPES.get(request.proxy_type)
        if type_name is None:
            return await super().Register(request, context)
        await check_names(context, type_name, request.name)
        await self._admit_zone_proxy(context, request.name, request.proxy_type)
        try:
            doc = parse_json(request.dataplane_json, "dataplane_json")
            if isinstance(doc, dict):
                doc.pop("mesh", None)
            res, _ = from_universal(doc, expected_type=REGISTRY.get(type_name), name=request.name)
        except ValidationError as exc:
            detail = "; ".join(f"{e.field}: {e.reason}" for e in exc.errors)
            log.warning("zone_proxy_registration_invalid", name=request.name, type=type_name, errors=detail)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the {type_name} is not valid: {detail}")
        zone = self.zone_proxies.zone
        res.spec["zone"] = zone
        existing = await self.manager.store.find(type_name, request.name)
        if type_name == "ZoneIngress":
            # availableServices belong to the zone control plane (zone_cp/ingress.py), not the agent.
            res.spec["availableServices"] = (existing.spec.get("availableServices") if existing else None) or []
        stored, created = await self.manager.apply(res)
        log.info("zone_proxy_registered", type=type_name, name=request.name, zone=zone, created=created)
        return dataplane_pb2.RegisterResponse(
            version=stored.version, created=created, control_plane_instance_id=self.instance_id
        )

    async def Unregister(
        self, request: dataplane_pb2.UnregisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dataplane_pb2.UnregisterResponse:
        type_name = RESOURCE_TYPES.get(request.proxy_type)
        if type_name is None:
            return await super().Unregister(request, context)
        await check_names(context, type_name, request.name)
        await self._admit_zone_proxy(context, request.name, request.proxy_type)
        try:
            await self.manager.delete(type_name, request.name)
            deleted = True
        except NotFound:
            deleted = False
        if self.zone_insights is not None:
            await self.zone_insights.forget(request.proxy_type, request.name)
        log.info("zone_proxy_unregistered", type=type_name, name=request.name, deleted=deleted)
        return dataplane_pb2.UnregisterResponse(deleted=deleted)


# --- ZoneIngressInsight / ZoneEgressInsight ------------------------------------------------------


class ZoneProxyInsights:
    """One subscription per ADS stream of a zone proxy, written at once on open and close.

    Zone proxies are few and their streams long-lived, so there is no batching. The insight is
    uploaded by KDS (ZoneIngressInsight on to the other zones, which use an ingress only while
    its last subscription is open: ``crosszone.online``).
    """

    def __init__(self, store: Store, instance_id: str, zone: str) -> None:
        self.store = store
        self.instance_id = instance_id
        self.zone = zone
        self._ids: dict[int, str] = {}  # xDS stream id -> subscription id

    async def _change(
        self, proxy_type: str, name: str, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    ) -> None:
        rtype = INSIGHT_TYPES[proxy_type]
        for _ in range(5):  # bounded: only a concurrent write of the same insight makes it retry
            current = await self.store.find(rtype, name)
            subscriptions = change(list((current.spec.get("subscriptions") if current else None) or []))
            subscriptions = subscriptions[-MAX_SUBSCRIPTIONS:]
            try:
                if current is None:
                    await self.store.create(Resource(type=rtype, name=name, spec={"subscriptions": subscriptions}))
                else:
                    spec = {**current.spec, "subscriptions": subscriptions}
                    await self.store.update(dataclasses.replace(current, spec=spec))
                return
            except (AlreadyExists, Conflict):
                continue
        log.warning("zone_proxy_insight_not_written", type=rtype, name=name)

    async def stream_open(self, info: StreamInfo) -> None:
        identity = info.identity
        if identity.proxy_type is ProxyType.DATAPLANE:
            return
        sub_id = str(uuid.uuid4())
        self._ids[info.stream_id] = sub_id
        subscription = {"id": sub_id, "controlPlaneInstanceId": self.instance_id, "connectTime": format_time(now())}
        await self._change(identity.proxy_type.value, identity.name, lambda subs: [*subs, subscription])
        log.info("zone_proxy_online", type=identity.proxy_type.value, name=identity.name, peer=info.peer)

    async def stream_close(self, info: StreamInfo) -> None:
        identity = info.identity
        sub_id = self._ids.pop(info.stream_id, None)
        if identity.proxy_type is ProxyType.DATAPLANE or sub_id is None:
            return
        closed = format_time(now())

        def close(subs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{**s, "disconnectTime": closed} if s.get("id") == sub_id else s for s in subs]

        await self._change(identity.proxy_type.value, identity.name, close)
        log.info("zone_proxy_offline", type=identity.proxy_type.value, name=identity.name)

    async def forget(self, proxy_type: str, name: str) -> None:
        """The proxy unregistered: its insight goes with its resource."""
        with contextlib.suppress(NotFound):
            await self.store.delete(INSIGHT_TYPES[proxy_type], name)

    def install(self, callbacks: Any) -> None:
        callbacks.stream_open.append(self.stream_open)
        callbacks.stream_close.append(self.stream_close)


# --- POST /tokens/zone on a zone control plane -------------------------------------------------


def token_routes(zone: str, federated: bool = False) -> list[web.RouteDef]:
    """Zone tokens for this zone's ingress/egress proxies (admin only); a federated zone refuses:
    global issues them, since only global's keys are trusted in every zone."""

    async def issue(request: web.Request) -> web.Response:
        manager = request.app[MANAGER]
        await require_admin(request, manager.store)
        if federated:
            return error_response(
                400,
                "Zone tokens are issued by the global control plane",
                f"zone {zone!r} is federated: its zone proxies' tokens come from global "
                f"(zmctl --cp-address <global API> generate zone-token --zone {zone} --scope ingress); "
                "this zone checks them with the public keys global publishes",
            )
        doc = await read_document(request)
        if not isinstance(doc, dict):
            raise ValidationError([FieldError("<body>", 'must be an object: {"zone": ..., "scope": [...]}')])
        errors: list[FieldError] = []
        if doc.get("zone", zone) != zone:
            errors.append(FieldError("zone", f"this control plane issues tokens for zone {zone!r} only"))
        scope = doc.get("scope") or list(RESOURCE_TYPES)
        if (
            not isinstance(scope, list)
            or not scope
            or any(not isinstance(s, str) or s not in RESOURCE_TYPES for s in scope)
        ):
            errors.append(FieldError("scope", "a zone control plane issues only the scopes ingress and egress"))
        token = await issue_requested(manager.store, zone, scope, doc, errors)
        return web.Response(text=token, content_type="text/plain")

    return [web.post("/tokens/zone", issue), web.post("/tokens/zone/", issue)]


# --- config of connected zone proxies ------------------------------------------------------------


class ZoneProxyReconciler:
    """Regenerates connected zone proxies from the store, and computes the zone's per-mesh
    CrossZone ``views`` (which the dataplane reconciler reads and follows: crosszone.CrossZoneViews).

    Reads the store each round (zone proxies are few; rounds are debounced), so it keeps no
    mirror of its own.
    """

    def __init__(
        self,
        store: Store,
        cache: SnapshotCache,
        certs: CertProvider | None,
        zone: str,
        *,
        quiet: float = 0.1,
        dns_ttl: float = 30.0,
        views: CrossZoneViews | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.certs = certs
        self.zone = zone
        self.quiet = quiet
        self.dns_ttl = dns_ttl
        self.views = views if views is not None else CrossZoneViews()
        self._connected: dict[tuple[str, str], int] = {}  # (proxy type, name) -> open streams
        self._resolved: dict[str, tuple[list[str], float]] = {}  # host -> (addresses, when looked up)
        self._wake = asyncio.Event()
        self._usable = usable.UsableFilter()
        self._watch_queue: asyncio.Queue[Any] | None = None  # the store watch's, while running
        self._rounding = False
        self._progress = asyncio.Event()  # set when a round ended (idle())
        self.rounds = 0

    def cross_zone(self, mesh: str) -> CrossZone | None:
        return self.views.get(mesh)

    async def on_stream_open(self, info: StreamInfo) -> None:
        identity = info.identity
        if identity.proxy_type is ProxyType.DATAPLANE:
            return
        key = (identity.proxy_type.value, identity.name)
        self._connected[key] = self._connected.get(key, 0) + 1
        self._wake.set()

    async def on_stream_close(self, info: StreamInfo) -> None:
        identity = info.identity
        if identity.proxy_type is ProxyType.DATAPLANE:
            return
        key = (identity.proxy_type.value, identity.name)
        left = self._connected.get(key, 0) - 1
        if left > 0:
            self._connected[key] = left
            return
        self._connected.pop(key, None)
        self.cache.clear_snapshot(identity.key)

    async def _all(self, rtype: str) -> list[Resource]:
        """Every stored ``rtype`` that passes validation (the others are skipped and said so once)."""
        return self._usable(rtype, (await self.store.list(rtype)).items)

    async def _egress_certs(self, meshes: list[MeshContext]) -> dict[str, WorkloadCert]:
        certs: dict[str, WorkloadCert] = {}
        if self.certs is None:
            return certs
        for mctx in meshes:
            if mctx.mtls is None or not mctx.external_services:
                continue
            try:
                certs[mctx.name] = WorkloadCert(*await self.certs.workload_cert(mctx.name, EGRESS_SERVICE))
            except Exception as exc:
                log.error("zone_egress_cert_failed", mesh=mctx.name, error=str(exc))
        return certs

    async def _resolve(self, externals: list[Resource]) -> dict[str, list[str]]:
        """ExternalService hosts -> addresses, looked up again once ``dns_ttl`` has passed."""
        now = time.monotonic()
        stale = [
            es
            for es in externals
            if (host := _host(es)) and (host not in self._resolved or now - self._resolved[host][1] > self.dns_ttl)
        ]
        if stale:
            for host, addresses in (await resolve_hosts(stale)).items():
                self._resolved[host] = (addresses, now)
        wanted = {_host(es) for es in externals}
        return {host: addresses for host, (addresses, _) in self._resolved.items() if host in wanted}

    async def context(self, *, with_dataplanes: bool = False) -> ZoneContext:
        """Everything zone proxies are generated from, read from the store now. The per-mesh
        cross-zone view is always refreshed; the zone's dataplanes are read only when a zone
        proxy is connected to be generated from them."""
        meshes = await self._all("Mesh")
        externals = await self._all("ExternalService")
        # Only proxies holding an xDS stream now: a killed ingress/egress stays registered.
        ingresses = online(await self._all("ZoneIngress"), await self._all("ZoneIngressInsight"))
        egresses = online(await self._all("ZoneEgress"), await self._all("ZoneEgressInsight"))
        resolved = await self._resolve(externals)
        cross = {m.name: CrossZone.build(self.zone, m.name, ingresses, egresses, resolved) for m in meshes}
        self.views.replace(cross)
        contexts: dict[str, MeshContext] = {}
        if self._connected or with_dataplanes:
            dataplanes = await self._all("Dataplane")
            # The egress runs the egress hooks of policies (MeshTrafficPermission for ExternalServices),
            # and reads the Secrets their TLS settings refer to; both read the routes' subsets.
            context_types = [r for t in (*CONTEXT_POLICIES, SECRET) for r in await self._all(t)]
            for mesh in meshes:
                contexts[mesh.name] = MeshContext.build(
                    mesh,
                    [d for d in dataplanes if d.mesh == mesh.name],
                    [p for p in context_types if p.mesh == mesh.name],
                    external_services=[e for e in externals if e.mesh == mesh.name],
                    cross=cross[mesh.name],
                )
        return ZoneContext(self.zone, contexts, await self._egress_certs(list(contexts.values())))

    async def render(self, proxy_type: str, name: str) -> ResourceSet:
        """A zone proxy's config generated now (the ``_config`` API); LookupError when unknown."""
        proxy = await self.store.find(RESOURCE_TYPES[proxy_type], name)
        if proxy is None:
            raise LookupError(f"{RESOURCE_TYPES[proxy_type]} {name!r} not found")
        return self.generate(await self.context(with_dataplanes=True), proxy)

    def generate(self, zctx: ZoneContext, proxy: Resource) -> ResourceSet:
        if proxy.type == "ZoneIngress":
            return ingress_generator.generate(zctx, proxy)
        return egress_generator.generate(zctx, proxy)

    async def reconcile(self) -> None:
        self.rounds += 1
        started = time.monotonic()
        zctx = await self.context()
        for (proxy_type, name), _ in sorted(self._connected.items()):
            proxy = await self.store.find(RESOURCE_TYPES[proxy_type], name)
            if proxy is None:
                log.warning("zone_proxy_not_registered", type=proxy_type, name=name)
                continue
            try:
                resources = self.generate(zctx, proxy)
            except Exception as exc:
                log.error("zone_proxy_generation_failed", type=proxy_type, name=name, error=str(exc))
                continue
            self.cache.set_snapshot(zone_proxy_key(proxy_type, name), Snapshot.from_resources(resources))
        log.debug("zone_proxies_reconciled", proxies=len(self._connected), seconds=time.monotonic() - started)

    async def idle(self) -> None:
        """Return once every change seen so far (store events received, zone proxies that
        connected) has been generated and pushed, and the dataplane side told of cross-zone
        changes (await its own ``idle()`` next). Same caveat as ``Reconciler.idle``."""
        while self._busy():
            self._progress.clear()
            await self._progress.wait()

    def _busy(self) -> bool:
        queued = self._watch_queue is not None and not self._watch_queue.empty()
        return queued or self._wake.is_set() or self._rounding

    async def _watch(self, watch: Watch) -> None:
        async with watch:
            async for _ in watch:
                self._wake.set()

    async def _loop(self) -> None:
        while True:
            # Also every dns_ttl without changes: ExternalService addresses may have moved.
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.dns_ttl):
                    await self._wake.wait()
            await asyncio.sleep(self.quiet)
            self._wake.clear()
            self._rounding = True  # with the clear, before any await: idle() sees no gap
            try:
                await self.reconcile()
            except Exception:
                log.exception("zone_proxy_reconcile_failed")
            finally:
                self._rounding = False
                self._progress.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ZoneProxyReconciler]:
        watch = self.store.watch(WATCHED)
        self._watch_queue = watch.queue
        tasks = [
            asyncio.create_task(self._watch(watch), name="zone-proxies-watch"),
            asyncio.create_task(self._loop(), name="zone-proxies"),
        ]
        try:
            await self.context()  # the cross-zone view is there before the first dataplane is generated
            yield self
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            watch.close()
            self._watch_queue = None


def config_routes(reconciler: Callable[[], ZoneProxyReconciler | None]) -> list[web.RouteDef]:
    """``GET /zoneingresses/{name}/_config`` and ``/zoneegresses/{name}/_config``: the xDS config
    generated for a zone proxy now (``{"xds": ...}``, private keys redacted); admin only."""
    from zonemesh.zone_cp.xds.dump import dump

    def handler(proxy_type: str) -> Callable[[web.Request], Any]:
        async def config(request: web.Request) -> web.Response:
            await require_admin(request, request.app[MANAGER].store)  # as a dataplane's _config
            current = reconciler()
            if current is None:
                raise web.HTTPServiceUnavailable(reason="the xDS server is not running")
            name = request.match_info["name"]
            try:
                resources = await current.render(proxy_type, name)
            except LookupError as exc:
                return error_response(404, "Not found", str(exc))
            except Exception as exc:
                return error_response(500, "Config generation failed", str(exc))
            return web.json_response({"xds": dump(resources)})

        return config

    return [
        web.get("/zoneingresses/{name}/_config", handler(ProxyType.INGRESS.value)),
        web.get("/zoneegresses/{name}/_config", handler(ProxyType.EGRESS.value)),
    ]


def _host(es: Resource) -> str:
    return str((es.spec.get("networking") or {}).get("address") or "").rpartition(":")[0].strip("[]")
