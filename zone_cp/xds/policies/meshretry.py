"""MeshRetry: HTTP/gRPC route retry policies and TCP connect attempts, outbound (`to`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import string_pb2
from zonemesh.zone_cp.xds.envoy import OutboundPieces, duration
from zonemesh.zone_cp.xds.policies.plugin import Plugin

TYPE = "MeshRetry"

# Kuma's names -> Envoy's retry_on conditions.
HTTP_RETRY_ON = {
    "5xx": "5xx",
    "5XX": "5xx",
    "GatewayError": "gateway-error",
    "Reset": "reset",
    "Retriable4xx": "retriable-4xx",
    "ConnectFailure": "connect-failure",
    "EnvoyRatelimited": "envoy-ratelimited",
    "RefusedStream": "refused-stream",
    "Http3PostConnectFailure": "http3-post-connect-failure",
}
GRPC_RETRY_ON = {
    "Canceled": "cancelled",
    "DeadlineExceeded": "deadline-exceeded",
    "Internal": "internal",
    "ResourceExhausted": "resource-exhausted",
    "Unavailable": "unavailable",
}
# What Kuma retries on when retryOn is not given.
DEFAULT_HTTP_RETRY_ON = "gateway-error,connect-failure,refused-stream"
DEFAULT_GRPC_RETRY_ON = "cancelled,deadline-exceeded,internal,resource-exhausted,unavailable"


def _retry_policy(conf: Mapping[str, Any], grpc: bool) -> route_components_pb2.RetryPolicy:
    policy = route_components_pb2.RetryPolicy()
    conditions: list[str] = []
    methods: list[str] = []
    for item in conf.get("retryOn") or []:
        if grpc:
            conditions.append(GRPC_RETRY_ON[item])
        elif item in HTTP_RETRY_ON:
            conditions.append(HTTP_RETRY_ON[item])
        elif item.startswith("HttpMethod"):
            methods.append(item.removeprefix("HttpMethod").upper())
        else:  # an HTTP status code
            policy.retriable_status_codes.append(int(item))
            if "retriable-status-codes" not in conditions:
                conditions.append("retriable-status-codes")
    default = DEFAULT_GRPC_RETRY_ON if grpc else DEFAULT_HTTP_RETRY_ON
    policy.retry_on = ",".join(dict.fromkeys(conditions)) or default
    if methods:
        policy.retriable_request_headers.append(
            route_components_pb2.HeaderMatcher(
                name=":method",
                string_match=string_pb2.StringMatcher(safe_regex={"regex": "|".join(methods)}),
            )
        )
    if "numRetries" in conf:
        policy.num_retries.value = int(conf["numRetries"])
    if "perTryTimeout" in conf:
        policy.per_try_timeout.CopyFrom(duration(conf["perTryTimeout"]))
    back_off = conf.get("backOff") or {}
    if back_off:
        base = back_off.get("baseInterval", "25ms")
        policy.retry_back_off.base_interval.CopyFrom(duration(base))
        if "maxInterval" in back_off:
            policy.retry_back_off.max_interval.CopyFrom(duration(back_off["maxInterval"]))
    if not grpc:
        for predicate in conf.get("hostSelection") or []:
            if predicate.get("predicate") == "OmitPreviousHosts":
                policy.retry_host_predicate.add(name="envoy.retry_host_predicates.previous_hosts").typed_config.Pack(
                    _previous_hosts()
                )
        if "hostSelectionMaxAttempts" in conf:
            policy.host_selection_retry_max_attempts = int(conf["hostSelectionMaxAttempts"])
    return policy


def _previous_hosts() -> Any:
    from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2

    return previous_hosts_pb2.PreviousHostsPredicate()


def apply_outbound(pieces: OutboundPieces, conf: Mapping[str, Any]) -> None:
    if pieces.is_http and pieces.route is not None:
        grpc = pieces.protocol == "grpc"
        section = conf.get("grpc" if grpc else "http")
        if section:
            pieces.route.route.retry_policy.CopyFrom(_retry_policy(section, grpc))
    elif pieces.tcp_proxy is not None and conf.get("tcp"):
        pieces.tcp_proxy.max_connect_attempts.value = int(conf["tcp"]["maxConnectAttempt"])


PLUGIN = Plugin(TYPE, order=30, outbound=apply_outbound)
