"""MeshRateLimit: local (per-proxy) rate limits on inbound traffic (`from` and Kuma 2.x's `rules`
on sidecars; `to` on builtin gateways)."""

from collections.abc import Mapping
from typing import Any

from zonemesh.shared.resources.registry import PolicySupport, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import Bool, Duration, Errors, Int, Obj, at_least_one, parse_duration
from zonemesh.shared.resources.types.policies.common import (
    HEADERS_ADD_SET,
    HTTP_STATUS,
    gateway_to_mesh_only,
    inbound_rule,
    not_empty,
    policy_semantic,
    rules_alone,
    sni_not_yet,
    source_conditioned,
    to_only_for_gateway,
    to_only_for_gateway_rules,
)
from zonemesh.shared.resources.types.targetref import (
    MESH,
    MESH_HTTP_ROUTE,
    TOP_KINDS,
    policy_spec,
)

_MIN_INTERVAL_SECONDS = 0.05


def _interval_above_minimum(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    """Envoy's token bucket refills at most every 50ms; Kuma refuses shorter intervals."""
    interval = value.get("interval")
    if not isinstance(interval, str):
        return
    try:
        seconds = parse_duration(interval)
    except ValueError:
        return  # the Duration node already reported it
    if seconds <= _MIN_INTERVAL_SECONDS:
        errors.add(f"{path}.interval", "must be greater than 50ms")


RATE = Obj(
    {"num": Int(min=1), "interval": Duration()},
    required=("num", "interval"),
    checks=(_interval_above_minimum,),
)

LOCAL = Obj(
    {
        "http": Obj(
            {
                "disabled": Bool(),
                "requestRate": RATE,
                "onRateLimit": Obj({"status": HTTP_STATUS, "headers": HEADERS_ADD_SET}),
            },
            checks=(at_least_one("disabled", "requestRate", "onRateLimit"),),
        ),
        "tcp": Obj(
            {"disabled": Bool(), "connectionRate": RATE},
            checks=(at_least_one("disabled", "connectionRate"),),
        ),
    },
    checks=(at_least_one("http", "tcp"),),
)

CONF = Obj({"local": LOCAL}, required=("local",))

MESH_RATE_LIMIT = register(
    ResourceType(
        name="MeshRateLimit",
        plural="meshratelimits",
        short_name="mrl",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES | Sync.ZONE_TO_GLOBAL,
        wrapped=True,
        policy=True,
        from_as_rules=True,  # Kuma's IsFromAsRules
        support=PolicySupport(
            plugin="meshratelimit", sidecar=("from", "rules"), gateway=("to",), not_yet=sni_not_yet("MeshRateLimit")
        ),
        spec=policy_spec(
            top=(*TOP_KINDS, MESH_HTTP_ROUTE),
            to=(MESH,),
            from_=(MESH,),
            conf=CONF,
            rule=inbound_rule(CONF),
        ),
        semantic=policy_semantic(
            not_empty("to", "from", "rules"),
            rules_alone("to", "from"),
            to_only_for_gateway,
            to_only_for_gateway_rules,
            gateway_to_mesh_only,
            # A connection rate limit counts connections, before any caller is known.
            source_conditioned(("local.tcp",)),
        ),
    )
)
