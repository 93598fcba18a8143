"""Inbound traffic by caller: Kuma 2.x's `rules` resolved for one inbound, and the Envoy matchers
that tell callers apart.

A caller is known by the SPIFFE ID of its mTLS client certificate (``spiffe://<mesh>/<service>``,
checked by the inbound's TLS against the mesh CA): that is what a rule's ``spiffeID`` match and a
per-caller `from` entry select, through Envoy's ``envoy.matching.inputs.uri_san`` input. Without
mTLS (or on a PERMISSIVE inbound's plaintext chain) a request carries no identity, matches no
such selector, and gets what applies to every caller.

Rules are ordered as Kuma orders them: by the policies' precedence (least important first,
``matching.ordered``), then by their position in the policy; a rule with several matches counts as
one rule per match. A caller gets the merged conf of one *class*: the rules without matches, then
those whose match selects it, least specific first (Kuma's ``effectiveMatchedRouteRules``); with
several classes selecting one caller, the most specific (an Exact SPIFFE ID, then the longest
Prefix) wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from envoy.config.core.v3 import extension_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.matching.common_inputs.ssl.v3 import ssl_inputs_pb2
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2
from xds.type.matcher.v3 import regex_pb2 as xds_regex_pb2
from xds.type.matcher.v3 import string_pb2 as xds_string_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.types.targetref import MESH_SERVICE_SUBSET
from zonemesh.zone_cp.xds.context import SERVICE_TAG
from zonemesh.zone_cp.xds.envoy import pack, spiffe_id
from zonemesh.zone_cp.xds.policies.matching import MESH, MESH_SERVICE, MESH_SUBSET, Entry, entries, merge_all

Predicate: TypeAlias = matcher_pb2.Matcher.MatcherList.Predicate
Match = Mapping[str, Any]  # one of Kuma's rule matches: {spiffeID: {type, value}}


@dataclass(frozen=True)
class Rule:
    match: Match | None  # None: every caller
    conf: Mapping[str, Any]
    policy: str
    index: int = 0  # its place in the policy's `rules` (or `from`): Kuma's ruleIndex, for inspection


def rules(policies: Sequence[Resource], *, from_as_rules: bool) -> list[Rule]:
    """The rules of the policies selecting an inbound (least important first), one per match.

    ``from_as_rules``: a policy's `from` entries (kind Mesh) count as rules without matches
    (Kuma's ``IsFromAsRules``: MeshTimeout, MeshCircuitBreaker, MeshRateLimit). For the other
    types the plugin reads `from` itself when no policy has rules."""
    found: list[Rule] = []
    for policy in policies:
        if policy.spec.get("rules"):
            for index, rule in enumerate(policy.spec["rules"]):
                for match in rule.get("matches") or [None]:
                    found.append(Rule(match, rule.get("default") or {}, policy.name, index))
        elif from_as_rules:
            found += [
                Rule(None, e.conf, policy.name, e.order[2])
                for e in entries([policy], "from")
                if e.target_ref.get("kind") == MESH
            ]
    return found


def catch_all(found: Iterable[Rule]) -> dict[str, Any] | None:
    """The merged conf of the rules without matches (None: there is none)."""
    return merge_all(r.conf for r in found if r.match is None)


def specificity(match: Match | None) -> tuple[int, int]:
    """Higher is more specific: an Exact SPIFFE ID, then a Prefix (longer first), then none."""
    spiffe = (match or {}).get("spiffeID")
    if not spiffe:
        return (0, 0)
    return (2, 0) if spiffe["type"] == "Exact" else (1, len(str(spiffe["value"])))


def _covers(candidate: Match, target: Match) -> bool:
    """Does ``candidate`` select every caller ``target`` selects?"""
    c, t = candidate["spiffeID"], target["spiffeID"]
    if c["type"] == "Exact":
        return bool(t["type"] == "Exact" and t["value"] == c["value"])
    return str(t["value"]).startswith(str(c["value"]))


def _key(match: Match) -> tuple[str, str]:
    return (str(match["spiffeID"]["type"]), str(match["spiffeID"]["value"]))


@dataclass(frozen=True)
class CallerClass:
    """The callers one match selects (and no more specific class does), with their merged conf."""

    match: Match
    conf: dict[str, Any]
    rules: tuple[Rule, ...] = ()  # those merged into ``conf``, in merge order (for inspection)


def classes(found: Sequence[Rule]) -> list[CallerClass]:
    """One class per distinct match, most specific first (the order Envoy must try them in)."""
    base = [r for r in found if r.match is None]
    matched = [r for r in found if r.match is not None]
    distinct = {_key(r.match): r.match for r in matched if r.match is not None}
    result = []
    for match in sorted(distinct.values(), key=specificity, reverse=True):
        covering = sorted(
            (r for r in matched if r.match is not None and _covers(r.match, match)), key=lambda r: specificity(r.match)
        )
        merged = [*base, *covering]
        result.append(CallerClass(match, merge_all(r.conf for r in merged) or {}, tuple(merged)))
    return result


# --- per-caller `from` entries (MeshFaultInjection) ---------------------------------------


def caller_service(target_ref: Mapping[str, Any]) -> str | None:
    """The service a `from` entry selects callers of (None: every caller, kind Mesh). Entries
    selecting by other tags are refused where documents enter (``callers_by_service_only``)."""
    kind = target_ref.get("kind")
    if kind in (MESH_SERVICE, MESH_SERVICE_SUBSET):
        return str(target_ref.get("name"))
    if kind == MESH_SUBSET:
        service = (target_ref.get("tags") or {}).get(SERVICE_TAG)
        return str(service) if service else None
    return None


def from_by_caller(policies: Sequence[Resource]) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """The merged `from` conf for every caller, and per caller service named by an entry the
    merged conf for that service (entries in merge order: ``matching.entries``)."""
    found: list[Entry] = entries(policies, "from")
    named = dict.fromkeys(s for e in found if (s := caller_service(e.target_ref)) is not None)
    every = merge_all(e.conf for e in found if caller_service(e.target_ref) is None)
    per_service = {
        service: merge_all(e.conf for e in found if caller_service(e.target_ref) in (None, service)) or {}
        for service in named
    }
    return every, per_service


def service_match(mesh: str, service: str) -> Match:
    return {"spiffeID": {"type": "Exact", "value": spiffe_id(mesh, service)}}


# --- Envoy matchers ------------------------------------------------------------------------


def _regex_escape(text: str) -> str:
    """``text`` as a literal in an RE2 regex (SPIFFE IDs: letters, digits, ``.-_/:``)."""
    return "".join(c if c.isalnum() or c in "_-/:" else f"\\{c}" for c in text)


def predicate(match: Match) -> Predicate:
    """The caller's certificate URI SANs against a ``spiffeID`` match. Envoy's input joins a
    certificate's URI SANs with commas (a mesh certificate also names ``kuma://...`` URIs): one
    of them must be the SPIFFE ID (Exact) or start with it (Prefix)."""
    spiffe = match["spiffeID"]
    tail = "" if spiffe["type"] == "Exact" else "[^,]*"
    value = xds_string_pb2.StringMatcher(
        safe_regex=xds_regex_pb2.RegexMatcher(
            google_re2=xds_regex_pb2.RegexMatcher.GoogleRE2(),
            regex=f"(?:.*,)?{_regex_escape(str(spiffe['value']))}{tail}(?:,.*)?",
        )
    )
    return Predicate(
        single_predicate=Predicate.SinglePredicate(
            input=xds_extension_pb2.TypedExtensionConfig(
                name="envoy.matching.inputs.uri_san", typed_config=pack(ssl_inputs_pb2.UriSanInput())
            ),
            value_match=value,
        )
    )


def any_of(matches: Sequence[Match]) -> Predicate:
    predicates = [predicate(m) for m in matches]
    if len(predicates) == 1:
        return predicates[0]
    return Predicate(or_matcher=Predicate.PredicateList(predicate=predicates))


def _not(pred: Predicate) -> Predicate:
    return Predicate(not_matcher=pred)


def skip_unless(pred: Predicate | None, *, unless_also: Sequence[Match] = ()) -> Predicate | None:
    """When a filter must be skipped: when ``pred`` does not hold (None: it always holds), or when
    one of ``unless_also`` (more specific classes, served by their own filters) matches."""
    skips = ([_not(pred)] if pred is not None else []) + [predicate(m) for m in unless_also]
    if not skips:
        return None
    if len(skips) == 1:
        return skips[0]
    return Predicate(or_matcher=Predicate.PredicateList(predicate=skips))


def guarded(http_filter: hcm_pb2.HttpFilter, skip: Predicate | None) -> hcm_pb2.HttpFilter:
    """``http_filter`` run only for the requests ``skip`` does not hold for (Envoy's matching
    filter, ``ExtensionWithMatcher`` with a ``SkipFilter`` action, as Kuma builds them)."""
    if skip is None:
        return http_filter
    action = xds_extension_pb2.TypedExtensionConfig(name="skip", typed_config=pack(skip_action_pb2.SkipFilter()))
    wrapped = extension_matcher_pb2.ExtensionWithMatcher(
        xds_matcher=matcher_pb2.Matcher(
            matcher_list=matcher_pb2.Matcher.MatcherList(
                matchers=[
                    matcher_pb2.Matcher.MatcherList.FieldMatcher(
                        predicate=skip, on_match=matcher_pb2.Matcher.OnMatch(action=action)
                    )
                ]
            )
        ),
        extension_config=extension_pb2.TypedExtensionConfig(
            name=http_filter.name, typed_config=http_filter.typed_config
        ),
    )
    return hcm_pb2.HttpFilter(name=http_filter.name, typed_config=pack(wrapped))


# --- routes per caller (MeshTimeout) --------------------------------------------------------

# Route matching cannot read the peer certificate; the connection manager can write its URI SAN
# into this header (``forward_client_cert_details: SANITIZE_SET``: a caller's own value is
# dropped), routes match on it, and each route removes it before the request leaves.
XFCC = "x-forwarded-client-cert"


def caller_header_match(match: Match) -> route_components_pb2.HeaderMatcher:
    """A route header matcher selecting the callers ``match`` selects, on the XFCC header
    (``...;URI=<spiffe id>`` with only the URI of the certificate set)."""
    spiffe = match["spiffeID"]
    value = _regex_escape(str(spiffe["value"]))
    tail = "" if spiffe["type"] == "Exact" else "[^;,]*"
    regex = f"(?:.*;)?URI={value}{tail}(?:[;,].*)?"
    matcher = route_components_pb2.HeaderMatcher(name=XFCC)
    matcher.string_match.safe_regex.regex = regex
    return matcher


def expose_caller(hcm: hcm_pb2.HttpConnectionManager) -> None:
    """Have the connection manager write the caller's URI SAN into the XFCC header (only it)."""
    hcm.forward_client_cert_details = hcm_pb2.HttpConnectionManager.SANITIZE_SET
    hcm.set_current_client_cert_details.uri = True
