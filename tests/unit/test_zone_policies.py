"""Zone-originated policies and MeshGateways, as in Kuma 2.x: a federated zone creates its own
(labelled kuma.io/origin: zone), KDS uploads them to global under Kuma's hashed name, global shows
them with their zone and refuses to change them, and no other zone receives them (Kuma syncs only
Kubernetes "producer" policies across zones). Global's policy of the same name lands on the zone
under its own hashed name: both exist, the zone's wins where both apply (Kuma's origin order).

Real KDS server and clients in one event loop over TLS on 127.0.0.1, memory stores."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from kds_harness import eventually, running_global, running_zone
from zonemesh.proto import kds_pb2
from zonemesh.shared.kds.codec import to_wire
from zonemesh.shared.kds.naming import hashed_name, name_at_global, name_at_zone
from zonemesh.shared.resources.labels import write_errors
from zonemesh.shared.resources.manager import Mode, ReadOnly, ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import REGISTRY
from zonemesh.shared.resources.schema import ValidationError
from zonemesh.shared.store import Store
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.tokens.zone import ZoneTokenIssuer
from zonemesh.zone_cp.xds.policies.matching import ordered

DAY = 24 * 3600
ZONE_LABELLED = {"kuma.io/origin": "zone"}


def timeout(name: str, seconds: int, labels: dict[str, str] | None = None) -> Resource:
    return Resource(
        type="MeshTimeout",
        name=name,
        mesh="default",
        labels=dict(labels or {}),
        spec={
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": f"{seconds}s"}}],
        },
    )


def gateway(name: str, labels: dict[str, str] | None = None) -> Resource:
    return Resource(
        type="MeshGateway",
        name=name,
        mesh="default",
        labels=dict(labels or {}),
        spec={
            "selectors": [{"match": {"kuma.io/service": name}}],
            "conf": {"listeners": [{"port": 8080, "protocol": "HTTP"}]},
        },
    )


async def names(store: Store, type: str) -> set[str]:
    return {r.name for r in (await store.list(type, "default")).items}


async def _has(store: Store, type: str, name: str) -> bool:
    return await store.find(type, name, "default") is not None


async def _gone(store: Store, type: str, name: str) -> bool:
    return await store.find(type, name, "default") is None


def test_hashed_names_are_kumas() -> None:
    """Kuma 2.14.3's own KDS golden files (pkg/kds/context/testdata/full_sync/policy-simple):
    global's MeshTimeout on zones, zone-1's at global."""
    assert hashed_name("default", "default-timeout-global") == "default-timeout-global-54dbd4c66zwbcf9c"
    assert hashed_name("default", "default-timeout-zone-1", "zone-1") == "default-timeout-zone-1-c58w24w4vw27f454"
    mt, dp = REGISTRY.get("MeshTimeout"), REGISTRY.get("Dataplane")
    assert name_at_global(mt, "zone-1", "default", "t") == hashed_name("default", "t", "zone-1")
    assert name_at_zone(mt, "default", "t") == hashed_name("default", "t")
    # types only zones create keep zonemesh's names
    assert name_at_global(dp, "zone-1", "default", "dp-1") == "zone-1.dp-1"
    # Kuma shortens a long name so that name and suffix fit 253 characters
    assert len(hashed_name("default", "x" * 253, "zone-1")) == 253


async def test_zone_policy_syncs_up_read_only_at_global_and_stays_in_its_zone(tmp_path: Path) -> None:
    global_store, zone1_store, zone2_store = MemoryStore(), MemoryStore(), MemoryStore()
    glob = ResourceManager(global_store, mode=Mode.GLOBAL)
    zone1 = ResourceManager(zone1_store, mode=Mode.ZONE, zone="zone-1")
    await glob.ensure_default_mesh()
    await glob.create(timeout("timeouts", 5))
    ours_at_global = hashed_name("default", "timeouts", "zone-1")
    gw_at_global = hashed_name("default", "edge", "zone-1")
    async with running_global(tmp_path, global_store) as (kds, _):
        tokens = {z: await ZoneTokenIssuer(global_store).issue(z, None, DAY) for z in ("zone-1", "zone-2")}
        async with (
            running_zone(tmp_path, "zone-1", kds.port, tokens["zone-1"], zone1_store),
            running_zone(tmp_path, "zone-2", kds.port, tokens["zone-2"], zone2_store),
        ):
            await eventually(lambda: _has(zone1_store, "MeshTimeout", name_at_zone_("timeouts")), what="global's")
            # A zone's own policy of the same name as global's: both live on the zone.
            await zone1.apply(timeout("timeouts", 1, ZONE_LABELLED))
            await zone1.apply(gateway("edge", ZONE_LABELLED))
            await eventually(lambda: _has(global_store, "MeshTimeout", ours_at_global), what="zone-1's at global")
            await eventually(lambda: _has(global_store, "MeshGateway", gw_at_global), what="zone-1's gateway")

            stored = await global_store.get("MeshTimeout", ours_at_global, "default")
            assert stored.spec["to"][0]["default"]["connectionTimeout"] == "1s"
            assert stored.labels == {
                "zonemesh.io/origin": "zone",
                "zonemesh.io/zone": "zone-1",
                "zonemesh.io/display-name": "timeouts",
                "kuma.io/origin": "zone",
                "kuma.io/zone": "zone-1",
                "kuma.io/display-name": "timeouts",
            }
            own = await global_store.get("MeshTimeout", "timeouts", "default")
            assert own.spec["to"][0]["default"]["connectionTimeout"] == "5s"  # global's is untouched

            # Read-only at global: neither changed nor deleted through the API.
            with pytest.raises(ReadOnly, match="created on zone 'zone-1' and is read-only on global"):
                await glob.apply(dataclasses.replace(stored, labels={}))
            with pytest.raises(ReadOnly, match="read-only on global"):
                await glob.delete("MeshGateway", gw_at_global, "default")

            # Kept in its zone: zone-2 gets global's policy, never zone-1's (nor its gateway).
            await eventually(lambda: _has(zone2_store, "MeshTimeout", name_at_zone_("timeouts")), what="in zone-2")
            assert await names(zone2_store, "MeshTimeout") >= {name_at_zone_("timeouts")}
            assert not {"timeouts", ours_at_global} & await names(zone2_store, "MeshTimeout")
            assert await names(zone2_store, "MeshGateway") == set()

            # On zone-1: its own wins over global's of the same specificity (Kuma's origin order).
            both = [
                await zone1_store.get("MeshTimeout", "timeouts", "default"),
                await zone1_store.get("MeshTimeout", name_at_zone_("timeouts"), "default"),
            ]
            assert [p.labels["kuma.io/origin"] for p in ordered(both)] == ["global", "zone"]
            with pytest.raises(ReadOnly, match="synced from the global control plane"):
                await zone1.delete("MeshTimeout", name_at_zone_("timeouts"), "default")

            # Deleted on its zone, gone at global; global's of the same name stays everywhere.
            await zone1.delete("MeshTimeout", "timeouts", "default")
            await eventually(lambda: _gone(global_store, "MeshTimeout", ours_at_global), what="deleted at global")
            assert await _has(global_store, "MeshTimeout", "timeouts")
            assert await _has(zone1_store, "MeshTimeout", name_at_zone_("timeouts"))


def name_at_zone_(name: str) -> str:
    return hashed_name("default", name)


async def test_a_zone_cannot_take_or_delete_a_name_global_holds(tmp_path: Path) -> None:
    """Kuma's hash is not made to resist a chosen collision: global refuses an upload (or removal)
    whose hashed name is held by global's own resource or by another zone's."""
    store = MemoryStore()
    glob = ResourceManager(store, mode=Mode.GLOBAL)
    await glob.ensure_default_mesh()
    taken = hashed_name("default", "x", "zone-1")
    await glob.create(timeout(taken, 5))
    async with running_global(tmp_path, store) as (kds, _):
        assert kds.server is not None
        upload = kds_pb2.Changes(type="MeshTimeout", upserts=[to_wire(timeout("x", 1))])
        [refused] = await kds.server._apply_upload("zone-1", upload)
        assert refused.key.name == "x" and "global holds a MeshTimeout named" in refused.reason
        removal = kds_pb2.ResourceKey(type="MeshTimeout", mesh="default", name="x")
        [refused] = await kds.server._apply_upload("zone-1", kds_pb2.Changes(type="MeshTimeout", removals=[removal]))
        assert "neither overwritten nor deleted" in refused.reason
        kept = await store.get("MeshTimeout", taken, "default")
        assert kept.labels["zonemesh.io/origin"] == "global"
        assert kept.spec["to"][0]["default"]["connectionTimeout"] == "5s"
        # an upload labelled as another zone's is refused, whatever label set says it
        for lie in ({"kuma.io/zone": "zone-2"}, {"kuma.io/origin": "global"}):
            forged = kds_pb2.Changes(type="MeshTimeout", upserts=[to_wire(timeout("y", 1, lie))])
            [refused] = await kds.server._apply_upload("zone-1", forged)
            assert "a resource from zone 'zone-1'" in refused.reason
        assert not await _has(store, "MeshTimeout", hashed_name("default", "y", "zone-1"))


def _errors(res: Resource, mode: str, zone: str = "") -> list[str]:
    return [f"{e.field}: {e.reason}" for e in write_errors(res, REGISTRY.get(res.type), mode, zone)]


@pytest.mark.parametrize(
    ("mode", "labels", "wrong"),
    [
        ("global", {"kuma.io/origin": "zone"}, "must be set to 'global' on global"),
        ("global", {"kuma.io/zone": "zone-1"}, "none did on global"),
        ("zone", {}, "must be set to 'zone'"),  # Kuma's guard: a zone's policy says it is the zone's
        ("zone", {"kuma.io/origin": "global"}, "must be set to 'zone' on a zone"),
        ("zone", {"kuma.io/origin": "zone", "kuma.io/zone": "zone-2"}, "kuma.io/zone label should have zone-1"),
        ("zone", {"kuma.io/origin": "zone", "kuma.io/display-name": "other"}, "must be the resource's name"),
        ("zone", {"kuma.io/origin": "zone", "kuma.io/mesh": "other"}, "must not differ from mesh"),
        ("standalone", {"kuma.io/origin": "galaxy"}, "unknown resource origin"),
        ("standalone", {"kuma.io/origin": "global", "zonemesh.io/origin": "zone"}, "must say what"),
        ("standalone", {"kuma.io/env": "kubernetes"}, "universal only"),
    ],
)
def test_labels_that_lie_are_refused(mode: str, labels: dict[str, str], wrong: str) -> None:
    errors = _errors(timeout("t", 1, labels), mode, "zone-1" if mode == "zone" else "")
    assert any(wrong in e for e in errors), errors


@pytest.mark.parametrize(
    ("mode", "labels"),
    [
        ("global", {"kuma.io/origin": "global", "kuma.io/mesh": "default", "kuma.io/env": "universal"}),
        ("zone", {"kuma.io/origin": "zone", "kuma.io/zone": "zone-1", "kuma.io/display-name": "t"}),
        ("zone", {"zonemesh.io/origin": "zone", "zonemesh.io/zone": "zone-1"}),
        ("standalone", {"kuma.io/origin": "global", "kuma.io/policy-role": "system"}),  # a Kuma export
    ],
)
def test_labels_that_say_the_truth_are_accepted(mode: str, labels: dict[str, str]) -> None:
    assert _errors(timeout("t", 1, labels), mode, "zone-1" if mode == "zone" else "") == []


async def test_both_label_sets_are_written_and_the_zone_label_is_the_zones() -> None:
    store = MemoryStore()
    await store.create(Resource(type="Mesh", name="default"))
    zone = ResourceManager(store, mode=Mode.ZONE, zone="zone-1")
    created = await zone.create(timeout("t", 1, {"kuma.io/origin": "zone"}))
    assert created.labels == {
        "zonemesh.io/origin": "zone",
        "zonemesh.io/zone": "zone-1",
        "kuma.io/origin": "zone",
        "kuma.io/zone": "zone-1",
    }
    with pytest.raises(ValidationError, match="Invalid labels"):
        await zone.create(timeout("u", 1))
    assert await store.find("MeshTimeout", "u", "default") is None
    # A gateway is not a policy: Kuma does not ask for the label, nor does zonemesh.
    made: Any = await zone.create(gateway("edge"))
    assert made.labels["kuma.io/origin"] == "zone"
