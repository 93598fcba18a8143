"""Kuma-format API errors, and the middleware that maps exceptions onto them.

An error is ``application/problem+json`` (RFC 9457, as Kuma's OpenAPI document declares its
errors) with Kuma's body::

    {"type": "/std-errors", "status", "title", "detail", "instance",
     "invalid_parameters": [{"field", "reason", "source"}],
     "details", "causes": [{"field", "message"}]}

``details`` and ``causes`` are the deprecated twins of ``detail`` and ``invalid_parameters``
that Kuma still sends and older kumactl reads. ``instance`` names this one answer
(``zonemesh:error:<id>``); the control plane logs the same id (``api_error``, debug level; an
internal error at error level), so a user's report can be matched with the log line.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable

import structlog
from aiohttp import web
from zonemesh.shared.resources.manager import ReadOnly
from zonemesh.shared.resources.registry import UnknownType
from zonemesh.shared.resources.schema import FieldError, ValidationError
from zonemesh.shared.store import AlreadyExists, Conflict, InvalidOffset, NotFound, StoreUnavailable

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROBLEM_JSON = "application/problem+json"


def new_instance() -> str:
    return f"zonemesh:error:{uuid.uuid4().hex}"


def error_response(
    status: int,
    title: str,
    detail: str = "",
    invalid: Iterable[FieldError] = (),
    source: str = "body",
    instance: str = "",
) -> web.Response:
    """An error answer; ``source`` says where the ``invalid`` fields are (body, query, header, path)."""
    invalid = list(invalid)
    instance = instance or new_instance()
    body = {
        "type": "/std-errors",
        "status": status,
        "title": title,
        "detail": detail or title,
        "instance": instance,
        "invalid_parameters": [e.as_dict() | {"source": source} for e in invalid],
        "details": detail or title,
        "causes": [{"field": e.field, "message": e.reason} for e in invalid],
    }
    log.debug("api_error", instance=instance, status=status, title=title)
    return web.json_response(body, status=status, content_type=PROBLEM_JSON)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ValidationError as exc:
        detail = "; ".join(f"{e.field}: {e.reason}" for e in exc.errors)
        return error_response(400, exc.title, detail, exc.errors, exc.source)
    except (NotFound, UnknownType) as exc:
        return error_response(404, "Not found", str(exc).strip("'\""))
    except (AlreadyExists, Conflict) as exc:
        return error_response(409, "Conflict", str(exc))
    except ReadOnly as exc:
        return error_response(405, "Method not allowed", str(exc))
    except InvalidOffset as exc:
        return error_response(400, "Invalid offset", str(exc), [FieldError("offset", str(exc))], "query")
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
        for header in ("WWW-Authenticate", "Allow"):  # a 401 says how to authenticate, a 405 what is allowed
            if header in exc.headers:
                response.headers[header] = exc.headers[header]
        return response
    except Exception:
        instance = new_instance()
        log.exception("api_internal_error", method=request.method, path=request.path, instance=instance)
        detail = "the control plane failed to handle the request; see its logs"
        return error_response(500, "Internal server error", detail, instance=instance)
