"""Zone tokens: what a zone control plane (and its ingress/egress) presents to global.

JWT RS256 signed with the newest global secret ``zone-token-signing-key-<N>`` (``kid`` = N);
any stored key verifies. Claims: ``{"Zone": name, "Scope": [...], jti, iat, nbf, exp}``.
Revocation: the global secret ``zone-token-revocations`` holds comma-separated jti values.
Rotation: add key N+1 (``POST /global-secrets`` or first issuance), reissue tokens, delete key N.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from zonemesh.shared.store import Store
from zonemesh.shared.tokens.keys import SigningKeys
from zonemesh.shared.tokens.tokens import InvalidToken, TokenIssuer, TokenValidator, sign

ZONE_TOKEN_KEYS = "zone-token-signing-key"
ZONE_TOKEN_REVOCATIONS = "zone-token-revocations"

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


class ZoneTokenValidator:
    def __init__(self, store: Store) -> None:
        self._validator = TokenValidator(zone_token_keys(store), ZONE_TOKEN_REVOCATIONS)

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
