"""Token signing keys, stored as secrets so every control plane replica shares them.

A key family is a name prefix (e.g. ``user-token-signing-key``); keys are numbered
``<prefix>-<serial>``. The newest serial signs; any stored serial verifies (the JWT's
``kid`` names it). Rotation = add serial N+1, reissue tokens, delete the old key.
Zone tokens, dataplane tokens and the admin user token all use this.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from zonemesh.shared.certs import private_key_pem
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store import AlreadyExists, Store

RSA_BITS = 2048


def generate_private_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return private_key_pem(key)


# Loading an RSA private key checks it (~20 ms of CPU): every token issued or validated used to
# pay that, which made 2,000 proxies connecting at once queue for a minute. Keys are few and
# immutable (rotation adds a new one), so the parsed objects are memoized by their PEM.
@functools.lru_cache(maxsize=64)
def load_private_key(private_pem: bytes) -> PrivateKeyTypes:
    return serialization.load_pem_private_key(private_pem, password=None)


@functools.lru_cache(maxsize=64)
def load_public_key(private_pem: bytes) -> PublicKeyTypes:
    """The public half of a stored private key, parsed once."""
    return load_private_key(private_pem).public_key()


@functools.lru_cache(maxsize=64)
def load_public_pem(public_pem: bytes) -> PublicKeyTypes:
    """A public key published as PEM (e.g. global's zone-token keys, as zones receive them)."""
    return serialization.load_pem_public_key(public_pem)


def public_key_pem(private_pem: bytes) -> bytes:
    key = load_public_key(private_pem)
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class SigningKeys:
    """The keys of one family, in GlobalSecrets (``mesh=""``) or in a mesh's Secrets."""

    def __init__(self, store: Store, prefix: str, mesh: str = "") -> None:
        self.store = store
        self.prefix = prefix
        self.mesh = mesh
        self.secret_type = "Secret" if mesh else "GlobalSecret"
        self._serial_re = re.compile(re.escape(prefix) + r"-(\d+)")

    def secret_name(self, serial: int) -> str:
        return f"{self.prefix}-{serial}"

    async def serials(self) -> list[int]:
        items = (await self.store.list(self.secret_type, self.mesh if self.mesh else None)).items
        found = [m for r in items if (m := self._serial_re.fullmatch(r.name))]
        return sorted(int(m.group(1)) for m in found)

    async def private_key(self, serial: int) -> bytes | None:
        res = await self.store.find(self.secret_type, self.secret_name(serial), self.mesh)
        return base64.b64decode(res.spec["data"]) if res is not None else None

    async def newest(self) -> tuple[int, bytes] | None:
        serials = await self.serials()
        if not serials:
            return None
        key = await self.private_key(serials[-1])
        return (serials[-1], key) if key is not None else None

    async def add(self, private_pem: bytes | None = None) -> int:
        """Store a new key with the next serial (rotation) and return the serial."""
        serials = await self.serials()
        serial = (serials[-1] if serials else 0) + 1
        pem = private_pem or generate_private_key_pem()
        await self.store.create(
            Resource(
                type=self.secret_type,
                name=self.secret_name(serial),
                mesh=self.mesh,
                spec={"data": base64.b64encode(pem).decode()},
            )
        )
        return serial

    async def ensure(self) -> tuple[int, bytes]:
        """The newest key, creating key 1 on first use (races between replicas are benign)."""
        newest = await self.newest()
        if newest is not None:
            return newest
        with contextlib.suppress(AlreadyExists):  # another replica created it first
            await self.add()
        newest = await self.newest()
        assert newest is not None
        return newest
