"""In-process KDS pieces for unit tests: a real global KDS server (grpc.aio, TLS, 127.0.0.1)
over a memory store, and real zone clients, all in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zonemesh.global_cp.kds_server import GlobalKds, trust_publisher
from zonemesh.shared.config import Config
from zonemesh.shared.store import Store
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.zone_cp.kds_client import KdsClient
from zonemesh.zone_cp.view import ZoneView


@dataclass
class FakeCP:
    config: Config
    store: Store
    instance_id: str

    @property
    def leader_store(self) -> Store:  # one process: it leads
        return self.store


@contextlib.asynccontextmanager
async def running_global(
    tmp_path: Path, store: Store | None = None, **options: Any
) -> AsyncIterator[tuple[GlobalKds, Store]]:
    store = store or MemoryStore()
    config = Config(mode="global", kds_address="127.0.0.1", kds_port=0, data_dir=str(tmp_path / "global"), **options)
    kds = GlobalKds(config)
    cp = FakeCP(config, store, "global-test")
    async with trust_publisher(cp), kds.run(cp):
        yield kds, store


@contextlib.asynccontextmanager
async def running_zone(
    tmp_path: Path,
    zone: str,
    port: int,
    token: str,
    store: Store | None = None,
    ca_file: str | None = None,
    skip_verify: bool = False,
    view: ZoneView | None = None,
) -> AsyncIterator[KdsClient]:
    """``ca_file``: default global's self-signed certificate; "" none (the system CA bundle, or
    nothing with ``skip_verify``). ``view``: the zone's view of ``store`` (started), read as a zone
    CP's KDS client reads it."""
    store = store or MemoryStore()
    token_file = tmp_path / f"{zone}.token"
    token_file.write_text(token)
    config = Config(
        mode="zone",
        zone=zone,
        global_address=f"grpcs://127.0.0.1:{port}",
        zone_token_file=str(token_file),
        global_ca_file=str(tmp_path / "global" / "kds-tls.crt") if ca_file is None else ca_file,
        global_tls_skip_verify=skip_verify,
        data_dir=str(tmp_path / zone),
    )
    client = KdsClient(config, store, f"{zone}-test", debounce=0.0, view=view)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


async def eventually(predicate: Callable[[], Any], within: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.02)
    raise TimeoutError(f"timed out after {within}s waiting for {what}")
