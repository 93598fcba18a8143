"""targetRef matching: which policies select a proxy or one of its inbounds, and the merged conf
per direction. Kuma 2.14's matcher (pkg/plugins/policies/core/matchers/dataplane.go), in universal:

- The top-level ``targetRef`` (absent: ``Mesh``) selects proxies, and of a sidecar the inbounds
  its ``from`` entries configure: ``Mesh`` every proxy and inbound; ``MeshSubset`` the inbounds
  whose tags include its tags (a builtin or delegated gateway: its ``networking.gateway.tags``);
  ``MeshService`` the inbounds whose ``kuma.io/service`` is its ``name`` (zonemesh has no
  MeshService resources: the name is the service tag, as in Kuma's universal mode without them);
  ``MeshServiceSubset`` those of them that also carry its tags; ``Dataplane`` the Dataplane named
  ``name`` in this zone, or those whose labels include ``labels``, or every Dataplane when neither
  is set (never a builtin gateway), and of it the inbound ``sectionName`` names (its ``name``, or
  its port as a string) or every inbound. ``proxyTypes`` narrows Mesh/MeshSubset to sidecars
  (incl. delegated gateways) or gateways. ``MeshGateway`` is resolved by the gateway generator
  (``generators/gateway.py``: the MeshGateway selecting the builtin gateway).
- A proxy is selected when any of its inbounds (or its gateway tags) is: its ``to`` entries then
  configure all its outbounds, as in Kuma. ``from`` entries configure the selected inbounds only.
- Matched policies are ordered least specific first, a later one overriding an earlier one: by
  kind (``targetref.PRECEDENCE``: Mesh < Dataplane < MeshSubset < MeshGateway < MeshService <
  MeshServiceSubset), a Dataplane naming the proxy over one selecting it by labels over one
  selecting all, with ``sectionName`` over without; then by origin, a policy created on this
  zone over one without an origin over one from global (Kuma's ``ResourceOrigin.Compare``);
  then by display name (the name it was created with: a copy from global is stored under a
  hashed name), the lexicographically *smallest* winning (Kuma's order).
- ``to`` entries are chosen per destination service (Mesh < MeshService), ``from`` entries per
  source; ``default`` confs are deep-merged in that order (objects merge, everything else replaces).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from zonemesh.shared.resources.model import ORIGIN_GLOBAL, ORIGIN_ZONE, Resource
from zonemesh.shared.resources.types.dataplane import is_builtin_gateway
from zonemesh.shared.resources.types.targetref import (
    DATAPLANE,
    GATEWAY,
    MESH,
    MESH_GATEWAY,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
    PRECEDENCE,
    SIDECAR,
    top_level,
)
from zonemesh.zone_cp.xds.context import SERVICE_TAG, MeshContext, inbounds, is_gateway, section_name, tag_sets

__all__ = [
    "MESH",
    "MESH_GATEWAY",
    "MESH_SERVICE",
    "MESH_SUBSET",
    "Entry",
    "Selectors",
    "deep_merge",
    "entries",
    "from_conf",
    "matched",
    "matched_inbound",
    "merge_all",
    "proxy_conf",
    "proxy_type",
    "section_name",
    "selectors",
    "selects",
    "selects_inbound",
    "signature",
    "to_conf",
    "to_entries",
]

Tags = Mapping[str, str]


def proxy_type(dp: Resource) -> str:
    return GATEWAY if is_gateway(dp) else SIDECAR


def _has(tags: Tags, wanted: Iterable[tuple[str, Any]]) -> bool:
    return all(tags.get(k) == v for k, v in wanted)


def _types_allow(ref: Mapping[str, Any], dp: Resource) -> bool:
    types = ref.get("proxyTypes")
    return not types or proxy_type(dp) in types


def _wanted_tags(ref: Mapping[str, Any]) -> tuple[tuple[str, Any], ...] | None:
    """The tags a tag-based kind selects on (None: the kind does not select by tags)."""
    kind = ref.get("kind")
    if kind == MESH_SUBSET:
        return tuple((ref.get("tags") or {}).items())
    if kind == MESH_SERVICE:
        return ((SERVICE_TAG, ref.get("name")),)
    if kind == MESH_SERVICE_SUBSET:
        return ((SERVICE_TAG, ref.get("name")), *(ref.get("tags") or {}).items())
    return None


def _dataplane_selected(ref: Mapping[str, Any], dp: Resource) -> bool:
    """The Dataplane part of a ``Dataplane`` targetRef (sectionName aside)."""
    if is_builtin_gateway(dp):
        return False
    if ref.get("name"):
        return bool(dp.name == ref["name"])
    labels: Mapping[str, str] | None = ref.get("labels")
    return labels is None or _has(dp.labels, labels.items())


def selects_inbound(ref: Mapping[str, Any], dp: Resource, inbound: Mapping[str, Any]) -> bool:
    """Does a top-level targetRef select this inbound of ``dp`` (for its ``from`` entries)?"""
    kind = ref.get("kind")
    if kind == MESH:
        return _types_allow(ref, dp)
    if kind == DATAPLANE:
        section = ref.get("sectionName")
        return _dataplane_selected(ref, dp) and (section is None or section_name(inbound) == section)
    wanted = _wanted_tags(ref)
    if wanted is None:
        return False  # MeshGateway: gateways have no inbounds
    return _types_allow(ref, dp) and _has(inbound.get("tags") or {}, wanted)


def selects(ref: Mapping[str, Any], dp: Resource) -> bool:
    """Does a top-level targetRef select the proxy ``dp`` (any of its inbounds, or its gateway)?"""
    kind = ref.get("kind")
    if kind == MESH:
        return _types_allow(ref, dp)
    if kind == DATAPLANE:
        if not _dataplane_selected(ref, dp):
            return False
        section = ref.get("sectionName")
        return section is None or any(section_name(i) == section for i in inbounds(dp))
    wanted = _wanted_tags(ref)
    if wanted is None:
        return False  # MeshGateway: resolved by the gateway generator
    return _types_allow(ref, dp) and any(_has(tags, wanted) for tags in tag_sets(dp))


def _rank(policy: Resource) -> tuple[int, int, int]:
    """Specificity of a policy's top-level targetRef (higher wins)."""
    ref = top_level(policy.spec)
    kind = str(ref.get("kind"))
    by_dataplane = (2 if ref.get("name") else 1 if ref.get("labels") else 0) if kind == DATAPLANE else 0
    return PRECEDENCE.get(kind, 0), by_dataplane, 1 if ref.get("sectionName") else 0


# Kuma's ResourceOrigin order (api/mesh/v1alpha1 originOrder): a zone's own policy wins over
# global's of the same specificity, one without an origin (a standalone control plane's) in between.
_ORIGIN_RANK = {ORIGIN_GLOBAL: 1, ORIGIN_ZONE: 3}


def _origin_rank(policy: Resource) -> int:
    return _ORIGIN_RANK.get(policy.origin, 2)


def ordered(policies: Iterable[Resource]) -> list[Resource]:
    """Least specific first; among equals global's before the zone's own, then the
    lexicographically smallest display name last (it wins)."""
    by_name = sorted(policies, key=lambda p: (p.display_name, p.name), reverse=True)
    return sorted(by_name, key=lambda p: (_rank(p), _origin_rank(p)))  # stable: keeps the name order


@dataclass(frozen=True)
class Selectors:
    """What of a proxy the mesh's policies select on, beyond its services and protocols (which
    generation reads anyway): tag keys (MeshSubset, MeshServiceSubset), Dataplane label keys, and
    Dataplane names. Proxies alike in all of these get the same policies."""

    tag_keys: frozenset[str]
    label_keys: frozenset[str]
    names: frozenset[str]
    sections: frozenset[str] = frozenset()  # Dataplane sectionNames: an inbound's name or port

    def section(self, inbound: Mapping[str, Any]) -> str | None:
        """What matching reads of an inbound's section name: the name, or None when no policy
        names it (an unnamed inbound's section name is its port: replicas listening on other
        ports are then alike)."""
        name = section_name(inbound)
        return name if name in self.sections else None


def selectors(policies: Iterable[Resource]) -> Selectors:
    tag_keys: set[str] = set()
    label_keys: set[str] = set()
    names: set[str] = set()
    sections: set[str] = set()
    for policy in policies:
        ref = top_level(policy.spec)
        tag_keys.update(str(k) for k in ref.get("tags") or {})
        if ref.get("kind") == DATAPLANE:
            label_keys.update(str(k) for k in ref.get("labels") or {})
            if ref.get("name"):
                names.add(str(ref["name"]))
            if ref.get("sectionName") is not None:
                sections.add(str(ref["sectionName"]))
    return Selectors(frozenset(tag_keys), frozenset(label_keys), frozenset(names), frozenset(sections))


@dataclass(frozen=True)
class _Candidate:
    policy: Resource
    ref: Mapping[str, Any]  # its top-level targetRef
    position: int  # in ``ordered`` of all the type's policies: a later one wins


@dataclass(frozen=True)
class _Index:
    """A mesh's policies of one type, in precedence order, by the kind of their top-level
    targetRef: matching a proxy then costs a look-up per service it serves instead of a test per
    policy (a mesh has a policy per service or more, and a round matches every proxy of the
    mesh). The rest (Mesh, MeshSubset, Dataplane) are tested one by one."""

    by_service: Mapping[str, tuple[_Candidate, ...]]  # MeshService / MeshServiceSubset, by service name
    others: tuple[_Candidate, ...]


def _build_index(policies: Sequence[Resource]) -> _Index:
    by_service: dict[str, list[_Candidate]] = {}
    others: list[_Candidate] = []
    for position, policy in enumerate(ordered(policies)):
        ref = top_level(policy.spec)
        candidate = _Candidate(policy, ref, position)
        if ref.get("kind") in (MESH_SERVICE, MESH_SERVICE_SUBSET):
            by_service.setdefault(str(ref.get("name")), []).append(candidate)
        elif ref.get("kind") != MESH_GATEWAY:
            others.append(candidate)
    return _Index({k: tuple(v) for k, v in by_service.items()}, tuple(others))


def _index(ctx: MeshContext, policy_type: str) -> _Index:
    key = ("policy-index", policy_type)
    index = ctx.memo.get(key)
    if index is None:
        index = ctx.memo[key] = _build_index(ctx.policies.get(policy_type, ()))
    assert isinstance(index, _Index)
    return index


def _candidates(ctx: MeshContext, dp: Resource, policy_type: str) -> list[_Candidate]:
    index = _index(ctx, policy_type)
    found = list(index.others)
    for service in dict.fromkeys(str(tags[SERVICE_TAG]) for tags in tag_sets(dp) if tags.get(SERVICE_TAG)):
        found += index.by_service.get(service, ())
    return found


def _in_order(found: Iterable[_Candidate]) -> list[Resource]:
    return [c.policy for c in sorted(found, key=lambda c: c.position)]


def matched(ctx: MeshContext, dp: Resource, policy_type: str) -> list[Resource]:
    """The policies of one type selecting ``dp``, least specific first (``selects``, answered
    from an index of the mesh's policies)."""
    return _in_order(c for c in _candidates(ctx, dp, policy_type) if selects(c.ref, dp))


def matched_inbound(ctx: MeshContext, dp: Resource, inbound: Mapping[str, Any], policy_type: str) -> list[Resource]:
    """The policies of one type selecting one inbound of ``dp``, least specific first."""
    return _in_order(c for c in _candidates(ctx, dp, policy_type) if selects_inbound(c.ref, dp, inbound))


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
    item: Mapping[str, Any] = field(default_factory=dict)  # the whole entry (route types read `rules`)


def entries(policies: Sequence[Resource], direction: str) -> list[Entry]:
    """All entries of a direction, in merge order: entry specificity, then policy order."""
    found = []
    for p_index, policy in enumerate(policies):
        for e_index, entry in enumerate(policy.spec.get(direction) or []):
            ref = entry.get("targetRef") or {}
            order = (PRECEDENCE.get(str(ref.get("kind")), 0), p_index, e_index)
            found.append(Entry(ref, entry.get("default") or {}, policy.name, order, entry))
    return sorted(found, key=lambda e: e.order)


def _selects_destination(target_ref: Mapping[str, Any], service: str | None) -> bool:
    kind = target_ref.get("kind")
    if kind == MESH:
        return True
    if kind == MESH_SERVICE:
        return target_ref.get("name") == service
    return False


def to_entries(policies: Sequence[Resource], service: str | None) -> list[Entry]:
    """The ``to`` entries configuring traffic to ``service``, in merge order (None: to a service
    no entry names). ``to_conf`` merges them; inspection (xds/inspection.py) names their policies."""
    return [e for e in entries(policies, "to") if _selects_destination(e.target_ref, service)]


def to_conf(policies: Sequence[Resource], service: str | None) -> dict[str, Any] | None:
    """The merged ``to`` conf for traffic to ``service`` (None: no entry applies)."""
    return merge_all(e.conf for e in to_entries(policies, service))


def from_conf(policies: Sequence[Resource]) -> dict[str, Any] | None:
    """The merged ``from`` conf for inbound traffic from anywhere (entries targeting Mesh)."""
    return merge_all(e.conf for e in entries(policies, "from") if e.target_ref.get("kind") == MESH)


def proxy_conf(policies: Sequence[Resource], appends: Collection[str] = ()) -> dict[str, Any] | None:
    """The merged top-level ``default`` of the policies (proxy-level conf, Kuma's single-item
    rules: a policy without ``to``/``from``), least specific first; the lists of the ``appends``
    fields add up instead of replacing (Kuma's ``policyMerge:"append"``, ``Plugin.appends``)."""
    result: dict[str, Any] | None = None
    for policy in policies:
        conf = policy.spec.get("default")
        if not isinstance(conf, Mapping):
            continue
        merged = deep_merge(result or {}, conf)
        for key in appends:
            if isinstance(conf.get(key), list):
                merged[key] = [*((result or {}).get(key) or []), *conf[key]]
        result = merged
    return result


def signature(policies: Sequence[Resource]) -> tuple[str, ...]:
    """What identifies a matched policy list within one round (used as a memo key)."""
    return tuple(p.name for p in policies)
