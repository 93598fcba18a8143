"""cancel_and_wait: every task is cancelled and waited for; a real failure is not hidden."""

from __future__ import annotations

import asyncio

import pytest
from zonemesh.shared.aio import cancel_and_wait


async def test_cancels_every_task_and_waits_for_its_cleanup() -> None:
    cleaned: list[int] = []

    async def worker(i: int) -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits: still finished before we return
            cleaned.append(i)

    tasks = [asyncio.create_task(worker(i)) for i in range(3)]
    await asyncio.sleep(0)
    await cancel_and_wait([*tasks, None])
    assert sorted(cleaned) == [0, 1, 2]
    assert all(task.cancelled() for task in tasks)


async def test_a_task_that_failed_on_its_own_raises() -> None:
    async def broken() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0.01)
    with pytest.raises(ValueError, match="boom"):
        await cancel_and_wait([task])


async def test_nothing_to_do() -> None:
    await cancel_and_wait([None])
    await cancel_and_wait([])
