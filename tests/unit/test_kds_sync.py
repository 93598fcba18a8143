"""KDS sync between a real global server and real zone clients, in one event loop (memory stores)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import prometheus_client
from kds_harness import eventually, running_global, running_zone
from zonemesh.global_cp.kds_server import KdsServer
from zonemesh.proto import kds_pb2
from zonemesh.shared.config import Config
from zonemesh.shared.kds.codec import to_wire
from zonemesh.shared.kds.naming import hashed_name
from zonemesh.shared.kds.session import Outbox
from zonemesh.shared.kds.snapshot import Snapshot
from zonemesh.shared.resources.manager import Mode, ResourceManager
from zonemesh.shared.resources.model import ORIGIN_GLOBAL, ORIGIN_LABEL, Resource
from zonemesh.shared.store import Store
from zonemesh.shared.store.base import ListResult
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.tokens.zone import ZoneTokenIssuer
from zonemesh.zone_cp.kds_client import KdsClient
from zonemesh.zone_cp.view import ZoneView

from zonemesh.lab.chaos_proxy import ChaosProxy
from zonemesh.testing import free_port

DAY = 24 * 3600


def retry(name: str, retries: int = 2) -> Resource:
    return Resource(
        type="MeshRetry",
        name=name,
        mesh="default",
        spec={
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"numRetries": retries}}}],
        },
    )


def ingress(name: str) -> Resource:
    return Resource(type="ZoneIngress", name=name, spec={"networking": {"address": "10.0.0.1", "port": 10001}})


def at_zone(name: str) -> str:
    """The name on a zone of global's policy ``name`` of mesh default (Kuma's hash suffix)."""
    return hashed_name("default", name)


async def names(store: Store, type: str, mesh: str | None = None) -> set[str]:
    return {r.name for r in (await store.list(type, mesh)).items}


async def test_both_directions_resume_and_across_zones(tmp_path: Path) -> None:
    global_store = MemoryStore()
    global_manager = ResourceManager(global_store, mode=Mode.GLOBAL)
    await global_manager.ensure_default_mesh()
    await global_manager.create(retry("r1"))
    zone1_store, zone2_store = MemoryStore(), MemoryStore()
    zone1 = ResourceManager(zone1_store, mode=Mode.ZONE, zone="zone-1")
    async with running_global(tmp_path, global_store) as (kds, _):
        tokens = {z: await ZoneTokenIssuer(global_store).issue(z, None, DAY) for z in ("zone-1", "zone-2")}
        async with running_zone(tmp_path, "zone-1", kds.port, tokens["zone-1"], zone1_store):
            await eventually(lambda: _has(zone1_store, "MeshRetry", at_zone("r1"), "default"), what="r1 in zone-1")
            await zone1.create(ingress("zi-1"))
            await eventually(lambda: _has(global_store, "ZoneIngress", "zone-1.zi-1"), what="zi-1 at global")
            stored = await global_store.get("ZoneIngress", "zone-1.zi-1")
            assert stored.labels == {
                "zonemesh.io/origin": "zone",
                "zonemesh.io/zone": "zone-1",
                "zonemesh.io/display-name": "zi-1",
                "kuma.io/origin": "zone",
                "kuma.io/zone": "zone-1",
                "kuma.io/display-name": "zi-1",
            }
            async with running_zone(tmp_path, "zone-2", kds.port, tokens["zone-2"], zone2_store):
                # zone-1's ingress reaches zone-2 (synced across zones), never back to zone-1
                await eventually(lambda: _has(zone2_store, "ZoneIngress", "zone-1.zi-1"), what="zi-1 in zone-2")
                assert await names(zone1_store, "ZoneIngress") == {"zi-1"}
                await global_manager.delete("MeshRetry", "r1", "default")
                await eventually(
                    lambda: _gone(zone2_store, "MeshRetry", at_zone("r1"), "default"), what="r1 deleted in zone-2"
                )
                await eventually(
                    lambda: _gone(zone1_store, "MeshRetry", at_zone("r1"), "default"), what="r1 deleted in zone-1"
                )

        # Both zones are away: global changes, zone-1's store is untouched meanwhile.
        versions_before = {r.name: r.version for r in (await zone1_store.list("MeshTimeout")).items}
        await global_manager.create(retry("r2"))
        await global_manager.update(_bump(await global_store.get("MeshRetry", "r2", "default")))
        # Let global's snapshot catch up with its own store first, so that r2 is sent once, as updated.
        assert kds.server is not None
        snapshot = kds.server.snapshot
        await eventually(lambda: b'"numRetries":5' in _spec_of(snapshot, "MeshRetry/default/r2"), what="snapshot")
        events = _Recorder(zone1_store)
        async with running_zone(tmp_path, "zone-1", kds.port, tokens["zone-1"], zone1_store) as zone:
            await eventually(lambda: _has(zone1_store, "MeshRetry", at_zone("r2"), "default"), what="r2 in zone-1")
            await eventually(lambda: zone.state.connected, what="zone-1 reconnected")
            assert kds.server is not None
            outbox = _outbox(kds.server, "zone-1")
            await eventually(lambda: outbox.synced.is_set(), what="global's outbox to zone-1 synced")
        changed = {(e.kind.value, e.resource.type, e.resource.name) for e in events.queue._queue}  # type: ignore[attr-defined]
        events.close()
        # Resumed, not recreated: only r2 was written; the meshes and default policies were left alone.
        assert changed == {("Created", "MeshRetry", at_zone("r2"))}, changed
        after = {r.name: r.version for r in (await zone1_store.list("MeshTimeout")).items}
        assert after == versions_before
        assert (await global_store.get("ZoneIngress", "zone-1.zi-1")).version == stored.version


async def test_zone_upload_is_diffed_on_reconnect(tmp_path: Path) -> None:
    global_store, zone_store = MemoryStore(), MemoryStore()
    await ResourceManager(global_store, mode=Mode.GLOBAL).ensure_default_mesh()
    zone = ResourceManager(zone_store, mode=Mode.ZONE, zone="zone-1")
    async with running_global(tmp_path, global_store) as (kds, _):
        token = await ZoneTokenIssuer(global_store).issue("zone-1", None, DAY)
        async with running_zone(tmp_path, "zone-1", kds.port, token, zone_store):
            for i in range(3):
                await zone.create(ingress(f"zi-{i}"))
            await eventually(lambda: _count(global_store, "ZoneIngress", 3), what="3 ingresses at global")
        # offline: one deleted, one changed, one added
        await zone.delete("ZoneIngress", "zi-0")
        changed = await zone_store.get("ZoneIngress", "zi-1")
        changed.spec["networking"]["port"] = 10002
        await zone.update(changed)
        await zone.create(ingress("zi-3"))
        untouched = (await global_store.get("ZoneIngress", "zone-1.zi-2")).version
        async with running_zone(tmp_path, "zone-1", kds.port, token, zone_store):
            await eventually(
                lambda: _names_are(global_store, "ZoneIngress", {"zone-1.zi-1", "zone-1.zi-2", "zone-1.zi-3"}),
                what="global converged",
            )
            await eventually(
                lambda: _port_is(global_store, "zone-1.zi-1", 10002), what="changed ingress updated at global"
            )
        assert (await global_store.get("ZoneIngress", "zone-1.zi-2")).version == untouched


class ListingsCounted(MemoryStore):
    """A memory store that counts how often it is listed."""

    def __init__(self) -> None:
        super().__init__()
        self.listings = 0

    async def list(self, type: str, mesh: str | None = None, **options: Any) -> ListResult:
        self.listings += 1
        return await super().list(type, mesh, **options)


def dataplane(name: str) -> Resource:
    net = {"address": "10.0.0.2", "inbound": [{"port": 80, "tags": {"kuma.io/service": "web"}}]}
    return Resource(type="Dataplane", mesh="default", name=name, spec={"networking": net})


async def test_a_reconnect_uploads_the_zone_view_as_it_is_now_without_listing_the_store(tmp_path: Path) -> None:
    """The zone's KDS client reads the zone's view (zone_cp/view.py): after a partition during which
    resources were created, changed and deleted, the same client's next stream leaves global
    holding exactly the zone's resources, and neither the upload nor Hello listed the store."""
    global_store, zone_store = MemoryStore(), ListingsCounted()
    await ResourceManager(global_store, mode=Mode.GLOBAL).ensure_default_mesh()
    zone = ResourceManager(zone_store, mode=Mode.ZONE, zone="zone-1")
    view = ZoneView()
    await view.start(zone_store)
    async with running_global(tmp_path, global_store) as (kds, _):
        token = await ZoneTokenIssuer(global_store).issue("zone-1", None, DAY)
        link = ChaosProxy("kds", free_port(), kds.port)
        await link.start()
        try:
            async with running_zone(tmp_path, "zone-1", link.listen_port, token, zone_store, view=view) as client:
                for i in range(3):
                    await zone.create(ingress(f"zi-{i}"))
                    await zone_store.create(dataplane(f"dp-{i}"))
                await eventually(lambda: _count(global_store, "ZoneIngress", 3), what="3 ingresses at global")
                await eventually(lambda: _count(global_store, "Dataplane", 3), what="3 dataplanes at global")
                listed = zone_store.listings

                link.partition(60)
                await eventually(lambda: not client.state.connected, what="zone-1 cut off")
                await zone.delete("ZoneIngress", "zi-0")
                changed = await zone_store.get("ZoneIngress", "zi-1")
                changed.spec["networking"]["port"] = 10002
                await zone.update(changed)
                await zone.create(ingress("zi-3"))
                await zone_store.delete("Dataplane", "dp-0", "default")
                await zone_store.create(dataplane("dp-3"))
                link.heal()

                await eventually(lambda: client.state.connected, within=20, what="zone-1 reconnected")
                want = {"zone-1.zi-1", "zone-1.zi-2", "zone-1.zi-3"}
                await eventually(lambda: _names_are(global_store, "ZoneIngress", want), what="ingresses converged")
                await eventually(
                    lambda: _names_are(global_store, "Dataplane", {"zone-1.dp-1", "zone-1.dp-2", "zone-1.dp-3"}),
                    what="dataplanes converged",
                )
                await eventually(lambda: _port_is(global_store, "zone-1.zi-1", 10002), what="zi-1 updated at global")
                assert zone_store.listings == listed  # the reconnect read the view, not the store
        finally:
            await link.close()
            await view.stop()


async def test_disabled_zone_is_refused(tmp_path: Path) -> None:
    async with running_global(tmp_path) as (kds, store):
        token = await ZoneTokenIssuer(store).issue("zone-1", None, DAY)
        async with running_zone(tmp_path, "zone-1", kds.port, token) as zone:
            await eventually(lambda: zone.state.connected, what="zone-1 connected")
            res = await store.get("Zone", "zone-1")
            res.spec["enabled"] = False
            await store.update(res)
            await eventually(lambda: "disabled" in zone.state.last_error, what="zone-1 told it is disabled")
            await eventually(lambda: "disabled" in zone.state.last_error and not zone.state.connected, what="refused")
            assert kds.zones is not None and not kds.zones.is_online("zone-1")
            # while disabled nothing reaches the zone; enabled again, it reconnects and catches up
            await store.create(retry("while-disabled"))
            await asyncio.sleep(0.5)
            assert (
                zone.store is not None
                and await zone.store.find("MeshRetry", at_zone("while-disabled"), "default") is None
            )
            res = await store.get("Zone", "zone-1")
            res.spec["enabled"] = True
            await store.update(res)
            await eventually(lambda: zone.state.connected, within=15, what="zone-1 reconnected after enabling")
            await eventually(
                lambda: _has(zone.store, "MeshRetry", at_zone("while-disabled"), "default"), what="caught up"
            )


# -- helpers ---------------------------------------------------------------------------------


async def _has(store: Store, type: str, name: str, mesh: str = "") -> bool:
    return await store.find(type, name, mesh) is not None


async def _gone(store: Store, type: str, name: str, mesh: str = "") -> bool:
    return await store.find(type, name, mesh) is None


async def _count(store: Store, type: str, n: int) -> bool:
    return (await store.list(type)).total == n


async def _names_are(store: Store, type: str, expected: set[str]) -> bool:
    return await names(store, type) == expected


async def _port_is(store: Store, name: str, port: int) -> bool:
    res = await store.find("ZoneIngress", name)
    return res is not None and res.spec["networking"]["port"] == port


def _bump(res: Resource) -> Resource:
    res.spec["to"][0]["default"]["http"]["numRetries"] = 5
    return res


class _Recorder:
    """Every change event of a store, from now on."""

    def __init__(self, store: Store) -> None:
        self._watch = store.watch()
        self.queue = self._watch.queue

    def close(self) -> None:
        self._watch.close()


def _spec_of(snapshot: Snapshot, key: str) -> bytes:
    item = snapshot.items.get(key)
    return item.wire.spec if item is not None else b""


def _outbox(server: KdsServer, zone: str) -> Outbox:
    stream = server.streams[zone]
    assert stream.session.outbox is not None
    return stream.session.outbox


async def test_zone_insight_records_the_stream_and_nacks(tmp_path: Path) -> None:
    """ZoneInsight: one subscription per stream (connect/disconnect time, version, per-type
    sent/ACKed/NACKed, last heartbeat); a NACK is counted there and in kds_nack_total."""
    global_store, zone1_store, zone2_store = MemoryStore(), MemoryStore(), MemoryStore()
    await ResourceManager(global_store, mode=Mode.GLOBAL).ensure_default_mesh()
    # zone-1 has its own ingress that happens to be named like zone-2's ingress will be at global:
    # global must not overwrite it, so zone-1 refuses (NACKs) that one.
    await zone1_store.create(ingress("zone-2.zi"))
    await zone2_store.create(ingress("zi"))
    labels = {"zone_name": "zone-1", "resource_type": "ZoneIngress"}
    nacks_before = _metric("kds_nack_total", labels)
    async with running_global(tmp_path, global_store) as (kds, _):
        tokens = {z: await ZoneTokenIssuer(global_store).issue(z, None, DAY) for z in ("zone-1", "zone-2")}
        registry = kds.zones
        assert registry is not None
        async with (
            running_zone(tmp_path, "zone-1", kds.port, tokens["zone-1"], zone1_store),
            running_zone(tmp_path, "zone-2", kds.port, tokens["zone-2"], zone2_store),
        ):
            await eventually(lambda: _stat(registry.insight("zone-1"), "Mesh", "responsesAcknowledged"), what="ack")
            await eventually(lambda: _stat(registry.insight("zone-1"), "ZoneIngress", "responsesRejected"), what="nack")
            assert _metric("kds_nack_total", labels) > nacks_before
            # both ends count their stream, and here both ends share one process (one registry)
            assert _metric("kds_zone_active_connections", {"zone_name": "zone-1"}) == 2
            insight = registry.insight("zone-1")
            sub = insight["subscriptions"][-1]
            assert sub["connectTime"] and sub["disconnectTime"] is None
            assert sub["version"]["zonemeshCp"]["version"] and sub["zoneInstanceId"] == "zone-1-test"
            mesh = sub["status"]["stat"]["Mesh"]
            assert mesh["responsesSent"] >= mesh["responsesAcknowledged"] >= 1
            assert insight["healthCheck"]["time"]
            assert registry.is_online("zone-1")
            # zone-1 kept its own ingress; zone-2's is at global under the qualified name
            own = await zone1_store.get("ZoneIngress", "zone-2.zi")
            assert own.labels == {} and (await global_store.find("ZoneIngress", "zone-2.zi")) is not None
        await eventually(lambda: not registry.is_online("zone-1"), what="zone-1 offline after it left")
        await eventually(
            lambda: registry.insight("zone-1")["subscriptions"][-1]["disconnectTime"], what="disconnect time"
        )
        assert _metric("kds_zone_active_connections", {"zone_name": "zone-1"}) == 0
        await registry.flush()
        stored = await global_store.get("ZoneInsight", "zone-1")
        assert stored.spec["subscriptions"][-1]["disconnectTime"] is not None


def _stat(insight: dict[str, Any], type: str, counter: str) -> int:
    subs = insight.get("subscriptions") or [{}]
    value = (subs[-1].get("status") or {}).get("stat", {}).get(type, {}).get(counter, 0)
    return int(value)


def _metric(name: str, labels: dict[str, str]) -> float:
    value = prometheus_client.REGISTRY.get_sample_value(name, labels)
    return value or 0.0


# -- policies zonemesh does not apply are never synced ------------------------------------------------

ACCESS_LOG = Resource(
    type="MeshAccessLog",
    name="log-all",
    mesh="default",
    spec={
        "targetRef": {"kind": "Mesh"},
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": [{"file": {"path": "/dev/stdout"}}]}}],
    },
)


def fault(name: str, target: dict[str, Any], section: str, caller: dict[str, Any] | None = None) -> Resource:
    conf = {"http": [{"abort": {"httpStatus": 503, "percentage": 5}}]}
    spec = {"targetRef": target, section: [{"targetRef": caller or {"kind": "Mesh"}, "default": conf}]}
    return Resource(type="MeshFaultInjection", name=name, mesh="default", spec=spec)


# Callers selected by a tag a client certificate does not carry: refused as not supported yet.
BY_VERSION = {"kind": "MeshSubset", "tags": {"version": "v2"}}


async def test_global_never_syncs_policies_it_refuses(tmp_path: Path) -> None:
    global_store, zone_store = MemoryStore(), MemoryStore()
    manager = ResourceManager(global_store, mode=Mode.GLOBAL)
    await manager.ensure_default_mesh()
    await manager.create(retry("r1"))
    await manager.create(fault("gateway-faults", {"kind": "MeshGateway", "name": "edge"}, "to"))
    # Stored before an upgrade made them "not supported yet" (the API refuses them now).
    await global_store.create(ACCESS_LOG)
    await global_store.create(fault("sidecar-faults", {"kind": "MeshService", "name": "backend"}, "from", BY_VERSION))
    async with running_global(tmp_path, global_store) as (kds, _):
        token = await ZoneTokenIssuer(global_store).issue("zone-1", None, DAY)
        async with running_zone(tmp_path, "zone-1", kds.port, token, zone_store):
            assert kds.server is not None
            await eventually(lambda: "zone-1" in kds.server.streams, what="zone-1 connected")  # type: ignore[union-attr]
            outbox = _outbox(kds.server, "zone-1")
            await eventually(lambda: outbox.synced.is_set(), what="global's outbox to zone-1 synced")
            assert await names(zone_store, "MeshRetry", "default") >= {at_zone("r1")}
            assert await names(zone_store, "MeshFaultInjection", "default") == {at_zone("gateway-faults")}
            assert await names(zone_store, "MeshAccessLog", "default") == set()


async def test_a_zone_refuses_per_item_what_it_would_not_apply(tmp_path: Path) -> None:
    """What a global of another version may send: the zone stores the rest, refuses those (NACKed
    by key with the reason), and applies deletions of them."""
    store = MemoryStore()
    token_file = tmp_path / "token"
    token_file.write_text("unused")
    config = Config(mode="zone", zone="zone-1", global_address="grpcs://127.0.0.1:1", zone_token_file=str(token_file))
    client = KdsClient(config, store, "zone-1-test")
    good = fault("gateway-faults", {"kind": "MeshGateway", "name": "edge"}, "to")
    bad = fault("sidecar-faults", {"kind": "MeshService", "name": "backend"}, "from", BY_VERSION)
    log = dataclasses.replace(ACCESS_LOG, labels={ORIGIN_LABEL: ORIGIN_GLOBAL})
    for res in (good, bad):
        res.labels = {ORIGIN_LABEL: ORIGIN_GLOBAL}  # as global sends them
    changes = kds_pb2.Changes(type="MeshFaultInjection", upserts=[to_wire(good), to_wire(bad)])
    [refused] = await client._apply_download(changes)
    assert refused.key.name == "sidecar-faults"
    assert refused.reason.startswith("spec.from[0].targetRef.tags: selecting MeshFaultInjection clients by tags other")
    assert await names(store, "MeshFaultInjection", "default") == {at_zone("gateway-faults")}
    [refused] = await client._apply_download(kds_pb2.Changes(type="MeshAccessLog", upserts=[to_wire(log)]))
    assert refused.reason.startswith("type: MeshAccessLog is not supported yet by zonemesh")
    assert await names(store, "MeshAccessLog", "default") == set()
    await store.create(log)  # synced before this zone was upgraded, under global's name
    await client._rename_earlier_copies()  # as every connect does, before Hello
    assert await names(store, "MeshAccessLog", "default") == {at_zone("log-all")}
    removal = kds_pb2.ResourceKey(type="MeshAccessLog", mesh="default", name="log-all")
    assert await client._apply_download(kds_pb2.Changes(type="MeshAccessLog", removals=[removal])) == []
    assert await names(store, "MeshAccessLog", "default") == set()
