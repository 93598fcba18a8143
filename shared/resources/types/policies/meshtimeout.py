"""MeshTimeout: connection, idle and HTTP timeouts, inbound (`from`, or Kuma 2.x's `rules`) and
outbound (`to`)."""

from collections.abc import Mapping
from typing import Any

from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import PolicySupport, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import Duration, FieldError, Obj
from zonemesh.shared.resources.types.policies.common import (
    all_not_yet,
    inbound_rule,
    not_empty,
    only_gateways,
    policy_semantic,
    rules_alone,
    sni_not_yet,
    source_conditioned,
)
from zonemesh.shared.resources.types.targetref import (
    MESH,
    MESH_HTTP_ROUTE,
    MESH_SERVICE,
    TOP_KINDS,
    not_supported,
    policy_spec,
)

CONF = Obj(
    {
        "connectionTimeout": Duration(),
        "idleTimeout": Duration(),
        "http": Obj(
            {
                "requestTimeout": Duration(),
                "streamIdleTimeout": Duration(),
                "maxStreamDuration": Duration(),
                "maxConnectionDuration": Duration(),
                "requestHeadersTimeout": Duration(),
            }
        ),
    }
)

# What a rule selecting callers by SPIFFE ID may set: per-request timeouts (its own routes).
PER_CALLER = ("http.requestTimeout", "http.streamIdleTimeout")
_PER_CONNECTION = (
    "connectionTimeout",
    "idleTimeout",
    "http.requestHeadersTimeout",
    "http.maxStreamDuration",
    "http.maxConnectionDuration",
)

# Fields that have no effect on a builtin gateway (see the plugin): refused when the policy
# selects only gateways. (section, dotted field, why)
_NOT_ON_GATEWAYS = (
    ("to", "http.requestHeadersTimeout", "a gateway reads request headers on its listeners: use from"),
    ("from", "connectionTimeout", "a gateway listener has no local service to connect to"),
    ("rules", "connectionTimeout", "a gateway listener has no local service to connect to"),
)


def _lookup(conf: Any, field: str) -> Any:
    for part in field.split("."):
        conf = conf.get(part) if isinstance(conf, Mapping) else None
    return conf


def _not_on_gateways(res: Resource) -> list[FieldError]:
    """What zonemesh cannot apply on builtin gateways, when the policy selects only them; rules
    with matches there too (a gateway's routes are not duplicated per caller yet)."""
    spec = res.spec
    if not only_gateways(spec):
        return []
    errors = []
    for section, field, why in _NOT_ON_GATEWAYS:
        for i, entry in enumerate(spec.get(section) or []):
            if _lookup(entry.get("default"), field) is not None:
                errors.append(
                    FieldError(
                        f"spec.{section}[{i}].default.{field}",
                        not_supported(f"MeshTimeout {section} {field} on builtin gateways") + f" ({why})",
                    )
                )
    for i, rule in enumerate(spec.get("rules") or []):
        if rule.get("matches"):
            errors.append(
                FieldError(
                    f"spec.rules[{i}].matches",
                    not_supported("MeshTimeout rules with matches on builtin gateways")
                    + " (select proxyTypes: [Sidecar] for them)",
                )
            )
    return errors


MESH_TIMEOUT = register(
    ResourceType(
        name="MeshTimeout",
        plural="meshtimeouts",
        short_name="mt",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES | Sync.ZONE_TO_GLOBAL,
        wrapped=True,
        policy=True,
        from_as_rules=True,  # Kuma's IsFromAsRules
        # With a top-level MeshHTTPRoute: that route's request timeout (generators/outbound.py).
        support=PolicySupport(
            plugin="meshtimeout",
            not_yet=all_not_yet(sni_not_yet("MeshTimeout"), _not_on_gateways),
            per_route=("http.requestTimeout",),
        ),
        spec=policy_spec(
            top=(*TOP_KINDS, MESH_HTTP_ROUTE),
            to=(MESH, MESH_SERVICE),
            from_=(MESH,),
            conf=CONF,
            rule=inbound_rule(CONF),
        ),
        semantic=policy_semantic(
            not_empty("to", "from", "rules"), rules_alone("to", "from"), source_conditioned(_PER_CONNECTION)
        ),
    )
)
