"""JWT issuing and validation (RS256 only), with revocation lists.

The validator is strict on purpose: it accepts RS256 alone (so ``alg: none`` and HS256
signed with the public key are refused), requires ``kid``, ``exp``, ``iat``, ``jti``,
and says *why* a token is refused, since an operator reading the log needs the reason.
"""

from __future__ import annotations

import base64
import math
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from zonemesh.shared.store import Store
from zonemesh.shared.tokens.keys import SigningKeys, load_private_key, load_public_key

# Clock skew tolerated between the issuer and the validator, applied when verifying only: a
# token is accepted from iat - LEEWAY_SECONDS to exp + LEEWAY_SECONDS, and an open stream is
# closed at exp + LEEWAY_SECONDS.
LEEWAY_SECONDS = 5


class InvalidToken(Exception):
    """The token is refused; ``reason`` is a short, loggable explanation (never the token)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def sign(claims: Mapping[str, Any], private_pem: bytes, kid: int | str, valid_for_seconds: float) -> str:
    """A token valid for ``valid_for_seconds``: exp = iat + validFor (a fraction of a second rounds up)."""
    now = int(time.time())
    payload = {
        **claims,
        "jti": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + math.ceil(valid_for_seconds),
    }
    key = load_private_key(private_pem)
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": str(kid)})  # type: ignore[arg-type]


def parse_kid(kid: Any) -> int:
    """The signing key serial a token's ``kid`` header names: ASCII digits (as ``sign`` writes it).
    ``str.isdigit`` is not enough: "²" passes it, and int("²") raises."""
    text = str(kid) if isinstance(kid, int) and not isinstance(kid, bool) else kid
    if not isinstance(text, str) or not re.fullmatch(r"[0-9]{1,9}", text):
        raise InvalidToken("token has no valid kid header (the signing key serial)")
    return int(text)


class TokenIssuer:
    def __init__(self, keys: SigningKeys) -> None:
        self.keys = keys

    async def issue(self, claims: Mapping[str, Any], valid_for_seconds: float) -> str:
        serial, pem = await self.keys.ensure()
        return sign(claims, pem, serial, valid_for_seconds)


class TokenValidator:
    key_name = "signing key"  # how refusals name the key a kid points to

    def __init__(self, keys: SigningKeys, revocations_secret: str | None = None) -> None:
        self.keys = keys
        self.revocations_secret = revocations_secret

    async def revoked_ids(self) -> set[str]:
        if self.revocations_secret is None:
            return set()
        res = await self.keys.store.find(self.keys.secret_type, self.revocations_secret, self.keys.mesh)
        if res is None:
            return set()
        text = base64.b64decode(res.spec["data"]).decode().strip()
        return {jti.strip() for jti in text.split(",") if jti.strip()}

    def key_serial(self, kid: Any) -> int:
        """The serial of the key a token's ``kid`` header names (InvalidToken if it names none)."""
        return parse_kid(kid)

    async def public_key(self, kid: int) -> PublicKeyTypes | None:
        """The key that verifies tokens signed with key ``kid``; None when there is none."""
        private_pem = await self.keys.private_key(kid)
        return load_public_key(private_pem) if private_pem is not None else None

    async def validate(self, token: str) -> dict[str, Any]:
        if not token:
            raise InvalidToken("no token provided")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        except RecursionError:  # a header nested ~1000 deep: recent PyJWT says DecodeError, not every >=2.8 does
            raise InvalidToken("malformed token: its header is nested too deeply") from None
        alg = header.get("alg")
        if alg != "RS256":
            raise InvalidToken(f"unsupported signing algorithm {alg!r}: only RS256 is accepted")
        kid = self.key_serial(header.get("kid"))
        public_key = await self.public_key(kid)
        if public_key is None:
            raise InvalidToken(f"{self.key_name} {kid} not found (rotated out or never existed)")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                public_key,  # type: ignore[arg-type]
                algorithms=["RS256"],
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("signature verification failed (forged or signed by another key)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"token misses the {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid token: {exc}") from None
        if not isinstance(claims["jti"], str):
            raise InvalidToken("token's jti claim is not a string")
        if claims["jti"] in await self.revoked_ids():
            raise InvalidToken(f"token {claims['jti']} has been revoked")
        return claims


USER_TOKEN_KEYS = "user-token-signing-key"
USER_TOKEN_REVOCATIONS = "user-token-revocations"
ADMIN_TOKEN_SECRET = "admin-user-token"


def user_token_keys(store: Store) -> SigningKeys:
    return SigningKeys(store, USER_TOKEN_KEYS)


def user_token_validator(store: Store) -> TokenValidator:
    return TokenValidator(user_token_keys(store), USER_TOKEN_REVOCATIONS)
