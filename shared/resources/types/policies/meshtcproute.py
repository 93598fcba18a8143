"""MeshTCPRoute: TCP traffic splitting/redirection per destination (`to[].rules[]`).

Applied by ``zone_cp/xds/policies/meshtcproute.py`` on sidecar outbounds and, with a top-level
MeshGateway targetRef, on builtin gateway TCP listeners.
"""

from collections.abc import Mapping
from typing import Any

from zonemesh.shared.resources.registry import PolicySupport, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import Errors, List, Obj
from zonemesh.shared.resources.types.policies.common import (
    backend_ref,
    gateway_to_mesh_only,
    not_empty,
    policy_semantic,
    sidecar_to_kinds,
)
from zonemesh.shared.resources.types.policies.meshhttproute import backend_refs_not_yet, gateways_need_mesh_gateway
from zonemesh.shared.resources.types.targetref import (
    MESH,
    MESH_SERVICE,
    TOP_KINDS,
    target_ref,
)


def _some_weight(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    """A connection has to go somewhere: at least one backend must weigh more than 0."""
    refs = value.get("backendRefs")
    if not isinstance(refs, list) or not refs:
        return
    weights = [ref.get("weight", 1) for ref in refs if isinstance(ref, Mapping)]
    if all(isinstance(w, int) and w <= 0 for w in weights):
        errors.add(f"{path}.backendRefs", "needs a backendRef with a weight above 0")


# TCP has nothing to match on: a rule is only where the connection goes (Kuma: one rule per entry).
RULE = Obj(
    {
        "default": Obj(
            {"backendRefs": List(backend_ref(weighted=True), min_items=1)},
            required=("backendRefs",),
            checks=(_some_weight,),
        )
    },
    required=("default",),
)

SPEC = Obj(
    {
        "targetRef": target_ref(TOP_KINDS, top_level=True, listener_tags=True),
        "to": List(
            Obj(
                {"targetRef": target_ref((MESH, MESH_SERVICE)), "rules": List(RULE, min_items=1, max_items=1)},
                required=("targetRef", "rules"),
            )
        ),
    },
    required=("to",),
)

MESH_TCP_ROUTE = register(
    ResourceType(
        name="MeshTCPRoute",
        plural="meshtcproutes",
        short_name="mtcpr",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES | Sync.ZONE_TO_GLOBAL,
        wrapped=True,
        policy=True,
        support=PolicySupport(plugin="meshtcproute", sidecar=("to",), gateway=("to",), not_yet=backend_refs_not_yet),
        spec=SPEC,
        semantic=policy_semantic(
            not_empty("to"), gateway_to_mesh_only, sidecar_to_kinds(MESH_SERVICE), gateways_need_mesh_gateway
        ),
    )
)
