"""cancel_and_wait: every task is cancelled and waited for; a real failure is not hidden.
run_to_completion: clean-up in a finally survives the handler being cancelled again."""

from __future__ import annotations

import asyncio

import pytest
from zonemesh.shared.aio import cancel_and_wait, run_to_completion


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


async def test_clean_up_run_to_completion_survives_a_second_cancellation() -> None:
    steps: list[str] = []
    started = asyncio.Event()

    async def clean_up() -> None:
        steps.append("closing")
        await asyncio.sleep(0.05)  # e.g. a store write marking the proxy offline
        steps.append("closed")

    async def handler() -> None:
        try:
            started.set()
            await asyncio.sleep(60)
        finally:
            await run_to_completion(clean_up())

    task = asyncio.create_task(handler())
    await started.wait()
    task.cancel()  # the peer went away
    await asyncio.sleep(0.01)
    assert steps == ["closing"]
    task.cancel()  # and the server cancels again while the clean-up awaits
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    assert steps == ["closing", "closed"]


async def test_without_it_a_second_cancellation_cuts_the_clean_up_short() -> None:
    """Why run_to_completion exists: the same handler with a plain await loses its last step."""
    steps: list[str] = []
    started = asyncio.Event()

    async def handler() -> None:
        try:
            started.set()
            await asyncio.sleep(60)
        finally:
            steps.append("closing")
            await asyncio.sleep(0.05)
            steps.append("closed")

    task = asyncio.create_task(handler())
    await started.wait()
    task.cancel()
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    assert steps == ["closing"]
