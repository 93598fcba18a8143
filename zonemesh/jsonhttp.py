"""One JSON request over HTTP with the standard library: what the lab (``zonemesh-lab check``,
``chaos``) and the test helpers (``zonemesh.testing``) both need, with no dependency on either."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, Any]:
    """One JSON request; returns (status, decoded body or text). Never raises for HTTP errors;
    raises OSError when nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    return status, decoded(raw)


def decoded(raw: bytes) -> Any:
    """The body as JSON, or as text when it is not JSON."""
    text = raw.decode()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
