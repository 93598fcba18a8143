"""Who may write: loopback clients freely, everyone else with the admin token.

On first start each control plane issues an admin user token (a JWT signed with its
``user-token-signing-key-1``) and stores it as the global secret ``admin-user-token``.
Read it from the CP host: ``zmctl get global-secrets admin-user-token -o json`` or
``curl -s localhost:5681/global-secrets/admin-user-token | jq -r .data | base64 -d``.
"""

from __future__ import annotations

import base64
import ipaddress

import structlog
from aiohttp import web
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store import Store
from zonemesh.shared.tokens.tokens import (
    ADMIN_TOKEN_SECRET,
    InvalidToken,
    TokenIssuer,
    user_token_keys,
    user_token_validator,
)

log = structlog.get_logger(__name__)

ADMIN_GROUP = "mesh-system:admin"
ADMIN_TOKEN_VALIDITY_SECONDS = 10 * 365 * 24 * 3600


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


async def ensure_admin_token(store: Store) -> bool:
    """Issue and store the admin token on first start. Returns True when it was created."""
    if await store.find("GlobalSecret", ADMIN_TOKEN_SECRET) is not None:
        return False
    token = await TokenIssuer(user_token_keys(store)).issue(
        {"Name": "admin", "Groups": [ADMIN_GROUP, "mesh-system:authenticated"]}, ADMIN_TOKEN_VALIDITY_SECONDS
    )
    await store.create(
        Resource(type="GlobalSecret", name=ADMIN_TOKEN_SECRET, spec={"data": base64.b64encode(token.encode()).decode()})
    )
    log.info("admin_token_created", secret=ADMIN_TOKEN_SECRET)
    return True


async def require_admin(request: web.Request, store: Store) -> None:
    """Let loopback clients through; others need a valid admin bearer token."""
    if is_loopback(request.remote):
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise web.HTTPUnauthorized(
            reason="Unauthorized",
            text="this operation needs the admin token from a non-loopback client: "
            "send 'Authorization: Bearer <token>'",
        )
    try:
        claims = await user_token_validator(store).validate(token.strip())
    except InvalidToken as exc:
        log.warning("api_auth_refused", remote=request.remote, path=request.path, reason=exc.reason)
        raise web.HTTPUnauthorized(reason="Unauthorized", text=f"invalid token: {exc.reason}") from None
    if ADMIN_GROUP not in (claims.get("Groups") or []):
        raise web.HTTPForbidden(reason="Forbidden", text="the token is not an admin token")
