"""Which proxies a policy or a MeshGateway selects: Kuma's inspect endpoints, by generation's matching.

- ``GET /meshes/{mesh}/{policy type}/{name}/_resources/dataplanes`` (Kuma 2.x, an
  ``InspectDataplanesForPolicy``): the Dataplanes the policy's top-level targetRef selects, as
  ``matching.selects`` decides for generation; a ``MeshGateway`` targetRef selects the builtin
  gateways that MeshGateway configures (``gateway.select_gateway``), a ``MeshHTTPRoute`` one the
  proxies that route's own top-level targetRef selects (the policy configures its routes there).
  Paged as Kuma pages it: ``size`` (default 100), ``offset`` (a number) and ``name`` (contains).
- ``GET /meshes/{mesh}/meshgateways/{name}/dataplanes`` (kumactl's ``inspect meshgateway``): the
  builtin gateway Dataplanes this MeshGateway configures.

Pure functions over resources; zone_cp/app.py reads the store and serves them. What the policy
does to each proxy is ``_rules`` (inspection.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.types.targetref import MESH_GATEWAY, top_level
from zonemesh.zone_cp.xds.generators.gateway import select_gateway
from zonemesh.zone_cp.xds.policies.matching import selects

MESH_HTTP_ROUTE = "MeshHTTPRoute"


def policy_selects(
    policy: Resource, dp: Resource, gateways: Iterable[Resource], routes: Mapping[str, Resource]
) -> bool:
    """Does the top-level targetRef of ``policy`` select the proxy ``dp``?"""
    ref = top_level(policy.spec)
    kind = ref.get("kind")
    if kind == MESH_GATEWAY:
        gateway = select_gateway(gateways, dp)
        return gateway is not None and gateway.name == ref.get("name")
    if kind == MESH_HTTP_ROUTE:
        route = routes.get(str(ref.get("name")))
        # A route's own top-level targetRef is never a route (schema), so this recursion stops.
        return route is not None and route is not policy and policy_selects(route, dp, gateways, routes)
    return selects(ref, dp)


def meta(dp: Resource) -> dict[str, Any]:
    """Kuma's ``Meta`` of a Dataplane in an inspect list."""
    return {"type": "Dataplane", "mesh": dp.mesh, "name": dp.name, "labels": dict(dp.labels)}


def selected_dataplanes(
    policy: Resource, dataplanes: Iterable[Resource], gateways: Iterable[Resource], routes: Iterable[Resource]
) -> list[Resource]:
    """The Dataplanes ``policy`` selects, by name."""
    gateway_list = list(gateways)
    by_name = {r.name: r for r in routes}
    found = [dp for dp in dataplanes if policy_selects(policy, dp, gateway_list, by_name)]
    return sorted(found, key=lambda dp: dp.name)


def gateway_dataplanes(
    gateway: Resource, dataplanes: Iterable[Resource], gateways: Iterable[Resource]
) -> list[Resource]:
    """The builtin gateway Dataplanes ``gateway`` configures (the most specific MeshGateway wins)."""
    gateway_list = list(gateways)
    found = []
    for dp in dataplanes:
        chosen = select_gateway(gateway_list, dp)
        if chosen is not None and chosen.name == gateway.name:
            found.append(dp)
    return sorted(found, key=lambda dp: dp.name)
