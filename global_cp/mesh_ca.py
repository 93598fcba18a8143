"""Global creates each mesh's builtin CA, so that every zone uses the same root.

Cross-zone mTLS runs end to end between proxies of different zones: both must trust one CA.
Whenever a Mesh with an enabled builtin mTLS backend is created or changed on global, its CA
secrets (``{mesh}.ca-builtin-cert-{backend}``, ``{mesh}.ca-builtin-key-{backend}``) are
generated here if missing; KDS then carries them to every zone with the mesh (Secret is a
global→zones type), and federated zones never generate their own (``BuiltinCA(generate=False)``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog
from zonemesh.shared.ca import BuiltinCA
from zonemesh.shared.ca.builtin import builtin_backend
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store import Store

log = structlog.get_logger(__name__)


async def ensure_mesh_ca(ca: BuiltinCA, mesh: Resource) -> bool:
    """Create the CA of ``mesh`` when it uses builtin mTLS; True when it has one now."""
    settings = builtin_backend(mesh)
    if settings is None:
        return False
    await ca.ensure_ca(mesh.name, settings)
    return True


class MeshCaKeeper:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.ca = BuiltinCA(store)

    async def _ensure(self, mesh: Resource) -> None:
        try:
            await ensure_mesh_ca(self.ca, mesh)
        except Exception as exc:  # a bad mesh must not stop the others
            log.error("mesh_ca_failed", mesh=mesh.name, error=str(exc))

    async def _run(self) -> None:
        async with self.store.watch(["Mesh"]) as watch:
            for mesh in (await self.store.list("Mesh")).items:
                await self._ensure(mesh)
            async for event in watch:
                current = await self.store.find("Mesh", event.resource.name)
                if current is not None:
                    await self._ensure(current)


@contextlib.asynccontextmanager
async def component(cp: Any) -> AsyncIterator[MeshCaKeeper]:
    """Leader-only (global_cp/app.py): one replica creates CAs, its writes fenced by its term.
    CA rotation belongs here too, for the same reason."""
    keeper = MeshCaKeeper(cp.leader_store)
    task = asyncio.create_task(keeper._run(), name="global-mesh-ca")
    try:
        yield keeper
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
