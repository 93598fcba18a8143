"""The provided CA: the operator's own CA certificate (with its chain) and key, from mesh Secrets.

    mtls:
      enabledBackend: ca-2
      backends:
        - name: ca-2
          type: provided
          conf:
            cert: {secret: ca-2-cert}   # PEM: the signing CA, then its intermediates up to the root
            key: {secret: ca-2-key}     # PEM: the signing CA's unencrypted private key

``cert`` may also be ``inline`` (base64) or ``inlineString`` (PEM text): a certificate is public.
The key must be a Secret: a key written in the Mesh would be stored and synced in clear with
it, and shown to whoever reads Meshes (Secrets are encrypted at rest and read by admins only).
``file`` is refused for both: the CA signs on every zone control plane, which reads it from the
store, never from a path on one host. What the certificate and key must be: material.py.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Mapping
from typing import Any

from zonemesh.shared.ca.backend import Backend
from zonemesh.shared.ca.material import CaProblem, SigningCA, load_signing_ca
from zonemesh.shared.resources.schema import FieldError
from zonemesh.shared.store import Store

TYPE = "provided"


class SourceProblem(ValueError):
    """A DataSource of the backend cannot be read: ``part`` is ``cert`` or ``key``."""

    def __init__(self, part: str, reason: str) -> None:
        super().__init__(f"{part}: {reason}")
        self.part = part
        self.reason = reason


def _source_errors(backend: Backend, part: str) -> list[FieldError]:
    path = f"{backend.path}.conf.{part}"
    source = backend.conf.get(part)
    if not isinstance(source, Mapping):
        return [FieldError(path, "has to be defined for a backend of type provided")]
    if "file" in source:
        return [
            FieldError(
                f"{path}.file",
                "is not supported for a mesh CA: every zone control plane signs with it and reads it from the "
                "store, not from a file on one host; put it in a Secret and name it (secret: NAME)",
            )
        ]
    if part == "key" and ("inline" in source or "inlineString" in source):
        return [
            FieldError(
                path,
                "a CA key written in the Mesh would be stored and synced in clear with it: put it in a Secret "
                "of the mesh and name it here (key: {secret: NAME})",
            )
        ]
    return []


async def _content(backend: Backend, store: Store, part: str) -> bytes:
    source: Mapping[str, Any] = backend.conf.get(part) or {}
    if source.get("secret"):
        name = str(source["secret"])
        secret = await store.find("Secret", name, backend.mesh)
        if secret is None:
            raise SourceProblem(part, f"secret {name!r} not found in mesh {backend.mesh!r}: create it first")
        try:
            return base64.b64decode(str(secret.spec.get("data") or ""), validate=True)
        except (binascii.Error, ValueError):
            raise SourceProblem(part, f"secret {name!r} holds no base64 data") from None
    if source.get("inline"):
        return base64.b64decode(str(source["inline"]))
    if source.get("inlineString"):
        return str(source["inlineString"]).encode()
    raise SourceProblem(part, "has to be a secret reference (or, for cert, inline / inlineString)")


def field_error(backend: Backend, problem: CaProblem | SourceProblem) -> FieldError:
    """A problem of the backend's CA as an API field error: ``conf.cert`` or ``conf.key``."""
    part, _, index = problem.part.partition("[")
    reason = problem.reason
    if index:
        reason = f"certificate {int(index.rstrip(']')) + 1} of the chain: {reason}"
    return FieldError(f"{backend.path}.conf.{part}", reason)


class ProvidedCaManager:
    type = TYPE

    def used_secrets(self, backend: Backend) -> list[str]:
        names = []
        for part in ("cert", "key"):
            source = backend.conf.get(part)
            if isinstance(source, Mapping) and source.get("secret"):
                names.append(str(source["secret"]))
        return names

    async def validate(self, backend: Backend, store: Store, *, material: bool = True) -> list[FieldError]:
        errors = _source_errors(backend, "cert") + _source_errors(backend, "key")
        if "caCert" in backend.conf:
            errors.append(
                FieldError(
                    f"{backend.path}.conf.caCert", "only a backend of type builtin has it (this one is provided)"
                )
            )
        if errors or not material:
            return errors
        try:
            await self.signing_ca(backend, store, time.time())
        except (CaProblem, SourceProblem) as exc:
            return [field_error(backend, exc)]
        return []

    async def ensure(self, backend: Backend, store: Store) -> None:
        """Nothing to create: the operator stores the CA (``validate`` checked it was there)."""

    async def signing_ca(self, backend: Backend, store: Store, now: float) -> SigningCA:
        cert_pem = await _content(backend, store, "cert")
        key_pem = await _content(backend, store, "key")
        return await asyncio.to_thread(load_signing_ca, backend.name, cert_pem, key_pem, now)
