"""Who is calling the HTTP API (authentication) and what they may do (authorization), as Kuma.

Who is calling:

- a request with ``Authorization: Bearer <user token>`` is that token's user. The token is
  checked on every request, from any address (signature, ``exp``, revocation): a bad one is a
  401 even where no token at all would have been accepted, never silently ignored;
- without a token, a *direct* loopback request is the admin while ``api_localhost_is_admin`` is
  on (the default, Kuma's ``localhostIsAdmin``). Direct means what Kuma's fix for
  GHSA-3vcp-chfh-f6r2 checks: the peer and the ``Host`` header are loopback, no proxy header
  (``Forwarded``, ``X-Forwarded-For``, ``X-Real-IP``) and no cross-site page (``Origin`` other
  than the control plane's own loopback address, ``Sec-Fetch-Site: cross-site``). So a local
  reverse proxy does not make its remote clients admin, and neither does a web page in the
  operator's browser (DNS rebinding, cross-site requests);
- anyone else is anonymous.

What they may do: reads of ordinary resources are open to everyone; writes, token issuance
and sensitive reads (secrets) need the group ``mesh-system:admin``. Without an identity that is
401; with a valid token of another group, 403.

On first start each control plane issues an admin user token (a JWT signed with its newest
``user-token-signing-key-N``) and stores it as the global secret ``admin-user-token``. With
loopback admin off, read it on the CP host with ``zonemesh-cp admin-token`` (same settings as
``run``; it reads the store directly).
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from enum import Enum
from typing import Any

import structlog
from aiohttp import web
from yarl import URL
from zonemesh.shared.api.context import MANAGER
from zonemesh.shared.api.errors import Handler
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store import AlreadyExists, Store
from zonemesh.shared.tokens.tokens import (
    ADMIN_TOKEN_SECRET,
    InvalidToken,
    TokenIssuer,
    user_token_keys,
    user_token_validator,
)

log = structlog.get_logger(__name__)

ADMIN_GROUP = "mesh-system:admin"
AUTHENTICATED_GROUP = "mesh-system:authenticated"
UNAUTHENTICATED_GROUP = "mesh-system:unauthenticated"
ADMIN_TOKEN_VALIDITY_SECONDS = 10 * 365 * 24 * 3600

# The api_localhost_is_admin setting, as the running control plane has it (default on, as Kuma).
LOCALHOST_IS_ADMIN = web.AppKey("localhost_is_admin", bool)
_PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


class Access(Enum):
    READ = "read"  # anyone (a token, if sent, must still be valid)
    ADMIN = "admin"  # writes, token issuance, secret reads, config dumps


@dataclass(frozen=True)
class Identity:
    name: str
    groups: tuple[str, ...]
    # "token", "localhost" or "anonymous"
    source: str
    # For an anonymous client: why it is not the admin (part of the 401's message).
    why_anonymous: str = ""

    @property
    def is_admin(self) -> bool:
        return ADMIN_GROUP in self.groups


# Where a request keeps who it is, once authenticated (a typed key where aiohttp has them: 3.13+).
_IDENTITY: Any = web.RequestKey("identity", Identity) if hasattr(web, "RequestKey") else "zonemesh.identity"
LOCALHOST_ADMIN = Identity(ADMIN_GROUP, (ADMIN_GROUP, AUTHENTICATED_GROUP), "localhost")


def is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        addr = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _is_loopback_name(host: str) -> bool:
    host = host.lower().removesuffix(".")
    return host == "localhost" or is_loopback(host)


def _host_name(hostport: str) -> str:
    """The host of a ``Host`` header value: ``[::1]:5681`` -> ``::1``, ``localhost:5681`` -> ``localhost``."""
    if hostport.startswith("["):
        end = hostport.find("]")
        return hostport[1:end] if end > 0 else hostport
    name, sep, port = hostport.rpartition(":")
    return name if sep and port.isascii() and port.isdigit() else hostport


def not_direct_loopback(request: web.Request) -> str | None:
    """Why this request is not a direct loopback call (None when it is one)."""
    if not is_loopback(request.remote):
        return "the client is not on loopback"
    for header in _PROXY_HEADERS:
        if header in request.headers:
            return f"the request carries the proxy header {header}, so its client is not local"
    host = request.headers.get("Host", "")
    if not _is_loopback_name(_host_name(host)):
        return f"its Host header {host!r} is not a loopback address or localhost"
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return "it was sent by a page of another site (Sec-Fetch-Site: cross-site)"
    origin = request.headers.get("Origin")
    if origin is not None:
        try:
            url = URL(origin)
            same = url.scheme in ("http", "https") and url.raw_authority.lower() == host.lower()
        except ValueError:
            same = False
        if not same:
            return f"it was sent by a page of another origin ({origin!r})"
    return None


async def authenticate(request: web.Request, store: Store | None = None) -> Identity:
    """Who sends ``request`` (computed once per request). Raises 401 for a bad Authorization header."""
    found = request.get(_IDENTITY)
    if isinstance(found, Identity):
        return found
    identity = await _authenticate(request, store or request.app[MANAGER].store)
    request[_IDENTITY] = identity
    return identity


async def _authenticate(request: web.Request, store: Store) -> Identity:
    header = request.headers.get("Authorization")
    if header is not None:
        return await _token_identity(request, store, header)
    localhost_is_admin = request.app.get(LOCALHOST_IS_ADMIN, True)
    why = not_direct_loopback(request)
    if why is None:
        if localhost_is_admin:
            return LOCALHOST_ADMIN
        why = "loopback clients are not admin on this control plane (api_localhost_is_admin is off)"
    return Identity("", (UNAUTHENTICATED_GROUP,), "anonymous", why)


def _unauthorized(text: str) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(reason="Unauthorized", text=text, headers={"WWW-Authenticate": "Bearer"})


async def _token_identity(request: web.Request, store: Store, header: str) -> Identity:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise _unauthorized(
            f"unsupported Authorization scheme {scheme[:20]!r}: send 'Authorization: Bearer <token>' "
            "with a user token, or no Authorization header"
        )
    try:
        claims = await user_token_validator(store).validate(token.strip())
    except InvalidToken as exc:
        raise _refused(request, exc.reason) from None
    name, groups = claims.get("Name"), claims.get("Groups")
    if not isinstance(name, str) or not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise _refused(request, "not a user token (it needs the claims Name and Groups)")
    return Identity(name, tuple(dict.fromkeys([*groups, AUTHENTICATED_GROUP])), "token")


def _refused(request: web.Request, reason: str) -> web.HTTPUnauthorized:
    log.warning("api_auth_refused", remote=request.remote, method=request.method, path=request.path, reason=reason)
    return _unauthorized(f"invalid token: {reason}")


async def authorize(request: web.Request, need: Access, store: Store | None = None) -> Identity:
    """The caller, if it may do what ``need`` says; else 401 (no identity) or 403 (not an admin)."""
    identity = await authenticate(request, store)
    if need is Access.READ or identity.is_admin:
        return identity
    if identity.source == "token":
        log.warning("api_access_denied", user=identity.name, method=request.method, path=request.path, need=need.value)
        groups = ", ".join(identity.groups)
        raise web.HTTPForbidden(
            reason="Forbidden",
            text=f"user {identity.name!r} (groups: {groups}) may not do this: "
            "it needs a user token of the mesh-system:admin group",
        )
    raise _unauthorized(
        "this operation needs an admin token (a user token of the mesh-system:admin group): "
        f"send 'Authorization: Bearer <token>'; {identity.why_anonymous}"
    )


async def require_admin(request: web.Request, store: Store) -> None:
    """Writes, token issuance, secret reads: the caller must be an admin (see the module doc)."""
    await authorize(request, Access.ADMIN, store)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every request up front, so a bad token is refused on every path, reads included."""
    await authenticate(request)
    return await handler(request)


async def ensure_admin_token(store: Store) -> bool:
    """Issue and store the admin token on first start. Returns True when it was created."""
    if await store.find("GlobalSecret", ADMIN_TOKEN_SECRET) is not None:
        return False
    token = await TokenIssuer(user_token_keys(store)).issue(
        {"Name": "admin", "Groups": [ADMIN_GROUP, AUTHENTICATED_GROUP]}, ADMIN_TOKEN_VALIDITY_SECONDS
    )
    try:
        await store.create(
            Resource(
                type="GlobalSecret", name=ADMIN_TOKEN_SECRET, spec={"data": base64.b64encode(token.encode()).decode()}
            )
        )
    except AlreadyExists:  # another replica on the same store started at the same moment: its token stands
        return False
    log.info("admin_token_created", secret=ADMIN_TOKEN_SECRET, read_it_with="zonemesh-cp admin-token (on this host)")
    return True


async def read_admin_token(store: Store) -> str:
    """The stored admin token, checked as the API would check it. Raises LookupError (none stored)
    or InvalidToken (it would be refused: expired, revoked, its signing key deleted)."""
    secret = await store.find("GlobalSecret", ADMIN_TOKEN_SECRET)
    if secret is None:
        raise LookupError(f"there is no global secret {ADMIN_TOKEN_SECRET}: has this control plane ever started?")
    token = base64.b64decode(secret.spec["data"]).decode().strip()
    await user_token_validator(store).validate(token)
    return token
