"""etcd's history compacted by whichever replica leads, on one schedule kept in etcd (real etcd)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import run_etcd
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.etcd import EtcdStore
from zonemesh.shared.store.etcd_compaction import MARKER, compact, compact_every, compaction_round, current_revision

pytestmark = pytest.mark.etcd


def policy(n: int) -> Resource:
    return Resource(type="Mesh", name="default", spec={"logging": {"defaultBackend": f"b{n}"}})


async def test_terms_shorter_than_the_interval_still_compact(tmp_path: Path) -> None:
    """Leadership moving between two replicas every 0.8 s with a 2 s interval: each new term carries
    on the schedule the previous one recorded, so etcd is compacted (kept in the leader's memory,
    the schedule restarted with every term and never compacted)."""
    with run_etcd(tmp_path / "etcd") as etcd:
        stores = [await EtcdStore.open(etcd.endpoint, prefix="/compaction", rpc_timeout=5) for _ in range(2)]
        try:
            for n in range(5):  # history to compact
                await stores[0].batch(upserts=[policy(n)])
            first = await current_revision(stores[0])
            for term in range(6):
                leader = asyncio.create_task(compact_every(stores[term % 2], 2.0))
                await asyncio.sleep(0.8)
                leader.cancel()
                await asyncio.gather(leader, return_exceptions=True)
                await stores[0].batch(upserts=[policy(100 + term)])
            assert not await compact(stores[0], first), "etcd was not compacted up to the first revision"
            raw, _ = await stores[1].read_raw(MARKER)
            assert raw is not None and json.loads(raw)["revision"] > first
            # the resources themselves are untouched
            assert (await stores[1].get("Mesh", "default")).spec["logging"]["defaultBackend"] == "b105"
        finally:
            for store in stores:
                await store.close()


async def test_a_round_is_made_once_per_interval_whoever_asks(tmp_path: Path) -> None:
    with run_etcd(tmp_path / "etcd") as etcd:
        store = await EtcdStore.open(etcd.endpoint, prefix="/rounds", rpc_timeout=5)
        try:
            await store.batch(upserts=[policy(1)])
            assert await compaction_round(store, 60.0, now=1000.0) == 60.0  # first: records, compacts nothing
            seen = json.loads((await store.read_raw(MARKER))[0] or b"{}")["revision"]
            await store.batch(upserts=[policy(2)])
            assert await compaction_round(store, 60.0, now=1020.0) == pytest.approx(40.0)  # not due yet
            assert await compaction_round(store, 60.0, now=1061.0) == 60.0  # due: compacts what the first saw
            assert not await compact(store, seen)  # already compacted up to it
            # an unreadable record starts the schedule over rather than stopping it
            _, mod = await store.read_raw(MARKER)
            assert await store.swap_raw(MARKER, mod, b"not json")
            assert await compaction_round(store, 60.0, now=1062.0) == 60.0
            assert json.loads((await store.read_raw(MARKER))[0] or b"{}")["at"] == 1062.0
        finally:
            await store.close()
