"""MeshLoadBalancingStrategy: how a proxy spreads its traffic over a destination's instances
(`to`): the load balancer, the hash policies of consistent hashing, and locality awareness (this
zone first, affinity tags within it, a failover order across zones). Kuma 2.14's schema and
validator (pkg/plugins/policies/meshloadbalancingstrategy/api/v1alpha1), plus what Envoy would
refuse (a Maglev table size that is not prime, a minimum ring size above the maximum, locality
weights beyond 32 bits): refused here with the field rather than NACKed by the proxy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import PolicySupport, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import (
    Bool,
    Duration,
    Enum,
    Errors,
    FieldError,
    Int,
    List,
    Obj,
    Str,
    Union,
)
from zonemesh.shared.resources.types.policies.common import PERCENTAGE, not_empty, policy_semantic, top_kind
from zonemesh.shared.resources.types.targetref import (
    MESH,
    MESH_GATEWAY,
    MESH_HTTP_ROUTE,
    MESH_MULTI_ZONE_SERVICE,
    MESH_SERVICE,
    TOP_KINDS,
    not_supported,
    policy_spec,
)

TYPE = "MeshLoadBalancingStrategy"

LOAD_BALANCERS = ("RoundRobin", "LeastRequest", "RingHash", "Random", "Maglev")
# The block of settings each load balancer type takes (RoundRobin's and Random's are empty).
LB_BLOCKS = {
    "RoundRobin": "roundRobin",
    "LeastRequest": "leastRequest",
    "RingHash": "ringHash",
    "Random": "random",
    "Maglev": "maglev",
}
HASH_TYPES = ("Header", "Cookie", "Connection", "SourceIP", "QueryParameter", "FilterState")
# The field each hash policy type reads (Kuma: SourceIP is Connection's alias, both read `connection`).
HASH_FIELDS = {
    "Header": "header",
    "Cookie": "cookie",
    "Connection": "connection",
    "SourceIP": "connection",
    "QueryParameter": "queryParameter",
    "FilterState": "filterState",
}
TO_ZONE_TYPES = ("Any", "Only", "AnyExcept", "None")
UINT32_MAX = 4_294_967_295
MAX_RING_SIZE = 8_000_000
MAX_MAGLEV_TABLE = 5_000_011
# Kuma's default affinity weights are 9·10^(n-1-i) (90 % to the first tag, 9 % to the next...):
# beyond 9 tags the first weight no longer fits Envoy's 32-bit locality weight.
MAX_DEFAULT_WEIGHTED_TAGS = 9

# An HTTP header name (RFC 7230 token); Envoy looks it up case-insensitively.
_HEADER_NAME = Str(
    min_len=1, max_len=256, pattern=r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+", pattern_reason="must be an HTTP header name"
)


def _hash_policy(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    kind = value.get("type")
    wanted = HASH_FIELDS.get(kind) if isinstance(kind, str) else None
    if wanted is None:
        return  # the Enum already reported it
    if value.get(wanted) is None:
        errors.add(f"{path}.{wanted}", "must be defined")
    for other in set(HASH_FIELDS.values()) - {wanted}:
        if value.get(other) is not None:
            errors.add(f"{path}.{other}", f"must not be set with type {kind}")
    path_value = (value.get("cookie") or {}).get("path") if kind == "Cookie" else None
    if isinstance(path_value, str) and not path_value.startswith("/"):
        errors.add(f"{path}.cookie.path", "must be an absolute path")


HASH_POLICY = Obj(
    {
        "type": Enum(*HASH_TYPES),
        "terminal": Bool(),
        "header": Obj({"name": _HEADER_NAME}, required=("name",)),
        "cookie": Obj({"name": Str(min_len=1), "path": Str(), "ttl": Duration()}, required=("name",)),
        "connection": Obj({"sourceIP": Bool()}),
        "queryParameter": Obj({"name": Str(min_len=1)}, required=("name",)),
        "filterState": Obj({"key": Str(min_len=1)}, required=("key",)),
    },
    required=("type",),
    checks=(_hash_policy,),
)
HASH_POLICIES = List(HASH_POLICY)

# Kuma's IntOrString: an integer, or a decimal in quotes (a YAML float is refused, as in Kuma).
_NON_NEGATIVE_DECIMAL = Union(
    (Int(min=0), Str(pattern=r"\d+(?:\.\d+)?")),
    reason='must be a number greater than or equal to 0: an integer, or a decimal in quotes such as "1.5"',
)


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    divisor = 2
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 1
    return True


def _prime_table(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    size = value.get("tableSize")
    if isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_MAGLEV_TABLE and not _is_prime(size):
        errors.add(f"{path}.tableSize", "must be a prime number (Envoy's Maglev table), e.g. 65537")


def _ring_sizes(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    low, high = value.get("minRingSize"), value.get("maxRingSize")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        errors.add(f"{path}.minRingSize", "must be less than or equal to maxRingSize")


def _lb_block_matches_type(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    """A block for another type than ``type`` would be ignored: refuse it."""
    kind = value.get("type")
    if kind not in LB_BLOCKS:
        return
    for other_type, block in LB_BLOCKS.items():
        if other_type != kind and value.get(block) is not None:
            errors.add(f"{path}.{block}", f"must not be set with type {kind}")


LOAD_BALANCER = Obj(
    {
        "type": Enum(*LOAD_BALANCERS),
        "roundRobin": Obj({}),
        "leastRequest": Obj({"choiceCount": Int(min=2, max=UINT32_MAX), "activeRequestBias": _NON_NEGATIVE_DECIMAL}),
        "ringHash": Obj(
            {
                "hashFunction": Enum("XXHash", "MurmurHash2"),
                "minRingSize": Int(min=1, max=MAX_RING_SIZE),
                "maxRingSize": Int(min=1, max=MAX_RING_SIZE),
                "hashPolicies": HASH_POLICIES,
            },
            checks=(_ring_sizes,),
        ),
        "random": Obj({}),
        "maglev": Obj(
            {"tableSize": Int(min=1, max=MAX_MAGLEV_TABLE), "hashPolicies": HASH_POLICIES}, checks=(_prime_table,)
        ),
    },
    required=("type",),
    checks=(_lb_block_matches_type,),
)


def _affinity_weights(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    tags = [t for t in value.get("affinityTags") or [] if isinstance(t, Mapping)]
    weighted = [t for t in tags if t.get("weight") is not None]
    if weighted and len(weighted) != len(tags):
        errors.add(f"{path}.affinityTags", "all or none affinity tags should have weight")
    elif weighted:
        # The local zone's localities share one priority: Envoy wants their weights' sum in 32 bits
        # (the instances matching no tag form one more locality, of weight 1).
        total = sum(int(t["weight"]) for t in weighted if isinstance(t["weight"], int)) + 1
        if total > UINT32_MAX:
            errors.add(f"{path}.affinityTags", f"the weights must add up to less than {UINT32_MAX}")
    elif len(tags) > MAX_DEFAULT_WEIGHTED_TAGS:
        errors.add(
            f"{path}.affinityTags",
            f"without weights at most {MAX_DEFAULT_WEIGHTED_TAGS} affinity tags "
            "(the default weights 9·10^n exceed 32 bits beyond): give each tag a weight",
        )
    keys = [t.get("key") for t in tags]
    for i, key in enumerate(keys):
        if key in keys[:i]:
            errors.add(f"{path}.affinityTags[{i}].key", f"{key!r} is listed twice")


def _to_zones(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    kind, zones = value.get("type"), value.get("zones")
    if kind in ("Any", "None") and zones:
        errors.add(f"{path}.zones", f"must be empty when type is {kind}")
    if kind in ("Only", "AnyExcept") and not zones:
        errors.add(f"{path}.zones", f"must not be empty when type is {kind}")


def _threshold_above_zero(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    percentage = value.get("percentage")
    if isinstance(percentage, int | str) and not isinstance(percentage, bool):
        try:
            zero = float(percentage) == 0
        except ValueError:
            return  # PERCENTAGE already reported it
        if zero:
            errors.add(f"{path}.percentage", "must be greater than 0")


_ZONE = Str(min_len=1)

LOCALITY_AWARENESS = Obj(
    {
        "disabled": Bool(),
        "localZone": Obj(
            {
                "affinityTags": List(
                    Obj({"key": Str(min_len=1), "weight": Int(min=1, max=UINT32_MAX)}, required=("key",))
                )
            },
            checks=(_affinity_weights,),
        ),
        "crossZone": Obj(
            {
                "failover": List(
                    Obj(
                        {
                            "from": Obj({"zones": List(_ZONE, min_items=1)}, required=("zones",)),
                            "to": Obj(
                                {"type": Enum(*TO_ZONE_TYPES), "zones": List(_ZONE)},
                                required=("type",),
                                checks=(_to_zones,),
                            ),
                        },
                        required=("to",),
                    )
                ),
                "failoverThreshold": Obj(
                    {"percentage": PERCENTAGE}, required=("percentage",), checks=(_threshold_above_zero,)
                ),
            }
        ),
    }
)


def _hash_policies_once(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    """Kuma: hash policies either at the root of the conf or in the ring hash / maglev block."""
    if value.get("hashPolicies") is None:
        return
    lb = value.get("loadBalancer") or {}
    for block in ("ringHash", "maglev"):
        if ((lb.get(block) or {}) if isinstance(lb, Mapping) else {}).get("hashPolicies") is not None:
            errors.add(f"{path}.loadBalancer.{block}.hashPolicies", "hashPolicies already specified in the root level")


CONF = Obj(
    {"loadBalancer": LOAD_BALANCER, "localityAwareness": LOCALITY_AWARENESS, "hashPolicies": HASH_POLICIES},
    checks=(_hash_policies_once,),
)


def _to_entries(spec: Mapping[str, Any]) -> list[FieldError]:
    """Kuma's validateTo: which kinds a `to` entry may target, and what a MeshHTTPRoute entry sets."""
    errors = []
    gateway = top_kind(spec) == MESH_GATEWAY
    for i, entry in enumerate(spec.get("to") or []):
        kind = entry["targetRef"]["kind"]
        conf = entry.get("default") or {}
        if gateway and conf.get("loadBalancer") is not None and kind != MESH:
            errors.append(
                FieldError(
                    f"spec.to[{i}].targetRef.kind",
                    f"must be {MESH} when the top-level targetRef is a {MESH_GATEWAY} and loadBalancer is set "
                    "(Kuma's rule: a gateway route may split over several services)",
                )
            )
        elif gateway and kind == MESH_HTTP_ROUTE:
            errors.append(
                FieldError(
                    f"spec.to[{i}].targetRef.kind",
                    f"must be one of {MESH}, {MESH_SERVICE}, {MESH_MULTI_ZONE_SERVICE} when the top-level "
                    "targetRef is a MeshGateway",
                )
            )
        if kind == MESH_HTTP_ROUTE:
            for field in ("loadBalancer", "localityAwareness"):
                if conf.get(field) is not None:
                    errors.append(
                        FieldError(
                            f"spec.to[{i}].default.{field}",
                            "field is not allowed when targetRef.kind is MeshHTTPRoute, only hashPolicies is supported",
                        )
                    )
    return errors


def _not_yet(res: Resource) -> list[FieldError]:
    """The plugin configures the outbounds of destination services (``to`` Mesh / MeshService);
    hash policies of the routes of a MeshHTTPRoute wait for route targeting (refused whatever
    targetref.NOT_YET_KINDS says, so that they are never accepted and ignored)."""
    return [
        FieldError(f"spec.to[{i}].targetRef.kind", not_supported(f"{TYPE} `to` kind {MESH_HTTP_ROUTE}"))
        for i, entry in enumerate(res.spec.get("to") or [])
        if isinstance(entry, Mapping) and (entry.get("targetRef") or {}).get("kind") == MESH_HTTP_ROUTE
    ]


MESH_LOAD_BALANCING_STRATEGY = register(
    ResourceType(
        name=TYPE,
        plural="meshloadbalancingstrategies",
        short_name="mlbs",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES | Sync.ZONE_TO_GLOBAL,
        wrapped=True,
        policy=True,
        support=PolicySupport(plugin="meshloadbalancingstrategy", sidecar=("to",), gateway=("to",), not_yet=_not_yet),
        spec=policy_spec(
            top=TOP_KINDS,
            to=(MESH, MESH_SERVICE, MESH_MULTI_ZONE_SERVICE, MESH_HTTP_ROUTE),
            conf=CONF,
            require_default=False,
        ),
        semantic=policy_semantic(not_empty("to"), _to_entries),
    )
)
