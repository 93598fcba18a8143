"""The global side of KDS: a grpc.aio server on :5685 (TLS) with one stream per zone.

Per stream: authenticate the zone token (signature, expiry, revocation, kid, zone claim =
``client-id``; the stream is closed when the token expires or a key or revocation change
invalidates it), register the zone, answer Hello with what global holds from that zone, then
push the global snapshot's difference to what the zone said it holds, apply what the zone
uploads (renamed ``{zone}.{name}``, or Kuma's ``{name}-{hash}`` for the types global creates
too: shared/kds/naming.py; labelled with origin, zone and display name), and keep the zone's
insight current. A zone's own policies and MeshGateways are stored here to be shown, never
sent to any zone: they apply in their zone only.

An upload is checked resource by resource (``_apply_upload``): what an API write would be
refused for, a mesh that does not exist here, a field or label naming another zone or another
origin, a name global or another zone holds. Refused resources are NACKed by key with the reason
(``kds_upload_refused`` in the log, ``kds_upload_refused_total``); the rest of the message is
applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog
from zonemesh.global_cp.zones import Subscription, ZoneDisabled, ZoneInsightFinalizer, ZoneRegistry, zone_enabled
from zonemesh.proto import kds_pb2, kds_pb2_grpc
from zonemesh.shared.aio import cancel_and_wait
from zonemesh.shared.config import Config
from zonemesh.shared.duration import parse_duration
from zonemesh.shared.kds.codec import key_str, resource_hash
from zonemesh.shared.kds.metrics import UPLOAD_REFUSED, ZONE_ACTIVE_CONNECTIONS
from zonemesh.shared.kds.naming import name_at_global
from zonemesh.shared.kds.session import Outbox, Session, Stats
from zonemesh.shared.kds.snapshot import Item, Snapshot
from zonemesh.shared.kds.trust import (
    INVALID,
    LOG_REFUSED,
    MESH,
    OWNERSHIP,
    TYPE,
    Refused,
    check_received,
    check_removal,
    decode,
    rejection,
    wire_key,
)
from zonemesh.shared.resources.codec import check_resource
from zonemesh.shared.resources.labels import stamped
from zonemesh.shared.resources.model import (
    DISPLAY_NAME_LABEL,
    DISPLAY_NAME_LABELS,
    ORIGIN_GLOBAL,
    ORIGIN_LABEL,
    ORIGIN_ZONE,
    ZONE_LABEL,
    Resource,
    ResourceKey,
)
from zonemesh.shared.resources.registry import (
    REGISTRY,
    ResourceType,
    Scope,
    Sync,
    UnknownType,
    downstream_types,
    upstream_types,
)
from zonemesh.shared.resources.schema import Errors, Name, ValidationError, validate
from zonemesh.shared.store import EventKind, ListFilter, Store
from zonemesh.shared.tls import server_material
from zonemesh.shared.tokens.dataplane import is_global_signing_key
from zonemesh.shared.tokens.tokens import LEEWAY_SECONDS, InvalidToken
from zonemesh.shared.tokens.zone import ZONE_TOKEN_KEYS, ZONE_TOKEN_REVOCATIONS, ZoneTokenValidator, publish_trust

from zonemesh import __version__

log = structlog.get_logger(__name__)

FEATURES = ["zone-token", "zone-ping-health", "resume-by-hash"]
HELLO_TIMEOUT = 10.0
# Resources checked (an upload) or hashed (a Welcome) between two turns of the event loop: a zone
# uploads up to 1,000 per message, and handling them in one go held global's loop for seconds
# under load, which starved every other zone's stream and the leader's work (docs/ha.md#sizing).
TURN_EVERY = 100
# The self-signed pair in the data dir: kds-tls.crt is also the CA file zones are given.
KDS_TLS_NAME = "kds-tls"


def select_downstream(res: Resource) -> Resource | None:
    """What global sends zones of a stored resource: its own resources of global→zone types
    (labelled origin global in both label sets, without zone or display-name labels, which zones
    set), and other zones' resources of types synced across zones as stored. A zone's own
    policies and MeshGateways stay here."""
    rtype = REGISTRY.get(res.type)
    if res.labels.get(ORIGIN_LABEL) == ORIGIN_ZONE:
        return res if rtype.sync & Sync.ACROSS_ZONES else None
    if not rtype.synced_down:
        return None
    if is_global_signing_key(res):
        return None  # zones check global's dataplane tokens with its DataplaneTokenTrust (public keys)
    if rtype.policy:
        problems = Errors()
        check_resource(res, problems, names=False)
        if problems:
            # Refused by this version (stored before an upgrade made it stricter): never synced.
            errors = "; ".join(f"{e.field}: {e.reason}" for e in problems)
            log.warning("kds_policy_not_synced", policy=str(res.key), errors=errors)
            return None
    labels = stamped(res.labels, ORIGIN_GLOBAL)
    if labels != res.labels:
        res = dataclasses.replace(res, labels=labels)  # shallow: labels only
    return res


class ZoneStream:
    """One connected zone: its session, subscription and the token it authenticated with."""

    def __init__(self, session: Session, sub: Subscription, token: str) -> None:
        self.session = session
        self.sub = sub
        self.token = token


class KdsServer:
    """The KDS gRPC servicer (registered with kds_pb2_grpc.add_KDSServicer_to_server)."""

    def __init__(
        self,
        store: Store,
        zones: ZoneRegistry,
        snapshot: Snapshot,
        instance_id: str,
        heartbeat_interval: float,
        heartbeat_timeout: float,
    ) -> None:
        self.store = store
        self.zones = zones
        self.snapshot = snapshot
        self.instance_id = instance_id
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.validator = ZoneTokenValidator(store)
        self.streams: dict[str, ZoneStream] = {}

    # -- the RPC ----------------------------------------------------------------------------

    async def Sync(
        self, request_iterator: AsyncIterator[kds_pb2.Message], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        zone = metadata.get("client-id", "")
        peer = context.peer()
        if REGISTRY.get("Zone").name_errors(zone):  # the rule of Zone resources: this zone becomes one
            log.warning("zone_refused", zone=zone[:100], peer=peer, reason="invalid zone name")
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"invalid zone name {zone[:100]!r} in client-id metadata: use a DNS label (a-z, 0-9, '-', at most 63)",
            )
        scheme, _, token = metadata.get("authorization", "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        try:
            claims = await self.validator.validate(token, zone)
        except InvalidToken as exc:
            log.warning("zone_token_refused", zone=zone, peer=peer, reason=exc.reason)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"zone token refused: {exc.reason}")
        try:
            await self.zones.ensure_zone(zone)
        except ZoneDisabled as exc:
            log.warning("zone_refused", zone=zone, peer=peer, reason="disabled")
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))

        try:
            first = await asyncio.wait_for(context.read(), HELLO_TIMEOUT)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no Hello within {HELLO_TIMEOUT:g}s")
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a Hello")
        hello = first.hello
        if hello.zone != zone:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"Hello names zone {hello.zone!r} but client-id is {zone!r}"
            )

        stats = Stats()
        sub = Subscription(
            id=uuid.uuid4().hex,
            zone=zone,
            global_instance_id=self.instance_id,
            zone_instance_id=hello.instance_id,
            version=hello.version,
            features=list(hello.features),
            config=_json_object(hello.config),
            stats=stats,
        )
        session = Session(
            zone=zone,
            read=context.read,
            write=context.write,
            apply=lambda changes: self._apply_upload(zone, changes),
            stats=stats,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
            on_heartbeat=lambda hb: self.zones.heartbeat(sub, hb.status),
            outbox=lambda send: Outbox(
                self.snapshot, send, peer_has=dict(hello.have), accept=_not_from(zone), stats=stats, zone=zone
            ),
        )
        have = await self._held_from(zone)
        await context.write(
            kds_pb2.Message(
                welcome=kds_pb2.Welcome(
                    global_instance_id=self.instance_id,
                    version=__version__,
                    features=FEATURES,
                    have=have,
                    heartbeat_interval_ms=int(self.heartbeat_interval * 1000),
                    heartbeat_timeout_ms=int(self.heartbeat_timeout * 1000),
                )
            )
        )
        stream = ZoneStream(session, sub, token)
        previous = self.streams.get(zone)
        if previous is not None:
            previous.session.close(grpc.StatusCode.ABORTED, "replaced by a newer stream of the same zone")
        self.streams[zone] = stream
        # The token's end closes the stream, as a revocation does (revalidate_tokens).
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, float(claims["exp"]) + LEEWAY_SECONDS - time.time()), self._token_expired, zone, stream
        )
        self.zones.connected(sub)
        ZONE_ACTIVE_CONNECTIONS.labels(zone).inc()
        log.info("zone_connected", zone=zone, peer=peer, version=hello.version, resumed=len(hello.have), held=len(have))
        assert session.outbox is not None
        session.outbox.start()
        try:
            result = await session.run()
        finally:
            expiry.cancel()
            ZONE_ACTIVE_CONNECTIONS.labels(zone).dec()
            if self.streams.get(zone) is stream:
                del self.streams[zone]
            self.zones.disconnected(sub)
        log.info("zone_disconnected", zone=zone, reason=result.details, code=result.code.name)
        if result.code is not grpc.StatusCode.OK:
            with contextlib.suppress(Exception):
                await context.abort(result.code, result.details)

    # -- uploads ------------------------------------------------------------------------------

    async def _held_from(self, zone: str) -> dict[str, str]:
        """What global holds from ``zone``, keyed by the zone's own names: the zone resends only differences."""
        have: dict[str, str] = {}
        labels = {ORIGIN_LABEL: ORIGIN_ZONE, ZONE_LABEL: zone}
        prefix = f"{zone}."
        # Read this zone's resources only, not every zone's: each connect (a new zone, or every
        # zone after a restart) would otherwise read and decode all of global's Dataplanes and
        # insights, which at 100 zones kept global too busy to answer heartbeats (docs/ha.md#sizing).
        # The types global creates too are stored under hashed names: selected by labels alone.
        meshes = [mesh.name for mesh in (await self.store.list("Mesh")).items]
        hashed = 0
        for type in upstream_types():
            rtype = REGISTRY.get(type)
            only = ListFilter(labels=labels, name_prefix=None if rtype.provided_by_both else prefix)
            for mesh in meshes if rtype.scope is Scope.MESH else [""]:
                for res in (await self.store.list(type, mesh, filter=only)).items:
                    hashed += 1
                    if hashed % TURN_EVERY == 0:
                        await asyncio.sleep(0)
                    name = res.labels.get(DISPLAY_NAME_LABEL) or res.name.removeprefix(prefix)
                    have[key_str(res.type, res.mesh, name)] = resource_hash(res, drop_labels=DISPLAY_NAME_LABELS)
        return have

    async def _apply_upload(self, zone: str, changes: kds_pb2.Changes) -> list[kds_pb2.Rejected]:
        """Store what ``zone`` uploads, resource by resource; returns the refused ones (NACKed by key).

        A zone upserts and removes only its own resources: every key is renamed for this zone here
        (``naming.name_at_global``: ``{zone}.{name}``, zone names being DNS labels without dots, or
        Kuma's hash of mesh, name and zone for the types global creates too), a key already held
        by global or by another zone is refused (``_check_owner``), the labels that say whose a
        resource is (origin, zone, display name) are set here, and a resource whose fields or
        labels name another zone or origin is refused (``check_received``).
        """
        refused: list[kds_pb2.Rejected] = []

        def refuse(key: kds_pb2.ResourceKey, why: Refused) -> None:
            UPLOAD_REFUSED.labels(zone, changes.type, why.kind).inc()
            refused.append(rejection(key, why))
            if len(refused) <= LOG_REFUSED:  # all counted; a flood does not flood the log
                log.warning(
                    "kds_upload_refused",
                    zone=zone,
                    type=key.type,
                    mesh=key.mesh,
                    name=key.name,
                    kind=why.kind,
                    reason=why.reason,
                )

        try:
            rtype = REGISTRY.get(changes.type)
        except UnknownType:
            rtype = None
        if rtype is None or not rtype.synced_up:
            why = Refused(
                TYPE,
                f"unknown resource type {changes.type!r}: is global older than the zone?"
                if rtype is None
                else f"{rtype.name} is not accepted from zones: it is not synced zone→global",
            )
            for key in [*map(wire_key, changes.upserts), *changes.removals]:
                refuse(key, why)
            return refused

        meshes: dict[str, Resource | None] = {}
        held: dict[str, dict[str, Resource]] = {}
        upserts: list[Resource] = []
        for index, wire in enumerate(changes.upserts):
            if index and index % TURN_EVERY == 0:
                await asyncio.sleep(0)
            try:
                res = decode(wire, rtype.name)
                check_received(res, zone)
                await self._check_mesh(rtype, res, meshes)
                stored_name = name_at_global(rtype, zone, res.mesh, res.name)
                too_long = validate(Name, stored_name, "name")
                if too_long:
                    raise Refused(INVALID, f"name: {stored_name!r} (qualified with the zone) {too_long[0].reason}")
                await self._check_owner(rtype, zone, res.mesh, stored_name, held)
            except Refused as why:
                refuse(wire_key(wire), why)
                continue
            original = res.name
            res.name = stored_name
            res.labels = stamped(res.labels, ORIGIN_ZONE, zone, display_name=original)
            upserts.append(res)
        deletes: list[ResourceKey] = []
        for index, key in enumerate(changes.removals):
            if index and index % TURN_EVERY == 0:
                await asyncio.sleep(0)
            try:
                check_removal(key, rtype.name)
                stored_name = name_at_global(rtype, zone, key.mesh, key.name)
                await self._check_owner(rtype, zone, key.mesh, stored_name, held)
            except Refused as why:
                refuse(key, why)
                continue
            deletes.append(ResourceKey(rtype.name, key.mesh, stored_name))
        if len(refused) > LOG_REFUSED:
            log.warning("kds_upload_refused", zone=zone, type=changes.type, more=len(refused) - LOG_REFUSED)
        await self.store.batch(upserts=upserts, deletes=deletes)
        return refused

    async def _check_owner(
        self, rtype: ResourceType, zone: str, mesh: str, name: str, held: dict[str, dict[str, Resource]]
    ) -> None:
        """Refuse writing over (or deleting) what global holds under ``name`` unless it is ``zone``'s.

        Only the types global creates too can meet one of global's names (a zone's ``{zone}.{name}``
        of the other types is its own by construction); Kuma's hash is not made to resist a
        chosen collision, so ownership is checked, not assumed. ``held``: the mesh's resources of
        the type, listed once per message."""
        if not rtype.provided_by_both:
            return
        if mesh not in held:
            held[mesh] = {r.name: r for r in (await self.store.list(rtype.name, mesh)).items}
        existing = held[mesh].get(name)
        if existing is None:
            return
        if existing.labels.get(ORIGIN_LABEL) == ORIGIN_ZONE and existing.labels.get(ZONE_LABEL) == zone:
            return
        other = existing.labels.get(ZONE_LABEL) if existing.labels.get(ORIGIN_LABEL) == ORIGIN_ZONE else None
        whose = "created on global" if other is None else f"from zone {other!r}"
        raise Refused(
            OWNERSHIP,
            f"global holds a {rtype.name} named {name!r} that is not zone {zone!r}'s ({whose}): "
            "it is neither overwritten nor deleted",
        )

    async def _check_mesh(self, rtype: ResourceType, res: Resource, meshes: dict[str, Resource | None]) -> None:
        """A mesh-scoped resource needs its mesh here, as an API write does (``meshes``: found so far)."""
        if rtype.scope is not Scope.MESH:
            return
        if res.mesh not in meshes:
            meshes[res.mesh] = await self.store.find("Mesh", res.mesh)
        mesh = meshes[res.mesh]
        if mesh is None:
            raise Refused(MESH, f"mesh {res.mesh!r} does not exist on global")
        if rtype.mesh_check is not None:
            errors = rtype.mesh_check(res, mesh)
            if errors:
                raise Refused(INVALID, str(ValidationError(errors)))

    # -- closing streams from the outside -------------------------------------------------------

    def close_zone(self, zone: str, code: grpc.StatusCode, reason: str) -> bool:
        stream = self.streams.get(zone)
        if stream is None:
            return False
        log.warning("zone_stream_closed", zone=zone, reason=reason)
        stream.session.close(code, reason)
        return True

    def _token_expired(self, zone: str, stream: ZoneStream) -> None:
        log.warning("zone_token_expired", zone=zone)
        stream.session.close(grpc.StatusCode.UNAUTHENTICATED, "zone token refused: token expired")

    async def revalidate_tokens(self) -> None:
        """After a signing key or the revocation list changed: close streams whose token no longer passes."""
        for zone, stream in list(self.streams.items()):
            try:
                await self.validator.validate(stream.token, zone)
            except InvalidToken as exc:
                log.warning("zone_token_refused", zone=zone, reason=exc.reason)
                self.close_zone(zone, grpc.StatusCode.UNAUTHENTICATED, f"zone token refused: {exc.reason}")


def _not_from(zone: str) -> Any:
    def accept(item: Item) -> bool:
        return not (item.labels.get(ORIGIN_LABEL) == ORIGIN_ZONE and item.labels.get(ZONE_LABEL) == zone)

    return accept


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):  # RecursionError: nested ~1000 deep; the config is informative only
        return {}
    return value if isinstance(value, dict) else {}


class GlobalKds:
    """The KDS server component of the global control plane, and the state its API routes read."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.heartbeat_interval = parse_duration(config.kds_heartbeat_interval)
        self.heartbeat_timeout = parse_duration(config.kds_zone_offline_timeout)
        self.debounce = parse_duration(config.kds_debounce)
        self.server: KdsServer | None = None
        self.zones: ZoneRegistry | None = None
        self.port: int = config.kds_port

    @contextlib.asynccontextmanager
    async def run(self, cp: Any) -> AsyncIterator[GlobalKds]:
        store: Store = cp.store
        cert, key, _ = await asyncio.to_thread(
            server_material,
            cp.config.resolved_data_dir,
            KDS_TLS_NAME,
            self.config.kds_tls_cert_file,
            self.config.kds_tls_key_file,
        )
        self.zones = ZoneRegistry(store, cp.instance_id, self.heartbeat_timeout, flush_interval=self.heartbeat_interval)
        await self.zones.start()
        snapshot = Snapshot(store, downstream_types(), select_downstream, debounce=self.debounce)
        await snapshot.start()
        self.server = KdsServer(
            store, self.zones, snapshot, cp.instance_id, self.heartbeat_interval, self.heartbeat_timeout
        )
        watcher = asyncio.create_task(self._watch_control(store), name="kds-control-watch")
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                # The token comes with the stream's headers: what a client may hold before it is
                # checked is its TLS handshake, bounded too (gRPC's default: 120 s).
                ("grpc.server_handshake_timeout_ms", int(parse_duration(self.config.auth_timeout) * 1000)),
            ]
        )
        kds_pb2_grpc.add_KDSServicer_to_server(self.server, server)
        credentials = grpc.ssl_server_credentials([(key, cert)])
        address = f"{self.config.kds_address}:{self.config.kds_port}"
        self.port = server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen for KDS on {address}")
        await server.start()
        log.info("listening", server="kds", address=self.config.kds_address, port=self.port, tls=True)
        try:
            yield self
        finally:
            await cancel_and_wait([watcher])
            for zone in list(self.server.streams):
                self.server.close_zone(zone, grpc.StatusCode.UNAVAILABLE, "global control plane is shutting down")
            await server.stop(grace=2)
            await snapshot.stop()
            await self.zones.stop()

    async def _watch_control(self, store: Store) -> None:
        """Zones being disabled or deleted, and zone-token keys or revocations changing (the streams of
        this replica whose token no longer passes are closed; the leader publishes the new trust)."""
        assert self.server is not None
        async with store.watch(["Zone", "GlobalSecret"]) as watch:
            async for event in watch:
                res = event.resource
                if res.type == "Zone":
                    if event.kind is EventKind.DELETED:
                        self.server.close_zone(
                            res.name, grpc.StatusCode.FAILED_PRECONDITION, "zone was deleted on global"
                        )
                    elif not zone_enabled(res):
                        self.server.close_zone(
                            res.name,
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"zone {res.name!r} was disabled on the global control plane (Zone.enabled=false)",
                        )
                elif res.name.startswith(ZONE_TOKEN_KEYS) or res.name == ZONE_TOKEN_REVOCATIONS:
                    try:
                        await self.server.revalidate_tokens()
                    except Exception as exc:
                        log.warning("zone_token_revalidation_failed", error=str(exc))


@contextlib.asynccontextmanager
async def trust_publisher(cp: Any) -> AsyncIterator[None]:
    """Leader-only: keep the ZoneTokenTrust zones check zone proxies' tokens with (public keys and
    revoked jti of global's zone tokens) in line with the keys and revocations."""
    store: Store = cp.leader_store

    async def follow(watch: Any) -> None:
        async for event in watch:
            res = event.resource
            if not (res.name.startswith(ZONE_TOKEN_KEYS) or res.name == ZONE_TOKEN_REVOCATIONS):
                continue
            try:
                if await publish_trust(store):
                    log.info("zone_token_trust_published", secret=res.name, change=event.kind.value)
            except Exception as exc:
                log.error("zone_token_trust_publish_failed", error=str(exc))

    watch = store.watch(["GlobalSecret"])  # before the first publish: no key change falls in between
    try:
        await publish_trust(store)
    except BaseException:
        watch.close()
        raise
    task = asyncio.create_task(follow(watch), name="zone-token-trust")
    try:
        yield
    finally:
        await cancel_and_wait([task])
        watch.close()


@contextlib.asynccontextmanager
async def zone_finalizer(cp: Any) -> AsyncIterator[ZoneInsightFinalizer]:
    """Leader-only: close the zone subscriptions dead global replicas left open."""
    async with ZoneInsightFinalizer(cp.leader_store, cp.elector.members).running() as finalizer:
        yield finalizer
