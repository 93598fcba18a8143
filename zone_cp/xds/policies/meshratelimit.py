"""MeshRateLimit: Envoy local (per-proxy) rate limits: ``local.http`` becomes an HTTP
local_ratelimit filter (a token bucket, the reply's status and headers), ``local.tcp`` a network
local_ratelimit filter (connections).

On builtin gateways: the merged ``to`` (kind Mesh) conf of the policies selecting the gateway,
on each HTTP / TCP listener, as Kuma does.

On sidecar inbounds: the ``from`` entries (kind Mesh) and the ``rules`` of the policies
selecting the inbound, merged as Kuma's inbound rules (``callers.py``): the rules without
matches (and ``from``) for every caller; rules with ``spiffeID`` matches give the callers they
select a bucket of their own (the rules without matches merged with theirs), the most specific
match winning. A TCP inbound gets the connection limit of the rules without matches (a rule with
matches cannot set ``local.tcp``: connections are counted before a caller is known).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as http_rl_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.local_ratelimit.v3 import local_rate_limit_pb2 as tcp_rl_pb2
from envoy.type.v3 import http_status_pb2, percent_pb2, token_bucket_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.envoy import InboundPieces, duration, pack
from zonemesh.zone_cp.xds.policies import callers
from zonemesh.zone_cp.xds.policies.matching import to_conf
from zonemesh.zone_cp.xds.policies.plugin import Plugin

TYPE = "MeshRateLimit"
# Kuma's IsFromAsRules: `from` entries count as inbound rules without matches (callers.rules).
FROM_AS_RULES = True
DEFAULT_STATUS = 429


def _bucket(rate: Mapping[str, Any]) -> token_bucket_pb2.TokenBucket:
    num = int(rate["num"])
    bucket = token_bucket_pb2.TokenBucket(max_tokens=num, fill_interval=duration(rate["interval"]))
    bucket.tokens_per_fill.value = num
    return bucket


def _always() -> base_pb2.RuntimeFractionalPercent:
    return base_pb2.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED),
        runtime_key="local_rate_limit_enabled",
    )


def _header(item: Mapping[str, Any], append: bool) -> base_pb2.HeaderValueOption:
    action = (
        base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
        if append
        else base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    )
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=item["name"], value=item["value"]), append_action=action
    )


def http_filters(conf: Mapping[str, Any] | None, stat_prefix: str) -> list[hcm_pb2.HttpFilter]:
    http = ((conf or {}).get("local") or {}).get("http") or {}
    if not http or http.get("disabled") or not http.get("requestRate"):
        return []
    limit = http_rl_pb2.LocalRateLimit(
        stat_prefix=f"rate_limit_{stat_prefix}",
        token_bucket=_bucket(http["requestRate"]),
        filter_enabled=_always(),
        filter_enforced=_always(),
    )
    on_limit = http.get("onRateLimit") or {}
    status = int(on_limit.get("status", DEFAULT_STATUS))
    # Envoy accepts only the status codes its enum defines.
    limit.status.code = status if status in http_status_pb2.StatusCode.values() else DEFAULT_STATUS
    headers = on_limit.get("headers") or {}
    limit.response_headers_to_add.extend(_header(h, True) for h in headers.get("add") or [])
    limit.response_headers_to_add.extend(_header(h, False) for h in headers.get("set") or [])
    return [hcm_pb2.HttpFilter(name="envoy.filters.http.local_ratelimit", typed_config=pack(limit))]


def network_filters(conf: Mapping[str, Any] | None, stat_prefix: str) -> list[listener_components_pb2.Filter]:
    tcp = ((conf or {}).get("local") or {}).get("tcp") or {}
    if not tcp or tcp.get("disabled") or not tcp.get("connectionRate"):
        return []
    limit = tcp_rl_pb2.LocalRateLimit(
        stat_prefix=f"rate_limit_{stat_prefix}", token_bucket=_bucket(tcp["connectionRate"])
    )
    return [listener_components_pb2.Filter(name="envoy.filters.network.local_ratelimit", typed_config=pack(limit))]


def apply_gateway(pieces: InboundPieces, policies: Sequence[Resource]) -> None:
    conf = to_conf(policies, "")  # `to` targets Mesh only here
    if pieces.is_http:
        pieces.http_filters.extend(http_filters(conf, pieces.stat_prefix))
    else:
        pieces.network_filters.extend(network_filters(conf, pieces.stat_prefix))


def apply_inbound(pieces: InboundPieces, policies: Sequence[Resource]) -> None:
    found = callers.rules(policies, from_as_rules=FROM_AS_RULES)
    every = callers.catch_all(found)
    if not pieces.is_http:
        pieces.network_filters.extend(network_filters(every, pieces.stat_prefix))
        return
    classes = callers.classes(found)
    for i, caller_class in enumerate(classes):
        skip = callers.skip_unless(callers.predicate(caller_class.match), unless_also=[c.match for c in classes[:i]])
        filters = http_filters(caller_class.conf, f"{pieces.stat_prefix}_match_{i}")
        pieces.http_filters.extend(callers.guarded(f, skip) for f in filters)
    others = callers.skip_unless(None, unless_also=[c.match for c in classes])
    pieces.http_filters.extend(callers.guarded(f, others) for f in http_filters(every, pieces.stat_prefix))


PLUGIN = Plugin(TYPE, order=70, inbound=apply_inbound, gateway=apply_gateway, from_as_rules=FROM_AS_RULES)
