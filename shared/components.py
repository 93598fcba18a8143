"""The component manager: what runs on every replica, and what runs on the leader only.

A component is an async context manager factory that receives the running control plane (the KDS
server, the xDS server, the license authority...). Each declares whether it needs leadership
(Kuma's ``NeedLeaderElection``):

- every-replica components are entered at start, in order, and left at shutdown in reverse;
- leader components are entered, in order, when this replica wins a term (``shared/leadership.py``)
  and left, in reverse, as soon as the term ends — before another replica can win the next one.
  They write through ``cp.leader_store`` (the term's fenced store).

At start every-replica components come first; then, if the first campaign round wins at once (always
so on SQLite and memory stores), the leader components are entered before the control plane reports
ready, and an error there refuses the start as before. A leader component that fails to start in a
later term is logged (``leader_components_failed``), the term is resigned so that another replica
may lead, and this one campaigns again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from zonemesh.shared.aio import cancel_and_wait
from zonemesh.shared.leadership import Elector, Term

if TYPE_CHECKING:
    from zonemesh.shared.runtime import ControlPlane

log = structlog.get_logger(__name__)

Run = Callable[["ControlPlane"], AbstractAsyncContextManager[Any]]
# How long the first campaign round may take before the control plane reports ready without
# knowing whether it leads (etcd slow to answer): leadership then follows in the background.
FIRST_ROUND = 10.0


@dataclass(frozen=True)
class Component:
    name: str
    run: Run
    leader: bool = False  # runs on one replica at a time: the leader's

    @staticmethod
    def of(item: Component | Run) -> Component:
        """Components as assemblies list them: a plain factory is an every-replica component."""
        if isinstance(item, Component):
            return item
        return Component(getattr(item, "__qualname__", repr(item)), item)


def leader(name: str, run: Run) -> Component:
    return Component(name, run, leader=True)


def every_replica(name: str, run: Run) -> Component:
    return Component(name, run)


class ComponentManager:
    def __init__(self, cp: ControlPlane, components: Sequence[Component | Run], elector: Elector) -> None:
        self.cp = cp
        self.components = [Component.of(c) for c in components]
        self.elector = elector
        self._stack = AsyncExitStack()  # every-replica components
        self._leading: AsyncExitStack | None = None  # leader components of the current term
        self._term: Term | None = None
        self._follow: asyncio.Task[None] | None = None

    @property
    def leader_components(self) -> list[Component]:
        return [c for c in self.components if c.leader]

    async def start(self) -> None:
        # Campaigning (and, on etcd, registering as a live member) first: the leader must not take
        # what this replica's components start writing for the work of a dead one.
        await self.elector.start()
        try:
            for component in self.components:
                if not component.leader:
                    await self._stack.enter_async_context(component.run(self.cp))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FIRST_ROUND):
                    await self.elector.settled()
            term = self.elector.current()
            if term is not None:
                await self.elector.next_term()  # the same term: taken here, not by the follower
            if term is not None:
                await self._lead(term)
        except BaseException:  # the start is refused: leave what was entered, resign
            await self._step_down("start refused")
            await self.elector.stop()
            await self._stack.aclose()
            raise
        self._follow = asyncio.create_task(self._follow_leadership(term), name="leader-components")

    async def stop(self) -> None:
        await cancel_and_wait([self._follow])
        await self._step_down("shutting down")
        await self.elector.stop()  # resigns: another replica leads at once
        await self._stack.aclose()

    async def _follow_leadership(self, term: Term | None) -> None:
        while True:
            if term is None:
                term = await self.elector.next_term()
                try:
                    await self._lead(term)
                except Exception as exc:
                    log.exception("leader_components_failed", term=term.number, error=str(exc))
                    await self._step_down("leader components failed")
                    await self.elector.resign(term, f"leader components failed to start: {exc}")
                    term = None
                    continue
            await term.lost.wait()
            await self._step_down(term.reason or "term ended")
            term = None

    async def _lead(self, term: Term) -> None:
        started = time.monotonic()
        self._term, self._leading = term, AsyncExitStack()
        self.cp.term = term
        for component in self.leader_components:
            await self._leading.enter_async_context(component.run(self.cp))
        log.info(
            "leader_components_started",
            term=term.number,
            components=[c.name for c in self.leader_components],
            seconds=round(time.monotonic() - started, 3),
        )

    async def _step_down(self, reason: str) -> None:
        stack, term = self._leading, self._term
        if stack is None or term is None:
            return
        self._leading = self._term = None
        started = time.monotonic()
        try:
            await stack.aclose()
        finally:
            if self.cp.term is term:
                self.cp.term = None
            term.released.set()  # the elector may now let another replica lead at once
        log.info(
            "leader_components_stopped", term=term.number, reason=reason, seconds=round(time.monotonic() - started, 3)
        )
