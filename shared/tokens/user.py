"""User tokens: how people and automation prove who they are to the HTTP API, as Kuma's.

A JWT (RS256) signed with the newest global secret ``user-token-signing-key-<N>`` (``kid`` = N),
with the claims ``Name``, ``Groups``, ``jti``, ``iat``, ``nbf`` and ``exp``. The group
``mesh-system:admin`` is the admin; every valid token is also ``mesh-system:authenticated``.

- Rotation: store key N+1 (the global secret ``user-token-signing-key-<N+1>``, a PEM RSA
  private key, base64): new tokens are signed with it; tokens of key N verify until key N is
  deleted, then they are refused.
- Revocation: add the token's ``jti`` to the global secret ``user-token-revocations``
  (comma-separated, base64 like every secret); it is refused from the next request on.

Keys, revocations and the tokens are per control plane (global secrets are not synced): a
token issued by global works on global only; each zone issues its own.

``POST /tokens/user`` with ``{"name", "groups", "validFor"}`` issues one (admin only) and
answers the token as text/plain; ``zmctl generate user-token`` calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web
from zonemesh.shared.api.auth import require_admin
from zonemesh.shared.api.context import MANAGER
from zonemesh.shared.api.resources import read_document
from zonemesh.shared.duration import parse_duration
from zonemesh.shared.resources.schema import FieldError, ValidationError
from zonemesh.shared.store import Store
from zonemesh.shared.tokens.tokens import TokenIssuer, user_token_keys

FIELDS = ("name", "groups", "validFor")


def user_claims(name: str, groups: Sequence[str]) -> dict[str, Any]:
    return {"Name": name, "Groups": list(groups)}


async def issue(store: Store, name: str, groups: Sequence[str], valid_for_seconds: float) -> str:
    """A user token signed with the newest user-token signing key (key 1 is created on first use)."""
    return await TokenIssuer(user_token_keys(store)).issue(user_claims(name, groups), valid_for_seconds)


def parse_request(doc: Any) -> tuple[str, list[str], float]:
    """(name, groups, seconds) of a ``POST /tokens/user`` body; every bad field is reported at once."""
    if not isinstance(doc, dict):
        raise ValidationError(
            [FieldError("<body>", 'must be an object: {"name": ..., "groups": [...], "validFor": "24h"}')],
            title="Invalid user token request",
        )
    errors = [FieldError(str(key), f"unknown field: use {', '.join(FIELDS)}") for key in doc if key not in FIELDS]
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        errors.append(FieldError("name", "must be a non-empty string (the user's name)"))
        name = ""
    groups = doc.get("groups")
    if groups is None:
        groups = []
    elif not isinstance(groups, list) or not all(isinstance(g, str) and g.strip() for g in groups):
        errors.append(FieldError("groups", 'must be a list of non-empty strings, e.g. ["mesh-system:admin"]'))
        groups = []
    seconds = 0.0
    valid_for = doc.get("validFor")
    if not valid_for:
        errors.append(FieldError("validFor", 'is required, e.g. "24h"'))
    else:
        try:
            seconds = parse_duration(str(valid_for))
        except ValueError as exc:
            errors.append(FieldError("validFor", str(exc)))
        else:
            if seconds <= 0:
                errors.append(FieldError("validFor", "must be positive"))
    if errors:
        raise ValidationError(errors, title="Invalid user token request")
    return name, list(dict.fromkeys(groups)), seconds


async def issue_handler(request: web.Request) -> web.Response:
    store = request.app[MANAGER].store
    await require_admin(request, store)
    name, groups, seconds = parse_request(await read_document(request))
    token = await issue(store, name, groups, seconds)
    return web.Response(text=token, content_type="text/plain")


def routes() -> list[web.RouteDef]:
    return [web.post("/tokens/user", issue_handler)]
