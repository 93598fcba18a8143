"""Locality awareness: which Envoy priority (and locality) each endpoint of a destination gets.

Envoy sends traffic to the lowest priority that has enough healthy hosts (a priority's health
times the overprovisioning factor, 1.4 by default); within a priority it balances over hosts,
or over localities by their weights when the cluster asks for locality-weighted balancing.

Without a MeshLoadBalancingStrategy for a destination, zonemesh's default (``crosszone.
load_assignment``): this zone's instances at priority 0, every other zone at priority 1 unless
the Mesh sets ``routing.localityAwareLoadBalancing: false``. A MeshLoadBalancingStrategy's
``localityAwareness`` becomes a ``LocalityPlan`` (the plugin builds it, the outbound generator
applies it when it lays out the endpoints), with Kuma 2.14's semantics
(pkg/plugins/policies/meshloadbalancingstrategy/plugin/v1alpha1/priority.go):

- ``disabled``: every zone at priority 0 (the Mesh's switch is not read once a policy applies).
- ``localZone`` or ``crossZone`` given: this zone's instances at priority 0, split by
  ``affinityTags`` into sub-localities (the instances sharing the proxy's value of the first
  tag, then the second...) weighted as the tags say; other zones only where a
  ``crossZone.failover`` rule admits them: the first rule that applies from this zone (``from``)
  and admits the zone (``Any``, ``Only`` its zones, ``AnyExcept`` its zones; ``None`` admits
  nothing and does not stop the list, as in Kuma) gives its priority (rule position + 1). A zone
  no rule admits is not used at all. ``failoverThreshold`` sets the overprovisioning factor.

Priorities are then renumbered 0, 1, 2... in order (Envoy wants no gap): an empty level sends
nothing anyway, so this changes nothing in where traffic goes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from zonemesh.zone_cp.xds.context import Endpoint

ANY, ONLY, ANY_EXCEPT, NONE = "Any", "Only", "AnyExcept", "None"
# Kuma's factor when localZone/crossZone is given without a failoverThreshold: 50 %.
DEFAULT_OVERPROVISIONING = 200


@dataclass(frozen=True)
class Failover:
    """One ``crossZone.failover`` rule."""

    to_type: str  # Any | Only | AnyExcept | None
    to_zones: frozenset[str] = frozenset()
    from_zones: frozenset[str] | None = None  # None: the rule applies from every zone

    def applies_from(self, zone: str) -> bool:
        return self.from_zones is None or zone in self.from_zones

    def admits(self, zone: str) -> bool:
        if self.to_type == ANY:
            return True
        if self.to_type == ONLY:
            return zone in self.to_zones
        if self.to_type == ANY_EXCEPT:
            return zone not in self.to_zones
        return False  # None


@dataclass(frozen=True)
class Affinity:
    """One ``localZone.affinityTags`` entry; ``value`` is the proxy's own value of the tag once
    resolved for a proxy (``LocalityPlan.for_proxy``)."""

    key: str
    weight: int
    value: str | None = None


@dataclass(frozen=True)
class LocalityPlan:
    """How one destination's endpoints are laid out over priorities (module docstring)."""

    prefer_local: bool = True  # other zones after this one (``disabled: false``)
    grouped: bool = False  # localZone / crossZone given: other zones only as ``failover`` admits them
    affinity: tuple[Affinity, ...] = ()
    failover: tuple[Failover, ...] = ()
    overprovisioning_factor: int | None = None
    # Affinity tags are configured: the cluster balances over localities by their weights, so
    # every locality needs one (even when the proxy carries none of the tags).
    weighted_localities: bool = False

    def for_proxy(self, tag_sets: Sequence[Mapping[str, str]]) -> LocalityPlan:
        """The plan with each affinity tag's value taken from the proxy's tags (the smallest of
        its values, as Kuma); tags the proxy does not carry select nothing and are left out."""
        if not self.affinity:
            return self
        resolved = []
        for entry in self.affinity:
            values = sorted({str(tags[entry.key]) for tags in tag_sets if entry.key in tags})
            if values:
                resolved.append(replace(entry, value=values[0]))
        return replace(self, affinity=tuple(resolved))


def default_affinity_weight(position: int, count: int) -> int:
    """Kuma's weight for the affinity tag at ``position`` of ``count`` when none is given:
    9·10^(count-1-position), so the first tag gets 90 % of the traffic, the next 9 %..."""
    return int(9 * 10 ** (count - 1 - position))


def overprovisioning_factor(percentage: float | None) -> int:
    """Envoy's overprovisioning factor (in percent) for a failover threshold: a priority whose
    healthy share falls below ``percentage`` % starts sending traffic to the next one. Kuma
    documents this meaning; its code truncates 100/percentage to an integer (70 % gives 100, not
    143): zonemesh computes it exactly."""
    if percentage is None or percentage <= 0:
        return DEFAULT_OVERPROVISIONING
    return round(10_000 / percentage)


def zone_priorities(zone: str, zones: Iterable[str], failover: Sequence[Failover]) -> dict[str, int]:
    """Other zone -> its priority (failover rule position + 1) as seen from ``zone``; a zone no
    rule admits is absent (it gets no traffic)."""
    result: dict[str, int] = {}
    for other in sorted(set(zones)):
        if other == zone:
            continue
        for position, rule in enumerate(failover):
            if rule.applies_from(zone) and rule.admits(other):
                result[other] = position + 1
                break
    return result


def local_groups(endpoints: Iterable[Endpoint], affinity: Sequence[Affinity]) -> list[tuple[str, int, list[Endpoint]]]:
    """This zone's endpoints as (sub-zone, weight, endpoints): an endpoint joins the first
    affinity tag whose resolved value it carries (sub-zone ``key=value``); the others form the
    sub-zone "" of weight 1. In affinity order, the rest last."""
    groups: dict[str, tuple[int, list[Endpoint]]] = {}
    for entry in affinity:
        groups.setdefault(f"{entry.key}={entry.value}", (entry.weight, []))
    rest: list[Endpoint] = []
    for endpoint in endpoints:
        for entry in affinity:
            if entry.value is not None and endpoint.tags.get(entry.key) == entry.value:
                groups[f"{entry.key}={entry.value}"][1].append(endpoint)
                break
        else:
            rest.append(endpoint)
    result = [(sub_zone, weight, members) for sub_zone, (weight, members) in groups.items() if members]
    if rest:
        result.append(("", 1, rest))
    return result


def compact(priorities: Iterable[int]) -> dict[int, int]:
    """Raw priority -> 0, 1, 2... in order."""
    return {raw: rank for rank, raw in enumerate(sorted(set(priorities)))}
