"""Compacting etcd's history: the leader does it every ``etcd_compaction_interval``, as
kube-apiserver does (every 5 minutes by default).

etcd keeps every revision of every key until it is compacted, and does not compact by itself
unless it was started with ``--auto-compaction-*``. Every write therefore grows its database: a
zone's insight every 5 s, every DataplaneInsight a zone rewrites after its proxies ACK a change.
Once the database reaches ``--quota-backend-bytes`` (2 GiB by default) etcd raises its NOSPACE
alarm and refuses every write (``mvcc: database space exceeded``) until it is compacted,
defragmented and the alarm disarmed by hand. bench/global_scale.py measured how soon that comes
(docs/ha.md#sizing).

Each round compacts up to the revision seen one interval earlier, so a watch that falls behind by
less than an interval resumes where it was; one further behind re-lists what is stored (the etcd
store's resync). A compaction is of the whole etcd, not only of this control plane's prefix.

The schedule lives in etcd (``<prefix>/etcd-compaction``: the revision seen and when), not in the
leader's memory: a new term carries on where the previous leader left off. Were it in memory, a
leader that changes more often than every interval (bench/global_scale.py at 100 zones saw 28 terms
in 17 minutes on a loaded machine) would never compact, and etcd's database would reach its quota.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aetcd
import structlog
from aetcd import rpc
from zonemesh.shared.aio import cancel_and_wait
from zonemesh.shared.store.etcd import EtcdStore

log = structlog.get_logger(__name__)


async def current_revision(store: EtcdStore) -> int:
    """etcd's revision now (the header of a count-only read of one key under this store's prefix).

    Under the prefix, not the prefix itself: with etcd auth, a control plane's role may read and
    write ``{prefix}/`` only (docs/deployment.md, "etcd auth"), and ``/zonemesh`` is not in it."""
    client = store.client
    await client.connect()
    response = await client.kvstub.Range(
        rpc.RangeRequest(key=f"{store.prefix}/".encode(), count_only=True),
        timeout=store.rpc_timeout,
        metadata=client.metadata,
    )
    return int(response.header.revision)


async def compact(store: EtcdStore, revision: int) -> bool:
    """Compact etcd up to ``revision``; False when it already was (by another compactor, or
    etcd's own auto-compaction)."""
    try:
        await store.client.compact(revision)
    except (aetcd.ClientError, rpc.AioRpcError) as exc:
        if "compacted" in str(exc):  # "mvcc: required revision has been compacted"
            return False
        raise
    return True


# The schedule, beside the resources: {"revision": etcd's revision at the last round, "at": its time}.
MARKER = "etcd-compaction"


async def compaction_round(store: EtcdStore, interval: float, now: float) -> float:
    """One round, if one is due: compact up to the revision the previous round saw (whichever
    replica led then), and record the current one. Returns the seconds until the next is due."""
    raw, mod_revision = await store.read_raw(MARKER)
    mark = _read_mark(raw)
    if mark is not None:
        since = now - mark[1]
        if 0 <= since < interval:  # a round this recent was made, maybe by the previous leader
            return interval - since
    revision = await current_revision(store)
    if not await store.swap_raw(MARKER, mod_revision, json.dumps({"revision": revision, "at": now}).encode()):
        return interval  # another replica made this round (it led a moment ago)
    if mark is not None and mark[0] > 1 and await compact(store, mark[0]):
        log.info("etcd_compacted", revision=mark[0], current=revision)
    return interval


def _read_mark(raw: bytes | None) -> tuple[int, float] | None:
    """The recorded (revision, time), or None when absent or unreadable (the round then starts over)."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return int(data["revision"]), float(data["at"])
    except (ValueError, TypeError, KeyError):
        log.warning("etcd_compaction_mark_unreadable", key=MARKER)
        return None


async def compact_every(store: EtcdStore, interval: float) -> None:
    """Forever: a round whenever one is due. etcd unreachable: log it and try again one interval
    later (nothing is lost by compacting later)."""
    while True:
        try:
            wait = await compaction_round(store, interval, time.time())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("etcd_compaction_failed", error=str(exc) or type(exc).__name__, retry_in=interval)
            wait = interval
        await asyncio.sleep(min(max(wait, 1.0), interval))


def compactor(interval: float) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """The leader component that compacts the control plane's etcd every ``interval`` seconds."""

    @contextlib.asynccontextmanager
    async def run(cp: Any) -> AsyncIterator[None]:
        task = asyncio.create_task(compact_every(cp.store, interval), name="etcd-compactor")
        try:
            yield
        finally:
            await cancel_and_wait([task])

    return run
