"""Small asyncio helpers shared by the control plane's long-running parts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
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
