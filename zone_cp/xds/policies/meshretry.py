"""MeshRetry: HTTP/gRPC route retry policies and TCP connect attempts, outbound (`to`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.retry.host.omit_host_metadata.v3 import omit_host_metadata_config_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.type.matcher.v3 import string_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.envoy import OutboundPieces, duration
from zonemesh.zone_cp.xds.policies.plugin import Plugin

TYPE = "MeshRetry"
# Endpoint metadata Envoy's load balancer reads; endpoints carry the tags of their inbound under it
# when a MeshRetry OmitHostsWithTags names them (crosszone.load_assignment).
LB_METADATA = "envoy.lb"
DEFAULT_UPDATE_FREQUENCY = 2  # Kuma's default for OmitPreviousPriorities

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


_RESET_FORMATS = {
    "Seconds": route_components_pb2.RetryPolicy.SECONDS,
    "UnixTimestamp": route_components_pb2.RetryPolicy.UNIX_TIMESTAMP,
}


def header_matcher(match: Mapping[str, Any]) -> route_components_pb2.HeaderMatcher:
    """Kuma's HeaderMatch (type Exact when absent) as an Envoy header matcher."""
    matcher = route_components_pb2.HeaderMatcher(name=str(match["name"]))
    kind, value = match.get("type") or "Exact", str(match.get("value") or "")
    if kind == "Exact":
        matcher.string_match.exact = value
    elif kind == "Prefix":
        matcher.string_match.prefix = value
    elif kind == "RegularExpression":
        matcher.string_match.safe_regex.regex = value
    elif kind == "Present":
        matcher.present_match = True
    else:  # Absent
        matcher.present_match = False
    return matcher


def _rate_limited_back_off(conf: Mapping[str, Any], policy: route_components_pb2.RetryPolicy) -> None:
    back_off = policy.rate_limited_retry_back_off
    for header in conf.get("resetHeaders") or []:
        back_off.reset_headers.add(name=str(header["name"]), format=_RESET_FORMATS[header["format"]])
    if "maxInterval" in conf:
        back_off.max_interval.CopyFrom(duration(conf["maxInterval"]))


def _host_selection(predicates: Sequence[Mapping[str, Any]], policy: route_components_pb2.RetryPolicy) -> None:
    for predicate in predicates:
        kind = predicate.get("predicate")
        if kind == "OmitPreviousHosts":
            policy.retry_host_predicate.add(name="envoy.retry_host_predicates.previous_hosts").typed_config.Pack(
                previous_hosts_pb2.PreviousHostsPredicate()
            )
        elif kind == "OmitHostsWithTags":
            config = omit_host_metadata_config_pb2.OmitHostMetadataConfig()
            lb = config.metadata_match.filter_metadata[LB_METADATA]
            for key, value in sorted((predicate.get("tags") or {}).items()):
                lb.fields[str(key)].string_value = str(value)
            policy.retry_host_predicate.add(name="envoy.retry_host_predicates.omit_host_metadata").typed_config.Pack(
                config
            )
        elif kind == "OmitPreviousPriorities":
            config = previous_priorities_config_pb2.PreviousPrioritiesConfig(
                update_frequency=int(predicate.get("updateFrequency") or DEFAULT_UPDATE_FREQUENCY)
            )
            policy.retry_priority.name = "envoy.retry_priorities.previous_priorities"
            policy.retry_priority.typed_config.Pack(config)


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
    retry_on = ",".join(dict.fromkeys(conditions)) or default
    if conf.get("retriableResponseHeaders"):
        # Envoy reads retriable_headers only with this condition; the headers are the point.
        retry_on += ",retriable-headers"
        policy.retriable_headers.extend(header_matcher(h) for h in conf["retriableResponseHeaders"])
    policy.retry_on = retry_on
    if methods:
        policy.retriable_request_headers.append(
            route_components_pb2.HeaderMatcher(
                name=":method",
                string_match=string_pb2.StringMatcher(safe_regex={"regex": "|".join(methods)}),
            )
        )
    # Envoy retries only requests matching one of these (any of them): the methods above and these.
    policy.retriable_request_headers.extend(header_matcher(h) for h in conf.get("retriableRequestHeaders") or [])
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
    if conf.get("rateLimitedBackOff"):
        _rate_limited_back_off(conf["rateLimitedBackOff"], policy)
    if not grpc:
        _host_selection(conf.get("hostSelection") or [], policy)
        if "hostSelectionMaxAttempts" in conf:
            policy.host_selection_retry_max_attempts = int(conf["hostSelectionMaxAttempts"])
    return policy


def omit_host_tag_keys(policies: Iterable[Resource]) -> frozenset[str]:
    """The tag names OmitHostsWithTags predicates of ``policies`` read on endpoints."""
    return frozenset(
        str(key)
        for policy in policies
        for entry in policy.spec.get("to") or []
        for predicate in ((entry.get("default") or {}).get("http") or {}).get("hostSelection") or []
        if predicate.get("predicate") == "OmitHostsWithTags"
        for key in predicate.get("tags") or {}
    )


def apply_outbound(pieces: OutboundPieces, conf: Mapping[str, Any]) -> None:
    if pieces.is_http and pieces.route is not None:
        grpc = pieces.protocol == "grpc"
        section = conf.get("grpc" if grpc else "http")
        if section:
            pieces.route.route.retry_policy.CopyFrom(_retry_policy(section, grpc))
    elif pieces.tcp_proxy is not None and conf.get("tcp"):
        pieces.tcp_proxy.max_connect_attempts.value = int(conf["tcp"]["maxConnectAttempt"])


PLUGIN = Plugin(TYPE, order=30, outbound=apply_outbound)
