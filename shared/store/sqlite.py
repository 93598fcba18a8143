"""SQLite store: the embedded default backend, one local file that survives restarts.

sqlite3 calls block, so every one of them runs on a single dedicated worker thread. One
thread means one connection, so transactions never interleave inside this process and no
connection pool or locking of our own is needed; the event loop only awaits futures.

WAL with ``synchronous=NORMAL``: readers never block the writer, and a commit costs no fsync
(the WAL is synced at checkpoints). A power loss may drop the last few commits but never
corrupts the file, which is the usual trade for an embedded control-plane store.

Rows keep the key columns, the version (for the optimistic ``UPDATE ... WHERE version = ?``)
and the labels (for filtering in SQL) next to the full JSON record, which is the only thing
read back into a Resource.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Self, TypeVar

from zonemesh.shared.resources.model import Resource, ResourceKey, now, parse_time
from zonemesh.shared.store.base import (
    NO_FILTER,
    AlreadyExists,
    Conflict,
    Event,
    EventHub,
    EventKind,
    ListFilter,
    ListResult,
    NotFound,
    Store,
    StoreError,
    Watch,
    page_bounds,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    type    TEXT    NOT NULL,
    mesh    TEXT    NOT NULL,
    name    TEXT    NOT NULL,
    version INTEGER NOT NULL,
    labels  TEXT    NOT NULL,
    record  TEXT    NOT NULL,
    PRIMARY KEY (type, mesh, name)
)
"""

# A label selector as SQL: json_each avoids building a JSON path from the label key, so keys
# with dots, slashes or quotes ("zonemesh.io/origin") need no escaping.
_LABEL_MATCH = "EXISTS (SELECT 1 FROM json_each(labels) WHERE json_each.key = ? AND json_each.value = ?)"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _decode(record: str) -> Resource:
    return Resource.from_record(json.loads(record))


_CREATED_PREFIX = '{"creationTime":'


def _creation_time(record: str) -> datetime | None:
    """A stored record's creation time, read without decoding the whole record (an update keeps
    it: decoding every insight a batch rewrites cost more than writing it). Records are dumped
    with sorted keys (``_dumps``), so ``creationTime`` is the first key of the top-level object."""
    if record.startswith(_CREATED_PREFIX):
        value = record[len(_CREATED_PREFIX) : record.find(",", len(_CREATED_PREFIX))]
        if value == "null":
            return None
        if len(value) >= 2 and value[0] == value[-1] == '"' and "\\" not in value:
            return parse_time(value[1:-1])
    return _decode(record).creation_time  # written some other way: read it whole


class SqliteStore(Store):
    """A Store in one SQLite file. ``SqliteStore(path)`` is usable at once; ``await
    SqliteStore.open(path)`` also surfaces a bad path or a corrupt file before first use."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._hub = EventHub()
        self._closed = False
        self._conn: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zonemesh-sqlite")
        # The worker runs jobs in submission order, so every later job finds the schema ready
        # (or re-raises why it is not) without the constructor having to await anything.
        self._ready: Future[None] = self._executor.submit(self._connect)

    @classmethod
    async def open(cls, path: str | Path) -> Self:
        store = cls(path)
        try:
            await asyncio.wrap_future(store._ready)
        except BaseException:
            await store.close()
            raise
        return store

    # --- worker-thread side -------------------------------------------------------------

    def _connect(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # The file holds every secret of the mesh: created owner-only, whatever the umask.
            # SQLite gives its -wal and -shm files the database file's mode.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE
        # itself, so the write lock is taken before the read that decides the write.
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Another process (zmctl, a second CP during an upgrade) may hold the write lock.
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _db(self) -> sqlite3.Connection:
        self._ready.result()  # already done: re-raises an open failure for every call
        assert self._conn is not None
        return self._conn

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreError(f"the SQLite store {self.path} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @staticmethod
    def _current(conn: sqlite3.Connection, key: ResourceKey) -> tuple[int, str] | None:
        row = conn.execute(
            "SELECT version, record FROM resources WHERE type = ? AND mesh = ? AND name = ?", key
        ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    @staticmethod
    def _insert(conn: sqlite3.Connection, res: Resource) -> None:
        conn.execute(
            "INSERT INTO resources (type, mesh, name, version, labels, record) VALUES (?, ?, ?, ?, ?, ?)",
            (res.type, res.mesh, res.name, res.version, _dumps(res.labels), _dumps(res.to_record())),
        )

    def _get_sync(self, key: ResourceKey) -> Resource:
        current = self._current(self._db(), key)
        if current is None:
            raise NotFound(key)
        return _decode(current[1])

    def _create_sync(self, res: Resource) -> Resource:
        stored = res.copy()
        stored.version = 1
        stored.creation_time = stored.modification_time = now()
        try:
            self._transaction(lambda conn: self._insert(conn, stored))
        except sqlite3.IntegrityError:
            raise AlreadyExists(res.key) from None
        return stored

    def _update_sync(self, res: Resource) -> Resource:
        def work(conn: sqlite3.Connection) -> Resource:
            current = self._current(conn, res.key)
            if current is None:
                raise NotFound(res.key)
            version, record = current
            if version != res.version:
                raise Conflict(res.key, res.version, version)
            stored = res.copy()
            stored.version = version + 1
            stored.creation_time = _creation_time(record)
            stored.modification_time = now()
            # The version guard is redundant under BEGIN IMMEDIATE, and kept so that this
            # statement stays correct on its own if the read above ever moves out of the txn.
            cursor = conn.execute(
                "UPDATE resources SET version = ?, labels = ?, record = ? "
                "WHERE type = ? AND mesh = ? AND name = ? AND version = ?",
                (stored.version, _dumps(stored.labels), _dumps(stored.to_record()), *res.key, version),
            )
            if cursor.rowcount != 1:
                raise Conflict(res.key, res.version, version)
            return stored

        return self._transaction(work)

    def _delete_sync(self, key: ResourceKey, version: int | None) -> Resource:
        def work(conn: sqlite3.Connection) -> Resource:
            current = self._current(conn, key)
            if current is None:
                raise NotFound(key)
            if version is not None and current[0] != version:
                raise Conflict(key, version, current[0])
            conn.execute("DELETE FROM resources WHERE type = ? AND mesh = ? AND name = ?", key)
            return _decode(current[1])

        return self._transaction(work)

    def _batch_sync(
        self, upserts: list[Resource], deletes: list[ResourceKey], expected: dict[ResourceKey, int]
    ) -> list[Event]:
        ts = now()

        def work(conn: sqlite3.Connection) -> list[Event]:
            for key, version in expected.items():  # in the transaction: a Conflict rolls it back
                current = self._current(conn, key)
                if (current[0] if current else 0) != version:
                    raise Conflict(key, version, current[0] if current else 0)
            events: list[Event] = []
            for res in upserts:
                current = self._current(conn, res.key)
                stored = res.copy()
                stored.modification_time = ts
                if current is None:
                    stored.version, stored.creation_time = 1, ts
                    self._insert(conn, stored)
                    events.append(Event(EventKind.CREATED, stored))
                else:
                    stored.version = current[0] + 1
                    stored.creation_time = _creation_time(current[1])
                    conn.execute(
                        "UPDATE resources SET version = ?, labels = ?, record = ? "
                        "WHERE type = ? AND mesh = ? AND name = ?",
                        (stored.version, _dumps(stored.labels), _dumps(stored.to_record()), *res.key),
                    )
                    events.append(Event(EventKind.UPDATED, stored))
            for key in deletes:
                current = self._current(conn, key)
                if current is not None:
                    conn.execute("DELETE FROM resources WHERE type = ? AND mesh = ? AND name = ?", key)
                    events.append(Event(EventKind.DELETED, _decode(current[1])))
            return events

        return self._transaction(work)

    def _list_sync(
        self, type: str, mesh: str | None, filter: ListFilter, offset: str | None, size: int | None
    ) -> ListResult:
        """One page, filtered by everything SQL can decide; ``filter.predicate`` is list()'s job."""
        where, params = ["type = ?"], [type]
        if mesh is not None:
            where.append("mesh = ?")
            params.append(mesh)
        for label_key, label_value in (filter.labels or {}).items():
            where.append(_LABEL_MATCH)
            params += [label_key, label_value]
        if filter.name_contains:
            # instr, not LIKE: LIKE is case-insensitive and treats % and _ as wildcards.
            where.append("instr(name, ?) > 0")
            params.append(filter.name_contains)
        if filter.name_prefix:
            where.append(f"substr(name, 1, {len(filter.name_prefix)}) = ?")  # an int: no injection
            params.append(filter.name_prefix)
        sql_where = " AND ".join(where)
        conn = self._db()

        # Read and count in one snapshot, so that total and items agree.
        conn.execute("BEGIN")
        try:
            (total,) = conn.execute(f"SELECT COUNT(*) FROM resources WHERE {sql_where}", params).fetchone()
            start, end, next_offset = page_bounds(offset, size, total)
            rows = conn.execute(
                f"SELECT record FROM resources WHERE {sql_where} ORDER BY mesh, name LIMIT ? OFFSET ?",
                [*params, end - start, start],
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        return ListResult([_decode(row[0]) for row in rows], total, next_offset)

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- Store API ---------------------------------------------------------------------

    async def get(self, type: str, name: str, mesh: str = "") -> Resource:
        return await self._run(self._get_sync, ResourceKey(type, mesh, name))

    async def list(
        self,
        type: str,
        mesh: str | None = None,
        *,
        filter: ListFilter = NO_FILTER,
        offset: str | None = None,
        size: int | None = None,
    ) -> ListResult:
        if filter.predicate is None:
            return await self._run(self._list_sync, type, mesh, filter, offset, size)
        # A Python predicate cannot run in SQL: fetch everything else SQL can decide, then run
        # the predicate here on the event loop's thread (its closure may not be thread-safe).
        candidates = await self._run(self._list_sync, type, mesh, filter, None, None)
        matching = [res for res in candidates.items if filter.predicate(res)]
        start, end, next_offset = page_bounds(offset, size, len(matching))
        return ListResult(matching[start:end], len(matching), next_offset)

    async def create(self, res: Resource) -> Resource:
        stored = await self._run(self._create_sync, res)
        self._hub.publish([Event(EventKind.CREATED, stored.copy())])
        return stored

    async def update(self, res: Resource) -> Resource:
        stored = await self._run(self._update_sync, res)
        self._hub.publish([Event(EventKind.UPDATED, stored.copy())])
        return stored

    async def delete(self, type: str, name: str, mesh: str = "", *, version: int | None = None) -> Resource:
        gone = await self._run(self._delete_sync, ResourceKey(type, mesh, name), version)
        self._hub.publish([Event(EventKind.DELETED, gone.copy())])
        return gone

    async def batch(
        self,
        upserts: Iterable[Resource] = (),
        deletes: Iterable[ResourceKey] = (),
        *,
        expected: Mapping[ResourceKey, int] | None = None,
    ) -> None:
        # Materialise here: the iterables may be generators bound to the event loop's thread.
        events = await self._run(self._batch_sync, list(upserts), list(deletes), dict(expected or {}))
        self._hub.publish(events)

    def watch(self, types: Iterable[str] | None = None) -> Watch:
        return self._hub.subscribe(types)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hub.close()
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close_sync)
        finally:
            # The worker is idle now; wait=False keeps a blocking join off the event loop.
            self._executor.shutdown(wait=False)
