"""MeshTrafficPermission: which clients (`from`) may reach the selected proxies."""

from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import PolicySupport, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import Enum, FieldError, Obj
from zonemesh.shared.resources.types.policies.common import not_empty, policy_semantic
from zonemesh.shared.resources.types.targetref import (
    DATAPLANE,
    MESH,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
    not_supported,
    policy_spec,
)

SERVICE_TAG = "kuma.io/service"

# An empty `default` would silently grant nothing and deny nothing: the action is required.
CONF = Obj({"action": Enum("Allow", "Deny", "AllowWithShadowDeny")}, required=("action",))


def sources_by_service_only(res: Resource) -> list[FieldError]:
    """A client is known by its certificate, which carries only its service (SPIFFE ID
    ``spiffe://<mesh>/<service>``): a `from` entry selecting clients by other tags could not be
    enforced."""
    errors = []
    for i, entry in enumerate(res.spec.get("from") or []):
        ref = entry["targetRef"]
        tags = dict(ref.get("tags") or {})
        if ref["kind"] == MESH_SUBSET:
            tags.pop(SERVICE_TAG, None)
        if ref["kind"] in (MESH_SUBSET, MESH_SERVICE_SUBSET) and tags:
            errors.append(
                FieldError(
                    f"spec.from[{i}].targetRef.tags",
                    not_supported(f"selecting MeshTrafficPermission clients by tags other than {SERVICE_TAG}")
                    + " (a client certificate carries only its service)",
                )
            )
    return errors


MESH_TRAFFIC_PERMISSION = register(
    ResourceType(
        name="MeshTrafficPermission",
        plural="meshtrafficpermissions",
        short_name="mtp",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES,
        wrapped=True,
        policy=True,
        # Builtin gateways receive no mesh traffic to permit (the services behind them check
        # the gateway's identity), as in Kuma.
        support=PolicySupport(
            plugin="meshtrafficpermission", sidecar=("from",), gateway=(), not_yet=sources_by_service_only
        ),
        spec=policy_spec(
            top=(MESH, DATAPLANE, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET),
            from_=(MESH, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET),
            conf=CONF,
        ),
        semantic=policy_semantic(not_empty("from")),
    )
)
