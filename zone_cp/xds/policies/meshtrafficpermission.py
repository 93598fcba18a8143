"""MeshTrafficPermission: an RBAC filter on each inbound, by the client's SPIFFE identity.

Like Kuma, it only acts with mTLS on (without mTLS there is no client identity to check).
With mTLS on and no MeshTrafficPermission selecting the proxy, every request is denied
(Kuma ≥ 2.x creates no allow-all policy with a new mesh; seed 002's default policies do not
include one): allow traffic with a policy such as ``from: [{targetRef: {kind: Mesh},
default: {action: Allow}}]``.

Sources are resolved per service: a ``Mesh`` entry sets the action for every client, a
``MeshService`` entry (or a ``MeshSubset`` entry naming ``kuma.io/service``) overrides it for
that client service. ``AllowWithShadowDeny`` allows and records a shadow denial (Envoy's
``shadow_rules``, visible in the ``rbac.shadow_denied`` stats). A MeshSubset entry without
``kuma.io/service`` cannot be checked against the certificate (it carries only the SPIFFE ID):
it is refused where documents enter.

Kuma 2.x's ``rules`` (``default: {deny, allow, allowWithShadowDeny}``, each a list of SPIFFE ID
matches) become the RBAC filter's ``matcher``, as Kuma builds it: every rule's denials first, then
its allowances, anything else denied; the shadow matcher records what ``allowWithShadowDeny``
would deny. As in Kuma, when a policy with ``rules`` selects an inbound, only rules configure it
(the ``from`` entries of the other policies selecting it are not read there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.type.matcher.v3 import string_pb2
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.context import SERVICE_TAG, MeshContext
from zonemesh.zone_cp.xds.envoy import InboundPieces, pack, spiffe_id
from zonemesh.zone_cp.xds.policies import callers
from zonemesh.zone_cp.xds.policies.matching import MESH, MESH_SERVICE, MESH_SUBSET, entries
from zonemesh.zone_cp.xds.policies.plugin import Plugin

TYPE = "MeshTrafficPermission"
# Not Kuma's IsFromAsRules: `from` is read on its own when no policy selecting an inbound has rules.
FROM_AS_RULES = False
ALLOW, DENY, SHADOW = "Allow", "Deny", "AllowWithShadowDeny"


def _source_service(target_ref: Mapping[str, Any]) -> str | None:
    if target_ref.get("kind") == MESH_SERVICE:
        return str(target_ref.get("name"))
    if target_ref.get("kind") == MESH_SUBSET:
        service = (target_ref.get("tags") or {}).get(SERVICE_TAG)
        return str(service) if service else None
    return None


def actions(policies: Sequence[Resource]) -> tuple[str | None, dict[str, str]]:
    """The action for any client (None: none set) and the per-client-service overrides."""
    mesh_action: str | None = None
    per_service: dict[str, str] = {}
    for entry in entries(policies, "from"):
        action = entry.conf.get("action")
        if not isinstance(action, str):
            continue
        if entry.target_ref.get("kind") == MESH:
            mesh_action = action
            per_service.clear()  # entries are in merge order: a later Mesh entry overrides all
        elif (service := _source_service(entry.target_ref)) is not None:
            per_service[service] = action
    return mesh_action, per_service


def _principal(mesh: str, service: str) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(
        authenticated=rbac_pb2.Principal.Authenticated(
            principal_name=string_pb2.StringMatcher(exact=spiffe_id(mesh, service))
        )
    )


def _policy(principals: list[rbac_pb2.Principal]) -> rbac_pb2.Policy:
    return rbac_pb2.Policy(permissions=[rbac_pb2.Permission(any=True)], principals=principals)


def _anyone_but(mesh: str, services: Sequence[str]) -> rbac_pb2.Principal:
    if not services:
        return rbac_pb2.Principal(any=True)
    return rbac_pb2.Principal(
        and_ids=rbac_pb2.Principal.Set(
            ids=[rbac_pb2.Principal(any=True)] + [rbac_pb2.Principal(not_id=_principal(mesh, s)) for s in services]
        )
    )


def rules(mesh: str, policies: Sequence[Resource]) -> tuple[rbac_pb2.RBAC, rbac_pb2.RBAC | None]:
    """Enforced rules and shadow rules (denials recorded, not enforced)."""
    mesh_action, per_service = actions(policies)
    explicit = sorted(per_service)
    if mesh_action in (ALLOW, SHADOW):
        denied = [s for s in explicit if per_service[s] == DENY]
        enforced = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY)
        if denied:
            enforced.policies["MeshTrafficPermission-deny"].CopyFrom(_policy([_principal(mesh, s) for s in denied]))
    else:  # Deny, or nothing set: only explicitly allowed clients get in
        allowed = [s for s in explicit if per_service[s] in (ALLOW, SHADOW)]
        enforced = rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW)
        if allowed:
            enforced.policies["MeshTrafficPermission-allow"].CopyFrom(_policy([_principal(mesh, s) for s in allowed]))
    shadowed = [_principal(mesh, s) for s in explicit if per_service[s] == SHADOW]
    if mesh_action == SHADOW:
        shadowed.append(_anyone_but(mesh, explicit))
    if not shadowed:
        return enforced, None
    shadow = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY)
    shadow.policies["MeshTrafficPermission-shadow-deny"].CopyFrom(_policy(shadowed))
    return enforced, shadow


# --- Kuma 2.x rules ------------------------------------------------------------------------


def _action(action: rbac_pb2.RBAC.Action.ValueType, name: str) -> matcher_pb2.Matcher.OnMatch:
    return matcher_pb2.Matcher.OnMatch(
        action=xds_extension_pb2.TypedExtensionConfig(
            name="envoy.filters.rbac.action", typed_config=pack(rbac_pb2.Action(name=name, action=action))
        )
    )


def _matcher(steps: list[tuple[list[callers.Match], rbac_pb2.RBAC.Action.ValueType, str]]) -> matcher_pb2.Matcher:
    """The first step whose matches select the caller decides; no step: denied."""
    field_matchers = [
        matcher_pb2.Matcher.MatcherList.FieldMatcher(predicate=callers.any_of(matches), on_match=_action(action, name))
        for matches, action, name in steps
        if matches
    ]
    found = matcher_pb2.Matcher(on_no_match=_action(rbac_pb2.RBAC.DENY, "default"))
    if field_matchers:
        found.matcher_list.matchers.extend(field_matchers)
    return found


def rule_matchers(found: Sequence[callers.Rule]) -> tuple[matcher_pb2.Matcher, matcher_pb2.Matcher | None]:
    """The enforced matcher (denials, then allowances, else deny) and the shadow one (the same
    with ``allowWithShadowDeny`` denied), from the rules selecting an inbound."""
    deny = [([*(r.conf.get("deny") or [])], rbac_pb2.RBAC.DENY, r.policy) for r in found]
    allow = [
        ([*(r.conf.get("allow") or []), *(r.conf.get("allowWithShadowDeny") or [])], rbac_pb2.RBAC.ALLOW, r.policy)
        for r in found
    ]
    enforced = _matcher([*deny, *allow])
    if not any(r.conf.get("allowWithShadowDeny") for r in found):
        return enforced, None
    shadowed = [([*(r.conf.get("allowWithShadowDeny") or [])], rbac_pb2.RBAC.DENY, r.policy) for r in found]
    allowed = [([*(r.conf.get("allow") or [])], rbac_pb2.RBAC.ALLOW, r.policy) for r in found]
    return enforced, _matcher([*deny, *shadowed, *allowed])


def apply_inbound(pieces: InboundPieces, policies: Sequence[Resource]) -> None:
    if pieces.mtls is None:
        return
    stat_prefix = f"{pieces.stat_prefix}."
    found = callers.rules(policies, from_as_rules=FROM_AS_RULES)
    # An RBAC filter without rules or matcher allows everything: exactly one is always set.
    if pieces.is_http:
        if found:
            matcher, shadow_matcher = rule_matchers(found)
            http = http_rbac_pb2.RBAC(matcher=matcher, shadow_rules_stat_prefix=stat_prefix)
            if shadow_matcher is not None:
                http.shadow_matcher.CopyFrom(shadow_matcher)
        else:
            enforced, shadow = rules(pieces.mesh, policies)
            http = http_rbac_pb2.RBAC(rules=enforced, shadow_rules_stat_prefix=stat_prefix)
            if shadow is not None:
                http.shadow_rules.CopyFrom(shadow)
        pieces.http_filters.append(hcm_pb2.HttpFilter(name="envoy.filters.http.rbac", typed_config=pack(http)))
    else:
        if found:
            matcher, shadow_matcher = rule_matchers(found)
            network = network_rbac_pb2.RBAC(matcher=matcher, stat_prefix=stat_prefix)
            if shadow_matcher is not None:
                network.shadow_matcher.CopyFrom(shadow_matcher)
        else:
            enforced, shadow = rules(pieces.mesh, policies)
            network = network_rbac_pb2.RBAC(rules=enforced, stat_prefix=stat_prefix)
            if shadow is not None:
                network.shadow_rules.CopyFrom(shadow)
        pieces.network_filters.append(
            listener_components_pb2.Filter(name="envoy.filters.network.rbac", typed_config=pack(network))
        )


def inert(ctx: MeshContext) -> str | None:
    return None if ctx.mtls is not None else "Mesh is not mTLS enabled: MeshTrafficPermission has no effect"


# The zone egress checks the callers of an ExternalService as its inbound would.
PLUGIN = Plugin(TYPE, order=10, inbound=apply_inbound, egress=apply_inbound, inert=inert, from_as_rules=FROM_AS_RULES)
