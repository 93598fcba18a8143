"""The diagnostics server on :5680: Prometheus /metrics, /healthz (alive) and /ready (serving)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

ReadyCheck = Callable[[], bool]
READY: web.AppKey[ReadyCheck] = web.AppKey("ready")


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def ready(request: web.Request) -> web.Response:
    if request.app[READY]():
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready\n")


def build_diagnostics_app(is_ready: ReadyCheck) -> web.Application:
    app = web.Application()
    app[READY] = is_ready
    app.router.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/ready", ready)])
    return app
