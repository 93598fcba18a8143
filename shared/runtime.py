"""A running control plane: the parts every mode has, assembled in order and torn down in reverse.

Mode-specific parts (the KDS server on global, the KDS client and xDS server on a zone)
are *components*: async context managers that receive the control plane and run while
it runs. Some run on every replica, others only on the leader (``shared/components.py``,
``shared/leadership.py``). `run()` is what `zonemesh-cp run` calls.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import Histogram
from zonemesh.shared.api.app import build_api_app
from zonemesh.shared.api.auth import ensure_admin_token
from zonemesh.shared.components import Component, ComponentManager
from zonemesh.shared.config import Config
from zonemesh.shared.diagnostics import build_diagnostics_app
from zonemesh.shared.duration import parse_duration
from zonemesh.shared.files import exposed
from zonemesh.shared.leadership import Elector, Term, elector_for
from zonemesh.shared.resources.manager import Mode, ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store import AlreadyExists, Store, StoreError
from zonemesh.shared.store.factory import EtcdAccess, open_store

from zonemesh import __version__

log = structlog.get_logger(__name__)

# A component factory; wrap it in ``components.Component(name, run, leader=True)`` when it must run
# on one replica only. A plain factory runs on every replica.
ComponentRun = Callable[["ControlPlane"], AbstractAsyncContextManager[Any]]


class StartupRefused(Exception):
    """A part of the control plane refuses to start (an invalid or expired license, ...).

    ``zonemesh-cp`` prints the message and exits with status 1; it must say exactly why."""


def refuse_exposed_secrets(config: Config) -> None:
    """Refuse to start while the data dir, the SQLite files or a private key in the data dir are
    open to group or others (or owned by another user), as PostgreSQL refuses such a data dir.

    Refused rather than fixed: the secrets were readable until now and may have been copied, which
    the operator must know (to rotate the keys and tokens), and a mode someone chose or a tool
    keeps setting would be silently overridden. Checked before anything is created or opened."""
    data_dir = config.resolved_data_dir.resolve()
    # Every private key the control plane writes in its data dir is a *.key (shared/tls.py).
    checks = {path: "" for path in [data_dir, *sorted(data_dir.glob("*.key"))]}
    if config.store == "sqlite":
        db = config.sqlite_path
        # SQLite creates its -wal and -shm files in the database's directory: private too, even
        # outside the data dir (store_path), where it may be a directory others use as well.
        own = f"chmod 700 {db.parent} if only zonemesh uses it, else give store_path a directory of its own"
        checks.setdefault(db.parent, own)
        checks.update({db: "", db.with_name(db.name + "-wal"): "", db.with_name(db.name + "-shm"): ""})
    problems = [problem for path, fix in checks.items() if (problem := exposed(path, fix))]
    if problems:
        raise StartupRefused("; ".join(problems))


def etcd_access(config: Config) -> EtcdAccess:
    return EtcdAccess(
        ca_file=config.etcd_ca_file,
        cert_file=config.etcd_cert_file,
        key_file=config.etcd_key_file,
        username=config.etcd_username,
        password=config.etcd_password,
        password_file=config.etcd_password_file,
    )


CLUSTER_ID_SECRET = "cluster-id"


async def ensure_cluster_id(store: Store) -> str:
    """The control plane's cluster id (Kuma's ``clusterId``): a UUID made by the first replica to
    start on the store and kept there (a GlobalSecret, never synced), so every replica and every
    restart gives the same one. It names the control plane and holds nothing secret."""
    for _ in range(2):  # a replica that loses the race to create it reads the winner's
        found = await store.find("GlobalSecret", CLUSTER_ID_SECRET)
        if found is not None:
            return base64.b64decode(found.spec["data"]).decode()
        with contextlib.suppress(AlreadyExists):
            data = base64.b64encode(str(uuid.uuid4()).encode()).decode()
            await store.create(Resource(type="GlobalSecret", name=CLUSTER_ID_SECRET, spec={"data": data}))
    raise StartupRefused(f"global secret {CLUSTER_ID_SECRET} could not be created nor read")


@dataclass
class Assembly:
    """What a mode adds to the common control plane: components that run alongside the API
    (KDS server/client, xDS server, ...) and extra API routes (token issuance, insights, ...)."""

    components: list[Component | ComponentRun] = field(default_factory=list)
    routes: list[web.RouteDef] = field(default_factory=list)


class ControlPlane:
    def __init__(self, config: Config, assembly: Assembly | None = None) -> None:
        self.config = config
        self.mode = Mode(config.mode)
        self.assembly = assembly or Assembly()
        self.instance_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.cluster_id = ""  # read from the store at start: ensure_cluster_id
        self.ready = False
        self._stack = AsyncExitStack()
        self.store: Store
        self.manager: ResourceManager
        self.api_app: web.Application
        self.elector: Elector
        self.components: ComponentManager | None = None
        self.term: Term | None = None  # set while this replica leads (the component manager)

    @property
    def leader_store(self) -> Store:
        """What leader components write through: writes commit only while this replica's term lasts."""
        if self.term is None:
            raise RuntimeError("not the leader: leader components run only while this replica leads")
        return self.term.store

    async def _leader_status(self, request: web.Request) -> web.Response:
        """GET /status/leader: whether this replica leads, its term, the leader seen (docs/ha.md)."""
        return web.json_response(self.elector.describe())

    def index(self) -> dict[str, Any]:
        """Kuma's index: ``instanceId`` names this process, ``clusterId`` the control plane (every
        replica sharing its store), ``gui`` the GUI's path ("" when it is off)."""
        return {
            "hostname": socket.gethostname(),
            "tagline": "zonemesh",
            "product": "zonemesh",
            "version": __version__,
            "instanceId": self.instance_id,
            "clusterId": self.cluster_id,
            "mode": self.mode.value,
            "zone": self.config.zone or None,
            "gui": "/gui" if self.config.api_gui_enabled else "",
        }

    async def start(self) -> None:
        config = self.config
        refuse_exposed_secrets(config)
        if config.store == "sqlite":
            config.resolved_data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self.store = await open_store(config.store_url(), etcd_access(config))
        except StoreError as exc:  # etcd unreachable, or refusing our certificate or user
            raise StartupRefused(str(exc)) from None
        self._stack.push_async_callback(self.store.close)
        self.manager = ResourceManager(self.store, mode=self.mode, zone=config.zone)
        info = {"mode": self.mode.value, "zone": config.zone or None}
        self.elector = elector_for(self.store, self.instance_id, int(parse_duration(config.leader_lease_ttl)), info)

        await ensure_admin_token(self.store)
        self.cluster_id = await ensure_cluster_id(self.store)
        # On a federated zone meshes (and their defaults) arrive from global.
        wants_default_mesh = self.mode is not Mode.ZONE and not config.defaults_skip_mesh_creation
        if wants_default_mesh and await self.manager.ensure_default_mesh():
            log.info("default_mesh_created")

        self.api_app = build_api_app(
            self.manager,
            self.index(),
            config.view(),
            [*self.assembly.routes, web.get("/status/leader", self._leader_status)],
            config.api_localhost_is_admin,
            gui=config.api_gui_enabled,
        )
        self.api_app[CONTROL_PLANE] = self
        await self._serve(self.api_app, config.api_address, config.api_port, "api")
        await self._serve(
            build_diagnostics_app(lambda: self.ready),
            config.diagnostics_address,
            config.diagnostics_port,
            "diagnostics",
        )
        components = ComponentManager(self, [*self.assembly.components, *self._store_components()], self.elector)
        await components.start()
        self.components = components
        self._stack.push_async_callback(components.stop)
        self.ready = True
        log.info(
            "control_plane_started",
            mode=self.mode.value,
            zone=config.zone or None,
            store=config.store,
            api_port=config.api_port,
            localhost_is_admin=config.api_localhost_is_admin,
            diagnostics_port=config.diagnostics_port,
            pid=os.getpid(),
            instance=self.instance_id,
            leader=self.elector.is_leader(),
        )

    def _store_components(self) -> list[Component]:
        """What the store needs done once, by the leader: etcd's history compacted."""
        from zonemesh.shared.store.etcd import EtcdStore
        from zonemesh.shared.store.etcd_compaction import compactor

        interval = parse_duration(self.config.etcd_compaction_interval)
        if isinstance(self.store, EtcdStore) and interval > 0:
            return [Component("etcd-compactor", compactor(interval), leader=True)]
        return []

    async def _serve(self, app: web.Application, host: str, port: int, name: str) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        log.info("listening", server=name, address=host, port=port)

    async def stop(self) -> None:
        self.ready = False
        await self._stack.aclose()
        log.info("control_plane_stopped")


# Handlers of mode-specific routes reach the running control plane through this key.
CONTROL_PLANE = web.AppKey("control_plane", ControlPlane)


# The garbage collector's young generation threshold (CPython's default: 700). A zone with
# 2,000 proxies holds ~450,000 tracked objects (mostly gRPC's and asyncio's per stream), and a
# mesh-wide change allocates ~100,000 that survive (new snapshots, watches): with the defaults a
# full collection (~0.3 s with the loop stopped) came every 2-3 changes and delayed one change's
# delivery by as much. Collecting the young generation less often, and freezing what startup
# made (modules, the app: alive as long as the process), keeps full collections rare. The young
# generation's count is what was allocated less what was freed: a round replaces the snapshots of
# the one before, so its net growth is small, and at 100,000 a young collection comes every few
# mesh-wide changes (walking what is alive then) instead of after each (at 10,000: ~56 ms each
# at 2,000 proxies, bench/xds_zone.py gc_seconds_during_changes).
GC_THRESHOLDS = (100_000, 20, 10)


def tune_gc() -> None:
    """Once the control plane has started: freeze what exists, collect less often, and time
    every collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    if _time_collection not in gc.callbacks:
        gc.callbacks.append(_time_collection)


# A collection stops the event loop, and the leader's lease keeper thread with it (it holds the
# GIL), for as long as it walks the generation's tracked objects: a full one takes seconds once a
# process holds millions of them (global at 100,000 Dataplanes). Long ones are logged, since they
# are what ends a leader's term ("event_loop_stalled") without any other sign.
GC_PAUSE = Histogram(
    "gc_pause_seconds",
    "How long each garbage collection stopped the process, by generation",
    ["generation"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
GC_PAUSE_LOGGED = 0.5  # seconds
_collection_started = 0.0


def _time_collection(phase: str, info: dict[str, int]) -> None:
    global _collection_started
    if phase == "start":
        _collection_started = time.perf_counter()
        return
    seconds = time.perf_counter() - _collection_started
    GC_PAUSE.labels(str(info["generation"])).observe(seconds)
    if seconds >= GC_PAUSE_LOGGED:
        # Counting the tracked objects costs a fraction of the pause just logged.
        log.warning(
            "gc_pause",
            generation=info["generation"],
            seconds=round(seconds, 2),
            collected=info["collected"],
            tracked=len(gc.get_objects()),
            frozen=gc.get_freeze_count(),
        )


async def run(config: Config, assembly: Assembly | None = None) -> None:
    """Start, serve until SIGTERM/SIGINT, then shut down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    cp = ControlPlane(config, assembly)
    try:
        await cp.start()
        tune_gc()
        await stop.wait()
        log.info("shutdown_requested")
    finally:
        with contextlib.suppress(Exception):
            await cp.stop()
