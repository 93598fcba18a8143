"""MeshLoadBalancingStrategy: the load balancer of a destination's cluster, the hash policies
of its routes (and TCP proxy), and how its endpoints are laid out over zones (`to`).

On sidecars (and delegated gateways) per outbound, on builtin gateways per destination cluster
and route, as Kuma's plugin does. Locality awareness becomes a ``LocalityPlan`` on the pieces,
which the outbound generator applies when it lays out the endpoints (``locality.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.type.v3 import hash_policy_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.types.policies.meshloadbalancingstrategy import TYPE
from zonemesh.zone_cp.xds.envoy import OutboundPieces, duration
from zonemesh.zone_cp.xds.locality import (
    Affinity,
    Failover,
    LocalityPlan,
    default_affinity_weight,
    overprovisioning_factor,
)
from zonemesh.zone_cp.xds.policies.plugin import Plugin

Conf = Mapping[str, Any]
RouteHashPolicy: TypeAlias = route_components_pb2.RouteAction.HashPolicy

_LB_POLICIES = {
    "RoundRobin": cluster_pb2.Cluster.ROUND_ROBIN,
    "LeastRequest": cluster_pb2.Cluster.LEAST_REQUEST,
    "RingHash": cluster_pb2.Cluster.RING_HASH,
    "Random": cluster_pb2.Cluster.RANDOM,
    "Maglev": cluster_pb2.Cluster.MAGLEV,
}
_HASH_FUNCTIONS = {
    "XXHash": cluster_pb2.Cluster.RingHashLbConfig.XX_HASH,
    "MurmurHash2": cluster_pb2.Cluster.RingHashLbConfig.MURMUR_HASH_2,
}


class ConflictError(ValueError):
    """Two policies ask Envoy for settings it cannot combine on one cluster."""


# --- cluster -----------------------------------------------------------------------------------


def configure_load_balancer(cluster: cluster_pb2.Cluster, lb: Conf) -> None:
    """``loadBalancer`` on the cluster: Envoy's ``lb_policy`` and its settings."""
    kind = str(lb["type"])
    cluster.lb_policy = _LB_POLICIES[kind]
    if kind == "LeastRequest":
        settings = lb.get("leastRequest") or {}
        config = cluster.least_request_lb_config
        config.SetInParent()
        if settings.get("choiceCount") is not None:
            config.choice_count.value = int(settings["choiceCount"])
        if settings.get("activeRequestBias") is not None:
            # A runtime value without a runtime key: the default is the value.
            config.active_request_bias.default_value = float(settings["activeRequestBias"])
    elif kind == "RingHash":
        settings = lb.get("ringHash") or {}
        ring = cluster.ring_hash_lb_config
        ring.SetInParent()
        if settings.get("hashFunction") is not None:
            ring.hash_function = _HASH_FUNCTIONS[str(settings["hashFunction"])]
        if settings.get("minRingSize") is not None:
            ring.minimum_ring_size.value = int(settings["minRingSize"])
        if settings.get("maxRingSize") is not None:
            ring.maximum_ring_size.value = int(settings["maxRingSize"])
    elif kind == "Maglev":
        settings = lb.get("maglev") or {}
        cluster.maglev_lb_config.SetInParent()
        if settings.get("tableSize") is not None:
            cluster.maglev_lb_config.table_size.value = int(settings["tableSize"])


def _weigh_localities(cluster: cluster_pb2.Cluster) -> None:
    """Affinity tags weigh the local zone's sub-localities: Envoy's locality-weighted balancing,
    which excludes its zone-aware settings (MeshHealthCheck's ``failTrafficOnPanic``)."""
    common = cluster.common_lb_config
    if common.HasField("zone_aware_lb_config"):
        raise ConflictError(
            "localityAwareness.localZone.affinityTags needs Envoy's locality-weighted load balancing, "
            "which Envoy cannot combine with MeshHealthCheck failTrafficOnPanic (zone-aware) on the same "
            "destination: drop one of the two"
        )
    common.locality_weighted_lb_config.SetInParent()


# --- hash policies -------------------------------------------------------------------------------


def hash_policies(conf: Conf) -> list[Mapping[str, Any]] | None:
    """The hash policies in effect (Kuma: the root's, else the ring hash / maglev block's)."""
    if conf.get("hashPolicies") is not None:
        return list(conf["hashPolicies"])
    lb = conf.get("loadBalancer") or {}
    block = {"RingHash": "ringHash", "Maglev": "maglev"}.get(str(lb.get("type")))
    found = (lb.get(block) or {}).get("hashPolicies") if block else None
    return list(found) if found is not None else None


def route_hash_policy(policy: Mapping[str, Any]) -> RouteHashPolicy:
    """One hash policy on an HTTP route (``RouteAction.hash_policy``)."""
    result = RouteHashPolicy(terminal=bool(policy.get("terminal", False)))
    kind = policy["type"]
    if kind == "Header":
        result.header.header_name = str(policy["header"]["name"])
    elif kind == "Cookie":
        cookie = policy["cookie"]
        result.cookie.name = str(cookie["name"])
        if cookie.get("path") is not None:
            result.cookie.path = str(cookie["path"])
        if cookie.get("ttl") is not None:
            result.cookie.ttl.CopyFrom(duration(str(cookie["ttl"])))
    elif kind in ("Connection", "SourceIP"):
        result.connection_properties.source_ip = bool((policy.get("connection") or {}).get("sourceIP", False))
    elif kind == "QueryParameter":
        result.query_parameter.name = str(policy["queryParameter"]["name"])
    elif kind == "FilterState":
        result.filter_state.key = str(policy["filterState"]["key"])
    return result


def tcp_hash_policy(policies: Sequence[Mapping[str, Any]]) -> hash_policy_pb2.HashPolicy | None:
    """Envoy's TCP proxy hashes on one thing, the source IP or a filter state object: the first
    policy of those kinds (header, cookie and query parameter policies concern HTTP only)."""
    for policy in policies:
        kind = policy["type"]
        if kind in ("Connection", "SourceIP") and (policy.get("connection") or {}).get("sourceIP"):
            return hash_policy_pb2.HashPolicy(source_ip=hash_policy_pb2.HashPolicy.SourceIp())
        if kind == "FilterState":
            return hash_policy_pb2.HashPolicy(
                filter_state=hash_policy_pb2.HashPolicy.FilterState(key=str(policy["filterState"]["key"]))
            )
    return None


# --- locality ------------------------------------------------------------------------------------


def locality_plan(conf: Conf) -> LocalityPlan:
    """``localityAwareness`` as a plan (locality.py); an absent block: this zone first."""
    aware: Mapping[str, Any] = conf.get("localityAwareness") or {}
    local_zone, cross_zone = aware.get("localZone"), aware.get("crossZone")
    tags = list((local_zone or {}).get("affinityTags") or [])
    affinity = tuple(
        Affinity(
            str(tag["key"]),
            int(tag["weight"]) if tag.get("weight") is not None else default_affinity_weight(i, len(tags)),
        )
        for i, tag in enumerate(tags)
    )
    failover = tuple(
        Failover(
            to_type=str(rule["to"]["type"]),
            to_zones=frozenset(rule["to"].get("zones") or ()),
            from_zones=frozenset(rule["from"]["zones"]) if rule.get("from") is not None else None,
        )
        for rule in (cross_zone or {}).get("failover") or []
    )
    grouped = local_zone is not None or cross_zone is not None
    threshold = ((cross_zone or {}).get("failoverThreshold") or {}).get("percentage")
    return LocalityPlan(
        prefer_local=not aware.get("disabled", False),
        grouped=grouped,
        affinity=affinity,
        failover=failover,
        overprovisioning_factor=overprovisioning_factor(float(threshold) if threshold is not None else None)
        if grouped
        else None,
        weighted_localities=bool(affinity),
    )


# --- hooks ---------------------------------------------------------------------------------------


def apply_outbound(pieces: OutboundPieces, conf: Conf) -> None:
    lb = conf.get("loadBalancer")
    if lb is not None:
        configure_load_balancer(pieces.cluster, lb)
    plan = locality_plan(conf)
    if plan.weighted_localities:
        _weigh_localities(pieces.cluster)
    pieces.locality = plan
    policies = hash_policies(conf)
    if policies is None:
        return
    if pieces.route is not None and pieces.route.WhichOneof("action") in (None, "route"):
        del pieces.route.route.hash_policy[:]
        pieces.route.route.hash_policy.extend(route_hash_policy(p) for p in policies)
    if pieces.tcp_proxy is not None:
        del pieces.tcp_proxy.hash_policy[:]
        tcp = tcp_hash_policy(policies)
        if tcp is not None:
            pieces.tcp_proxy.hash_policy.append(tcp)


def affinity_keys(policy: Resource) -> Iterable[str]:
    """The proxy tags a policy's affinity tags read (a proxy's config depends on their values)."""
    for entry in policy.spec.get("to") or []:
        aware = (entry.get("default") or {}).get("localityAwareness") or {}
        for tag in (aware.get("localZone") or {}).get("affinityTags") or []:
            yield str(tag["key"])


PLUGIN = Plugin(TYPE, order=55, outbound=apply_outbound, tag_keys=affinity_keys, egress_locality=True)
