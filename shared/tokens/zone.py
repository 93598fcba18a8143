"""Zone tokens: what a zone control plane (and its ingress/egress) presents to global.

JWT RS256 signed with the newest global secret ``zone-token-signing-key-<N>`` (``kid`` = N);
any stored key verifies. Claims: ``{"Zone": name, "Scope": [...], jti, iat, nbf, exp}``.
Revocation: the global secret ``zone-token-revocations`` holds comma-separated jti values.
Rotation: add key N+1 (``POST /global-secrets`` or first issuance), reissue tokens, delete key N.

Zones check the tokens of their ingress/egress proxies against what global publishes, never
against private keys: global keeps the ZoneTokenTrust ``zone-token`` (the public half of every
signing key, by kid, and the revoked jti) current (``publish_trust``), and KDS syncs it to every
zone, where ``ZoneTokenValidator(store, published=True)`` reads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from zonemesh.shared.duration import parse_duration
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.schema import FieldError, ValidationError
from zonemesh.shared.store import AlreadyExists, Conflict, Store
from zonemesh.shared.tokens.keys import SigningKeys, load_public_pem, public_key_pem
from zonemesh.shared.tokens.tokens import InvalidToken, TokenIssuer, TokenValidator, sign

ZONE_TOKEN_KEYS = "zone-token-signing-key"
ZONE_TOKEN_REVOCATIONS = "zone-token-revocations"
TRUST_TYPE = "ZoneTokenTrust"
TRUST_NAME = "zone-token"

# "cp": the zone control plane's KDS stream; "ingress"/"egress": the zone's proxies (Kuma's scopes).
SCOPES = ("cp", "ingress", "egress")
FULL_SCOPE = list(SCOPES)


def check_scope(scope: Sequence[str]) -> list[str]:
    unknown = [s for s in scope if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {', '.join(unknown)}: use {', '.join(SCOPES)}")
    return list(dict.fromkeys(scope)) or list(FULL_SCOPE)


def zone_claims(zone: str, scope: Sequence[str] | None = None) -> dict[str, Any]:
    return {"Zone": zone, "Scope": check_scope(scope or FULL_SCOPE)}


def zone_token_keys(store: Store) -> SigningKeys:
    return SigningKeys(store, ZONE_TOKEN_KEYS)


class ZoneTokenIssuer:
    def __init__(self, store: Store) -> None:
        self._issuer = TokenIssuer(zone_token_keys(store))

    async def issue(self, zone: str, scope: Sequence[str] | None, valid_for_seconds: float) -> str:
        if not zone:
            raise ValueError("zone must be given")
        return await self._issuer.issue(zone_claims(zone, scope), valid_for_seconds)


async def issue_requested(
    store: Store, zone: str, scope: Sequence[str], doc: Mapping[str, Any], errors: list[FieldError]
) -> str:
    """The end of a ``POST /tokens/zone`` (on global and on a standalone zone): ``validFor`` from
    ``doc`` (a year unless given) is checked too, every problem found so far is raised together as
    one ValidationError, else a token for ``zone`` and ``scope`` is issued."""
    valid_for = 0.0
    try:
        valid_for = parse_duration(str(doc.get("validFor") or "8760h"))
        if valid_for <= 0:
            raise ValueError("validFor must be positive")
    except ValueError as exc:
        errors.append(FieldError("validFor", str(exc)))
    if errors:
        raise ValidationError(errors, title="Invalid zone token request")
    return await ZoneTokenIssuer(store).issue(zone, scope, valid_for)


def issue_offline(
    zone: str, scope: Sequence[str] | None, valid_for_seconds: float, private_pem: bytes, kid: int
) -> str:
    """Sign without a control plane, with a key that global also holds as key ``kid``.
    Raises ValueError when ``private_pem`` is not an RSA private key."""
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(str(exc).split("\n")[0] or "unreadable key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA key")
    return sign(zone_claims(zone, scope), private_pem, kid, valid_for_seconds)


async def trust_spec(store: Store) -> dict[str, Any]:
    """The public keys (by kid) and revoked jti of the zone tokens global issues."""
    keys = zone_token_keys(store)
    public = []
    for serial in await keys.serials():
        pem = await keys.private_key(serial)
        if pem is not None:
            public.append({"kid": serial, "key": public_key_pem(pem).decode()})
    revoked = await TokenValidator(keys, ZONE_TOKEN_REVOCATIONS).revoked_ids()
    return {"publicKeys": public, "revoked": sorted(revoked)}


async def publish_trust(store: Store) -> bool:
    """Bring global's ZoneTokenTrust in line with its keys and revocations; True when it changed.
    Written straight to the store: it is a system type, read-only through the API."""
    spec = await trust_spec(store)
    for _ in range(5):  # bounded: only a concurrent writer of the same resource makes it retry
        current = await store.find(TRUST_TYPE, TRUST_NAME)
        try:
            if current is None:
                await store.create(Resource(type=TRUST_TYPE, name=TRUST_NAME, spec=spec))
            elif current.spec != spec:
                await store.update(dataclasses.replace(current, spec=spec))
            else:
                return False
            return True
        except (AlreadyExists, Conflict):
            continue
    raise RuntimeError("ZoneTokenTrust kept changing under publish_trust")


class PublishedKeysValidator(TokenValidator):
    """Verifies with the ZoneTokenTrust global published (a federated zone holds no signing key)."""

    async def _trust(self) -> dict[str, Any]:
        res = await self.keys.store.find(TRUST_TYPE, TRUST_NAME)
        return res.spec if res is not None else {}

    async def public_key(self, kid: int) -> PublicKeyTypes | None:
        for entry in (await self._trust()).get("publicKeys") or []:
            if entry.get("kid") == kid:
                return load_public_pem(str(entry["key"]).encode())
        return None

    async def revoked_ids(self) -> set[str]:
        return set((await self._trust()).get("revoked") or [])


class ZoneTokenValidator:
    """``published=True`` (federated zone): global's published public keys and revocations;
    otherwise the signing keys in ``store`` (global, standalone)."""

    def __init__(self, store: Store, *, published: bool = False) -> None:
        keys = zone_token_keys(store)
        self._validator = (
            PublishedKeysValidator(keys, ZONE_TOKEN_REVOCATIONS)
            if published
            else TokenValidator(keys, ZONE_TOKEN_REVOCATIONS)
        )

    async def validate(self, token: str, zone: str, scope: str = "cp") -> dict[str, Any]:
        """Claims of a valid token for ``zone``; raises InvalidToken with the reason otherwise."""
        claims = await self._validator.validate(token)
        token_zone = claims.get("Zone")
        if not isinstance(token_zone, str) or not token_zone:
            raise InvalidToken("token has no Zone claim: it is not a zone token")
        if token_zone != zone:
            raise InvalidToken(f"token was issued for zone {token_zone!r}, not for zone {zone!r}")
        token_scope = claims.get("Scope") or []
        if scope not in token_scope:
            raise InvalidToken(f"token scope {token_scope} does not include {scope!r}")
        return claims
