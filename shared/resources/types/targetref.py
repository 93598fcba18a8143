"""targetRef: how a policy says what it applies to, shared by every targetRef policy.

A policy has a top-level ``targetRef`` (which proxies get the policy), and ``to`` entries
(outbound traffic, by destination) and/or ``from`` entries (inbound traffic, by source),
each with its own ``targetRef`` and a ``default`` configuration. Which kinds are allowed
at each place is declared per policy, as Kuma's "TargetRef support matrix" does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zonemesh.shared.resources.schema import (
    Enum,
    Errors,
    List,
    Map,
    Name,
    Node,
    Obj,
    Str,
    at_least_one,
)

MESH = "Mesh"
MESH_SUBSET = "MeshSubset"
MESH_SERVICE = "MeshService"
MESH_GATEWAY = "MeshGateway"
KINDS = (MESH, MESH_SUBSET, MESH_SERVICE, MESH_GATEWAY)

# Specificity when several policies match: Mesh < MeshSubset < MeshService (< MeshGateway).
PRECEDENCE = {MESH: 0, MESH_SUBSET: 1, MESH_SERVICE: 2, MESH_GATEWAY: 2}

PROXY_TYPES = ("Sidecar", "Gateway")
_TAGS = Map(Str(), key=Str(min_len=1), min_items=1)


class _TargetRef(Node):
    """Checks kind against the kinds allowed at this place, and the fields each kind needs."""

    def __init__(self, allowed: tuple[str, ...], top_level: bool) -> None:
        fields: dict[str, Node] = {
            "kind": Str(),
            "name": Str(min_len=1),
            "tags": Map(Str(), key=Str(min_len=1)),
            "mesh": Name,
        }
        if top_level:
            fields["proxyTypes"] = List(Enum(*PROXY_TYPES))
        self.allowed = allowed
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
        if kind not in self.allowed:
            errors.add(f"{path}.kind", f"value is not supported here; supported kinds: {', '.join(self.allowed)}")
            return
        if kind in (MESH, MESH_SUBSET) and value.get("name") is not None:
            errors.add(f"{path}.name", f"must not be set with kind {kind}")
        if kind in (MESH_SERVICE, MESH_GATEWAY) and value.get("name") is None:
            errors.add(f"{path}.name", f"must be set with kind {kind}")
        if kind == MESH_SUBSET:
            _TAGS.check(value.get("tags", {}), f"{path}.tags", errors)
        elif kind in (MESH, MESH_SERVICE) and value.get("tags"):
            errors.add(f"{path}.tags", f"must not be set with kind {kind}")
        if value.get("proxyTypes") and kind != MESH and kind != MESH_SUBSET:
            errors.add(f"{path}.proxyTypes", "can only be used with kind Mesh or MeshSubset")


def target_ref(allowed: tuple[str, ...], *, top_level: bool = False) -> Node:
    return _TargetRef(allowed, top_level)


def policy_spec(
    *,
    top: tuple[str, ...],
    conf: Node,
    to: tuple[str, ...] | None = None,
    from_: tuple[str, ...] | None = None,
    extra: Mapping[str, Node] | None = None,
    require_default: bool = True,
) -> Obj:
    """The schema of a targetRef policy's spec: targetRef + to[] and/or from[] with ``default``."""
    fields: dict[str, Node] = {"targetRef": target_ref(top, top_level=True)}
    directions = []
    entry_required = ("targetRef", "default") if require_default else ("targetRef",)
    if to is not None:
        fields["to"] = List(Obj({"targetRef": target_ref(to), "default": conf}, required=entry_required))
        directions.append("to")
    if from_ is not None:
        fields["from"] = List(Obj({"targetRef": target_ref(from_), "default": conf}, required=entry_required))
        directions.append("from")
    fields.update(extra or {})
    checks = (at_least_one(*directions),) if directions else ()
    return Obj(fields, required=("targetRef",), checks=checks)
