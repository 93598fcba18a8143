"""Kuma-format API errors, and the middleware that maps exceptions onto them.

Body: ``{"type": "/std-errors", "status", "title", "detail", "invalid_parameters": [{"field", "reason"}],
"details"}`` (``details`` is the deprecated twin of ``detail`` that older kumactl reads).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import structlog
from aiohttp import web
from zonemesh.shared.resources.manager import ReadOnly
from zonemesh.shared.resources.registry import UnknownType
from zonemesh.shared.resources.schema import FieldError, ValidationError
from zonemesh.shared.store import AlreadyExists, Conflict, InvalidOffset, NotFound, StoreUnavailable

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, title: str, detail: str = "", invalid: Iterable[FieldError] = ()) -> web.Response:
    body = {
        "type": "/std-errors",
        "status": status,
        "title": title,
        "detail": detail or title,
        "details": detail or title,
        "invalid_parameters": [e.as_dict() for e in invalid],
    }
    return web.json_response(body, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ValidationError as exc:
        return error_response(400, exc.title, "; ".join(f"{e.field}: {e.reason}" for e in exc.errors), exc.errors)
    except (NotFound, UnknownType) as exc:
        return error_response(404, "Not found", str(exc).strip("'\""))
    except (AlreadyExists, Conflict) as exc:
        return error_response(409, "Conflict", str(exc))
    except ReadOnly as exc:
        return error_response(405, "Method not allowed", str(exc))
    except InvalidOffset as exc:
        return error_response(400, "Invalid offset", str(exc), [FieldError("offset", str(exc))])
    except StoreUnavailable as exc:
        # etcd down or cut off: nothing can be read or written now; retrying later is the fix.
        log.warning("api_store_unavailable", method=request.method, path=request.path, error=str(exc))
        response = error_response(503, "Store unavailable", str(exc))
        response.headers["Retry-After"] = "5"
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        response = error_response(exc.status, exc.reason, detail)
        if "WWW-Authenticate" in exc.headers:  # a 401 says how to authenticate (RFC 9110)
            response.headers["WWW-Authenticate"] = exc.headers["WWW-Authenticate"]
        return response
    except Exception:
        log.exception("api_internal_error", method=request.method, path=request.path)
        return error_response(
            500, "Internal server error", "the control plane failed to handle the request; see its logs"
        )
