"""The proxy's readiness endpoint: ``GET /ready`` on 127.0.0.1:``--readiness-port`` (9902).

Health checks (compose, systemd, load balancers on the host) used to read Envoy's admin
``/ready``; the admin API is now on a private Unix socket (admin.py), so the agent answers
for it here, and answers nothing else: 200 ``LIVE`` when Envoy's own ``/ready`` says ``LIVE``,
503 otherwise (Envoy starting, restarting, stopped or not answering within its timeout, or the
agent shutting down), 404 for every other path and 405 for other methods. It never forwards a
request to the admin API: whoever can reach this port learns one word.
"""

from __future__ import annotations

import asyncio

import aiohttp
import structlog
from aiohttp import web

from zonemesh.dp.admin import AdminAddress, admin_request

log = structlog.get_logger("zonemesh.dp")

DEFAULT_READINESS_PORT = 9902  # as kuma-dp's readiness reporter
READINESS_ADDRESS = "127.0.0.1"
ENVOY_TIMEOUT = 2.0  # seconds for Envoy's /ready to answer; a probe is answered within about that
# Envoy's server states (admin /ready); anything else Envoy might say is reported as NOT_READY.
ENVOY_STATES = ("LIVE", "PRE_INITIALIZING", "INITIALIZING", "DRAINING")
NOT_READY = "NOT_READY"
TERMINATING = "TERMINATING"


async def envoy_state(admin: AdminAddress) -> str:
    """Envoy's server state from its admin ``/ready``; NOT_READY when it does not answer in time."""
    try:
        _, body = await admin_request(admin, "GET", "/ready", ENVOY_TIMEOUT)
    except (OSError, aiohttp.ClientError, TimeoutError):
        return NOT_READY
    state = body.strip()
    return state if state in ENVOY_STATES else NOT_READY


class ReadinessServer:
    """``GET /ready`` on 127.0.0.1:``port``; answers 503 TERMINATING once ``terminating`` is set."""

    def __init__(self, port: int, admin: AdminAddress, terminating: asyncio.Event) -> None:
        self.port = port
        self.admin = admin
        self.terminating = terminating
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen; raises OSError when the port is taken."""
        app = web.Application()
        app.router.add_get("/ready", self._ready, allow_head=False)
        # No access log: a probe every few seconds would drown the agent's own events.
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, READINESS_ADDRESS, self.port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("readiness_listening", address=f"{READINESS_ADDRESS}:{self.port}", envoy_admin=str(self.admin))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _ready(self, request: web.Request) -> web.Response:
        state = TERMINATING if self.terminating.is_set() else await envoy_state(self.admin)
        return web.Response(
            status=200 if state == "LIVE" else 503,
            text=state,
            headers={"Cache-Control": "no-cache, max-age=0"},
        )
