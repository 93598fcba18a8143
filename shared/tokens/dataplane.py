"""Dataplane tokens: the credential a proxy presents to its zone control plane.

A JWT (RS256) signed with the mesh's newest key, kept as the mesh Secret
``dataplane-token-signing-key-{mesh}-{serial}`` (``kid`` = serial; rotate by adding a key).
Claims, as Kuma: ``Name`` (the Dataplane name, empty = any name in the mesh), ``Mesh``,
``Tags`` (``{tag: [values]}``: the proxy's inbound tags must be among them), ``Type``
(``dataplane``, ``ingress`` or ``egress``; empty = dataplane). A token is revoked by adding its
``jti`` to the mesh Secret ``dataplane-token-revocations-{mesh}`` (comma-separated).

``POST /tokens/dataplane`` issues one (admin only); ``zmctl generate dataplane-token`` calls it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from zonemesh.shared.api.auth import require_admin
from zonemesh.shared.api.context import MANAGER
from zonemesh.shared.api.resources import read_document
from zonemesh.shared.resources.schema import MESH_NAME, FieldError, ValidationError, check_name, parse_duration
from zonemesh.shared.store import Store
from zonemesh.shared.tokens.keys import SigningKeys
from zonemesh.shared.tokens.tokens import InvalidToken, TokenIssuer, TokenValidator

PROXY_TYPES = ("dataplane", "ingress", "egress")


def signing_key_prefix(mesh: str) -> str:
    return f"dataplane-token-signing-key-{mesh}"


def revocations_secret(mesh: str) -> str:
    return f"dataplane-token-revocations-{mesh}"


def signing_keys(store: Store, mesh: str) -> SigningKeys:
    return SigningKeys(store, signing_key_prefix(mesh), mesh=mesh)


@dataclass(frozen=True)
class DataplaneClaims:
    mesh: str
    name: str = ""
    tags: Mapping[str, Sequence[str]] = field(default_factory=dict)
    proxy_type: str = "dataplane"
    jti: str = ""
    exp: float = 0.0  # of a validated token: when it expires (unix time)

    def as_jwt_claims(self) -> dict[str, Any]:
        return {
            "Name": self.name,
            "Mesh": self.mesh,
            "Tags": {k: list(v) for k, v in self.tags.items()},
            "Type": self.proxy_type,
        }


async def issue(store: Store, claims: DataplaneClaims, valid_for_seconds: float) -> str:
    """Sign a dataplane token with the mesh's newest key (created on first use)."""
    return await TokenIssuer(signing_keys(store, claims.mesh)).issue(claims.as_jwt_claims(), valid_for_seconds)


def unverified_mesh(token: str) -> str | None:
    """The ``Mesh`` claim before any check, to pick the mesh's keys and explain a mismatch."""
    try:
        payload = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, RecursionError):  # as in TokenValidator.validate
        return None
    mesh = payload.get("Mesh") if isinstance(payload, dict) else None
    return mesh if isinstance(mesh, str) else None


async def validate(
    store: Store,
    token: str,
    *,
    mesh: str,
    name: str,
    proxy_type: str = "dataplane",
    tags: Sequence[Mapping[str, str]] = (),
) -> DataplaneClaims:
    """Check that ``token`` lets proxy ``name`` of ``mesh`` connect; raise InvalidToken with the reason.

    ``tags`` are the inbound tag sets of the proxy's Dataplane, when known: every value must be
    allowed by the token's ``Tags`` claim.
    """
    if not token:
        raise InvalidToken("no dataplane token provided")
    token_mesh = unverified_mesh(token)
    if token_mesh is not None and token_mesh != mesh:
        raise InvalidToken(f"token was issued for mesh {token_mesh!r}, the proxy belongs to mesh {mesh!r}")
    raw = await TokenValidator(signing_keys(store, mesh), revocations_secret(mesh)).validate(token)
    claims = DataplaneClaims(
        mesh=str(raw.get("Mesh") or ""),
        name=str(raw.get("Name") or ""),
        tags={str(k): [str(x) for x in v] for k, v in (raw.get("Tags") or {}).items()},
        proxy_type=str(raw.get("Type") or "dataplane"),
        jti=str(raw["jti"]),
        exp=float(raw["exp"]),
    )
    if claims.mesh != mesh:
        raise InvalidToken(f"token was issued for mesh {claims.mesh!r}, the proxy belongs to mesh {mesh!r}")
    if claims.name and claims.name != name:
        raise InvalidToken(f"token was issued for dataplane {claims.name!r}, the proxy is {name!r}")
    if claims.proxy_type != proxy_type:
        raise InvalidToken(f"token was issued for proxy type {claims.proxy_type!r}, the proxy is a {proxy_type!r}")
    for tag_set in tags:
        for key, allowed in claims.tags.items():
            if key in tag_set and tag_set[key] not in allowed:
                raise InvalidToken(f"tag {key}={tag_set[key]!r} is not allowed by the token (allowed: {list(allowed)})")
    return claims


# --- HTTP API: POST /tokens/dataplane ----------------------------------------------------------


def parse_request(body: Any) -> tuple[DataplaneClaims, float]:
    """Validate the request body ``{name, mesh, tags, type, validFor}`` field by field."""
    errors: list[FieldError] = []
    if not isinstance(body, dict):
        raise ValidationError([FieldError("<root>", "must be a JSON object")], title="Invalid token request")
    mesh = body.get("mesh")
    errors += check_name(mesh, "mesh", MESH_NAME)
    name = body.get("name") or ""  # empty: any dataplane of the mesh
    if name:
        errors += check_name(name, "name")
    proxy_type = body.get("type") or "dataplane"
    if proxy_type not in PROXY_TYPES:
        errors.append(FieldError("type", f"must be one of {', '.join(PROXY_TYPES)}"))
    tags = body.get("tags") or {}
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(x, str) for x in v) for k, v in tags.items()
    ):
        errors.append(FieldError("tags", 'must map tag names to lists of values, e.g. {"kuma.io/service": ["web"]}'))
    valid_for = body.get("validFor")
    seconds = 0.0
    if not valid_for:
        errors.append(FieldError("validFor", 'is required, e.g. "24h"'))
    else:
        try:
            seconds = parse_duration(str(valid_for))
        except ValueError:
            errors.append(FieldError("validFor", 'must be a duration such as "24h" or "30m"'))
        else:
            if seconds <= 0:
                errors.append(FieldError("validFor", "must be positive"))
    if errors:
        raise ValidationError(errors, title="Invalid token request")
    return DataplaneClaims(mesh=str(mesh), name=str(name), tags=tags, proxy_type=str(proxy_type)), seconds


async def issue_handler(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    await require_admin(request, manager.store)
    claims, seconds = parse_request(await read_document(request))
    if await manager.store.find("Mesh", claims.mesh) is None:
        raise ValidationError(
            [FieldError("mesh", f"mesh {claims.mesh!r} does not exist")], title="Invalid token request"
        )
    token = await issue(manager.store, claims, seconds)
    return web.Response(text=token, content_type="text/plain")


def routes() -> list[web.RouteDef]:
    return [web.post("/tokens/dataplane", issue_handler)]
