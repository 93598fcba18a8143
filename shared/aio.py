"""Small asyncio helpers shared by the control plane's long-running parts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable
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
