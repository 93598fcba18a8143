"""MeshGateway / MeshGatewayRoute are created on global and synced to zones (real KDS server and
client in one event loop, memory stores): the MeshGateway under Kuma's hashed name (zones create
MeshGateways too), the route under its own; global's copies are read-only on a federated zone, and
MeshGatewayRoute is a global-only type there."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from kds_harness import eventually, running_global, running_zone
from zonemesh.shared.kds.naming import hashed_name
from zonemesh.shared.resources.codec import from_universal, load_documents
from zonemesh.shared.resources.manager import Mode, ReadOnly, ResourceManager
from zonemesh.shared.resources.registry import REGISTRY
from zonemesh.shared.store import Store
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.tokens.zone import ZoneTokenIssuer

DOCS = """
type: MeshGateway
mesh: default
name: edge-gateway
selectors: [{match: {kuma.io/service: edge-gateway}}]
conf:
  listeners: [{port: 8080, protocol: HTTP, tags: {port: http-8080}}]
---
type: MeshGatewayRoute
mesh: default
name: edge-route
selectors: [{match: {kuma.io/service: edge-gateway, port: http-8080}}]
conf:
  http:
    rules: [{matches: [{path: {match: PREFIX, value: /}}], backends: [{destination: {kuma.io/service: web}}]}]
"""


async def _spec(store: Store, type: str, name: str) -> object:
    res = await store.find(type, name, "default")
    return None if res is None else res.spec


async def test_gateways_sync_from_global_to_zones(tmp_path: Path) -> None:
    global_store, zone_store = MemoryStore(), MemoryStore()
    global_manager = ResourceManager(global_store, mode=Mode.GLOBAL)
    await global_manager.ensure_default_mesh()
    gateway, route = (from_universal(d)[0] for d in load_documents(DOCS))
    await global_manager.create(gateway.copy())
    async with running_global(tmp_path, global_store) as (kds, _):
        token = await ZoneTokenIssuer(global_store).issue("zone-1", None, 24 * 3600)
        async with running_zone(tmp_path, "zone-1", kds.port, token, zone_store):
            await eventually(
                lambda: _has_spec(zone_store, "MeshGateway", hashed_name("default", "edge-gateway"), gateway.spec),
                what="gateway in zone",
            )
            await global_manager.create(route.copy())
            await eventually(
                lambda: _has_spec(zone_store, "MeshGatewayRoute", "edge-route", route.spec), what="route in zone"
            )
            await global_manager.delete("MeshGatewayRoute", "edge-route", "default")
            await eventually(lambda: _gone(zone_store, "MeshGatewayRoute", "edge-route"), what="route deleted in zone")
    zone = ResourceManager(zone_store, mode=Mode.ZONE, zone="zone-1")
    with pytest.raises(ReadOnly, match="apply it on the global control plane"):
        zone.check_writable(REGISTRY.get("MeshGatewayRoute"))
    with pytest.raises(ReadOnly, match="read-only here"):
        await zone.apply(dataclasses.replace(gateway, name=hashed_name("default", "edge-gateway")))


async def _has_spec(store: Store, type: str, name: str, spec: object) -> bool:
    return await _spec(store, type, name) == spec


async def _gone(store: Store, type: str, name: str) -> bool:
    return await store.find(type, name, "default") is None
