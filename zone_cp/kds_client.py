"""The zone side of KDS: one stream to global, kept open for as long as the zone runs.

Global → zone: what arrives is checked resource by resource as global checks uploads
(shared/kds/trust.py; refused ones are NACKed by key, logged ``kds_download_refused`` and
counted) and the rest applied to the zone's store with one ``store.batch`` per message, labels
as sent (``zonemesh.io/origin=global``, or ``zone`` for other zones' ingresses). A resource of a
type zones create too (policies, MeshGateway) is stored under Kuma's hash-suffixed name with its
global name in its display-name labels (shared/kds/naming.py), so that it never meets one of the
zone's own. Zone → global: resources of zone→global types that this zone owns are uploaded,
labelled with this zone (both label sets).
On (re)connect Hello carries what the zone holds from global (key → hash) and Welcome what
global holds from the zone, so each side sends only differences: nothing is deleted and
recreated. While global is unreachable the zone keeps serving from its store and retries
with bounded, jittered exponential backoff. --global-address may list several global replicas
(comma-separated, docs/ha.md): each (re)connect goes to the next address in the list, so a zone
whose replica died moves to another one; the backoff grows only once every address has failed.

Every connect verifies global's KDS certificate, host name included, before the zone token is
sent: against --global-ca-file, else the system CA bundle; only --global-tls-skip-verify turns
that off (docs/kds.md#tls).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import structlog
from aiohttp import web
from zonemesh.proto import kds_pb2, kds_pb2_grpc
from zonemesh.shared.aio import cancel_and_wait
from zonemesh.shared.config import Config
from zonemesh.shared.duration import parse_duration
from zonemesh.shared.kds.codec import key_str, resource_hash
from zonemesh.shared.kds.metrics import DOWNLOAD_REFUSED, ZONE_ACTIVE_CONNECTIONS
from zonemesh.shared.kds.naming import name_at_zone
from zonemesh.shared.kds.session import Outbox, Session, Stats
from zonemesh.shared.kds.snapshot import Snapshot
from zonemesh.shared.kds.trust import (
    LOG_REFUSED,
    OWNERSHIP,
    TYPE,
    Refused,
    check_received,
    check_removal,
    decode,
    rejection,
    wire_key,
)
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
    set_label,
)
from zonemesh.shared.resources.registry import (
    REGISTRY,
    ResourceType,
    Sync,
    UnknownType,
    downstream_types,
    upstream_types,
)
from zonemesh.shared.store import Store
from zonemesh.shared.tls import HOST_NAME_MISMATCH, first_dns_name, system_ca_file, verification_failure
from zonemesh.zone_cp.view import ZoneView

from zonemesh import __version__

log = structlog.get_logger(__name__)

FEATURES = ["zone-token", "zone-ping-health", "resume-by-hash"]
BACKOFF_BASE = 0.2
BACKOFF_MAX = 5.0
TOKEN_CHECK_INTERVAL = 1.0


def backoff(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_MAX) -> float:
    """Exponential, bounded by ``cap``, with jitter so that zones do not reconnect in lockstep."""
    delay: float = min(cap, base * 2 ** min(attempt, 16))
    return delay * random.uniform(0.5, 1.0)


def owned_by(zone: str, res: Resource) -> bool:
    """Created in this zone (or before it was federated), as opposed to received from global."""
    return res.labels.get(ORIGIN_LABEL) != ORIGIN_GLOBAL and res.labels.get(ZONE_LABEL, zone) == zone


def upload_selector(zone: str) -> Any:
    def select(res: Resource) -> Resource | None:
        if not owned_by(zone, res):
            return None
        labels = stamped(res.labels, ORIGIN_ZONE, zone)  # global sets the display name
        if labels == res.labels:
            return res
        # Only the labels differ from the stored resource: a shallow copy, not a deep one, since
        # this runs once per resource (10,000 dataplanes on first connect).
        return dataclasses.replace(res, labels=labels)

    return select


def global_key_name(rtype: ResourceType, res: Resource) -> str:
    """The name global gave a resource this zone holds from it (the key global uses)."""
    return res.display_name if rtype.provided_by_both else res.name


def renamed(rtype: ResourceType, res: Resource) -> Resource:
    """Global's ``res`` as this zone stores it: a type zones create too under Kuma's hashed name,
    the name global gave it in the display-name labels (both sets)."""
    if not rtype.provided_by_both:
        return res
    labels = dict(res.labels)
    set_label(labels, DISPLAY_NAME_LABEL, res.name)
    return dataclasses.replace(res, name=name_at_zone(rtype, res.mesh, res.name), labels=labels)


@dataclass
class ClientState:
    """What GET /status/kds shows on a zone."""

    global_address: str  # the address of the current (or last tried) connection
    global_addresses: list[str] = field(default_factory=list)  # every address the zone may use
    connected: bool = False
    global_instance_id: str = ""
    connect_time: float | None = None
    disconnect_time: float | None = None
    last_error: str = ""
    attempts: int = 0
    stats: Stats = field(default_factory=Stats)

    def as_dict(self) -> dict[str, Any]:
        return {
            "globalAddress": self.global_address,
            "globalAddresses": self.global_addresses,
            "connected": self.connected,
            "globalInstanceId": self.global_instance_id or None,
            "connectTime": self.connect_time,
            "disconnectTime": self.disconnect_time,
            "lastError": self.last_error or None,
            "failedAttempts": self.attempts,
            "stat": {t: s.as_dict() for t, s in sorted(self.stats.by_type.items())},
        }


class KdsClient:
    def __init__(
        self, config: Config, store: Store, instance_id: str, debounce: float = 0.01, view: ZoneView | None = None
    ) -> None:
        self.config = config
        self.zone = config.zone
        self.store = store
        self.instance_id = instance_id
        self.addresses = global_addresses(config.global_address)
        self._current = 0  # index in self.addresses of the connection being made or held
        self.host, self.port = parse_global_address(self.addresses[0])
        self.target = f"{self.host}:{self.port}"
        self.token_path = Path(config.zone_token_file)
        self.state = ClientState(self.addresses[0], global_addresses=list(self.addresses))
        # What is uploaded, and what the zone holds from global (Hello), are read from the zone's
        # resources in memory (zone_cp/view.py) when given: neither a new term of the leader nor a
        # reconnect lists the store. Writes (downloads) go to ``store``, and reach the view by its watch.
        self.view = view
        self.reads: Store = view if view is not None else store
        self.snapshot = Snapshot(self.reads, upstream_types(), upload_selector(self.zone), debounce=debounce)
        self.synced = asyncio.Event()  # set once the first exchange with global is complete
        self._task: asyncio.Task[None] | None = None
        self._session: Session | None = None
        self._trusted = ""  # what global's certificate was last verified against, for messages

    async def start(self) -> None:
        if self.config.global_tls_skip_verify:
            log.warning(
                "global_tls_verification_disabled",
                zone=self.zone,
                target=self.target,
                risk="global's KDS certificate is not verified: anyone on the path to global receives the "
                "zone token and can impersonate global (push any policy, Secret or license to this zone)",
                fix="--global-ca-file with the CA of global's KDS certificate",
            )
        await self.snapshot.start()
        self._task = asyncio.create_task(self._run(), name="kds-client")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        await self.snapshot.stop()

    def _use(self, index: int) -> None:
        """Make ``self.addresses[index]`` the address of the next connection."""
        self._current = index % len(self.addresses)
        address = self.addresses[self._current]
        self.host, self.port = parse_global_address(address)
        self.target = f"{self.host}:{self.port}"
        self.state.global_address = address

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                welcomed = await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                welcomed = False
                self.state.last_error = self._explain(_describe(exc))
                log.warning("global_connection_failed", zone=self.zone, target=self.target, error=self.state.last_error)
            attempt = 0 if welcomed else attempt + 1
            self.state.attempts = attempt
            # The next connection goes to the next address: the replica this zone was on has
            # gone (or refused it), another one may answer. The backoff grows per round of the
            # whole list, so that a zone tries every replica before it waits longer.
            self._use(self._current + 1)
            await asyncio.sleep(backoff(attempt // len(self.addresses)))

    def _trust(self) -> tuple[Path | None, str]:
        """The CA file global's KDS certificate must chain to, and how to name it in messages:
        --global-ca-file, else the system CA bundle. (None, ...) with --global-tls-skip-verify."""
        if self.config.global_tls_skip_verify:
            return None, "nothing (--global-tls-skip-verify)"
        if self.config.global_ca_file:
            return Path(self.config.global_ca_file), f"--global-ca-file {self.config.global_ca_file}"
        system = system_ca_file()
        if system is None:
            raise GlobalNotTrusted(
                "no CA to verify global's KDS certificate with: give --global-ca-file (global's own "
                "self-signed certificate is kds-tls.crt in global's data dir); no system CA bundle was "
                "found either (SSL_CERT_FILE)"
            )
        return system, f"the system CA bundle {system}"

    async def _credentials(self) -> tuple[grpc.ChannelCredentials, list[tuple[str, Any]]]:
        options: list[tuple[str, Any]] = []
        ca_file, source = await asyncio.to_thread(self._trust)
        self._trusted = source
        if ca_file is not None:
            try:
                root = await asyncio.to_thread(ca_file.read_bytes)
            except OSError as exc:
                raise GlobalNotTrusted(f"cannot read {source}: {exc.strerror}") from None
        else:
            # --global-tls-skip-verify: trust whatever certificate is presented at this connect,
            # whoever presents it, under the name it gives. Encrypted, not authenticated.
            root = (await asyncio.to_thread(ssl.get_server_certificate, (self.host, self.port), timeout=5)).encode()
            name = first_dns_name(root)
            if name:
                options.append(("grpc.ssl_target_name_override", name))
        return grpc.ssl_channel_credentials(root_certificates=root), options

    def _explain(self, error: str) -> str:
        """A failed TLS verification, said so that an operator knows which certificate and what to do."""
        reason = verification_failure(error)
        if reason is None:
            return error
        source = self._trusted
        if reason == HOST_NAME_MISMATCH:
            fix = (
                f"dial global by a name or address its certificate holds (--global-address), or give global "
                f"a certificate for {self.host} (--kds-tls-cert-file)"
            )
        else:
            fix = (
                "give the CA that signed it with --global-ca-file (global's own self-signed certificate is "
                "kds-tls.crt in global's data dir)"
            )
        return f"global's KDS certificate at {self.target} did not verify against {source}: {reason}; {fix}"

    async def _held(self) -> dict[str, str]:
        """What this zone holds from global: key (global's names) -> content hash (sent in Hello to resume).

        Read from the view: a download the view has not taken in yet (written by the last stream just
        before it broke) is at worst sent again by global, or removed again (global diffs its own
        snapshot against ``have`` and sends what differs)."""
        have: dict[str, str] = {}
        for type in downstream_types():
            rtype = REGISTRY.get(type)
            drop = DISPLAY_NAME_LABELS if rtype.provided_by_both else ()  # set here, not sent
            for res in (await self.reads.list(type)).items:
                if not owned_by(self.zone, res):
                    key = key_str(res.type, res.mesh, global_key_name(rtype, res))
                    have[key] = resource_hash(res, drop_labels=drop)
        return have

    async def _rename_earlier_copies(self) -> None:
        """Global's policies and MeshGateways that an earlier version stored under global's names:
        renamed as they are now stored (``renamed``), before Hello says what the zone holds."""
        upserts: list[Resource] = []
        deletes: list[ResourceKey] = []
        for rtype in REGISTRY.filter(lambda t: t.provided_by_both):
            for res in (await self.reads.list(rtype.name)).items:
                earlier = res.name != name_at_zone(rtype, res.mesh, res.display_name)
                if res.labels.get(ORIGIN_LABEL) == ORIGIN_GLOBAL and earlier:
                    upserts.append(renamed(rtype, dataclasses.replace(res, name=res.display_name)))
                    deletes.append(res.key)
        if upserts:
            await self.store.batch(upserts=upserts, deletes=deletes)
            log.info("kds_copies_renamed", zone=self.zone, count=len(upserts))
            if self.view is not None:
                await self.view.caught_up()  # Hello's ``have`` (read from the view) names them as renamed

    async def _connect_once(self) -> bool:
        token = (await asyncio.to_thread(self.token_path.read_text)).strip()
        credentials, options = await self._credentials()
        options += [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 10_000),
        ]
        async with grpc.aio.secure_channel(self.target, credentials, options=options) as channel:
            call = kds_pb2_grpc.KDSStub(channel).Sync(
                metadata=(
                    ("client-id", self.zone),
                    ("authorization", f"Bearer {token}"),
                    ("features", ",".join(FEATURES)),
                )
            )
            try:
                return await self._converse(call, token)
            except asyncio.InvalidStateError:
                # grpc.aio's write/read on a call that already ended (global unreachable, or gone
                # mid-handshake) raises "RPC already finished": the reason is the call's status.
                raise CallEnded(f"{(await call.code()).name}: {await call.details()}") from None
            finally:
                call.cancel()

    async def _converse(self, call: Any, token: str) -> bool:
        await self._rename_earlier_copies()
        have = await self._held()
        config = json.dumps({"zone": self.zone, "mode": "zone", "store": self.config.store}).encode()
        hello = kds_pb2.Hello(
            zone=self.zone,
            version=__version__,
            features=FEATURES,
            instance_id=self.instance_id,
            have=have,
            config=config,
        )
        await call.write(kds_pb2.Message(hello=hello))
        first = await call.read()
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
            raise ConnectionError("global did not answer Hello with Welcome")
        welcome = first.welcome
        stats = Stats()
        self.state.stats = stats
        session = Session(
            zone=self.zone,
            read=call.read,
            write=call.write,
            apply=self._apply_download,
            stats=stats,
            heartbeat_interval=(welcome.heartbeat_interval_ms or 1000) / 1000,
            heartbeat_timeout=(welcome.heartbeat_timeout_ms or 3000) / 1000,
            status=self._status,
            outbox=lambda send: Outbox(self.snapshot, send, peer_has=dict(welcome.have), stats=stats, zone=self.zone),
        )
        self.state.connected, self.state.connect_time = True, time.time()
        self.state.global_instance_id, self.state.last_error = welcome.global_instance_id, ""
        ZONE_ACTIVE_CONNECTIONS.labels(self.zone).inc()
        log.info(
            "global_connected",
            zone=self.zone,
            target=self.target,
            global_instance=welcome.global_instance_id,
            resumed=len(have),
            held_by_global=len(welcome.have),
        )
        assert session.outbox is not None
        session.outbox.start()
        self._session = session
        watcher = asyncio.create_task(self._watch_token(session, token))
        try:
            result = await session.run()
        finally:
            watcher.cancel()
            self._session = None
            self.state.connected, self.state.disconnect_time = False, time.time()
            ZONE_ACTIVE_CONNECTIONS.labels(self.zone).dec()
        self.state.last_error = "" if result.code is grpc.StatusCode.OK else f"{result.code.name}: {result.details}"
        log.warning("global_disconnected", zone=self.zone, code=result.code.name, reason=result.details)
        return True

    async def _watch_token(self, session: Session, token: str) -> None:
        """A new token in the file (rotation) takes effect at once: reconnect with it."""
        while True:
            await asyncio.sleep(TOKEN_CHECK_INTERVAL)
            with contextlib.suppress(OSError):
                if (await asyncio.to_thread(self.token_path.read_text)).strip() != token:
                    log.info("zone_token_changed", zone=self.zone)
                    session.close(grpc.StatusCode.OK, "zone token file changed: reconnecting with the new token")
                    return

    def _status(self) -> bytes:
        counts: dict[str, int] = {}
        for item in self.snapshot.items.values():
            counts[item.type] = counts.get(item.type, 0) + 1
        return json.dumps({"resources": counts}).encode()

    async def _apply_download(self, changes: kds_pb2.Changes) -> list[kds_pb2.Rejected]:
        """Store what global sends, resource by resource; returns the refused ones (NACKed by key).

        Refused: what fails validation; another zone's resource (a ZoneIngress...) without that
        zone's label, or naming a zone other than its own; a resource of another type labelled as
        a zone's; and anything that would overwrite or delete what this zone uploads itself (its
        own resources, as the upload snapshot holds them). Keys are global's names: a type zones
        create too is stored under its hashed name (``renamed``).
        """
        refused: list[kds_pb2.Rejected] = []

        def refuse(key: kds_pb2.ResourceKey, why: Refused) -> None:
            DOWNLOAD_REFUSED.labels(self.zone, changes.type, why.kind).inc()
            refused.append(rejection(key, why))
            if len(refused) <= LOG_REFUSED:
                log.warning(
                    "kds_download_refused",
                    zone=self.zone,
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
        if rtype is None or not (rtype.synced_down or rtype.sync & Sync.ACROSS_ZONES):
            why = Refused(
                TYPE,
                f"unknown resource type {changes.type!r}: is this zone older than global?"
                if rtype is None
                else f"{rtype.name} is not accepted from global: it is not synced to zones",
            )
            for key in [*map(wire_key, changes.upserts), *changes.removals]:
                refuse(key, why)
            return refused

        own = self.snapshot.items
        mine = Refused(
            OWNERSHIP, "this zone has its own resource of that name, which global must not overwrite or delete"
        )
        upserts: list[Resource] = []
        for wire in changes.upserts:
            try:
                res = decode(wire, rtype.name)
                stored_name = name_at_zone(rtype, res.mesh, res.name)
                if owned_by(self.zone, res) or key_str(res.type, res.mesh, stored_name) in own:
                    raise mine
                check_received(res, self._provider(rtype, res))
            except Refused as why:
                refuse(wire_key(wire), why)
                continue
            upserts.append(renamed(rtype, res))
        deletes: list[ResourceKey] = []
        for key in changes.removals:
            try:
                check_removal(key, rtype.name)
                stored_name = name_at_zone(rtype, key.mesh, key.name)
                if key_str(key.type, key.mesh, stored_name) in own:
                    raise mine
            except Refused as why:
                refuse(key, why)
                continue
            deletes.append(ResourceKey(rtype.name, key.mesh, stored_name))
        if len(refused) > LOG_REFUSED:
            log.warning("kds_download_refused", zone=self.zone, type=changes.type, more=len(refused) - LOG_REFUSED)
        await self.store.batch(upserts=upserts, deletes=deletes)
        return refused

    def _provider(self, rtype: ResourceType, res: Resource) -> str | None:
        """The zone whose resource ``res`` is (every zone it names must be that one); None for
        what global itself provides. Raises Refused for another zone's resource without its zone."""
        if not rtype.sync & Sync.ACROSS_ZONES:
            return None
        zone = res.labels.get(ZONE_LABEL, "")
        if res.labels.get(ORIGIN_LABEL) != ORIGIN_ZONE or not zone or zone == self.zone:
            raise Refused(OWNERSHIP, f"{rtype.name} comes from a zone: it must carry the labels of another zone")
        return zone


def global_addresses(value: str) -> list[str]:
    """--global-address as a list: one address, or several (global replicas) comma-separated."""
    addresses = [item.strip() for item in value.split(",") if item.strip()]
    if not addresses:
        raise ValueError("no global address: use grpcs://HOST:PORT[,grpcs://HOST:PORT...]")
    for address in addresses:
        parse_global_address(address)
    return addresses


def parse_global_address(address: str) -> tuple[str, int]:
    """grpcs://HOST[:PORT] as (host, port); the port defaults to 5685."""
    parts = urlsplit(address)
    if parts.scheme != "grpcs" or not parts.hostname:
        raise ValueError(f"invalid global address {address!r}: use grpcs://HOST:PORT")
    return parts.hostname, parts.port or 5685


class GlobalNotTrusted(Exception):
    """No way to verify global's KDS certificate: no CA file readable, no system bundle."""


class CallEnded(Exception):
    """The KDS call ended before or while we used it; the message is its gRPC status."""


def _describe(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, (CallEnded, GlobalNotTrusted)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class ZoneKds:
    """The KDS client component of a federated zone, and the state its API route reads."""

    def __init__(self, config: Config, view: ZoneView | None = None) -> None:
        self.config = config
        self.view = view
        self.client: KdsClient | None = None

    @contextlib.asynccontextmanager
    async def run(self, cp: Any) -> AsyncIterator[KdsClient]:
        # A leader component: one stream per zone; what it writes is fenced by this replica's term.
        client = KdsClient(
            cp.config, cp.leader_store, cp.instance_id, debounce=parse_duration(cp.config.kds_debounce), view=self.view
        )
        await client.start()
        self.client = client
        try:
            yield client
        finally:
            self.client = None
            await client.stop()

    async def status(self, request: web.Request) -> web.Response:
        """GET /status/kds: is this zone connected to global, since when, what was exchanged."""
        if self.client is None:  # a replica that does not lead its zone: the leader holds the zone's stream
            addresses = global_addresses(self.config.global_address)
            return web.json_response(
                {
                    "zone": self.config.zone,
                    "connected": False,
                    "leader": False,
                    "globalAddress": addresses[0],
                    "globalAddresses": addresses,
                }
            )
        return web.json_response({"zone": self.config.zone, "leader": True, **self.client.state.as_dict()})

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/status/kds", self.status)]
