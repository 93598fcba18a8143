"""Dataplane tokens: the credential a proxy presents to its zone control plane.

A JWT (RS256) signed with the mesh's newest key, kept as the mesh Secret
``dataplane-token-signing-key-{mesh}-{serial}`` (``kid`` = serial; rotate by adding a key).
Claims, as Kuma: ``Name`` (the Dataplane name, empty = any name in the mesh), ``Mesh``,
``Tags`` (``{tag: [values]}``: the proxy's inbound tags must be among them), ``Type``
(``dataplane``, ``ingress`` or ``egress``; empty = dataplane). A token is revoked by adding its
``jti`` to the mesh Secret ``dataplane-token-revocations-{mesh}`` (comma-separated).

``POST /tokens/dataplane`` issues one (admin only); ``zmctl generate dataplane-token`` calls it.

Issued on global (as Kuma's global does), a token is signed with a key of a family of its own,
``dataplane-token-global-signing-key-{mesh}-{serial}``, and its ``kid`` is ``global-{serial}``:
a federated zone may hold keys named ``dataplane-token-signing-key-{mesh}-{serial}`` that it made
itself and signed tokens in use with, and global's keys must neither replace them nor be
mistaken for them. The private keys stay on global (KDS never sends them); global publishes their
public halves as the mesh's DataplaneTokenTrust ``dataplane-token`` (``publish_trust``), which KDS
syncs to the zones, where a ``global-`` kid is checked against it and any other kid against the
zone's own keys. Revocation is one list for both: the mesh Secret
``dataplane-token-revocations-{mesh}``, which on a federated zone is global's (synced down).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from zonemesh.shared.api.auth import require_admin
from zonemesh.shared.api.context import MANAGER
from zonemesh.shared.api.resources import read_document
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.schema import MESH_NAME, FieldError, ValidationError, check_name, parse_duration
from zonemesh.shared.store import AlreadyExists, Conflict, NotFound, Store
from zonemesh.shared.tokens.keys import SigningKeys, load_public_pem, public_key_pem
from zonemesh.shared.tokens.tokens import InvalidToken, TokenIssuer, TokenValidator, parse_kid, sign

PROXY_TYPES = ("dataplane", "ingress", "egress")
GLOBAL_KID_PREFIX = "global-"  # the kid of a token global signed: global-<serial of its global key>
TRUST_TYPE = "DataplaneTokenTrust"
TRUST_NAME = "dataplane-token"


def signing_key_prefix(mesh: str) -> str:
    return f"dataplane-token-signing-key-{mesh}"


def revocations_secret(mesh: str) -> str:
    return f"dataplane-token-revocations-{mesh}"


def signing_keys(store: Store, mesh: str) -> SigningKeys:
    return SigningKeys(store, signing_key_prefix(mesh), mesh=mesh)


def global_signing_key_prefix(mesh: str) -> str:
    """Global's own family: no mesh name makes it start with another mesh's ``signing_key_prefix``."""
    return f"dataplane-token-global-signing-key-{mesh}"


def global_signing_keys(store: Store, mesh: str) -> SigningKeys:
    return SigningKeys(store, global_signing_key_prefix(mesh), mesh=mesh)


def is_global_signing_key(res: Resource) -> bool:
    """Is ``res`` one of global's private dataplane token keys (which KDS must never send)?"""
    pattern = re.escape(global_signing_key_prefix(res.mesh)) + r"-(\d+)"  # as SigningKeys reads serials
    return res.type == "Secret" and re.fullmatch(pattern, res.name) is not None


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


async def issue_at_global(store: Store, claims: DataplaneClaims, valid_for_seconds: float) -> str:
    """Sign with the mesh's newest global key (created on first use), kid ``global-<serial>``, once
    the mesh's DataplaneTokenTrust has its public half: zones admit the token as soon as KDS
    carries that trust to them."""
    serial, pem = await global_signing_keys(store, claims.mesh).ensure()
    await publish_trust(store, claims.mesh)
    return sign(claims.as_jwt_claims(), pem, f"{GLOBAL_KID_PREFIX}{serial}", valid_for_seconds)


async def trust_spec(store: Store, mesh: str) -> dict[str, Any]:
    """The public halves (by kid serial) of the mesh's global signing keys."""
    keys = global_signing_keys(store, mesh)
    public = []
    for serial in await keys.serials():
        pem = await keys.private_key(serial)
        if pem is not None:
            public.append({"kid": serial, "key": public_key_pem(pem).decode()})
    return {"publicKeys": public}


async def publish_trust(store: Store, mesh: str) -> bool:
    """On global: bring the mesh's DataplaneTokenTrust in line with its global keys; True when it
    changed. Written straight to the store (a system type, read-only through the API); nothing
    is written for a mesh that has no global key, nor for one that no longer exists."""
    for _ in range(5):  # bounded: only a concurrent writer of the same resource makes it retry
        if await store.find("Mesh", mesh) is None:
            return False  # deleted: its contents, the trust included, go with it
        spec = await trust_spec(store, mesh)
        current = await store.find(TRUST_TYPE, TRUST_NAME, mesh)
        try:
            if current is None:
                if not spec["publicKeys"]:
                    return False
                await store.create(Resource(type=TRUST_TYPE, name=TRUST_NAME, mesh=mesh, spec=spec))
            elif current.spec != spec:
                await store.update(replace(current, spec=spec))
            else:
                return False
            return True
        except (AlreadyExists, Conflict, NotFound):
            continue
    raise RuntimeError(f"DataplaneTokenTrust of mesh {mesh!r} kept changing under publish_trust")


class GlobalIssuedValidator(TokenValidator):
    """Checks a token global issued (kid ``global-<serial>``) with the public keys global published
    in the mesh's DataplaneTokenTrust; revocations as for every token of the mesh."""

    key_name = "global signing key"

    def key_serial(self, kid: Any) -> int:
        if not isinstance(kid, str) or not kid.startswith(GLOBAL_KID_PREFIX):
            raise InvalidToken("token has no valid kid header (the signing key serial)")
        return parse_kid(kid.removeprefix(GLOBAL_KID_PREFIX))

    async def public_key(self, kid: int) -> PublicKeyTypes | None:
        res = await self.keys.store.find(TRUST_TYPE, TRUST_NAME, self.keys.mesh)
        for entry in (res.spec.get("publicKeys") or []) if res is not None else []:
            if entry.get("kid") == kid:
                return load_public_pem(str(entry["key"]).encode())
        return None


def issued_by_global(token: str) -> bool:
    """Does the token's (unverified) ``kid`` say global signed it? Only picks the keys to verify with."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except (jwt.PyJWTError, RecursionError):
        return False  # the zone's validator says why it is malformed
    return isinstance(kid, str) and kid.startswith(GLOBAL_KID_PREFIX)


def validator(store: Store, mesh: str, token: str) -> TokenValidator:
    """The validator for ``token``: global's published keys for a ``global-`` kid, else this CP's own."""
    if issued_by_global(token):
        return GlobalIssuedValidator(global_signing_keys(store, mesh), revocations_secret(mesh))
    return TokenValidator(signing_keys(store, mesh), revocations_secret(mesh))


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
    raw = await validator(store, mesh, token).validate(token)
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


def routes(*, at_global: bool = False) -> list[web.RouteDef]:
    """``POST /tokens/dataplane``; ``at_global``: signed with global's keys (``issue_at_global``)."""
    sign_with = issue_at_global if at_global else issue

    async def issue_handler(request: web.Request) -> web.Response:
        manager = request.app[MANAGER]
        await require_admin(request, manager.store)
        claims, seconds = parse_request(await read_document(request))
        if await manager.store.find("Mesh", claims.mesh) is None:
            raise ValidationError(
                [FieldError("mesh", f"mesh {claims.mesh!r} does not exist")], title="Invalid token request"
            )
        token = await sign_with(manager.store, claims, seconds)
        return web.Response(text=token, content_type="text/plain")

    return [web.post("/tokens/dataplane", issue_handler)]
