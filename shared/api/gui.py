"""The web GUI at ``/gui``: static files shipped in the package (``zonemesh/shared/gui``), no build step.

Every control plane serves it on its API port (``api_gui_enabled``, on by default). The pages are
plain ES modules that call this same API from the browser, same-origin, with the viewer's own
rights: a user token given to the GUI (sent as ``Authorization: Bearer``, kept in the tab's
``sessionStorage``), or, without one, whatever the API grants that browser (the admin for a direct
loopback client while ``api_localhost_is_admin`` is on: shared/api/auth.py). The files themselves
hold no data and are served to anyone, like the index.

What the pages may do is pinned by headers: scripts, styles and requests only from this origin
(CSP), never inside a frame (a framed GUI opened from loopback would lend its admin clicks to the
framing page), no MIME sniffing, no referrer.

``GET /gui/identity`` says who the API takes the caller for (never the token), so the GUI can say
what it may do and why.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from zonemesh.shared.api.auth import ADMIN_GROUP, authenticate

GUI_DIR = Path(__file__).resolve().parent.parent / "gui"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load (a 304 while unchanged): an upgraded control plane serves its new pages at once.
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str
    gzipped: bytes  # compressed once at start: the modules and stylesheet shrink to about a quarter


@functools.cache
def load_assets(root: Path = GUI_DIR) -> dict[str, Asset]:
    """Every file the GUI is made of, by its path under /gui/. Read once: nothing else is ever served."""
    assets: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        assets[path.relative_to(root).as_posix()] = Asset(body, content_type, etag, gzip.compress(body, mtime=0))
    return assets


def gui_routes(root: Path = GUI_DIR) -> list[web.RouteDef]:
    assets = load_assets(root)

    async def to_index(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/gui/")

    async def asset(request: web.Request) -> web.StreamResponse:
        found = assets.get(request.match_info["path"] or "index.html")
        if found is None:
            raise web.HTTPNotFound(reason="Not found", text=f"no file {request.path!r} in the GUI")
        gzipped = "gzip" in request.headers.get("Accept-Encoding", "")
        # Each encoding is its own representation, with its own validator.
        etag = found.etag[:-1] + '-gzip"' if gzipped else found.etag
        headers = {**SECURITY_HEADERS, "ETag": etag, "Vary": "Accept-Encoding"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = found.content_type
        if gzipped:
            return web.Response(body=found.gzipped, headers={**headers, "Content-Encoding": "gzip"})
        return web.Response(body=found.body, headers=headers)

    async def identity(request: web.Request) -> web.Response:
        who = await authenticate(request)
        return web.json_response(
            {
                "name": who.name,
                "groups": list(who.groups),
                "source": who.source,
                "admin": ADMIN_GROUP in who.groups,
                "whyNotAdmin": who.why_anonymous or None,
            },
            headers={"Cache-Control": "no-store"},
        )

    return [
        web.get("/gui", to_index),
        web.get("/gui/identity", identity),
        web.get("/gui/{path:.*}", asset),
    ]
