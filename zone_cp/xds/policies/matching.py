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


def subset_tag_keys(policies: Iterable[Resource]) -> set[str]:
    """The tag keys the MeshSubset targetRefs of ``policies`` select on."""
    return {
        str(k)
        for p in policies
        if (ref := p.spec.get("targetRef") or {}).get("kind") == MESH_SUBSET
        for k in ref.get("tags") or {}
    }


def _rank(policy: Resource) -> tuple[int, str]:
    return PRECEDENCE.get(str(policy.spec.get("targetRef", {}).get("kind")), 0), policy.name


@dataclass(frozen=True)
class _Index:
    """A mesh's policies of one type by the kind of their top-level targetRef: matching a proxy
    then costs a look-up per service it serves instead of a test per policy (a mesh has a
    policy per service or more, and a round matches every proxy of the mesh)."""

    mesh: tuple[tuple[Resource, frozenset[str] | None], ...]  # (policy, proxyTypes or None)
    subset: tuple[tuple[Resource, frozenset[str] | None, tuple[tuple[str, Any], ...]], ...]
    by_service: Mapping[str, tuple[tuple[Resource, frozenset[str] | None], ...]]


def _proxy_types(ref: Mapping[str, Any]) -> frozenset[str] | None:
    types = ref.get("proxyTypes")
    return frozenset(types) if types else None


def _build_index(policies: Sequence[Resource]) -> _Index:
    mesh: list[tuple[Resource, frozenset[str] | None]] = []
    subset: list[tuple[Resource, frozenset[str] | None, tuple[tuple[str, Any], ...]]] = []
    by_service: dict[str, list[tuple[Resource, frozenset[str] | None]]] = {}
    for policy in policies:
        ref = policy.spec.get("targetRef") or {}
        kind, types = ref.get("kind"), _proxy_types(ref)
        if kind == MESH:
            mesh.append((policy, types))
        elif kind == MESH_SUBSET:
            subset.append((policy, types, tuple((ref.get("tags") or {}).items())))
        elif kind == MESH_SERVICE:
            by_service.setdefault(str(ref.get("name")), []).append((policy, types))
    return _Index(tuple(mesh), tuple(subset), {k: tuple(v) for k, v in by_service.items()})


def _index(ctx: MeshContext, policy_type: str) -> _Index:
    key = ("policy-index", policy_type)
    index = ctx.memo.get(key)
    if index is None:
        index = ctx.memo[key] = _build_index(ctx.policies.get(policy_type, ()))
    assert isinstance(index, _Index)
    return index


def matched(ctx: MeshContext, dp: Resource, policy_type: str) -> list[Resource]:
    """The policies of one type selecting ``dp``, least specific first (what ``selects`` says,
    answered from an index of the mesh's policies)."""
    index = _index(ctx, policy_type)
    kind = proxy_type(dp)
    sets = tag_sets(dp)
    found = [p for p, types in index.mesh if types is None or kind in types]
    found += [
        p
        for p, types, wanted in index.subset
        if (types is None or kind in types) and any(all(tags.get(k) == v for k, v in wanted) for tags in sets)
    ]
    seen: set[str] = set()
    for tags in sets:
        service = tags.get(SERVICE_TAG)
        if service is None or service in seen:
            continue
        seen.add(service)
        found += [p for p, types in index.by_service.get(service, ()) if types is None or kind in types]
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
