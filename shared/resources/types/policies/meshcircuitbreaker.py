"""MeshCircuitBreaker: connection limits and outlier detection, per destination (`to`) and
for inbound traffic (`from`, or Kuma 2.x's `rules`)."""

from collections.abc import Mapping
from typing import Any

from zonemesh.shared.resources.registry import PolicySupport, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import Bool, Duration, Errors, Int, Obj, Str, Union, at_least_one
from zonemesh.shared.resources.types.policies.common import (
    PERCENTAGE,
    inbound_rule,
    not_empty,
    policy_semantic,
    rules_alone,
)
from zonemesh.shared.resources.types.targetref import (
    MESH,
    MESH_SERVICE,
    TOP_KINDS,
    policy_spec,
)

_POSITIVE = Int(min=1)
_CONSECUTIVE = Obj({"consecutive": _POSITIVE})

# Envoy's success-rate ejection multiplies the factor by the standard deviation: it must be > 0.
_STDEV_FACTOR = Union(
    (_POSITIVE, Str(pattern=r"(?=.*[1-9])\d+(?:\.\d+)?")),
    reason='must be a number greater than zero: an integer, or a decimal in quotes such as "1.9"',
)

DETECTORS = Obj(
    {
        "totalFailures": _CONSECUTIVE,
        "gatewayFailures": _CONSECUTIVE,
        "localOriginFailures": _CONSECUTIVE,
        "successRate": Obj(
            {"minimumHosts": _POSITIVE, "requestVolume": _POSITIVE, "standardDeviationFactor": _STDEV_FACTOR}
        ),
        "failurePercentage": Obj(
            {"minimumHosts": _POSITIVE, "requestVolume": _POSITIVE, "threshold": Int(min=0, max=100)}
        ),
    },
    checks=(
        at_least_one("totalFailures", "gatewayFailures", "localOriginFailures", "successRate", "failurePercentage"),
    ),
)


def _detectors_unless_disabled(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    """Outlier detection without a detector never ejects anything; only say so when it is on."""
    if value.get("detectors") is None and value.get("disabled") is not True:
        errors.add(f"{path}.detectors", "must be defined unless outlier detection is disabled")


OUTLIER_DETECTION = Obj(
    {
        "disabled": Bool(),
        "interval": Duration(positive=True),
        "baseEjectionTime": Duration(positive=True),
        "maxEjectionPercent": Int(min=0, max=100),
        "splitExternalAndLocalErrors": Bool(),
        "healthyPanicThreshold": PERCENTAGE,
        "detectors": DETECTORS,
    },
    checks=(_detectors_unless_disabled,),
)

CONF = Obj(
    {
        "connectionLimits": Obj(
            {
                "maxConnections": _POSITIVE,
                "maxConnectionPools": _POSITIVE,
                "maxPendingRequests": _POSITIVE,
                "maxRequests": _POSITIVE,
                "maxRetries": _POSITIVE,
            }
        ),
        "outlierDetection": OUTLIER_DETECTION,
    },
    checks=(at_least_one("connectionLimits", "outlierDetection"),),
)

MESH_CIRCUIT_BREAKER = register(
    ResourceType(
        name="MeshCircuitBreaker",
        plural="meshcircuitbreakers",
        short_name="mcb",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES | Sync.ZONE_TO_GLOBAL,
        wrapped=True,
        policy=True,
        from_as_rules=True,  # Kuma's IsFromAsRules
        support=PolicySupport(plugin="meshcircuitbreaker", gateway=("to",)),
        spec=policy_spec(
            top=TOP_KINDS,
            to=(MESH, MESH_SERVICE),
            from_=(MESH,),
            conf=CONF,
            # Kuma's MeshCircuitBreaker rules have no matches: they configure the inbound's cluster.
            rule=inbound_rule(CONF, matches=False),
        ),
        semantic=policy_semantic(not_empty("to", "from", "rules"), rules_alone("to", "from")),
    )
)
