"""MeshTimeout: connect, idle, request and stream timeouts, outbound (`to`) and inbound (`from`
and Kuma 2.x's `rules`).

Inbound, `from` entries and rules are Kuma's inbound rules (``callers.py``): the merged conf of
those without matches sets the local cluster and the listener's connection manager, as `from`
always did. Rules with ``spiffeID`` matches set per-request timeouts (``http.requestTimeout``,
``http.streamIdleTimeout``: nothing else can depend on the caller) for the callers they select:
the inbound gets a copy of its route per match, most specific first, matching the caller's
certificate URI SAN, which the connection manager writes into the XFCC header (and each route
removes before the request reaches the service).

On a builtin gateway listener `from` and the rules without matches set the connection manager's
timeouts (``http.requestTimeout``: its ``request_timeout``); `to` sets the routes' request and
stream idle timeouts (generators/gateway.py) and the clusters' connect and idle timeouts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from envoy.config.route.v3 import route_components_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.envoy import InboundPieces, OutboundPieces, duration
from zonemesh.zone_cp.xds.policies import callers
from zonemesh.zone_cp.xds.policies.plugin import Plugin

TYPE = "MeshTimeout"
# Kuma's IsFromAsRules: `from` entries count as inbound rules without matches (callers.rules).
FROM_AS_RULES = True


def _http(pieces: OutboundPieces | InboundPieces, http: Mapping[str, Any], idle: str | None) -> None:
    hcm, route = pieces.hcm, pieces.route
    assert hcm is not None
    if "streamIdleTimeout" in http:
        hcm.stream_idle_timeout.CopyFrom(duration(http["streamIdleTimeout"]))
    if "requestHeadersTimeout" in http:
        hcm.request_headers_timeout.CopyFrom(duration(http["requestHeadersTimeout"]))
    if "requestTimeout" in http and route is not None:
        route.route.timeout.CopyFrom(duration(http["requestTimeout"]))
    if idle is not None:
        hcm.common_http_protocol_options.idle_timeout.CopyFrom(duration(idle))


def apply_outbound(pieces: OutboundPieces, conf: Mapping[str, Any]) -> None:
    if "connectionTimeout" in conf:
        pieces.cluster.connect_timeout.CopyFrom(duration(conf["connectionTimeout"]))
    idle = conf.get("idleTimeout")
    http = conf.get("http") or {}
    if pieces.is_http:
        _http(pieces, http, idle)
        if idle is not None:
            pieces.common_http.idle_timeout.CopyFrom(duration(idle))
        if "maxStreamDuration" in http:
            pieces.common_http.max_stream_duration.CopyFrom(duration(http["maxStreamDuration"]))
        if "maxConnectionDuration" in http:
            pieces.common_http.max_connection_duration.CopyFrom(duration(http["maxConnectionDuration"]))
    elif pieces.tcp_proxy is not None and idle is not None:
        pieces.tcp_proxy.idle_timeout.CopyFrom(duration(idle))


def _listener(pieces: InboundPieces, conf: Mapping[str, Any]) -> None:
    """The conf for every caller on a sidecar inbound or a gateway listener."""
    if "connectionTimeout" in conf:
        pieces.cluster.connect_timeout.CopyFrom(duration(conf["connectionTimeout"]))
    idle = conf.get("idleTimeout")
    http = conf.get("http") or {}
    if pieces.is_http:
        _http(pieces, http, idle)
        assert pieces.hcm is not None
        if "requestTimeout" in http and pieces.route is None:
            # A gateway listener: its routes take `to`'s; `from` bounds receiving the request.
            pieces.hcm.request_timeout.CopyFrom(duration(http["requestTimeout"]))
        if "maxStreamDuration" in http:
            pieces.hcm.common_http_protocol_options.max_stream_duration.CopyFrom(duration(http["maxStreamDuration"]))
        if "maxConnectionDuration" in http:
            pieces.hcm.common_http_protocol_options.max_connection_duration.CopyFrom(
                duration(http["maxConnectionDuration"])
            )
    elif pieces.tcp_proxy is not None and idle is not None:
        pieces.tcp_proxy.idle_timeout.CopyFrom(duration(idle))


def _caller_routes(pieces: InboundPieces, classes: Sequence[callers.CallerClass]) -> None:
    """A copy of the inbound's route per caller class with per-request timeouts of its own."""
    assert pieces.hcm is not None and pieces.route is not None
    for caller_class in classes:
        http = caller_class.conf.get("http") or {}
        if "requestTimeout" not in http and "streamIdleTimeout" not in http:
            continue
        route = route_components_pb2.Route()
        route.CopyFrom(pieces.route)
        route.match.headers.append(callers.caller_header_match(caller_class.match))
        route.request_headers_to_remove.append(callers.XFCC)
        if "requestTimeout" in http:
            route.route.timeout.CopyFrom(duration(http["requestTimeout"]))
        if "streamIdleTimeout" in http:
            route.route.idle_timeout.CopyFrom(duration(http["streamIdleTimeout"]))
        pieces.caller_routes.append(route)
    if pieces.caller_routes:
        callers.expose_caller(pieces.hcm)
        pieces.route.request_headers_to_remove.append(callers.XFCC)


def apply_inbound(pieces: InboundPieces, policies: Sequence[Resource]) -> None:
    found = callers.rules(policies, from_as_rules=FROM_AS_RULES)
    conf = callers.catch_all(found)
    if conf is not None:
        _listener(pieces, conf)
    classes = callers.classes(found)
    if classes and pieces.is_http and pieces.route is not None:
        _caller_routes(pieces, classes)


def apply_gateway(pieces: InboundPieces, policies: Sequence[Resource]) -> None:
    # Rules with matches are refused on gateway-only scopes (a gateway's routes are not copied
    # per caller); with a scope of sidecars and gateways they apply on the sidecars.
    conf = callers.catch_all(callers.rules(policies, from_as_rules=FROM_AS_RULES))
    if conf is not None:
        _listener(pieces, conf)


PLUGIN = Plugin(
    TYPE,
    order=20,
    outbound=apply_outbound,
    inbound=apply_inbound,
    gateway=apply_gateway,
    from_as_rules=FROM_AS_RULES,
)
