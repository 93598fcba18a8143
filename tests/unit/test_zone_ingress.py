"""availableServices of zone ingresses (zone_cp/ingress.py): the computation and the updater."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from zonemesh.shared.resources.model import ORIGIN_GLOBAL, ORIGIN_LABEL, ORIGIN_ZONE, ZONE_LABEL, Resource
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.zone_cp.ingress import AvailableServicesUpdater, available_services, is_local, updated_ingress


def dp(name: str, mesh: str = "default", *inbounds: dict[str, Any], gateway: bool = False) -> Resource:
    networking: dict[str, Any] = {"address": "10.0.0.1", "inbound": list(inbounds)}
    if gateway:
        networking = {"address": "10.0.0.1", "gateway": {"tags": {"kuma.io/service": "gw"}}}
    return Resource(type="Dataplane", name=name, mesh=mesh, spec={"networking": networking})


def inbound(service: str, port: int = 80, **extra: Any) -> dict[str, Any]:
    tags = {"kuma.io/service": service, **extra.pop("tags", {})}
    return {"port": port, "tags": tags, **extra}


def ingress(name: str = "ingress-1", labels: dict[str, str] | None = None, **spec: Any) -> Resource:
    return Resource(
        type="ZoneIngress",
        name=name,
        spec={"networking": {"address": "127.0.0.1", "port": 10001}, **spec},
        labels=labels or {},
    )


def test_grouped_by_mesh_and_tags_with_instance_counts() -> None:
    dataplanes = [
        dp("b-1", "default", inbound("backend", tags={"version": "v1"})),
        dp("b-2", "default", inbound("backend", tags={"version": "v1"})),
        dp("b-3", "default", inbound("backend", tags={"version": "v2"})),
        dp("b-other", "other", inbound("backend", tags={"version": "v1"})),
        dp("two", "default", inbound("web", 80), inbound("metrics", 9090)),
    ]
    assert available_services(dataplanes) == [
        {"tags": {"kuma.io/service": "backend", "version": "v1"}, "instances": 2, "mesh": "default"},
        {"tags": {"kuma.io/service": "backend", "version": "v2"}, "instances": 1, "mesh": "default"},
        {"tags": {"kuma.io/service": "metrics"}, "instances": 1, "mesh": "default"},
        {"tags": {"kuma.io/service": "web"}, "instances": 1, "mesh": "default"},
        {"tags": {"kuma.io/service": "backend", "version": "v1"}, "instances": 1, "mesh": "other"},
    ]


def test_not_ready_ignored_unhealthy_and_gateways_are_not_advertised() -> None:
    dataplanes = [
        dp("nr", "default", inbound("a", state="NotReady")),
        dp("ig", "default", inbound("a", state="Ignored")),
        dp("sick", "default", inbound("a", health={"ready": False})),
        dp("gw", gateway=True),
        dp("ok", "default", inbound("a", health={"ready": True})),
    ]
    assert available_services(dataplanes) == [{"tags": {"kuma.io/service": "a"}, "instances": 1, "mesh": "default"}]


def test_order_of_dataplanes_does_not_matter() -> None:
    dataplanes = [dp(f"d{i}", "m", inbound(s)) for i, s in enumerate(["c", "a", "b", "a"])]
    assert available_services(dataplanes) == available_services(list(reversed(dataplanes)))


def test_local_means_not_from_global_and_not_another_zones() -> None:
    assert is_local(ingress(), "zone-1")
    assert is_local(ingress(labels={ORIGIN_LABEL: ORIGIN_ZONE, ZONE_LABEL: "zone-1"}), "zone-1")
    assert not is_local(ingress(labels={ORIGIN_LABEL: ORIGIN_ZONE, ZONE_LABEL: "zone-2"}), "zone-1")
    assert not is_local(ingress(labels={ORIGIN_LABEL: ORIGIN_GLOBAL}), "zone-1")


def test_updated_ingress_only_when_something_changed() -> None:
    services = [{"tags": {"kuma.io/service": "a"}, "instances": 1, "mesh": "default"}]
    first = updated_ingress(ingress(), "zone-1", services)
    assert first is not None and first.spec["zone"] == "zone-1" and first.spec["availableServices"] == services
    assert updated_ingress(first, "zone-1", services) is None
    assert updated_ingress(first, "zone-1", []) is not None


async def wait_for(predicate: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_updater_follows_dataplanes_and_leaves_other_zones_ingresses_alone() -> None:
    store = MemoryStore()
    remote_labels = {ORIGIN_LABEL: ORIGIN_ZONE, ZONE_LABEL: "zone-2"}
    remote = await store.create(ingress("zone-2.ingress", labels=remote_labels, zone="zone-2", availableServices=[]))
    await store.create(ingress("ingress-1"))
    await store.create(dp("b-1", "default", inbound("backend")))
    updater = AvailableServicesUpdater(store, "zone-1", quiet=0.01)

    async def services_of(name: str) -> Any:
        return (await store.get("ZoneIngress", name)).spec.get("availableServices")

    async with updater.running():
        want = [{"tags": {"kuma.io/service": "backend"}, "instances": 1, "mesh": "default"}]
        await wait_for(lambda: _eq(services_of("ingress-1"), want))
        await store.create(dp("b-2", "default", inbound("backend")))
        want2 = [{"tags": {"kuma.io/service": "backend"}, "instances": 2, "mesh": "default"}]
        await wait_for(lambda: _eq(services_of("ingress-1"), want2))
        await store.delete("Dataplane", "b-1", "default")
        await store.delete("Dataplane", "b-2", "default")
        await wait_for(lambda: _eq(services_of("ingress-1"), []))
        assert (await store.get("ZoneIngress", "ingress-1")).spec["zone"] == "zone-1"
        # An ingress registered later gets the list too.
        await store.create(dp("c-1", "default", inbound("c")))
        await store.create(ingress("ingress-2"))
        want3 = [{"tags": {"kuma.io/service": "c"}, "instances": 1, "mesh": "default"}]
        await wait_for(lambda: _eq(services_of("ingress-2"), want3))
    assert (await store.get("ZoneIngress", "zone-2.ingress")).version == remote.version


async def _eq(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_a_quiet_round_writes_nothing() -> None:
    store = MemoryStore()
    await store.create(ingress("ingress-1"))
    await store.create(dp("b-1", "default", inbound("backend")))
    updater = AvailableServicesUpdater(store, "zone-1")
    assert await updater.update_once() == 1
    version = (await store.get("ZoneIngress", "ingress-1")).version
    assert await updater.update_once() == 0
    assert (await store.get("ZoneIngress", "ingress-1")).version == version


@pytest.mark.parametrize("labels", [{ORIGIN_LABEL: ORIGIN_GLOBAL}, {ORIGIN_LABEL: ORIGIN_ZONE, ZONE_LABEL: "z2"}])
async def test_no_local_ingress_no_write(labels: dict[str, str]) -> None:
    store = MemoryStore()
    await store.create(ingress("x", labels=labels))
    await store.create(dp("b-1", "default", inbound("backend")))
    assert await AvailableServicesUpdater(store, "zone-1").update_once() == 0
