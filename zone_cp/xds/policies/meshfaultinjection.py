"""MeshFaultInjection: Envoy HTTP fault filters (abort, delay, response bandwidth), one per
entry of ``http``, in order, before the router.

On builtin gateways Kuma takes the merged ``to`` (kind Mesh) entries of the policies selecting
the gateway, on each HTTP listener.

On sidecar HTTP inbounds, as in Kuma:

- ``rules`` (when a policy selecting the inbound has them): every rule adds its faults, for the
  callers its match selects (every caller without one); rules with matches first, the most
  specific first. The ``from`` entries of the policies are then not read on that inbound.
- ``from`` otherwise: a caller named by an entry (its service: kind MeshService,
  MeshServiceSubset, or MeshSubset by ``kuma.io/service``) gets the faults of the entries for
  every caller merged with its own (a list replaces: its own ``http`` wins), any other caller
  those of the entries of kind Mesh.

Callers are told apart by their mTLS certificate's SPIFFE ID (``callers.py``); TCP inbounds get
no fault (faults are HTTP).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.v3 import percent_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.envoy import InboundPieces, duration, pack
from zonemesh.zone_cp.xds.policies import callers
from zonemesh.zone_cp.xds.policies.matching import to_conf
from zonemesh.zone_cp.xds.policies.plugin import Plugin

TYPE = "MeshFaultInjection"
# Not Kuma's IsFromAsRules: `from` is read on its own when no policy selecting an inbound has rules.
FROM_AS_RULES = False

_BANDWIDTH_KBPS = {"kbps": 1, "Mbps": 1000, "Gbps": 1000_000}


def _percent(value: Any) -> percent_pb2.FractionalPercent:
    """Kuma's 0-100 percentage (int or decimal string) as a per-million fraction."""
    return percent_pb2.FractionalPercent(
        numerator=round(float(value) * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def _kbps(limit: str) -> int:
    number, unit = limit.replace(" ", "")[:-4], limit.replace(" ", "")[-4:]
    return int(number) * _BANDWIDTH_KBPS[unit]


def fault(entry: Mapping[str, Any]) -> fault_pb2.HTTPFault:
    result = fault_pb2.HTTPFault()
    abort = entry.get("abort")
    if abort:
        result.abort.http_status = int(abort["httpStatus"])
        result.abort.percentage.CopyFrom(_percent(abort["percentage"]))
    delay = entry.get("delay")
    if delay:
        result.delay.fixed_delay.CopyFrom(duration(delay["value"]))
        result.delay.percentage.CopyFrom(_percent(delay["percentage"]))
    bandwidth = entry.get("responseBandwidth")
    if bandwidth:
        result.response_rate_limit.CopyFrom(
            common_fault_pb2.FaultRateLimit(
                fixed_limit=common_fault_pb2.FaultRateLimit.FixedLimit(limit_kbps=_kbps(bandwidth["limit"])),
                percentage=_percent(bandwidth["percentage"]),
            )
        )
    return result


def http_filters(conf: Mapping[str, Any] | None) -> list[hcm_pb2.HttpFilter]:
    """The fault filters for a merged ``default`` conf (None or ``http: []``: none)."""
    if not conf:
        return []
    return [
        hcm_pb2.HttpFilter(name="envoy.filters.http.fault", typed_config=pack(fault(entry)))
        for entry in conf.get("http") or []
    ]


def apply_gateway(pieces: InboundPieces, policies: Sequence[Resource]) -> None:
    if pieces.is_http:
        pieces.http_filters.extend(http_filters(to_conf(policies, "")))  # `to` targets Mesh only here


def inbound_filters(mesh: str, policies: Sequence[Resource]) -> list[hcm_pb2.HttpFilter]:
    """The fault filters of one sidecar inbound (see the module's docstring)."""
    found = callers.rules(policies, from_as_rules=FROM_AS_RULES)
    if found:
        ordered = sorted(found, key=lambda r: callers.specificity(r.match), reverse=True)
        return [
            callers.guarded(f, callers.skip_unless(callers.predicate(r.match) if r.match else None))
            for r in ordered
            for f in http_filters(r.conf)
        ]
    every, per_service = callers.from_by_caller(policies)
    named = [callers.service_match(mesh, service) for service in per_service]
    result = []
    for service, conf in per_service.items():
        only = callers.predicate(callers.service_match(mesh, service))
        result += [callers.guarded(f, callers.skip_unless(only)) for f in http_filters(conf)]
    others = callers.skip_unless(None, unless_also=named)
    result += [callers.guarded(f, others) for f in http_filters(every)]
    return result


def apply_inbound(pieces: InboundPieces, policies: Sequence[Resource]) -> None:
    if pieces.is_http:
        pieces.http_filters.extend(inbound_filters(pieces.mesh, policies))


PLUGIN = Plugin(TYPE, order=60, inbound=apply_inbound, gateway=apply_gateway, from_as_rules=FROM_AS_RULES)
