"""The reconciler: which proxies a change affects (pure functions), debouncing, pushes to the
snapshot cache, and workload certificate rotation. Real memory store, real builtin CA."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import any_pb2
from zonemesh.shared.ca import MeshCA
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.zone_cp.xds import reconciler as reconciler_module
from zonemesh.zone_cp.xds.cache import Snapshot
from zonemesh.zone_cp.xds.proxy import ProxyIdentity, node_key
from zonemesh.zone_cp.xds.reconciler import (
    Reconciler,
    affected_by_dataplane,
    affected_by_external_service,
    affected_by_policy,
    proxies_serving,
)
from zonemesh.zone_cp.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from zonemesh.zone_cp.xds.testing import RecordingCache, load_resources, stream_infos


def dataplane(name: str, service: str, outbounds: tuple[str, ...] = (), port: int = 8080, **tags: str) -> Resource:
    net = {
        "address": "127.0.0.1",
        "inbound": [{"port": port, "servicePort": port + 1, "tags": {"kuma.io/service": service, **tags}}],
        "outbound": [{"port": 20000 + i, "tags": {"kuma.io/service": s}} for i, s in enumerate(outbounds)],
    }
    return Resource(type="Dataplane", name=name, mesh="default", spec={"networking": net}, version=1)


def policy(kind: str, name: str, target: dict[str, object]) -> Resource:
    spec = {"targetRef": target, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "3s"}}]}
    return Resource(type=kind, name=name, mesh="default", spec=spec, version=1)


WEB = dataplane("web-1", "web", ("backend", "db"), version="v1")
BACKEND_1 = dataplane("backend-1", "backend", ("db",))
BACKEND_2 = dataplane("backend-2", "backend", ())
DB = dataplane("db-1", "db", ())
ALL = [WEB, BACKEND_1, BACKEND_2, DB]
CONSUMERS = {"backend": {"web-1"}, "db": {"web-1", "backend-1"}}


# -- pure: which proxies a change affects --------------------------------------------------------


def test_a_new_dataplane_affects_itself_and_the_consumers_of_its_service() -> None:
    assert affected_by_dataplane(None, BACKEND_2, CONSUMERS) == {"backend-2", "web-1"}
    assert affected_by_dataplane(None, DB, CONSUMERS) == {"db-1", "web-1", "backend-1"}


def test_a_removed_dataplane_affects_the_consumers_of_what_it_served() -> None:
    assert affected_by_dataplane(BACKEND_1, None, CONSUMERS) == {"backend-1", "web-1"}


def test_a_dataplane_changing_service_affects_consumers_of_both() -> None:
    moved = dataplane("backend-1", "db", ("db",))
    assert affected_by_dataplane(BACKEND_1, moved, CONSUMERS) == {"backend-1", "web-1"}


def test_a_dataplane_nobody_calls_affects_only_itself() -> None:
    assert affected_by_dataplane(None, dataplane("lonely", "lonely"), CONSUMERS) == {"lonely"}


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ({"kind": "Mesh"}, {"web-1", "backend-1", "backend-2", "db-1"}),
        ({"kind": "MeshService", "name": "backend"}, {"backend-1", "backend-2"}),
        ({"kind": "MeshSubset", "tags": {"version": "v1"}}, {"web-1"}),
        ({"kind": "MeshSubset", "tags": {"version": "v2"}}, set()),
        ({"kind": "Mesh", "proxyTypes": ["Gateway"]}, set()),
        ({"kind": "MeshServiceSubset", "name": "web", "tags": {"version": "v1"}}, {"web-1"}),
        ({"kind": "Dataplane", "name": "db-1"}, {"db-1"}),
        ({"kind": "Dataplane"}, {"web-1", "backend-1", "backend-2", "db-1"}),
        ({"kind": "Dataplane", "labels": {"team": "db"}}, {"db-1"}),
        ({"kind": "Dataplane", "sectionName": "9090"}, set()),  # no inbound on that port
        # A policy for one MeshHTTPRoute's routes: wherever that route applies.
        ({"kind": "MeshHTTPRoute", "name": "r"}, {"web-1", "backend-1", "backend-2", "db-1"}),
    ],
)
def test_a_policy_affects_the_proxies_its_target_ref_selects(target: dict[str, object], expected: set[str]) -> None:
    labelled = [dp if dp is not DB else dataclasses.replace(DB, labels={"team": "db"}) for dp in ALL]
    assert affected_by_policy(None, policy("MeshTimeout", "p", target), labelled) == expected


def test_a_policy_without_top_level_target_ref_affects_every_proxy() -> None:
    mesh_wide = policy("MeshTimeout", "p", {})
    del mesh_wide.spec["targetRef"]
    assert affected_by_policy(None, mesh_wide, ALL) == {"web-1", "backend-1", "backend-2", "db-1"}


def test_a_retargeted_policy_affects_old_and_new_targets() -> None:
    before = policy("MeshRetry", "p", {"kind": "MeshService", "name": "db"})
    after = policy("MeshRetry", "p", {"kind": "MeshService", "name": "web"})
    assert affected_by_policy(before, after, ALL) == {"db-1", "web-1"}
    assert affected_by_policy(before, None, ALL) == {"db-1"}  # deleted


def test_an_external_service_affects_its_consumers() -> None:
    es = Resource(
        type="ExternalService",
        name="db-ext",
        mesh="default",
        spec={"tags": {"kuma.io/service": "db"}, "networking": {"address": "db.example:5432"}},
    )
    assert affected_by_external_service(None, es, CONSUMERS) == {"web-1", "backend-1"}
    assert affected_by_external_service(es, None, {}) == set()


def test_a_rotated_certificate_affects_the_proxies_of_its_service() -> None:
    assert proxies_serving(ALL, {"backend"}) == {"backend-1", "backend-2"}
    assert proxies_serving(ALL, {"db", "web"}) == {"db-1", "web-1"}
    assert proxies_serving(ALL, {"nobody"}) == set()


# -- the reconciler over a real store --------------------------------------------------------------


@dataclass
class Zone:
    manager: ResourceManager
    cache: RecordingCache
    reconciler: Reconciler

    async def connect(self, *names: str) -> None:
        for info in stream_infos(*names):
            await self.reconciler.on_stream_open(info)

    async def settle(self) -> list[str]:
        """The proxies pushed to since the last call, once the reconciler has pushed every change."""
        return await self.cache.settle(self.reconciler)


MESH_YAML = """
type: Mesh
name: default
skipCreatingInitialPolicies: ["*"]
"""


@pytest.fixture
async def zone() -> AsyncIterator[Zone]:
    store = MemoryStore()
    manager = ResourceManager(store)
    for res in load_resources(MESH_YAML):
        await manager.apply(res)
    for dp in ALL:
        await manager.apply(dp)
    cache = RecordingCache()
    async with Reconciler(store, cache, None, debounce=0.05, max_delay=0.2) as reconciler:
        yield Zone(manager, cache, reconciler)


async def test_connecting_proxies_get_a_snapshot_each(zone: Zone) -> None:
    await zone.connect(*[dp.name for dp in ALL])
    pushed = await zone.settle()
    assert sorted(pushed) == sorted(node_key("default", dp.name) for dp in ALL)
    snapshot = zone.cache.snapshot(node_key("default", "web-1"))
    assert snapshot is not None and {CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET} <= set(snapshot.types)


async def test_a_service_policy_regenerates_only_its_proxies(zone: Zone) -> None:
    await zone.connect(*[dp.name for dp in ALL])
    await zone.settle()
    await zone.manager.apply(policy("MeshTimeout", "backend-timeout", {"kind": "MeshService", "name": "backend"}))
    assert sorted(await zone.settle()) == ["default/backend-1", "default/backend-2"]


async def test_a_policy_on_requests_to_one_service_regenerates_only_its_callers(zone: Zone) -> None:
    """Top-level Mesh selects every proxy, but its only entry configures requests to db: the
    callers of db (web-1, backend-1) are all whose config can change (test_xds_affected.py)."""
    await zone.connect(*[dp.name for dp in ALL])
    await zone.settle()
    to_db = policy("MeshTimeout", "to-db", {"kind": "Mesh"})
    to_db.spec["to"][0]["targetRef"] = {"kind": "MeshService", "name": "db"}
    await zone.manager.apply(to_db)
    assert sorted(await zone.settle()) == ["default/backend-1", "default/web-1"]
    to_db.spec["to"][0]["targetRef"] = {"kind": "MeshService", "name": "backend"}  # retargeted
    await zone.manager.apply(to_db)
    assert sorted(await zone.settle()) == ["default/backend-1", "default/web-1"]  # db's callers, then backend's
    await zone.manager.delete("MeshTimeout", "to-db", "default")
    assert sorted(await zone.settle()) == ["default/web-1"]


async def test_a_new_instance_regenerates_itself_and_its_consumers_only(zone: Zone) -> None:
    await zone.connect(*[dp.name for dp in ALL], "db-2")
    await zone.settle()
    await zone.manager.apply(dataplane("db-2", "db", (), port=9090))
    # db-2 (connected), and the consumers of db; backend-2 and db-1 are untouched.
    assert sorted(await zone.settle()) == ["default/backend-1", "default/db-2", "default/web-1"]
    snapshot = zone.cache.snapshot("default/web-1")
    assert snapshot is not None
    cla = endpoint_pb2.ClusterLoadAssignment()
    any_pb2.Any.FromString(snapshot.types[ENDPOINT].resources["db"]).Unpack(cla)
    ports = {e.endpoint.address.socket_address.port_value for group in cla.endpoints for e in group.lb_endpoints}
    assert ports == {8080, 9090}  # web-1 now sees both db instances


async def test_a_burst_of_changes_is_one_round(zone: Zone) -> None:
    await zone.connect(*[dp.name for dp in ALL])
    await zone.settle()
    rounds = zone.reconciler.rounds
    for i in range(20):
        await zone.manager.apply(policy("MeshTimeout", f"burst-{i}", {"kind": "Mesh"}))
    pushed = await zone.settle()
    assert zone.reconciler.rounds - rounds <= 2  # debounced (max_delay may split a long burst once)
    assert len(pushed) <= 2 * len(ALL)


async def test_a_malformed_resource_does_not_stop_the_watch(zone: Zone) -> None:
    await zone.connect(*[dp.name for dp in ALL])
    await zone.settle()
    # Written past validation (straight into the store): an inbound that is not an object.
    broken = Resource(type="Dataplane", name="broken", mesh="default", spec={"networking": {"inbound": ["oops"]}})
    await zone.manager.store.create(broken)
    await zone.manager.apply(policy("MeshTimeout", "after-broken", {"kind": "MeshService", "name": "db"}))
    pushed = await zone.settle()
    assert "default/db-1" in pushed  # the change after the bad one was still seen


async def test_a_stored_resource_that_fails_validation_is_left_out_and_later_changes_apply(zone: Zone) -> None:
    """A policy and an ExternalService that no API or KDS write would accept (written straight into
    the store) are ignored as if absent: the mesh's proxies keep getting every later change."""
    await zone.connect(*[dp.name for dp in ALL])
    await zone.settle()
    bad_timeout = policy("MeshTimeout", "bad", {"kind": "Mesh"})
    bad_timeout.spec["to"][0]["default"]["connectionTimeout"] = 5  # not a duration
    bad_external = Resource(
        type="ExternalService",
        name="bad-es",
        mesh="default",
        spec={"networking": {"address": "not a host:port"}, "tags": {"kuma.io/service": "db"}},
    )
    await zone.manager.store.batch(upserts=[bad_timeout, bad_external])
    await zone.manager.apply(policy("MeshTimeout", "after-bad", {"kind": "Mesh"}))
    pushed = await zone.settle()
    assert sorted(pushed) == sorted(node_key("default", dp.name) for dp in ALL)
    snapshot = zone.cache.snapshot(node_key("default", "web-1"))
    assert snapshot is not None and "bad-es" not in str(snapshot.types[CLUSTER].resources)


async def test_disconnected_proxies_are_not_generated(zone: Zone) -> None:
    await zone.connect("web-1")
    await zone.settle()
    await zone.manager.apply(policy("MeshTimeout", "all", {"kind": "Mesh"}))
    assert await zone.settle() == ["default/web-1"]


@pytest.mark.parametrize(("slice_seconds", "pushed_apart"), [(0.0, True), (60.0, False)])
async def test_a_round_pushes_in_slices_and_the_loop_runs_between_them(
    zone: Zone, monkeypatch: pytest.MonkeyPatch, slice_seconds: float, pushed_apart: bool
) -> None:
    await zone.connect(*[dp.name for dp in ALL])
    await zone.settle()
    monkeypatch.setattr(reconciler_module, "YIELD_EVERY", slice_seconds)
    seen: list[int] = []  # pushes so far, each time another task got the loop during the round
    done = False

    async def observe() -> None:
        while not done:
            seen.append(len(zone.cache.pushes))
            await asyncio.sleep(0)

    observer = asyncio.create_task(observe())
    await asyncio.sleep(0)
    await zone.reconciler.reconcile(["default"], [])
    done = True
    await observer
    assert len(zone.cache.pushes) == len(ALL)
    # Slices of no time: the loop ran between proxies, each pushed before the next was generated.
    # One long slice: all four were pushed together, after the whole round.
    assert any(0 < n < len(ALL) for n in seen) is pushed_apart


# -- workload certificate rotation ---------------------------------------------------------------

MTLS_MESH_YAML = """
type: Mesh
name: default
skipCreatingInitialPolicies: ["*"]
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
    # 16 s of validity, backdated 60 s by the CA: reissued 80% into 76 s, i.e. ~1 s after issue.
    dpCert: {rotation: {expiration: 16s}}
"""


async def test_workload_certificates_rotate_before_expiry_touching_only_secrets() -> None:
    store = MemoryStore()
    manager = ResourceManager(store)
    for res in load_resources(MTLS_MESH_YAML):
        await manager.apply(res)
    for dp in (WEB, BACKEND_1):
        await manager.apply(dp)
    cache = RecordingCache()
    async with Reconciler(store, cache, MeshCA(store), debounce=0.02, max_delay=0.1) as reconciler:
        zone = Zone(manager, cache, reconciler)
        await zone.connect("web-1", "backend-1")
        await zone.settle()
        first = cache.snapshot("default/web-1")
        assert first is not None and first.types[SECRET].resources

        async def rotated() -> Snapshot:
            for _ in range(100):  # bounded: 10 s
                now = cache.snapshot("default/web-1")
                if now is not None and now.version(SECRET) != first.version(SECRET):
                    return now
                await asyncio.sleep(0.1)
            raise AssertionError("the workload certificate was not rotated within 10 s")

        second = await rotated()
        # Only the secrets changed: listeners and clusters are untouched, so Envoy swaps the
        # certificate in place (SDS) without draining listeners or rebuilding connection pools.
        for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
            assert second.version(type_url) == first.version(type_url)


async def test_a_renewed_certificate_goes_only_to_proxies_still_admitted() -> None:
    """At a renewal the reconciler asks which of the proxies due the new certificate still hold a
    valid credential (the xDS server checks the store then, zone_cp/app.py): the others get
    nothing, not even the moment before their streams close."""
    store = MemoryStore()
    manager = ResourceManager(store)
    for res in load_resources(MTLS_MESH_YAML):
        await manager.apply(res)
    for dp in (BACKEND_1, BACKEND_2):
        await manager.apply(dp)
    cache = RecordingCache()
    asked: list[list[ProxyIdentity]] = []
    revoked = ProxyIdentity("default", "backend-2")

    async def still_admitted(proxies: list[ProxyIdentity]) -> set[ProxyIdentity]:
        asked.append(proxies)
        return set(proxies) - {revoked}

    async with Reconciler(
        store, cache, MeshCA(store), debounce=0.02, max_delay=0.1, still_admitted=still_admitted
    ) as reconciler:
        await Zone(manager, cache, reconciler).connect("backend-1", "backend-2")
        await cache.settle(reconciler)
        assert not asked  # a service's first certificate: its proxies have just been admitted
        first: dict[str, str] = {}
        for name in ("backend-1", "backend-2"):
            snapshot = cache.snapshot(f"default/{name}")
            assert snapshot is not None and snapshot.types[SECRET].resources
            first[name] = snapshot.version(SECRET)

        def secret_version(name: str) -> str | None:
            snapshot = cache.snapshot(f"default/{name}")
            return snapshot.version(SECRET) if snapshot is not None else None

        for _ in range(100):  # bounded: 10 s for a renewal (about 1 s after issue here)
            if secret_version("backend-1") != first["backend-1"]:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the workload certificate was not renewed within 10 s")
    assert asked and all(set(proxies) == {ProxyIdentity("default", "backend-1"), revoked} for proxies in asked)
    assert secret_version("backend-2") == first["backend-2"], "the refused proxy got the renewal"


# -- stored policies zonemesh refuses, and stopping -------------------------------------------------


def cluster_connect_timeout(snapshot: Snapshot, name: str) -> int:
    cluster = cluster_pb2.Cluster()
    any_pb2.Any.FromString(snapshot.types[CLUSTER].resources[name]).Unpack(cluster)
    return int(cluster.connect_timeout.seconds)


async def test_stored_policies_zonemesh_refuses_are_logged_and_left_out() -> None:
    """Stored before an upgrade refused them (or written past the API): nothing crashes, and
    they do not take effect half-way."""
    store = MemoryStore()
    manager = ResourceManager(store)
    for res in load_resources(MESH_YAML):
        await manager.apply(res)
    for dp in ALL:
        await manager.apply(dp)
    log = Resource(
        type="MeshAccessLog",
        name="log",
        mesh="default",
        spec={"from": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": []}}]},
    )
    # A MeshService port (sectionName) cannot be resolved without MeshService resources: refused now.
    on_a_port = policy("MeshTimeout", "on-a-port", {"kind": "MeshService", "name": "web", "sectionName": "http"})
    on_a_port.spec["to"][0]["default"]["connectionTimeout"] = "42s"
    await store.create(log)
    await store.create(on_a_port)
    cache = RecordingCache()
    with structlog.testing.capture_logs() as logs:
        async with Reconciler(store, cache, None, debounce=0.01, max_delay=0.05) as reconciler:
            zone = Zone(manager, cache, reconciler)
            await zone.connect("web-1")
            assert await zone.settle() == ["default/web-1"]
            # The same arriving through the watch is left out too.
            later = policy("MeshTimeout", "later", {"kind": "MeshService", "name": "web", "labels": {"a": "b"}})
            later.spec["to"][0]["default"]["connectionTimeout"] = "43s"
            await store.create(later)
            await zone.settle()
            snapshot = cache.snapshot("default/web-1")
            assert snapshot is not None and cluster_connect_timeout(snapshot, "backend") == 0  # no policy set it
    ignored = {(e["type"], e["name"]) for e in logs if e["event"] == "xds_resource_ignored"}
    assert ignored == {("MeshTimeout", "on-a-port"), ("MeshTimeout", "later")}
    assert {"type": "MeshAccessLog", "stored": 1} in [
        {k: e[k] for k in ("type", "stored")} for e in logs if e["event"] == "xds_policy_type_not_supported"
    ]


async def test_stop_returns_at_once_even_as_a_wake_up_comes() -> None:
    """Python 3.11's wait_for swallows a cancellation that comes as its event is set: stop() then
    waited for the next timeout (up to a minute) before the reconciler's tasks ended."""
    for _ in range(5):
        reconciler = Reconciler(MemoryStore(), RecordingCache(), None)
        await reconciler.start()
        await asyncio.sleep(0)  # the tasks wait on their events
        reconciler.invalidate_mesh("default")  # wakes the round loop ...
        reconciler._rotation_wake.set()  # ... and the certificate loop
        async with asyncio.timeout(5):  # bounded: the bug made this wait 60 s
            await reconciler.stop()


async def test_a_route_backend_changing_regenerates_the_proxies_the_route_applies_to(zone: Zone) -> None:
    """web-1 has no outbound to db-only-by-route: a MeshTCPRoute sends its backend traffic there.
    A new instance of it changes web-1's endpoints for that cluster: web-1 is regenerated."""
    route = Resource(
        type="MeshTCPRoute",
        name="backend-to-archive",
        mesh="default",
        spec={
            "targetRef": {"kind": "MeshService", "name": "web"},
            "to": [
                {
                    "targetRef": {"kind": "MeshService", "name": "backend"},
                    "rules": [{"default": {"backendRefs": [{"kind": "MeshService", "name": "archive"}]}}],
                }
            ],
        },
        version=1,
    )
    await zone.manager.apply(route)
    await zone.connect(*[dp.name for dp in ALL], "archive-1")
    await zone.settle()
    await zone.manager.apply(dataplane("archive-1", "archive", (), port=7070))
    assert sorted(await zone.settle()) == ["default/archive-1", "default/web-1"]
    snapshot = zone.cache.snapshot("default/web-1")
    assert snapshot is not None
    cla = endpoint_pb2.ClusterLoadAssignment()
    any_pb2.Any.FromString(snapshot.types[ENDPOINT].resources["archive"]).Unpack(cla)
    assert [e.endpoint.address.socket_address.port_value for g in cla.endpoints for e in g.lb_endpoints] == [7070]
