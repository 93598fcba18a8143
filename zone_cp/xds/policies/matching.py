"""targetRef matching: which policies select a proxy, and the merged conf per direction.

- The top-level ``targetRef`` selects proxies: ``Mesh`` (all), ``MeshSubset`` (tags are a subset
  of one of the proxy's inbound tag sets), ``MeshService`` (the proxy serves that kuma.io/service);
  ``proxyTypes`` narrows Mesh/MeshSubset to Sidecar or Gateway proxies.
- Matched policies are ordered by specificity (Mesh < MeshSubset < MeshService), then by name;
  a later policy overrides an earlier one.
- ``to`` entries are chosen per destination service (Mesh < MeshService), ``from`` entries per
  source; ``default`` confs are deep-merged in that order (objects merge, everything else replaces).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.context import SERVICE_TAG, MeshContext, is_gateway, tag_sets

MESH, MESH_SUBSET, MESH_SERVICE, MESH_GATEWAY = "Mesh", "MeshSubset", "MeshService", "MeshGateway"
PRECEDENCE = {MESH: 0, MESH_SUBSET: 1, MESH_SERVICE: 2, MESH_GATEWAY: 2}


def proxy_type(dp: Resource) -> str:
    return "Gateway" if is_gateway(dp) else "Sidecar"


def selects(target_ref: Mapping[str, Any], dp: Resource) -> bool:
    """Does a top-level targetRef select this proxy?"""
    kind = target_ref.get("kind")
    proxy_types = target_ref.get("proxyTypes")
    if proxy_types and proxy_type(dp) not in proxy_types:
        return False
    if kind == MESH:
        return True
    if kind == MESH_SUBSET:
        wanted = (target_ref.get("tags") or {}).items()
        return any(all(tags.get(k) == v for k, v in wanted) for tags in tag_sets(dp))
    if kind == MESH_SERVICE:
        return any(tags.get(SERVICE_TAG) == target_ref.get("name") for tags in tag_sets(dp))
    return False  # MeshGateway: builtin gateways are a later issue


def _rank(policy: Resource) -> tuple[int, str]:
    return PRECEDENCE.get(str(policy.spec.get("targetRef", {}).get("kind")), 0), policy.name


def matched(ctx: MeshContext, dp: Resource, policy_type: str) -> list[Resource]:
    """The policies of one type selecting ``dp``, least specific first."""
    found = [p for p in ctx.policies.get(policy_type, ()) if selects(p.spec.get("targetRef") or {}, dp)]
    return sorted(found, key=_rank)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def merge_all(confs: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    result: dict[str, Any] | None = None
    for conf in confs:
        result = deep_merge(result or {}, conf)
    return result


@dataclass(frozen=True)
class Entry:
    """One ``to``/``from`` entry of a matched policy, with where it came from."""

    target_ref: Mapping[str, Any]
    conf: Mapping[str, Any]
    policy: str
    order: tuple[int, int, int]  # (entry specificity, policy position, entry position)


def entries(policies: Sequence[Resource], direction: str) -> list[Entry]:
    """All entries of a direction, in merge order: entry specificity, then policy order."""
    found = []
    for p_index, policy in enumerate(policies):
        for e_index, entry in enumerate(policy.spec.get(direction) or []):
            ref = entry.get("targetRef") or {}
            order = (PRECEDENCE.get(str(ref.get("kind")), 0), p_index, e_index)
            found.append(Entry(ref, entry.get("default") or {}, policy.name, order))
    return sorted(found, key=lambda e: e.order)


def _selects_destination(target_ref: Mapping[str, Any], service: str) -> bool:
    kind = target_ref.get("kind")
    if kind == MESH:
        return True
    if kind == MESH_SERVICE:
        return target_ref.get("name") == service
    return False


def to_conf(policies: Sequence[Resource], service: str) -> dict[str, Any] | None:
    """The merged ``to`` conf for traffic to ``service`` (None: no entry applies)."""
    return merge_all(e.conf for e in entries(policies, "to") if _selects_destination(e.target_ref, service))


def from_conf(policies: Sequence[Resource]) -> dict[str, Any] | None:
    """The merged ``from`` conf for inbound traffic from anywhere (entries targeting Mesh)."""
    return merge_all(e.conf for e in entries(policies, "from") if e.target_ref.get("kind") == MESH)


def signature(policies: Sequence[Resource]) -> tuple[str, ...]:
    """What identifies a matched policy list within one round (used as a memo key)."""
    return tuple(p.name for p in policies)
