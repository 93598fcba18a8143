"""The mesh CA keeper: creates each mesh's builtin CAs and drives its CA rotations.

Runs where rotations are decided: on global (zones follow the MeshCAState KDS brings them, so
every zone moves in step), or on a standalone control plane. Two small steps per mesh, each
callable alone (a leader-elected component will run them on one replica only):

- ``ensure_cas(mesh)``: the CA of every builtin backend the Mesh lists exists (global makes it,
  so every zone gets one root; Kuma's EnsureBackends);
- ``decide(mesh)``: the next MeshCAState (state.py ``advance``) from the enabled backend's CA
  and every proxy's DataplaneInsight (zones upload theirs to global), written when it changed.

It runs both for every mesh at start, when a Mesh or a Secret of it changes, when a proxy's
insight changes while its mesh rotates, and every ``recheck`` seconds while one rotates.
A target CA that cannot be loaded (possible with ``mtls.skipValidation``, or a Secret that is
missing) leaves the state as it is: ``mesh_ca_rotation_blocked`` says why, proxies keep their CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from zonemesh.shared.ca.backend import backends, enabled_backend
from zonemesh.shared.ca.builtin import CaNotYetSynced
from zonemesh.shared.ca.material import CaProblem
from zonemesh.shared.ca.mesh import MeshCA
from zonemesh.shared.ca.metrics import CA_ROTATION_WAITING
from zonemesh.shared.ca.provided import SourceProblem
from zonemesh.shared.ca.state import STABLE, STATE_TYPE, CaEntry, advance, proxy_view, trusted_of
from zonemesh.shared.resources.model import Resource, now
from zonemesh.shared.store import AlreadyExists, Conflict, NotFound, Store

log = structlog.get_logger(__name__)

WATCHED = ("Mesh", "Secret", "DataplaneInsight")


class MeshCaKeeper:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        *,
        debounce: float = 0.2,
        recheck: float = 5.0,
    ) -> None:
        self.store = store
        self.ca = MeshCA(store, clock)
        self.debounce = debounce
        self.recheck = recheck
        self._dirty: set[str] = set()
        self._rotating: set[str] = set()  # meshes whose state is not Stable
        self._wake = asyncio.Event()

    # -- the two steps -----------------------------------------------------------------------

    async def ensure_cas(self, mesh: Resource) -> None:
        """Create the CA of each builtin backend the mesh lists, when missing."""
        for backend in backends(mesh):
            manager = self.ca.managers.get(backend.type)
            if manager is not None:
                await manager.ensure(backend, self.store)

    async def decide(self, mesh: Resource) -> dict[str, Any] | None:
        """Bring the mesh's MeshCAState one step on; returns it (None: mTLS is off, or the target
        CA cannot be loaded: the state stays as it is)."""
        backend = enabled_backend(mesh)
        state = await self.store.find(STATE_TYPE, mesh.name, mesh.name)
        if backend is None:
            if state is not None:
                with contextlib.suppress(NotFound):
                    await self.store.delete(STATE_TYPE, mesh.name, mesh.name)
                log.info("mesh_ca_state_removed", mesh=mesh.name, reason="mTLS is off")
            self._rotating.discard(mesh.name)
            CA_ROTATION_WAITING.labels(mesh=mesh.name).set(0)
            return None
        try:
            target = CaEntry.of(await self.ca.signing_ca(mesh, backend))
        except (CaProblem, SourceProblem, CaNotYetSynced, TimeoutError) as exc:
            log.error(
                "mesh_ca_rotation_blocked",
                mesh=mesh.name,
                backend=backend.name,
                reason=str(exc) or "timed out (rootChain.requestTimeout)",
            )
            return state.spec if state is not None else None
        insights = (await self.store.list("DataplaneInsight", mesh.name)).items
        spec = advance(
            state.spec if state is not None else None, target, [proxy_view(r.name, r.spec) for r in insights], now()
        )
        if spec["phase"] == STABLE:
            self._rotating.discard(mesh.name)
        else:
            self._rotating.add(mesh.name)
        CA_ROTATION_WAITING.labels(mesh=mesh.name).set(spec["waiting"]["count"])
        if state is not None and state.spec == spec:
            return spec
        await self._write(mesh.name, state, spec)
        before = state.spec.get("phase") if state is not None else None
        if before != spec["phase"] or state is None:
            log.info(
                "mesh_ca_rotation",
                mesh=mesh.name,
                phase=spec["phase"],
                target=spec["target"]["backend"],
                issuing=spec["issuing"]["backend"],
                trusted=[e.backend for e in trusted_of(spec)],
                waiting=spec["waiting"]["count"],
            )
        return spec

    async def _write(self, mesh: str, state: Resource | None, spec: dict[str, Any]) -> None:
        # Straight to the store: a system type, read-only through the API. A concurrent writer
        # (another replica) makes it fail: the next pass reads theirs and decides again.
        with contextlib.suppress(AlreadyExists, Conflict):
            if state is None:
                await self.store.create(Resource(type=STATE_TYPE, name=mesh, mesh=mesh, spec=spec))
            else:
                await self.store.update(dataclasses.replace(state, spec=spec))

    async def keep(self, mesh_name: str) -> None:
        mesh = await self.store.find("Mesh", mesh_name)
        if mesh is None:
            self._rotating.discard(mesh_name)
            return
        try:
            await self.ensure_cas(mesh)
            await self.decide(mesh)
        except Exception as exc:  # one mesh's failure must not stop the others
            log.error("mesh_ca_failed", mesh=mesh_name, error=str(exc))

    # -- running -------------------------------------------------------------------------------

    def _mark(self, mesh: str) -> None:
        self._dirty.add(mesh)
        self._wake.set()

    async def _watch(self) -> None:
        async with self.store.watch(WATCHED) as watch:
            for mesh in (await self.store.list("Mesh")).items:
                self._mark(mesh.name)
            async for event in watch:
                res = event.resource
                if res.type == "Mesh":
                    self._mark(res.name)
                elif res.type == "Secret" or res.mesh in self._rotating:
                    self._mark(res.mesh)

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.recheck if self._rotating else None):
                    await self._wake.wait()
            await asyncio.sleep(self.debounce)  # a burst of insight writes makes one pass
            self._wake.clear()
            dirty, self._dirty = self._dirty | self._rotating, set()
            for mesh in sorted(dirty):
                await self.keep(mesh)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[MeshCaKeeper]:
        tasks = [
            asyncio.create_task(self._watch(), name="mesh-ca-watch"),
            asyncio.create_task(self._loop(), name="mesh-ca-keeper"),
        ]
        try:
            yield self
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def component(cp: Any) -> AsyncIterator[MeshCaKeeper]:
    """The keeper as a leader-only control plane component (global, and control planes without a
    global): one replica creates CAs and writes MeshCAStates, through the store its leadership
    term fences (``cp.leader_store``)."""
    async with MeshCaKeeper(cp.leader_store).running() as keeper:
        yield keeper
