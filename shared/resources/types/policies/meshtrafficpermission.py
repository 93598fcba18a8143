"""MeshTrafficPermission: which clients (`from`) may reach the selected proxies."""

from zonemesh.shared.resources.registry import ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import Enum, Obj
from zonemesh.shared.resources.types.policies.common import not_empty, policy_semantic
from zonemesh.shared.resources.types.targetref import MESH, MESH_SERVICE, MESH_SUBSET, policy_spec

# An empty `default` would silently grant nothing and deny nothing: the action is required.
CONF = Obj({"action": Enum("Allow", "Deny", "AllowWithShadowDeny")}, required=("action",))

MESH_TRAFFIC_PERMISSION = register(
    ResourceType(
        name="MeshTrafficPermission",
        plural="meshtrafficpermissions",
        short_name="mtp",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES,
        wrapped=True,
        policy=True,
        spec=policy_spec(
            top=(MESH, MESH_SUBSET, MESH_SERVICE),
            from_=(MESH, MESH_SUBSET, MESH_SERVICE),
            conf=CONF,
        ),
        semantic=policy_semantic(not_empty("from")),
    )
)
