"""A TCP forwarder the lab puts between a zone and global, so a partition is a real one.

A zone control plane dials global's KDS port through this proxy. ``partition(seconds)`` cuts
every open connection and refuses new ones until the time is up: the zone sees exactly what a
network partition does to it (stream reset, reconnect attempts failing), while both processes
keep running. Bytes are forwarded untouched: TLS stays end to end between zone and global.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

log = structlog.get_logger(__name__)

CHUNK = 64 * 1024


class ChaosProxy:
    def __init__(self, name: str, listen_port: int, target_port: int, host: str = "127.0.0.1") -> None:
        self.name = name
        self.listen_port = listen_port
        self.target_port = target_port
        self.host = host
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut_until = 0.0

    @property
    def partitioned_for(self) -> float:
        """Seconds of partition left (0 when traffic flows)."""
        return max(0.0, self._cut_until - time.monotonic())

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.listen_port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._drop_all()
        if self._server is not None:
            await self._server.wait_closed()

    def partition(self, seconds: float) -> None:
        self._cut_until = time.monotonic() + seconds
        dropped = len(self._writers)
        self._drop_all()
        log.warning("lab_partition", link=self.name, seconds=seconds, dropped_connections=dropped)

    def heal(self) -> None:
        self._cut_until = 0.0
        log.info("lab_partition_healed", link=self.name)

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.partitioned_for > 0:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
