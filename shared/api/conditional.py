"""Conditional GETs for the API's computed answers (lists, overviews, insights, /license...).

A ``GET`` answered ``200`` with a body and no ``ETag`` of its own gets one: a digest of the body's
bytes, so it changes exactly when the answer does. A request whose ``If-None-Match`` names it is
answered ``304 Not Modified`` without the body. The answer is still computed (no cache sits in
front of the store, so it cannot be stale); what a poller saves is the transfer, and its own
parsing and re-rendering of an unchanged page (the GUI polls this way: docs/gui.md).

Item reads keep their ``ETag: "<version>"`` (what ``If-Match`` takes on writes) and are not
answered 304: a resource deleted and created again starts at the same version with other content.
"""

from __future__ import annotations

import hashlib

from aiohttp import web
from zonemesh.shared.api.errors import Handler


def body_etag(body: bytes) -> str:
    # "b-" keeps it apart from version ETags, which are digits.
    return '"b-' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def _matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110's weak comparison of an ``If-None-Match`` value against one ETag."""
    wanted = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


@web.middleware
async def conditional_get(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if request.method not in ("GET", "HEAD") or response.status != 200 or "ETag" in response.headers:
        return response
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return response  # a stream or a file: not ours to digest
    etag = body_etag(response.body)
    if _matches(request.headers.get("If-None-Match", ""), etag):
        return web.Response(status=304, headers={"ETag": etag})
    response.headers["ETag"] = etag
    return response
