"""MeshCircuitBreaker: connection limits and outlier detection on the cluster of a
destination (`to`) or of the local service (`from` and Kuma 2.x's `rules`, merged in policy
order)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.envoy import InboundPieces, OutboundPieces, duration
from zonemesh.zone_cp.xds.policies import callers
from zonemesh.zone_cp.xds.policies.plugin import Plugin

TYPE = "MeshCircuitBreaker"
# Kuma's IsFromAsRules: `from` entries count as inbound rules without matches (callers.rules).
FROM_AS_RULES = True

_LIMITS = {
    "maxConnections": "max_connections",
    "maxPendingRequests": "max_pending_requests",
    "maxRequests": "max_requests",
    "maxRetries": "max_retries",
    "maxConnectionPools": "max_connection_pools",
}


def _percent(value: Any) -> float:
    return float(value)


def _outlier_detection(conf: Mapping[str, Any]) -> outlier_detection_pb2.OutlierDetection:
    od = outlier_detection_pb2.OutlierDetection()
    if "interval" in conf:
        od.interval.CopyFrom(duration(conf["interval"]))
    if "baseEjectionTime" in conf:
        od.base_ejection_time.CopyFrom(duration(conf["baseEjectionTime"]))
    if "maxEjectionPercent" in conf:
        od.max_ejection_percent.value = int(conf["maxEjectionPercent"])
    if "splitExternalAndLocalErrors" in conf:
        od.split_external_local_origin_errors = bool(conf["splitExternalAndLocalErrors"])
    detectors = conf.get("detectors") or {}
    # Envoy enforces consecutive 5xx and success rate by default: only what is configured enforces.
    od.enforcing_consecutive_5xx.value = 0
    od.enforcing_success_rate.value = 0
    if "totalFailures" in detectors:
        od.enforcing_consecutive_5xx.value = 100
        od.consecutive_5xx.value = int(detectors["totalFailures"].get("consecutive", 5))
    if "gatewayFailures" in detectors:
        od.enforcing_consecutive_gateway_failure.value = 100
        od.consecutive_gateway_failure.value = int(detectors["gatewayFailures"].get("consecutive", 5))
    if "localOriginFailures" in detectors:
        od.enforcing_consecutive_local_origin_failure.value = 100
        od.consecutive_local_origin_failure.value = int(detectors["localOriginFailures"].get("consecutive", 5))
    if "successRate" in detectors:
        rate = detectors["successRate"]
        od.enforcing_success_rate.value = 100
        if "minimumHosts" in rate:
            od.success_rate_minimum_hosts.value = int(rate["minimumHosts"])
        if "requestVolume" in rate:
            od.success_rate_request_volume.value = int(rate["requestVolume"])
        if "standardDeviationFactor" in rate:
            od.success_rate_stdev_factor.value = round(float(rate["standardDeviationFactor"]) * 1000)
    if "failurePercentage" in detectors:
        pct = detectors["failurePercentage"]
        od.enforcing_failure_percentage.value = 100
        if "minimumHosts" in pct:
            od.failure_percentage_minimum_hosts.value = int(pct["minimumHosts"])
        if "requestVolume" in pct:
            od.failure_percentage_request_volume.value = int(pct["requestVolume"])
        if "threshold" in pct:
            od.failure_percentage_threshold.value = int(pct["threshold"])
    return od


def configure_cluster(cluster: cluster_pb2.Cluster, conf: Mapping[str, Any]) -> None:
    limits = conf.get("connectionLimits") or {}
    if limits:
        thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds()
        for key, field_name in _LIMITS.items():
            if key in limits:
                getattr(thresholds, field_name).value = int(limits[key])
        cluster.circuit_breakers.CopyFrom(circuit_breaker_pb2.CircuitBreakers(thresholds=[thresholds]))
    outlier = conf.get("outlierDetection")
    if outlier and not outlier.get("disabled"):
        cluster.outlier_detection.CopyFrom(_outlier_detection(outlier))
        if "healthyPanicThreshold" in outlier:
            cluster.common_lb_config.healthy_panic_threshold.value = _percent(outlier["healthyPanicThreshold"])
    elif outlier:
        cluster.ClearField("outlier_detection")


def apply_outbound(pieces: OutboundPieces, conf: Mapping[str, Any]) -> None:
    configure_cluster(pieces.cluster, conf)


def apply_inbound(pieces: InboundPieces, policies: Sequence[Resource]) -> None:
    # `from` entries and rules alike (Kuma's rules have no matches for this type).
    conf = callers.catch_all(callers.rules(policies, from_as_rules=FROM_AS_RULES))
    if conf is not None:
        configure_cluster(pieces.cluster, conf)


PLUGIN = Plugin(TYPE, order=40, outbound=apply_outbound, inbound=apply_inbound, from_as_rules=FROM_AS_RULES)
