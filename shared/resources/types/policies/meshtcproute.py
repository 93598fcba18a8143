"""MeshTCPRoute: TCP traffic splitting/redirection per destination (`to[].rules[]`)."""

from zonemesh.shared.resources.registry import NOT_SUPPORTED_YET, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import List, Obj
from zonemesh.shared.resources.types.policies.common import (
    backend_ref,
    gateway_to_mesh_only,
    not_empty,
    policy_semantic,
    sidecar_to_kinds,
)
from zonemesh.shared.resources.types.targetref import (
    MESH,
    MESH_SERVICE,
    TOP_KINDS,
    target_ref,
)

# TCP has nothing to match on: a rule is only where the connection goes.
RULE = Obj(
    {"default": Obj({"backendRefs": List(backend_ref(weighted=True), min_items=1)}, required=("backendRefs",))},
    required=("default",),
)

SPEC = Obj(
    {
        "targetRef": target_ref(TOP_KINDS, top_level=True),
        "to": List(
            Obj(
                {"targetRef": target_ref((MESH, MESH_SERVICE)), "rules": List(RULE, min_items=1)},
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
        sync=Sync.GLOBAL_TO_ZONES,
        wrapped=True,
        policy=True,
        support=NOT_SUPPORTED_YET,
        spec=SPEC,
        semantic=policy_semantic(not_empty("to"), gateway_to_mesh_only, sidecar_to_kinds(MESH_SERVICE)),
    )
)
