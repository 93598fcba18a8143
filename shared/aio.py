"""Small asyncio helpers shared by the control plane's long-running parts."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any] | None]) -> None:
    """Cancel ``tasks`` (None entries skipped), then wait for each to finish.

    All are cancelled before any is awaited, so they wind down together. Their CancelledError is
    expected and swallowed; any other exception a task ends with propagates.
    """
    pending = [task for task in tasks if task is not None]
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task


_UNCANCELLABLE: set[asyncio.Task[Any]] = set()


async def run_to_completion(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to its end even if the caller is cancelled meanwhile (again).

    For clean-up in a ``finally`` that must not be cut short: e.g. marking a proxy offline
    when its stream ends; a second cancellation of the handler would otherwise skip it and
    leave the proxy "online" for good. The caller still sees its CancelledError.
    """
    task = asyncio.ensure_future(coro)
    _UNCANCELLABLE.add(task)  # a strong reference: the loop keeps only weak ones
    task.add_done_callback(_UNCANCELLABLE.discard)
    await asyncio.shield(task)


_gc_pauses = 0  # blocks inside gc_paused() now (rounds of two reconcilers may overlap)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No automatic garbage collection while the block runs; after it, the young generation is
    collected at the next allocation if it grew past its threshold meanwhile.

    For a round of config generation: it allocates ~100,000 tracked objects at 2,000 proxies,
    most of them alive until the round ends (its MeshContext, SnapshotBuilder, the snapshots on
    their way). Collecting the young generation every 10,000 allocations (as shared/runtime.py did)
    walked them again and again while they were all still alive, ~6 collections per mesh-wide
    change; paused, what the round leaves is walked at most once. The event
    loop keeps running meanwhile (the round yields between slices), so other work allocates
    uncollected too, for as long as the round lasts. A process whose collector is off already
    (tests, tools) is left as it is."""
    global _gc_pauses
    if _gc_pauses == 0 and not gc.isenabled():
        yield
        return
    _gc_pauses += 1
    gc.disable()
    try:
        yield
    finally:
        _gc_pauses -= 1
        if _gc_pauses == 0:
            gc.enable()
