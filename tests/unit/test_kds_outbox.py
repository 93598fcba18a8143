"""The KDS Outbox alone: chunks, ACK/NACK bookkeeping and the NACK backoff, over a real Snapshot."""

from __future__ import annotations

import asyncio

import pytest
from kds_harness import eventually
from zonemesh.proto import kds_pb2
from zonemesh.shared.kds import session
from zonemesh.shared.kds.session import Outbox, Stats
from zonemesh.shared.kds.snapshot import Snapshot
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore


def mesh(name: str) -> Resource:
    return Resource(type="Mesh", name=name)


async def test_nack_backoff_doubles_and_resets(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()
    await store.create(mesh("m1"))
    snapshot = Snapshot(store, ["Mesh"], lambda r: r, debounce=0)
    await snapshot.start()
    sent: list[kds_pb2.Changes] = []

    async def send(msg: kds_pb2.Message) -> None:
        sent.append(msg.changes)

    delays: list[float] = []

    async def retry_now(self: Outbox, keys: list[str], delay: float) -> None:
        delays.append(delay)
        self.notify(keys)

    monkeypatch.setattr(Outbox, "_retry_later", retry_now)
    stats = Stats()
    outbox = Outbox(snapshot, send, peer_has={}, stats=stats, zone="z")
    outbox.start()
    try:
        for expected in range(1, 8):  # the peer refuses m1 again and again
            await eventually(lambda n=expected: len(sent) >= n, what=f"send {expected}")
            outbox.on_ack(kds_pb2.Ack(nonce=sent[-1].nonce, nack=True, error="no"))
        await eventually(lambda: len(delays) == 7, what="7 retries scheduled")
        assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
        assert {c.upserts[0].name for c in sent} == {"m1"}
        await eventually(lambda: len(sent) >= 8, what="resend after the last NACK")
        outbox.on_ack(kds_pb2.Ack(nonce=sent[-1].nonce))  # finally accepted
        assert outbox.peer_has == {"Mesh//m1": sent[-1].upserts[0].hash}
        await eventually(lambda: outbox.synced.is_set(), what="synced")

        await store.create(mesh("m2"))
        await eventually(lambda: len(sent) >= 9, what="m2 sent")
        outbox.on_ack(kds_pb2.Ack(nonce=sent[-1].nonce, nack=True, error="no"))
        await eventually(lambda: len(delays) == 8, what="retry scheduled")
        assert delays[-1] == 1.0  # the backoff started over after the ACK
        assert stats.by_type["Mesh"].nacked == 8 and stats.by_type["Mesh"].acked == 1
    finally:
        await outbox.stop()
        await snapshot.stop()


async def test_big_changes_are_chunked() -> None:
    store = MemoryStore()
    await store.batch(upserts=[mesh(f"m{i}") for i in range(session.CHUNK * 2 + 5)])
    snapshot = Snapshot(store, ["Mesh"], lambda r: r, debounce=0)
    await snapshot.start()
    sent: list[kds_pb2.Changes] = []

    async def send(msg: kds_pb2.Message) -> None:
        sent.append(msg.changes)

    outbox = Outbox(snapshot, send, peer_has={"Mesh//gone": "h"}, stats=Stats(), zone="z")
    outbox.start()
    try:
        await eventually(lambda: sum(len(c.upserts) for c in sent) == session.CHUNK * 2 + 5, what="all sent")
        assert [len(c.upserts) for c in sent] == [session.CHUNK, session.CHUNK, 5]
        assert [k.name for c in sent for k in c.removals] == ["gone"]
        assert all(c.resync for c in sent)
        for changes in sent:
            outbox.on_ack(kds_pb2.Ack(nonce=changes.nonce))
        await asyncio.wait_for(outbox.synced.wait(), 5)
    finally:
        await outbox.stop()
        await snapshot.stop()
