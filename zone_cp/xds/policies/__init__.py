"""One module per targetRef policy (Kuma's plugin idea, two levels deep).

Each module has ``TYPE`` and ``apply_outbound(pieces, conf)`` (with the merged ``to`` conf
for that destination) and/or ``apply_inbound(pieces, policies)`` (with the policies matching
the proxy, to resolve ``from`` entries). They run in ``PLUGINS`` order on the pieces of an
outbound/inbound before the generator packs them into Envoy resources.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.context import MeshContext, tag_sets
from zonemesh.zone_cp.xds.envoy import InboundPieces, OutboundPieces
from zonemesh.zone_cp.xds.policies import (
    meshcircuitbreaker,
    meshfaultinjection,
    meshhealthcheck,
    meshratelimit,
    meshretry,
    meshtimeout,
    meshtrafficpermission,
)
from zonemesh.zone_cp.xds.policies.matching import matched, proxy_type, signature, subset_tag_keys, to_conf

PLUGINS: tuple[ModuleType, ...] = (
    meshtrafficpermission,
    meshtimeout,
    meshretry,
    meshcircuitbreaker,
    meshhealthcheck,
    # Gateway-only so far (no apply_inbound/apply_outbound): the gateway generator uses them.
    meshfaultinjection,
    meshratelimit,
)
POLICY_TYPES = tuple(plugin.TYPE for plugin in PLUGINS)
OUTBOUND_TYPES = tuple(plugin.TYPE for plugin in PLUGINS if hasattr(plugin, "apply_outbound"))


class PolicyError(Exception):
    """A policy could not be applied; the message names the policy type."""


MatchedPolicies = Mapping[str, Sequence[Resource]]


def match_all(ctx: MeshContext, proxy: Resource) -> dict[str, list[Resource]]:
    """The policies of every type selecting ``proxy``. Matching reads only the proxy's type and
    tag sets, so proxies sharing them (a service's replicas) share the answer within a round;
    the caller gets its own dict (the lists are shared: read them, do not change them)."""
    key = ("match-all", proxy_type(proxy), tuple(tuple(sorted(tags.items())) for tags in tag_sets(proxy)))
    found = ctx.memo.get(key)
    if found is None:
        found = ctx.memo[key] = {plugin.TYPE: matched(ctx, proxy, plugin.TYPE) for plugin in PLUGINS}
    return dict(found)


def tag_keys(ctx: MeshContext) -> frozenset[str]:
    """The tag keys the mesh's policies select proxies by (MeshSubset targetRefs): a proxy's
    other tags (beyond its service and protocol) change nothing in its config."""
    key = ("policy-tag-keys",)
    found = ctx.memo.get(key)
    if found is None:
        found = ctx.memo[key] = frozenset(k for t in POLICY_TYPES for k in subset_tag_keys(ctx.policies.get(t, ())))
    assert isinstance(found, frozenset)
    return found


def policy_signature(policies: MatchedPolicies) -> tuple[tuple[str, ...], ...]:
    return tuple(signature(policies[t]) for t in POLICY_TYPES)


def outbound_signature(policies: MatchedPolicies) -> tuple[tuple[str, ...], ...]:
    """The part of ``policy_signature`` an outbound depends on (``configure_outbound``'s types)."""
    return tuple(signature(policies[t]) for t in OUTBOUND_TYPES)


def _run(plugin: ModuleType, fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:
        raise PolicyError(f"{plugin.TYPE}: {type(exc).__name__}: {exc}") from exc


def configure_outbound(pieces: OutboundPieces, policies: MatchedPolicies) -> None:
    for plugin in PLUGINS:
        apply = getattr(plugin, "apply_outbound", None)
        if apply is None:
            continue
        conf = to_conf(policies[plugin.TYPE], pieces.service)
        if conf is not None:
            _run(plugin, apply, pieces, conf)


def configure_inbound(pieces: InboundPieces, policies: MatchedPolicies) -> None:
    for plugin in PLUGINS:
        apply = getattr(plugin, "apply_inbound", None)
        if apply is not None:
            _run(plugin, apply, pieces, policies[plugin.TYPE])
