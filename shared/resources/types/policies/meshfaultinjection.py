"""MeshFaultInjection: injected aborts, delays and bandwidth limits on inbound HTTP traffic
(`from`; `to` on a MeshGateway)."""

from zonemesh.shared.resources.registry import PolicySupport, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import Duration, List, Obj, Str, at_least_one
from zonemesh.shared.resources.types.policies.common import (
    HTTP_STATUS,
    PERCENTAGE,
    gateway_to_mesh_only,
    not_empty,
    policy_semantic,
    to_only_for_gateway,
)
from zonemesh.shared.resources.types.targetref import (
    MESH,
    MESH_SERVICE,
    MESH_SUBSET,
    TOP_KINDS,
    policy_spec,
)

BANDWIDTH = Str(
    pattern=r"\d+\s?[kMG]bps", pattern_reason='must be a number with a unit kbps, Mbps or Gbps, e.g. "10Mbps"'
)

FAULT = Obj(
    {
        "abort": Obj({"httpStatus": HTTP_STATUS, "percentage": PERCENTAGE}, required=("httpStatus", "percentage")),
        "delay": Obj({"value": Duration(), "percentage": PERCENTAGE}, required=("value", "percentage")),
        "responseBandwidth": Obj({"limit": BANDWIDTH, "percentage": PERCENTAGE}, required=("limit", "percentage")),
    },
    checks=(at_least_one("abort", "delay", "responseBandwidth"),),
)

# `http: []` is meaningful (it clears faults inherited from a less specific policy).
CONF = Obj({"http": List(FAULT)}, required=("http",))

MESH_FAULT_INJECTION = register(
    ResourceType(
        name="MeshFaultInjection",
        plural="meshfaultinjections",
        short_name="mfi",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES,
        wrapped=True,
        policy=True,
        support=PolicySupport(plugin="meshfaultinjection", sidecar=(), gateway=("to",)),
        spec=policy_spec(
            top=TOP_KINDS,
            to=(MESH,),
            from_=(MESH, MESH_SUBSET, MESH_SERVICE),
            conf=CONF,
        ),
        semantic=policy_semantic(not_empty("to", "from"), to_only_for_gateway, gateway_to_mesh_only),
    )
)
