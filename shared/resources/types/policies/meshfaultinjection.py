"""MeshFaultInjection: injected aborts, delays and bandwidth limits on inbound HTTP traffic
(`from` and Kuma 2.x's `rules` on sidecars; `to` on builtin gateways)."""

from zonemesh.shared.resources.registry import PolicySupport, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import Duration, List, Obj, Str, at_least_one
from zonemesh.shared.resources.types.policies.common import (
    HTTP_STATUS,
    PERCENTAGE,
    all_not_yet,
    callers_by_service_only,
    gateway_to_mesh_only,
    inbound_rule,
    not_empty,
    policy_semantic,
    rules_alone,
    sni_not_yet,
    to_only_for_gateway,
)
from zonemesh.shared.resources.types.targetref import (
    MESH,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
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
        sync=Sync.GLOBAL_TO_ZONES | Sync.ZONE_TO_GLOBAL,
        wrapped=True,
        policy=True,
        # Callers are told apart by the SPIFFE ID of their mTLS certificate, which names only
        # their service (see the plugin).
        support=PolicySupport(
            plugin="meshfaultinjection",
            sidecar=("from", "rules"),
            gateway=("to",),
            not_yet=all_not_yet(callers_by_service_only("MeshFaultInjection"), sni_not_yet("MeshFaultInjection")),
        ),
        spec=policy_spec(
            top=TOP_KINDS,
            to=(MESH,),
            from_=(MESH, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET),
            conf=CONF,
            rule=inbound_rule(CONF),
        ),
        semantic=policy_semantic(
            not_empty("to", "from", "rules"), rules_alone("from"), to_only_for_gateway, gateway_to_mesh_only
        ),
    )
)
