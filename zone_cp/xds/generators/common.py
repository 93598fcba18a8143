"""Pieces both inbound and outbound generators use."""

from __future__ import annotations

from envoy.config.core.v3 import protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2
from google.protobuf import any_pb2
from zonemesh.zone_cp.xds.envoy import pack

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def http_protocol_options(
    protocol: str, common: protocol_pb2.HttpProtocolOptions | None
) -> tuple[str, any_pb2.Any] | None:
    """The cluster's upstream HTTP options: HTTP/2 for http2 and grpc, plus common options
    (idle timeout, stream duration) when a policy set any. None when nothing needs setting."""
    http2 = protocol in ("http2", "grpc")
    has_common = common is not None and common.ByteSize() > 0
    if not http2 and not has_common:
        return None
    options = hpo_pb2.HttpProtocolOptions()
    if http2:
        options.explicit_http_config.http2_protocol_options.SetInParent()
    else:
        options.explicit_http_config.http_protocol_options.SetInParent()
    if has_common:
        assert common is not None
        options.common_http_protocol_options.CopyFrom(common)
    return HTTP_PROTOCOL_OPTIONS, pack(options)
