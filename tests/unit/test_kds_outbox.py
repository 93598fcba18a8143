"""The KDS Outbox alone: chunks, ACK/NACK bookkeeping and the NACK backoff, over a real Snapshot."""

from __future__ import annotations

import asyncio

import pytest
from kds_harness import eventually
from zonemesh.proto import kds_pb2
from zonemesh.shared.kds import session
from zonemesh.shared.kds.session import Outbox, Session, Stats
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


def rejected(key: str, reason: str) -> kds_pb2.Rejected:
    type, mesh, name = key.split("/", 2)
    return kds_pb2.Rejected(key=kds_pb2.ResourceKey(type=type, mesh=mesh, name=name), reason=reason)


async def test_a_nack_naming_resources_resends_only_those(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer refused m2 and the removal of gone, and applied the rest: m1 and m3 are delivered,
    only m2 and the removal are sent again, each with its own backoff."""
    store = MemoryStore()
    await store.batch(upserts=[mesh("m1"), mesh("m2"), mesh("m3")])
    snapshot = Snapshot(store, ["Mesh"], lambda r: r, debounce=0)
    await snapshot.start()
    sent: list[kds_pb2.Changes] = []

    async def send(msg: kds_pb2.Message) -> None:
        sent.append(msg.changes)

    delays: list[tuple[float, list[str]]] = []

    async def retry_now(self: Outbox, keys: list[str], delay: float) -> None:
        delays.append((delay, sorted(keys)))
        self.notify(keys)

    monkeypatch.setattr(Outbox, "_retry_later", retry_now)
    stats = Stats()
    outbox = Outbox(snapshot, send, peer_has={"Mesh//gone": "h"}, stats=stats, zone="z")
    outbox.start()
    try:
        await eventually(lambda: len(sent) == 1, what="first send")
        first = sent[0]
        assert sorted(r.name for r in first.upserts) == ["m1", "m2", "m3"] and [k.name for k in first.removals] == [
            "gone"
        ]
        outbox.on_ack(
            kds_pb2.Ack(
                nonce=first.nonce,
                nack=True,
                error="2 of 4 resources refused",
                rejected=[rejected("Mesh//m2", "bad m2"), rejected("Mesh//gone", "keep it")],
            )
        )
        assert set(outbox.peer_has) == {"Mesh//m1", "Mesh//m3", "Mesh//gone"}  # m1, m3 delivered
        await eventually(lambda: len(sent) == 2, what="the refused ones sent again")
        again = sent[1]
        assert [r.name for r in again.upserts] == ["m2"] and [k.name for k in again.removals] == ["gone"]
        assert delays == [(1.0, ["Mesh//gone", "Mesh//m2"])]
        stat = stats.by_type["Mesh"].as_dict()
        assert (stat["responsesRejected"], stat["resourcesRejected"]) == (1, 2)
        assert stat["lastRejection"] == "Mesh//m2: bad m2"

        # m2 refused again (its backoff doubles), the removal accepted this time
        outbox.on_ack(kds_pb2.Ack(nonce=again.nonce, nack=True, error="e", rejected=[rejected("Mesh//m2", "bad")]))
        await eventually(lambda: len(sent) == 3, what="m2 sent a third time")
        assert delays[-1] == (2.0, ["Mesh//m2"]) and "Mesh//gone" not in outbox.peer_has
        # meanwhile another resource is refused for the first time: its own backoff starts at 1 s
        await store.create(mesh("m4"))
        await eventually(lambda: len(sent) == 4, what="m4 sent")
        outbox.on_ack(kds_pb2.Ack(nonce=sent[3].nonce, nack=True, error="e", rejected=[rejected("Mesh//m4", "no")]))
        await eventually(lambda: len(delays) == 3, what="m4's retry")
        assert delays[-1] == (1.0, ["Mesh//m4"])
        # an ACK ends m2's refusals; a NACK naming nothing it carried refuses the whole message
        outbox.on_ack(kds_pb2.Ack(nonce=sent[2].nonce))
        await eventually(lambda: len(sent) == 5, what="m4 again")
        outbox.on_ack(kds_pb2.Ack(nonce=sent[4].nonce, nack=True, error="e", rejected=[rejected("Mesh//zz", "?")]))
        await eventually(lambda: len(delays) == 4, what="m4's second retry")
        assert delays[-1] == (2.0, ["Mesh//m4"])
        assert stats.by_type["Mesh"].refused_by_peer == 5
    finally:
        await outbox.stop()
        await snapshot.stop()


async def test_the_receiver_nacks_the_refused_resources_by_key_and_acks_the_rest() -> None:
    written: list[kds_pb2.Message] = []

    async def write(msg: kds_pb2.Message) -> None:
        written.append(msg)

    async def apply(changes: kds_pb2.Changes) -> list[kds_pb2.Rejected]:
        return [rejected(f"Mesh//{r.name}", "not today") for r in changes.upserts if r.name.startswith("bad")]

    stats = Stats()
    session = Session(
        zone="z", read=asyncio.Event().wait, write=write, apply=apply, stats=stats,
        heartbeat_interval=60, heartbeat_timeout=120,
    )  # fmt: skip
    upserts = [kds_pb2.Resource(type="Mesh", name=n) for n in ("ok", "bad-1", "bad-2")]
    await session._receive(kds_pb2.Changes(nonce="n1", type="Mesh", upserts=upserts))
    await session._receive(kds_pb2.Changes(nonce="n2", type="Mesh", upserts=upserts[:1]))
    acks = [session._queue.get_nowait().ack for _ in range(2)]
    assert [(a.nonce, a.nack, [r.key.name for r in a.rejected]) for a in acks] == [
        ("n1", True, ["bad-1", "bad-2"]),
        ("n2", False, []),
    ]
    assert acks[0].error == "2 of 3 resources refused, the others applied; Mesh//bad-1: not today"
    stat = stats.by_type["Mesh"].as_dict()
    assert (stat["requestsReceived"], stat["requestsRejected"], stat["requestResourcesRejected"]) == (2, 1, 2)
