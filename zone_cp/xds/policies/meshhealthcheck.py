"""MeshHealthCheck: active health checks on the cluster of each destination (`to`)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.extensions.health_check.event_sinks.file.v3 import file_pb2
from envoy.type.v3 import range_pb2
from zonemesh.zone_cp.xds.envoy import OutboundPieces, duration
from zonemesh.zone_cp.xds.policies.plugin import Plugin

TYPE = "MeshHealthCheck"

# Kuma's defaults for the fields Envoy requires.
DEFAULTS = {"interval": "1m", "timeout": "15s", "unhealthyThreshold": 5, "healthyThreshold": 1}


def _payload(text: str) -> health_check_pb2.HealthCheck.Payload:
    return health_check_pb2.HealthCheck.Payload(binary=base64.b64decode(text))


def _header(item: Mapping[str, Any], append: bool) -> base_pb2.HeaderValueOption:
    action = (
        base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
        if append
        else base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    )
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=item["name"], value=item["value"]), append_action=action
    )


def _checker(hc: health_check_pb2.HealthCheck, conf: Mapping[str, Any], protocol: str) -> bool:
    """Pick the checker by the destination's protocol (as Kuma does); False when disabled."""
    http, grpc, tcp = conf.get("http") or {}, conf.get("grpc") or {}, conf.get("tcp") or {}
    if protocol in ("http", "http2") and conf.get("http") is not None and not http.get("disabled"):
        check = hc.http_health_check
        check.path = http.get("path", "/")
        for status in http.get("expectedStatuses") or []:
            check.expected_statuses.append(range_pb2.Int64Range(start=int(status), end=int(status) + 1))
        headers = http.get("requestHeadersToAdd") or {}
        check.request_headers_to_add.extend(_header(h, True) for h in headers.get("add") or [])
        check.request_headers_to_add.extend(_header(h, False) for h in headers.get("set") or [])
        return True
    if protocol == "grpc" and conf.get("grpc") is not None and not grpc.get("disabled"):
        hc.grpc_health_check.service_name = grpc.get("serviceName", "")
        hc.grpc_health_check.authority = grpc.get("authority", "")
        return True
    if conf.get("tcp") is not None and not tcp.get("disabled"):
        hc.tcp_health_check.SetInParent()
        if tcp.get("send"):
            hc.tcp_health_check.send.CopyFrom(_payload(tcp["send"]))
        hc.tcp_health_check.receive.extend(_payload(r) for r in tcp.get("receive") or [])
        return True
    return False


def apply_outbound(pieces: OutboundPieces, conf: Mapping[str, Any]) -> None:
    conf = {**DEFAULTS, **conf}
    hc = health_check_pb2.HealthCheck(
        interval=duration(conf["interval"]),
        timeout=duration(conf["timeout"]),
    )
    hc.unhealthy_threshold.value = int(conf["unhealthyThreshold"])
    hc.healthy_threshold.value = int(conf["healthyThreshold"])
    if "initialJitter" in conf:
        hc.initial_jitter.CopyFrom(duration(conf["initialJitter"]))
    if "intervalJitter" in conf:
        hc.interval_jitter.CopyFrom(duration(conf["intervalJitter"]))
    if "intervalJitterPercent" in conf:
        hc.interval_jitter_percent = int(conf["intervalJitterPercent"])
    if "noTrafficInterval" in conf:
        hc.no_traffic_interval.CopyFrom(duration(conf["noTrafficInterval"]))
    if "alwaysLogHealthCheckFailures" in conf:
        hc.always_log_health_check_failures = bool(conf["alwaysLogHealthCheckFailures"])
    if "eventLogPath" in conf:
        # Envoy appends its health check events (JSON lines) to this file on the proxy's host.
        hc.event_logger.add(name="envoy.health_check.event_sinks.file").typed_config.Pack(
            file_pb2.HealthCheckEventFileSink(event_log_path=str(conf["eventLogPath"]))
        )
    if "reuseConnection" in conf:
        hc.reuse_connection.value = bool(conf["reuseConnection"])
    if not _checker(hc, conf, pieces.protocol):
        return
    del pieces.cluster.health_checks[:]
    pieces.cluster.health_checks.append(hc)
    if "healthyPanicThreshold" in conf:
        pieces.cluster.common_lb_config.healthy_panic_threshold.value = float(conf["healthyPanicThreshold"])
    if conf.get("failTrafficOnPanic"):
        pieces.cluster.common_lb_config.zone_aware_lb_config.fail_traffic_on_panic = True


PLUGIN = Plugin(TYPE, order=50, outbound=apply_outbound)
