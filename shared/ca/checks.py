"""Write-time checks of what a mesh CA reads: the Mesh's mTLS backends and their Secrets.

Run by the resource manager on API writes (ResourceType ``store_check`` / ``delete_check``),
so that a CA that cannot work is refused with the field and the reason, and the running mesh
keeps the CA it has:

- a Mesh: every backend that is new, changed or newly enabled is validated by its type
  (provided: the Secrets exist, the key matches the certificate, every certificate is a valid
  CA; builtin: ``caCert`` does not contradict a CA that exists). ``mtls.skipValidation: true``
  skips the CA material checks (as Kuma); the rotation still starts only once the new CA loads.
  A backend the mesh's proxies still use (it issues their certificates or they trust it: the
  MeshCAState) may be neither removed nor changed until the rotation away from it is over;
- a Secret that a backend in use reads may not change (that would swap the CA under the
  proxies: add a backend with new Secrets and switch ``enabledBackend`` instead);
- a Secret that any backend of its mesh reads may not be deleted (Kuma's rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zonemesh.shared.ca.backend import backends, enabled_backend
from zonemesh.shared.ca.mesh import default_managers
from zonemesh.shared.ca.state import STATE_TYPE, issuing_of, trusted_of
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.schema import FieldError
from zonemesh.shared.store import Store

# Backend fields that do not change which CA a backend is (they may change while it is in use).
_TUNABLE = ("mode", "dpCert", "rootChain")


def _identity(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in _TUNABLE}


def _specs(mesh: Resource | None) -> dict[str, Mapping[str, Any]]:
    if mesh is None:
        return {}
    return {str(b.get("name")): b for b in (mesh.spec.get("mtls") or {}).get("backends") or []}


async def backends_in_use(mesh: Resource, store: Store) -> dict[str, str]:
    """The backends of a stored Mesh whose CA its proxies use now: name -> why."""
    state = await store.find(STATE_TYPE, mesh.name, mesh.name)
    if state is None:
        enabled = enabled_backend(mesh)
        return {enabled.name: "it is the enabled backend"} if enabled is not None else {}
    spec = state.spec
    phase = str(spec.get("phase") or "")
    waiting = spec.get("waiting") or {}
    pending = f" (rotation phase {phase}, waiting for {waiting.get('count', 0)} proxies)" if phase != "Stable" else ""
    used = {e.backend: f"the mesh's proxies trust its CA{pending}" for e in trusted_of(spec)}
    issuing = issuing_of(spec)
    if issuing is not None:
        used[issuing.backend] = f"it issues the certificates of the mesh's proxies{pending}"
    return used


async def check_mesh(res: Resource, stored: Resource | None, store: Store) -> list[FieldError]:
    mtls = res.spec.get("mtls") or {}
    errors: list[FieldError] = []
    old = _specs(stored)
    in_use = await backends_in_use(stored, store) if stored is not None else {}
    new = _specs(res)
    for name, why in sorted(in_use.items()):
        if name not in new:
            errors.append(
                FieldError(
                    "mtls.backends",
                    f"backend {name!r} cannot be removed yet: {why}. Remove it once the mesh's CA state "
                    f"(GET /meshes/{res.name}/mesh-ca-states/{res.name}) is Stable without it",
                )
            )
    was_enabled = enabled_backend(stored) if stored is not None else None
    enabled = enabled_backend(res)
    managers = default_managers(generate=False)
    for backend in backends(res):
        before = old.get(backend.name)
        if backend.name in in_use and before is not None and _identity(before) != _identity(new[backend.name]):
            errors.append(
                FieldError(
                    backend.path,
                    f"backend {backend.name!r} cannot change its type or conf: {in_use[backend.name]}. "
                    "Add a backend with a new name and switch enabledBackend to it",
                )
            )
            continue
        newly_enabled = (
            enabled is not None
            and enabled.name == backend.name
            and (was_enabled is None or was_enabled.name != backend.name)
        )
        if before is not None and before == new[backend.name] and not newly_enabled:
            continue  # checked when it was written
        manager = managers.get(backend.type)
        if manager is None:
            continue  # the schema refuses an unknown type
        errors += await manager.validate(backend, store, material=not mtls.get("skipValidation"))
    return errors


async def check_secret_write(res: Resource, stored: Resource | None, store: Store) -> list[FieldError]:
    if stored is None or stored.spec.get("data") == res.spec.get("data"):
        return []
    mesh = await store.find("Mesh", res.mesh)
    if mesh is None:
        return []
    in_use = await backends_in_use(mesh, store)
    managers = default_managers(generate=False)
    for backend in backends(mesh):
        manager = managers.get(backend.type)
        if manager is None or backend.name not in in_use or res.name not in manager.used_secrets(backend):
            continue
        return [
            FieldError(
                "data",
                f"Secret {res.name!r} holds the CA of backend {backend.name!r} of mesh {res.mesh!r}, and "
                f"{in_use[backend.name]}: changing it would swap the CA under them. To rotate, store the new "
                "CA in new Secrets, add a backend that names them, and switch enabledBackend to it",
            )
        ]
    return []


async def check_secret_delete(res: Resource, store: Store) -> list[FieldError]:
    mesh = await store.find("Mesh", res.mesh)
    if mesh is None:
        return []
    managers = default_managers(generate=False)
    for backend in backends(mesh):
        manager = managers.get(backend.type)
        if manager is not None and res.name in manager.used_secrets(backend):
            return [
                FieldError(
                    "name",
                    f"the Secret {res.name!r} is in use in Mesh {res.mesh!r} in mTLS backend {backend.name!r}: "
                    f"remove the backend from the Mesh before removing the Secret",
                )
            ]
    return []


__all__ = ["backends_in_use", "check_mesh", "check_secret_delete", "check_secret_write"]
