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
"""

from __future__ import annotations

import asyncio
import contextlib
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
    """etcd's revision now (the header of a count-only read of this store's prefix)."""
    client = store.client
    await client.connect()
    response = await client.kvstub.Range(
        rpc.RangeRequest(key=store.prefix.encode(), count_only=True),
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


async def compact_every(store: EtcdStore, interval: float) -> None:
    """Forever: compact up to the revision seen ``interval`` seconds ago. etcd unreachable: log it
    and try again at the next round (nothing is lost by compacting later)."""
    previous: int | None = None
    while True:
        try:
            revision = await current_revision(store)
            if previous is not None and previous > 1 and await compact(store, previous):
                log.info("etcd_compacted", revision=previous, current=revision)
            previous = revision
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("etcd_compaction_failed", error=str(exc) or type(exc).__name__, retry_in=interval)
        await asyncio.sleep(interval)


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
