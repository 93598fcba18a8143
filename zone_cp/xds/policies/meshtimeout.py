"""MeshTimeout: connect, idle, request and stream timeouts, outbound (`to`) and inbound (`from`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.envoy import InboundPieces, OutboundPieces, duration
from zonemesh.zone_cp.xds.policies.matching import from_conf
from zonemesh.zone_cp.xds.policies.plugin import Plugin

TYPE = "MeshTimeout"


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


def apply_inbound(pieces: InboundPieces, policies: Sequence[Resource]) -> None:
    conf = from_conf(policies)
    if conf is None:
        return
    if "connectionTimeout" in conf:
        pieces.cluster.connect_timeout.CopyFrom(duration(conf["connectionTimeout"]))
    idle = conf.get("idleTimeout")
    http = conf.get("http") or {}
    if pieces.is_http:
        _http(pieces, http, idle)
        assert pieces.hcm is not None
        if "maxStreamDuration" in http:
            pieces.hcm.common_http_protocol_options.max_stream_duration.CopyFrom(duration(http["maxStreamDuration"]))
        if "maxConnectionDuration" in http:
            pieces.hcm.common_http_protocol_options.max_connection_duration.CopyFrom(
                duration(http["maxConnectionDuration"])
            )
    elif pieces.tcp_proxy is not None and idle is not None:
        pieces.tcp_proxy.idle_timeout.CopyFrom(duration(idle))


# On a builtin gateway listener `from` sets the same listener timeouts as on a sidecar inbound.
PLUGIN = Plugin(TYPE, order=20, outbound=apply_outbound, inbound=apply_inbound, gateway=apply_inbound)
