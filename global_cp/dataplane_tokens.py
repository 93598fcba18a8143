"""Dataplane tokens issued on global, and the trust zones check them with (shared/tokens/dataplane.py).

``POST /tokens/dataplane`` on global signs with the mesh's global keys
(``dataplane-token-global-signing-key-{mesh}-{serial}``) and publishes their public halves at once.
Leader-only, this component keeps each mesh's DataplaneTokenTrust in line when an operator adds
or deletes such a key (rotation): KDS carries the trust to every zone of the mesh, which then
closes the streams of tokens whose key is gone (zone_cp/admission.py ``CredentialWatch``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web
from zonemesh.shared.aio import cancel_and_wait
from zonemesh.shared.store import Store
from zonemesh.shared.tokens import dataplane as dptokens

log = structlog.get_logger(__name__)


def routes() -> list[web.RouteDef]:
    return dptokens.routes(at_global=True)


async def _publish(store: Store, mesh: str, why: str) -> None:
    try:
        if await dptokens.publish_trust(store, mesh):
            log.info("dataplane_token_trust_published", mesh=mesh, reason=why)
    except Exception as exc:  # one mesh's failure must not stop the others, nor the watch
        log.error("dataplane_token_trust_publish_failed", mesh=mesh, error=str(exc))


@contextlib.asynccontextmanager
async def trust_publisher(cp: Any) -> AsyncIterator[None]:
    """Leader-only: republish a mesh's trust whenever one of its global dataplane token keys changes."""
    store: Store = cp.leader_store

    async def follow(watch: Any) -> None:
        async for event in watch:
            if dptokens.is_global_signing_key(event.resource):
                await _publish(store, event.resource.mesh, f"{event.resource.name} {event.kind.value}")

    watch = store.watch(["Secret"])  # before the first pass: no key change falls in between
    try:
        for mesh in (await store.list("Mesh")).items:
            await _publish(store, mesh.name, "start")
    except BaseException:
        watch.close()
        raise
    task = asyncio.create_task(follow(watch), name="dataplane-token-trust")
    try:
        yield
    finally:
        await cancel_and_wait([task])
        watch.close()
