"""targetRef: how a policy says what it applies to, shared by every targetRef policy.

A policy has a top-level ``targetRef`` (which proxies get the policy; absent means ``Mesh``),
and ``to`` entries (outbound traffic, by destination) and/or ``from`` entries (inbound traffic,
by source), each with its own ``targetRef`` and a ``default`` configuration. Which kinds are
allowed at each place is declared per policy, as Kuma's "TargetRef support matrix" does; the
fields each kind takes follow Kuma 2.14's validator. What zonemesh cannot apply yet (kinds
without resources here, listener tags, MeshService labels and ports) is refused with
"not supported yet", never accepted and ignored. How a targetRef selects proxies:
``zone_cp/xds/policies/matching.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zonemesh.shared.resources.schema import (
    Enum,
    Errors,
    FieldError,
    List,
    Map,
    MeshName,
    Node,
    Obj,
    Str,
    at_least_one,
)

MESH = "Mesh"
DATAPLANE = "Dataplane"
MESH_SUBSET = "MeshSubset"
MESH_GATEWAY = "MeshGateway"
MESH_SERVICE = "MeshService"
MESH_SERVICE_SUBSET = "MeshServiceSubset"
MESH_HTTP_ROUTE = "MeshHTTPRoute"
MESH_EXTERNAL_SERVICE = "MeshExternalService"
MESH_MULTI_ZONE_SERVICE = "MeshMultiZoneService"

# Every kind Kuma 2.14 knows, least specific first: when several policies select a proxy, the
# later kind wins (Kuma's order, pkg/.../common/v1alpha1/targetref.go), then see PRECEDENCE.
KINDS = (
    MESH,
    DATAPLANE,
    MESH_SUBSET,
    MESH_GATEWAY,
    MESH_SERVICE,
    MESH_EXTERNAL_SERVICE,
    MESH_MULTI_ZONE_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_HTTP_ROUTE,
)
PRECEDENCE = {kind: rank for rank, kind in enumerate(KINDS)}

# Kinds zonemesh validates but cannot apply yet: refused wherever they appear (zonemesh has no
# MeshExternalService / MeshMultiZoneService resources). A top-level MeshHTTPRoute is applied per
# route by the types whose PolicySupport says which fields apply to one route (``per_route``),
# and refused for the others (support.py).
NOT_YET_KINDS = (MESH_EXTERNAL_SERVICE, MESH_MULTI_ZONE_SERVICE)

# The top-level kinds most policies take (Kuma 2.14); some add MeshHTTPRoute, MeshTrafficPermission
# drops MeshGateway.
TOP_KINDS = (MESH, DATAPLANE, MESH_SUBSET, MESH_GATEWAY, MESH_SERVICE, MESH_SERVICE_SUBSET)

SIDECAR, GATEWAY = "Sidecar", "Gateway"
PROXY_TYPES = (SIDECAR, GATEWAY)
_TAGS = Map(Str(), key=Str(min_len=1), min_items=1)

# Fields each kind accepts besides `kind` and `mesh` (Kuma's ValidateTargetRef); `proxyTypes`
# only at the top level.
_FIELDS: dict[str, frozenset[str]] = {
    MESH: frozenset({"proxyTypes"}),
    MESH_SUBSET: frozenset({"tags", "proxyTypes"}),
    DATAPLANE: frozenset({"name", "namespace", "labels", "sectionName"}),
    MESH_SERVICE: frozenset({"name", "namespace", "labels", "sectionName"}),
    MESH_SERVICE_SUBSET: frozenset({"name", "tags"}),
    MESH_GATEWAY: frozenset({"name", "tags"}),
    MESH_HTTP_ROUTE: frozenset({"name", "namespace", "labels"}),
    MESH_EXTERNAL_SERVICE: frozenset({"name", "namespace", "labels"}),
    MESH_MULTI_ZONE_SERVICE: frozenset({"name", "namespace", "labels", "sectionName"}),
}
_NAME_REQUIRED = (MESH_SERVICE_SUBSET, MESH_GATEWAY)
_NAME_OR_LABELS = (MESH_SERVICE, MESH_HTTP_ROUTE, MESH_EXTERNAL_SERVICE, MESH_MULTI_ZONE_SERVICE)


def not_supported(what: str) -> str:
    """The reason for anything zonemesh refuses because it cannot apply it yet."""
    return f"{what} is not supported yet by zonemesh"


def top_level(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    """A policy's top-level targetRef; absent means the whole mesh, as in Kuma."""
    ref = spec.get("targetRef")
    return ref if isinstance(ref, Mapping) else {"kind": MESH}


def selectable_proxy_types(ref: Mapping[str, Any]) -> frozenset[str]:
    """Which kinds of proxy a top-level targetRef can select (Kuma 2.14's matcher): a
    MeshGateway only builtin gateways; Dataplane never builtin gateways; Mesh and MeshSubset
    what ``proxyTypes`` says (all when absent); services both (a gateway serves its tags)."""
    kind = ref.get("kind")
    if kind == MESH_GATEWAY:
        return frozenset({GATEWAY})
    if kind == DATAPLANE:
        return frozenset({SIDECAR})
    if kind in (MESH, MESH_SUBSET) and ref.get("proxyTypes"):
        return frozenset(ref["proxyTypes"])
    return frozenset(PROXY_TYPES)


def includes_gateways(ref: Mapping[str, Any]) -> bool:
    """Kuma's ``IncludesGateways``: is the scope of a top-level targetRef meant for builtin
    gateways (MeshGateway; Mesh or MeshSubset without proxyTypes or with Gateway; a
    MeshHTTPRoute)? Inbound-side policies use `to` on such scopes and `from` on the others."""
    kind = ref.get("kind")
    if kind in (MESH, MESH_SUBSET):
        return not ref.get("proxyTypes") or GATEWAY in ref["proxyTypes"]
    return kind in (MESH_GATEWAY, MESH_HTTP_ROUTE)


class _TargetRef(Node):
    """Checks kind against the kinds allowed at this place, and the fields each kind takes."""

    def __init__(self, allowed: tuple[str, ...], top_level: bool, listener_tags: bool = False) -> None:
        fields: dict[str, Node] = {
            "kind": Str(),
            "name": Str(min_len=1),
            "tags": Map(Str(), key=Str(min_len=1)),
            "labels": Map(Str(), key=Str(min_len=1)),
            "sectionName": Str(min_len=1),
            "namespace": Str(),  # universal has no namespaces: accepted (Kuma's output carries it), ignored
            "mesh": MeshName,  # must be the policy's own mesh (checked with the resource: resource_checks)
        }
        if top_level:
            fields["proxyTypes"] = List(Enum(*PROXY_TYPES), min_items=1)
        self.allowed = allowed
        self.top_level = top_level
        self.listener_tags = listener_tags
        self.obj = Obj(fields, required=("kind",))

    def check(self, value: Any, path: str, errors: Errors) -> None:
        before = len(errors)
        self.obj.check(value, path, errors)
        if len(errors) > before or not isinstance(value, Mapping):
            return
        kind = value["kind"]
        if kind not in KINDS:
            errors.add(f"{path}.kind", f"unknown kind {kind!r}; must be one of: {', '.join(KINDS)}")
            return
        if kind in NOT_YET_KINDS:
            errors.add(f"{path}.kind", not_supported(f"targetRef kind {kind}"))
            return
        if kind not in self.allowed:
            errors.add(f"{path}.kind", f"value is not supported here; supported kinds: {', '.join(self.allowed)}")
            return
        for name in ("name", "tags", "labels", "sectionName", "namespace", "proxyTypes"):
            # Empty values count as unset, as in Kuma (its output omits them anyway).
            if value.get(name) not in (None, "", {}, []) and name not in _FIELDS[kind]:
                errors.add(f"{path}.{name}", f"must not be set with kind {kind}")
        if kind in _NAME_REQUIRED and value.get("name") is None:
            errors.add(f"{path}.name", f"must be set with kind {kind}")
        if kind in _NAME_OR_LABELS and value.get("name") is None and not value.get("labels"):
            errors.add(f"{path}.name", f"name or labels must be set with kind {kind}")
        if value.get("labels") and (value.get("name") is not None or value.get("namespace")):
            errors.add(f"{path}.labels", "either labels or name and namespace must be specified")
        if kind in (MESH_SUBSET, MESH_SERVICE_SUBSET):
            _TAGS.check(value.get("tags", {}), f"{path}.tags", errors)
        self._not_yet(kind, value, path, errors)

    def _not_yet(self, kind: str, value: Mapping[str, Any], path: str, errors: Errors) -> None:
        """Fields Kuma reads that zonemesh cannot apply yet."""
        if kind == MESH_SERVICE and value.get("labels"):
            errors.add(
                f"{path}.labels",
                not_supported("selecting MeshServices by labels")
                + " (it has no MeshService resources: use name, the kuma.io/service)",
            )
        if kind == MESH_SERVICE and value.get("sectionName") is not None:
            errors.add(
                f"{path}.sectionName",
                not_supported("a MeshService port (sectionName)") + " (it has no MeshService resources)",
            )
        if kind == MESH_GATEWAY and value.get("tags") and not self.listener_tags:
            errors.add(f"{path}.tags", not_supported("selecting MeshGateway listeners by tags"))


def target_ref(allowed: tuple[str, ...], *, top_level: bool = False, listener_tags: bool = False) -> Node:
    """``listener_tags``: a MeshGateway targetRef may select listeners by ``tags`` (the route
    types apply it; other policies refuse it as not supported yet)."""
    return _TargetRef(allowed, top_level, listener_tags)


def resource_checks(mesh: str, spec: Mapping[str, Any]) -> list[FieldError]:
    """targetRef rules that need the whole policy: ``mesh`` names the policy's own mesh (zonemesh
    has no cross-mesh policies), and a Dataplane ``sectionName`` (an inbound) only with ``from``
    entries or ``rules`` (Kuma: sectionName only on inbound policies; ``to`` configures the whole
    proxy)."""
    errors: list[FieldError] = []
    refs: list[tuple[str, Any]] = [("spec.targetRef", spec.get("targetRef"))]
    for direction in ("to", "from"):
        for i, entry in enumerate(spec.get(direction) or []):
            if isinstance(entry, Mapping):
                refs.append((f"spec.{direction}[{i}].targetRef", entry.get("targetRef")))
    for path, ref in refs:
        if isinstance(ref, Mapping) and ref.get("mesh") is not None and ref.get("mesh") != mesh:
            errors.append(FieldError(f"{path}.mesh", not_supported("a targetRef to another mesh")))
    top = top_level(spec)
    inbound = spec.get("from") or spec.get("rules")  # Kuma's AffectsInbounds (rules: e.g. MeshTLS)
    if top.get("kind") == DATAPLANE and top.get("sectionName") is not None and not inbound:
        errors.append(
            FieldError(
                "spec.targetRef.sectionName", "can only be used with inbound policies (with from entries or rules)"
            )
        )
    return errors


def policy_spec(
    *,
    top: tuple[str, ...],
    conf: Node,
    to: tuple[str, ...] | None = None,
    from_: tuple[str, ...] | None = None,
    extra: Mapping[str, Node] | None = None,
    require_default: bool = True,
    rule: Node | None = None,
) -> Obj:
    """The schema of a targetRef policy's spec: an optional targetRef + to[] and/or from[] with
    ``default``, and/or Kuma 2.x's inbound rules[] (``rule``: the schema of one rule)."""
    fields: dict[str, Node] = {"targetRef": target_ref(top, top_level=True)}
    directions = []
    entry_required = ("targetRef", "default") if require_default else ("targetRef",)
    if to is not None:
        fields["to"] = List(Obj({"targetRef": target_ref(to), "default": conf}, required=entry_required))
        directions.append("to")
    if from_ is not None:
        fields["from"] = List(Obj({"targetRef": target_ref(from_), "default": conf}, required=entry_required))
        directions.append("from")
    if rule is not None:
        fields["rules"] = List(rule)
        directions.append("rules")
    fields.update(extra or {})
    checks = (at_least_one(*directions),) if directions else ()
    return Obj(fields, checks=checks)
