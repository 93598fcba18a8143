"""One mesh CA for all zones: global creates it, federated zones wait for it (never make their own)."""

from __future__ import annotations

import asyncio
import base64

import pytest
from zonemesh.global_cp import mesh_ca
from zonemesh.shared.ca import MeshCA
from zonemesh.shared.ca.backend import enabled_backend
from zonemesh.shared.ca.builtin import BuiltinCaManager, CaNotYetSynced, ca_cert_secret_name, ca_key_secret_name
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore

MESH = Resource(
    type="Mesh",
    name="default",
    spec={"mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}},
)


class _Cp:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.leader_store = store  # one process: it leads


async def test_global_creates_the_ca_of_meshes_with_builtin_mtls() -> None:
    store = MemoryStore()
    await store.create(Resource(type="Mesh", name="plain"))
    async with mesh_ca.component(_Cp(store)):
        await store.create(MESH.copy())
        for _ in range(200):
            if await store.find("Secret", ca_cert_secret_name("default", "ca-1"), "default"):
                break
            await asyncio.sleep(0.02)
    assert await store.find("Secret", ca_key_secret_name("default", "ca-1"), "default") is not None
    assert not [s for s in (await store.list("Secret")).items if s.mesh == "plain"]


async def test_a_federated_zone_waits_for_globals_ca_then_uses_it() -> None:
    global_store, zone_store = MemoryStore(), MemoryStore()
    await global_store.create(MESH.copy())
    await zone_store.create(MESH.copy())
    zone_ca = MeshCA(zone_store, generate=False)
    with pytest.raises(CaNotYetSynced, match="has not arrived from the global control plane"):
        await zone_ca.workload_cert("default", "web")
    assert not (await zone_store.list("Secret")).items  # nothing of its own was made
    backend = enabled_backend(MESH)
    assert backend is not None
    await BuiltinCaManager().ensure(backend, global_store)
    root = await global_store.get("Secret", ca_cert_secret_name("default", "ca-1"), "default")
    for secret in (await global_store.list("Secret")).items:  # what KDS carries to the zone
        await zone_store.create(Resource(type="Secret", name=secret.name, mesh=secret.mesh, spec=dict(secret.spec)))
    _, _, ca_pem, _ = await zone_ca.workload_cert("default", "web")
    assert ca_pem == base64.b64decode(root.spec["data"])
