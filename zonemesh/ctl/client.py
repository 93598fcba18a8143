"""A small synchronous client of the control plane's HTTP API (stdlib urllib: a CLI needs no event loop).

Every failure becomes a ``CtlError`` subclass with a message a user can act on: the API's
Kuma-format error body (title, detail, ``invalid_parameters``) for 4xx/5xx, and the address
plus the reason for a control plane that cannot be reached.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from zonemesh import __version__
from zonemesh.ctl.errors import CtlError

DEFAULT_TIMEOUT = 30.0
# Bound on pages followed by ``list_all``: 1000 pages of 1000 items is far beyond any real mesh.
MAX_PAGES = 1000
PAGE_SIZE = 1000


class ApiError(CtlError):
    """The control plane answered with an error status (its Kuma-format error body, decoded)."""

    def __init__(self, status: int, title: str, detail: str = "", invalid: list[tuple[str, str]] | None = None):
        self.status = status
        self.title = title
        self.detail = detail
        self.invalid_parameters = invalid or []
        text = f"{title} ({status})"
        # The server's detail repeats the field errors; they are listed one per line instead.
        if detail and detail != title and not self.invalid_parameters:
            text += f": {detail}"
        super().__init__(text, [f"{name}: {reason}" for name, reason in self.invalid_parameters])


class ConnectionFailed(CtlError):
    """The control plane could not be reached at all."""


def quote_name(name: str) -> str:
    """A resource name as one URL path segment (names are validated, but a typo must not change the path)."""
    return quote(name, safe="")


def next_offset(next_url: str | None) -> str | None:
    """The ``offset`` of a list's ``next`` link. The link's host is the server's view of itself (it may be
    wrong behind a proxy), so only the offset is reused and the request goes to the configured address."""
    if not next_url:
        return None
    values = parse_qs(urlsplit(next_url).query).get("offset")
    return values[0] if values else None


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiClient:
    def __init__(self, address: str, headers: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT):
        self.address = address.rstrip("/")
        self.headers = dict(headers or {})
        self.timeout = timeout
        # Like Go's net/http (kumactl): never send loopback traffic through an HTTP(S)_PROXY from the environment.
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(urlsplit(self.address).hostname) else []
        self._opener = urllib.request.build_opener(*handlers)

    # -- verbs ---------------------------------------------------------------------------

    def get(self, path: str, query: Mapping[str, str | list[str]] | None = None) -> Any:
        return self.request("GET", path, query=query)[1]

    def put(self, path: str, doc: Any) -> int:
        """PUT a document; returns the status (201 created, 200 updated)."""
        return self.request("PUT", path, body=doc)[0]

    def delete(self, path: str) -> None:
        self.request("DELETE", path)

    def list_all(self, path: str, query: Mapping[str, str | list[str]] | None = None) -> Iterator[dict[str, Any]]:
        """Every item of a collection, following the pages (bounded by MAX_PAGES)."""
        params: dict[str, str | list[str]] = {**(query or {}), "size": str(PAGE_SIZE)}
        for _ in range(MAX_PAGES):
            page = self.get(path, params)
            yield from page.get("items") or []
            offset = next_offset(page.get("next"))
            if offset is None:
                return
            params["offset"] = offset
        raise CtlError(f"GET {path}: more than {MAX_PAGES} pages; narrow the query")

    # -- transport -----------------------------------------------------------------------

    def url(self, path: str, query: Mapping[str, str | list[str]] | None = None) -> str:
        return self.address + path + (f"?{urlencode(query, doseq=True)}" if query else "")

    def request(
        self, method: str, path: str, *, query: Mapping[str, str | list[str]] | None = None, body: Any = None
    ) -> tuple[int, Any]:
        """Send one request; returns (status, decoded JSON body or text). Raises ApiError for status >= 400."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "User-Agent": f"zmctl/{__version__}", **self.headers}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url(path, query), data=data, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=self.timeout) as response:
                return response.status, _decode(response.read(), response.headers.get_content_type())
        except urllib.error.HTTPError as exc:
            with exc:
                raise _api_error(exc.code, exc.reason, exc.read(), exc.headers.get_content_type()) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except TimeoutError:
            raise ConnectionFailed(
                f"the control plane at {self.address} did not answer within {self.timeout:g}s ({method} {path})"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, reason: object) -> ConnectionFailed:
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, TimeoutError):
            why = f"no answer within {self.timeout:g}s"
        elif isinstance(reason, socket.gaierror):
            why = f"cannot resolve the host ({reason.strerror})"
        else:
            why = str(reason) or type(reason).__name__
        return ConnectionFailed(
            f"cannot reach the control plane at {self.address}: {why}",
            [
                "is it running? Point zmctl at it with --cp-address URL, or "
                "zmctl config control-planes add --name NAME --address URL"
            ],
        )


def _decode(raw: bytes, content_type: str) -> Any:
    text = raw.decode("utf-8", errors="replace")
    if content_type == "application/json" or text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            return text
    return text


def _api_error(status: int, reason: str, raw: bytes, content_type: str) -> ApiError:
    body = _decode(raw, content_type)
    if not isinstance(body, dict):
        # Not the API's error format (a proxy in between, or not a zonemesh CP at all): show what came back.
        text = body.strip()[:300] if isinstance(body, str) else ""
        return ApiError(status, reason or "HTTP error", text)
    invalid = [
        (str(p.get("field", "")), str(p.get("reason", "")))
        for p in body.get("invalid_parameters") or []
        if isinstance(p, dict)
    ]
    detail = body.get("detail") or body.get("details") or ""
    return ApiError(status, str(body.get("title") or reason or "HTTP error"), str(detail), invalid)
