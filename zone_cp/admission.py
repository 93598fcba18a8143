"""Who may join the zone: dataplane token checks for xDS streams and for registration.

Two doors, one rule. A proxy agent first calls ``DataplaneRegistration.Register`` (gRPC, on the
xDS port) with its Dataplane document; then Envoy opens the ADS stream. Both carry the
dataplane token as ``authorization: Bearer <token>`` metadata, and both are refused unless the
token is valid for the mesh and name the proxy claims (see shared/tokens/dataplane.py). A
refusal is logged as ``dataplane_auth_refused`` with the reason (never the token) and answered
with gRPC UNAUTHENTICATED. A proxy refused for the license (strict quota) gets RESOURCE_EXHAUSTED
instead, on registration and on its ADS stream alike.

A proxy must also meet its mesh's ``constraints.dataplaneProxy`` (requirements and restrictions
by tags): a registration that does not is refused with FAILED_PRECONDITION (the agent exits and
says why), an ADS stream with PERMISSION_DENIED; both are logged as ``dataplane_constraints_refused``.
When a Mesh with constraints changes, the open streams of its proxies are checked again and those
that no longer qualify are closed (``CredentialWatch``, below); they are refused on reconnect.

An admitted stream keeps its token: the xDS server closes it at the token's exp (plus the
verification leeway), and checks it again whenever the mesh's signing keys or revocations change
(``CredentialWatch``), closing it when it no longer passes.

Zone ingress and zone egress proxies (below): ``zonemesh-dp run --proxy-type ingress|egress``
registers a ZoneIngress/ZoneEgress (no mesh: one zone proxy serves every mesh) through the same
``DataplaneRegistration`` service as dataplanes, and opens ADS with node id ``<name>`` and node
metadata ``proxyType``. Both carry a **zone token** whose ``Zone`` is this zone and whose ``Scope``
includes the proxy type (``shared/tokens/zone.py``), validated against the zone-token signing keys
in this control plane's store. On a federated zone (as in Kuma) they are issued by GLOBAL (``zmctl
generate zone-token --zone Z --scope ingress`` against global's API) and checked against the public
keys and revoked jti global publishes (ZoneTokenTrust, synced by KDS); such a zone holds no signing
key and refuses ``POST /tokens/zone``, pointing to global. A standalone control plane issues them
itself (``POST /tokens/zone``: admin only, restricted to its zone and to the ingress/egress scopes)
and checks them with its own keys. Their config: zone_cp/xds/zoneproxies.py; their insights:
zone_cp/insights.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc
import jwt
import structlog
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format
from zonemesh.proto import dataplane_pb2, dataplane_pb2_grpc
from zonemesh.shared.api.auth import require_admin
from zonemesh.shared.api.context import MANAGER
from zonemesh.shared.api.errors import error_response
from zonemesh.shared.api.resources import read_document
from zonemesh.shared.resources.codec import from_universal, parse_json, to_universal
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource, ResourceKey
from zonemesh.shared.resources.registry import REGISTRY
from zonemesh.shared.resources.schema import FieldError, ValidationError
from zonemesh.shared.resources.types.dataplane import dataplane_tags
from zonemesh.shared.resources.types.mesh import constraint_violation
from zonemesh.shared.store import NotFound, Store
from zonemesh.shared.store.base import NO_FILTER, ListFilter, ListResult, Watch
from zonemesh.shared.tokens import dataplane as dptokens
from zonemesh.shared.tokens.tokens import LEEWAY_SECONDS, InvalidToken, TokenValidator
from zonemesh.shared.tokens.zone import (
    TRUST_TYPE,
    ZONE_TOKEN_KEYS,
    ZONE_TOKEN_REVOCATIONS,
    ZoneTokenValidator,
    issue_requested,
)
from zonemesh.zone_cp.insights import InsightRecorder, ZoneProxyInsights
from zonemesh.zone_cp.license import LicenseRefused, ZoneLicense
from zonemesh.zone_cp.xds.proxy import RESOURCE_TYPES, ProxyIdentity, ProxyType, parse_node_id, parse_zone_proxy_node_id
from zonemesh.zone_cp.xds.server import Admission, AdsServicer, CredentialRefused

log = structlog.get_logger(__name__)

# Node metadata the agent sets in the Envoy bootstrap.
NODE_PROXY_TYPE = "proxyType"
SUPPORTED_PROXY_TYPES = (ProxyType.DATAPLANE,)

Metadata = Sequence[tuple[str, str | bytes]]


class AdmissionRefused(CredentialRefused):
    """The proxy may not connect; the message is the reason it is told, ``status_code`` the gRPC
    status its ADS stream ends with (UNAUTHENTICATED, or RESOURCE_EXHAUSTED for the license)."""


def bearer_token(metadata: Metadata) -> str:
    for key, value in metadata:
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else text.strip()
    return ""


def node_proxy_type(node: base_pb2.Node) -> str:
    if node.HasField("metadata"):
        meta: Mapping[str, Any] = json_format.MessageToDict(node.metadata)
        value = meta.get(NODE_PROXY_TYPE)
        if isinstance(value, str) and value:
            return value
    return ProxyType.DATAPLANE.value


async def check_names(context: grpc.aio.ServicerContext[Any, Any], type_name: str, name: str, mesh: str = "") -> None:
    """Registration names follow the API's rule: a refused one ends the call with INVALID_ARGUMENT,
    before its token is even looked at (nothing about a caller's token is told for a bad name)."""
    errors = REGISTRY.get(type_name).name_errors(name, mesh)
    if errors:
        invalid = ValidationError(errors, title="Invalid resource name")
        log.warning("registration_name_invalid", type=type_name, mesh=mesh, name=name, errors=str(invalid))
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(invalid))


async def constraints_refusal(store: Store, mesh: str, dataplane: Resource | None) -> str | None:
    """Why the proxy of ``dataplane`` may not be in ``mesh`` now (its constraints), or None."""
    if dataplane is None:
        return None
    found = await store.find("Mesh", mesh)
    reason = constraint_violation(found, dataplane_tags(dataplane)) if found is not None else None
    return f"the Dataplane does not meet the mesh's constraints: {reason}" if reason else None


class DataplaneAuthenticator:
    """The xDS server's Authenticator: the node id names the proxy, the token must admit it."""

    def __init__(self, store: Store, license: ZoneLicense | None = None) -> None:
        self.store = store
        # The zone's license gate (strict quota: zone_cp/license.py); None on a standalone control plane.
        self.license = license

    async def license_connection(self, mesh: str, name: str) -> None:
        """A data plane proxy opens its stream: one whose Dataplane holds no slot needs one now."""
        if self.license is not None:
            await self.license.connection(mesh, name)

    @contextlib.asynccontextmanager
    async def license_admission(self, dataplane: Resource) -> AsyncIterator[None]:
        """Around storing a joining proxy's Dataplane: it holds a slot while stored (LicenseRefused)."""
        if self.license is None:
            yield
            return
        async with self.license.admission(dataplane):
            yield

    async def check(
        self,
        token: str,
        mesh: str,
        name: str,
        proxy_type: str,
        peer: str = "",
        dataplane: Resource | None = None,
    ) -> dptokens.DataplaneClaims:
        """Validate ``token`` for the proxy; raise AdmissionRefused (logged) when it may not join.

        The proxy's tags must be allowed by the token: those of ``dataplane`` (being registered)
        or else of the stored Dataplane.
        """
        try:
            if proxy_type not in {t.value for t in ProxyType}:
                raise InvalidToken(f"unknown proxy type {proxy_type!r}")
            if dataplane is None:
                dataplane = await self.store.find("Dataplane", name, mesh)
            tags = dataplane_tags(dataplane) if dataplane is not None else []
            return await dptokens.validate(self.store, token, mesh=mesh, name=name, proxy_type=proxy_type, tags=tags)
        except InvalidToken as exc:
            log.warning(
                "dataplane_auth_refused", mesh=mesh, name=name, proxy_type=proxy_type, peer=peer, reason=exc.reason
            )
            raise AdmissionRefused(f"dataplane token refused: {exc.reason}") from None

    async def __call__(self, metadata: Metadata, node: base_pb2.Node) -> Admission:
        try:
            mesh, name = parse_node_id(node.id)
        except ValueError as exc:
            log.warning("dataplane_auth_refused", node=node.id, reason=str(exc))
            raise AdmissionRefused(str(exc), grpc.StatusCode.INVALID_ARGUMENT) from None
        proxy_type = node_proxy_type(node)
        token = bearer_token(metadata)
        claims = await self.check(token, mesh, name, proxy_type)
        if proxy_type == ProxyType.DATAPLANE.value:
            await self._meets_constraints(self.store, mesh, name)
            try:  # a Dataplane stored without a license slot (created through the API) needs one to connect
                await self.license_connection(mesh, name)
            except LicenseRefused as exc:
                log.warning("dataplane_license_refused", mesh=mesh, name=name, reason=str(exc))
                raise AdmissionRefused(str(exc), grpc.StatusCode.RESOURCE_EXHAUSTED) from None

        async def recheck(store: Store) -> None:
            # The token alone: its tags were checked against the Dataplane when it registered.
            try:
                await dptokens.validate(store, token, mesh=mesh, name=name, proxy_type=proxy_type)
            except InvalidToken as exc:
                raise AdmissionRefused(f"dataplane token refused: {exc.reason}") from None
            if proxy_type == ProxyType.DATAPLANE.value:
                await self._meets_constraints(store, mesh, name)

        identity = ProxyIdentity(mesh=mesh, name=name, proxy_type=ProxyType(proxy_type))
        return Admission(
            identity, "dataplane token", claims.exp + LEEWAY_SECONDS, recheck, claims.jti, signing_key_id(token)
        )

    @staticmethod
    async def _meets_constraints(store: Store, mesh: str, name: str) -> None:
        reason = await constraints_refusal(store, mesh, await store.find("Dataplane", name, mesh))
        if reason is not None:
            log.warning("dataplane_constraints_refused", mesh=mesh, name=name, reason=reason)
            raise AdmissionRefused(reason, grpc.StatusCode.PERMISSION_DENIED)


def signing_key_id(token: str) -> str:
    """The ``kid`` of a token that passed validation (its header is covered by the signature)."""
    return str(jwt.get_unverified_header(token).get("kid", ""))


def dataplane_credentials(res: Resource) -> bool:
    """Is ``res`` a signing key or the revocation list of its mesh's dataplane tokens?"""
    return res.type == "Secret" and (
        res.name == dptokens.revocations_secret(res.mesh)
        or res.name.startswith(dptokens.signing_key_prefix(res.mesh) + "-")
    )


class ReadOnce(Store):
    """A read-only view of ``store`` that reads each key (and each listing) once: one pass that
    checks the tokens of thousands of open streams reads the mesh's keys and revocations once,
    not once per stream. Create one per pass; it never sees later changes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._reads: dict[tuple[Any, ...], asyncio.Future[Any]] = {}

    def _once(self, key: tuple[Any, ...], read: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
        found = self._reads.get(key)
        if found is None:  # concurrent readers of one key share the one read in flight
            found = self._reads[key] = asyncio.ensure_future(read())
        return found

    async def get(self, type: str, name: str, mesh: str = "") -> Resource:
        read = self._once(("get", type, name, mesh), lambda: self.store.get(type, name, mesh))
        result: Resource = await asyncio.shield(read)
        return result

    async def list(
        self,
        type: str,
        mesh: str | None = None,
        *,
        filter: ListFilter = NO_FILTER,
        offset: str | None = None,
        size: int | None = None,
    ) -> ListResult:
        if not filter.is_empty() or offset is not None or size is not None:
            return await self.store.list(type, mesh, filter=filter, offset=offset, size=size)
        read = self._once(("list", type, mesh), lambda: self.store.list(type, mesh))
        result: ListResult = await asyncio.shield(read)
        return result

    async def create(self, res: Resource) -> Resource:
        raise TypeError("ReadOnce is read-only")

    async def update(self, res: Resource) -> Resource:
        raise TypeError("ReadOnce is read-only")

    async def delete(self, type: str, name: str, mesh: str = "", *, version: int | None = None) -> Resource:
        raise TypeError("ReadOnce is read-only")

    async def batch(
        self,
        upserts: Iterable[Resource] = (),
        deletes: Iterable[ResourceKey] = (),
        *,
        expected: Mapping[ResourceKey, int] | None = None,
    ) -> None:
        raise TypeError("ReadOnce is read-only")

    def watch(self, types: Iterable[str] | None = None) -> Watch:
        raise TypeError("ReadOnce does not watch: it is a view for one pass")

    async def close(self) -> None:
        """Nothing to close: the underlying store is not ours."""


def _interned(value: Any) -> Any:
    """A JSON document with its keys and strings interned (``sys.intern``). The zone's view keeps
    every registered Dataplane for as long as it is registered, and replicas register documents
    alike but for their name, addresses and ports: one copy of ``kuma.io/service``, of the
    service's name, of the protocol... for all of them, not one per proxy (~0.9 KB each)."""
    kind = type(value)
    if kind is dict:
        return {sys.intern(k) if type(k) is str else k: _interned(v) for k, v in value.items()}
    if kind is list:
        return [_interned(v) for v in value]
    if kind is str:
        return sys.intern(value)
    return value


class RegistrationServicer:
    """Creates, updates and deletes the Dataplane of an authenticated proxy agent."""

    def __init__(
        self,
        manager: ResourceManager,
        authenticator: DataplaneAuthenticator,
        insights: InsightRecorder | None,
        instance_id: str,
    ) -> None:
        self.manager = manager
        self.authenticator = authenticator
        self.insights = insights
        self.instance_id = instance_id

    def add_to(self, server: grpc.aio.Server) -> None:
        dataplane_pb2_grpc.add_DataplaneRegistrationServicer_to_server(self, server)

    async def _admit(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        mesh: str,
        name: str,
        proxy_type: str,
        dataplane: Resource | None = None,
    ) -> None:
        metadata = tuple((m.key, m.value) for m in (context.invocation_metadata() or ()))
        try:
            await self.authenticator.check(bearer_token(metadata), mesh, name, proxy_type, context.peer(), dataplane)
        except AdmissionRefused as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))

    async def Register(
        self, request: dataplane_pb2.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dataplane_pb2.RegisterResponse:
        proxy_type = request.proxy_type or ProxyType.DATAPLANE.value
        await check_names(context, "Dataplane", request.name, request.mesh)
        if not request.dataplane_json:
            return await self._register_stored(request, context, proxy_type)
        # Parse before admitting, so the token is checked against the tags being registered;
        # but say nothing about the document to a caller whose token is refused.
        try:
            doc = _interned(parse_json(request.dataplane_json, "dataplane_json"))
            res, _ = from_universal(doc, expected_type=REGISTRY.get("Dataplane"), mesh=request.mesh, name=request.name)
        except ValidationError as exc:
            await self._admit(context, request.mesh, request.name, proxy_type)
            detail = "; ".join(f"{e.field}: {e.reason}" for e in exc.errors)
            log.warning("dataplane_registration_invalid", mesh=request.mesh, name=request.name, errors=detail)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the Dataplane is not valid: {detail}")
        await self._admit(context, request.mesh, request.name, proxy_type, res)
        if proxy_type not in SUPPORTED_PROXY_TYPES:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, f"proxy type {proxy_type!r} is not yet supported: use dataplane"
            )
        refusal = await constraints_refusal(self.manager.store, request.mesh, res)
        if refusal is not None:
            log.warning("dataplane_constraints_refused", mesh=request.mesh, name=request.name, reason=refusal)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
        try:
            # License: in strict mode a counted proxy joins only within this zone's quota (zone_cp/license.py).
            async with self.authenticator.license_admission(res):
                stored, created = await self.manager.apply(res)
        except LicenseRefused as exc:
            log.warning("dataplane_license_refused", mesh=request.mesh, name=request.name, reason=str(exc))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        if self.insights is not None:
            self.insights.registered(
                request.mesh, request.name, agent_version=request.agent_version, envoy_version=request.envoy_version
            )
        log.info("dataplane_registered", mesh=request.mesh, name=request.name, created=created, version=stored.version)
        return dataplane_pb2.RegisterResponse(
            version=stored.version,
            created=created,
            control_plane_instance_id=self.instance_id,
            dataplane_json=json.dumps(to_universal(stored)),
        )

    async def _register_stored(
        self, request: dataplane_pb2.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any], proxy_type: str
    ) -> dataplane_pb2.RegisterResponse:
        """kuma-dp's ``--name --mesh`` form: the proxy runs the Dataplane already stored under that
        name (created with zmctl apply or the API). The token is checked against the stored
        Dataplane's tags, before anything about it (even whether it exists) is told."""
        await self._admit(context, request.mesh, request.name, proxy_type)
        if proxy_type not in SUPPORTED_PROXY_TYPES:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, f"proxy type {proxy_type!r} is not yet supported: use dataplane"
            )
        stored = await self.manager.store.find("Dataplane", request.name, request.mesh)
        if stored is None:
            log.warning("dataplane_registration_not_found", mesh=request.mesh, name=request.name)
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no Dataplane {request.name!r} in mesh {request.mesh!r} on this control plane: create it first "
                "(zmctl apply -f), or give the proxy its Dataplane document (--dataplane-file)",
            )
        assert stored is not None  # context.abort raised otherwise
        try:  # a Dataplane stored without a license slot (created through the API) needs one to run
            await self.authenticator.license_connection(request.mesh, request.name)
        except LicenseRefused as exc:
            log.warning("dataplane_license_refused", mesh=request.mesh, name=request.name, reason=str(exc))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        if self.insights is not None:
            self.insights.registered(
                request.mesh, request.name, agent_version=request.agent_version, envoy_version=request.envoy_version
            )
        log.info("dataplane_registered", mesh=request.mesh, name=request.name, created=False, stored=True)
        return dataplane_pb2.RegisterResponse(
            version=stored.version,
            created=False,
            control_plane_instance_id=self.instance_id,
            dataplane_json=json.dumps(to_universal(stored)),
        )

    async def Unregister(
        self, request: dataplane_pb2.UnregisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dataplane_pb2.UnregisterResponse:
        await check_names(context, "Dataplane", request.name, request.mesh)
        await self._admit(context, request.mesh, request.name, ProxyType.DATAPLANE.value)
        deleted = False
        if not request.keep_dataplane:  # kept: it was created beforehand, not by this proxy's Register
            try:
                await self.manager.delete("Dataplane", request.name, request.mesh)
                deleted = True
            except NotFound:
                pass
        if self.insights is not None:
            await self.insights.unregistered(request.mesh, request.name)
        log.info(
            "dataplane_unregistered", mesh=request.mesh, name=request.name, deleted=deleted, kept=request.keep_dataplane
        )
        return dataplane_pb2.UnregisterResponse(deleted=deleted)


# --- zone ingress and zone egress proxies -------------------------------------------------------


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
        zone_insights: ZoneProxyInsights | None = None,
    ) -> None:
        super().__init__(manager, authenticator, insights, instance_id)
        self.zone_proxies = zone_proxies
        self.zone_insights = zone_insights

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
            doc = _interned(parse_json(request.dataplane_json, "dataplane_json"))
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
