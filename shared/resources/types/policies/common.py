"""Pieces several targetRef policies share: value nodes (percentages, status codes, header
matches, backend references) and semantic checks that depend on the top-level targetRef.

The schema walk checks each place on its own; rules such as "with a MeshGateway
top-level targetRef, `to` entries may only target Mesh" need the whole spec, so they run
as the type's semantic check (after the spec is known to be well-formed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import SemanticCheck
from zonemesh.shared.resources.schema import (
    Check,
    Enum,
    Errors,
    FieldError,
    Int,
    List,
    Map,
    Node,
    Obj,
    Str,
    Union,
    at_least_one,
    parse_duration,
)
from zonemesh.shared.resources.types.common import PORT
from zonemesh.shared.resources.types.targetref import (
    GATEWAY,
    MESH,
    MESH_EXTERNAL_SERVICE,
    MESH_GATEWAY,
    MESH_MULTI_ZONE_SERVICE,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
    includes_gateways,
    not_supported,
    selectable_proxy_types,
    top_level,
)

# Kuma accepts percentages as an int or a decimal string ("50", "50.5"); YAML floats are
# refused like Kuma's IntOrString does, with a reason that says to quote them.
PERCENTAGE = Union(
    (Int(min=0, max=100), Str(pattern=r"(?:100(?:\.0+)?|\d{1,2}(?:\.\d+)?)")),
    reason='must be a percentage from 0 to 100: an integer, or a decimal in quotes such as "50.5"',
)

HTTP_STATUS = Int(min=100, max=599)

# RFC 7230 token, lower case: Envoy matches header names case-insensitively.
HEADER_NAME = Str(
    min_len=1,
    max_len=256,
    pattern=r"[a-z0-9!#$%&'*+\-.^_`|~]+",
    pattern_reason="must be a lower-case HTTP header name",
)

_VALUELESS_MATCHES = ("Present", "Absent")


def _header_match_value(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    if value.get("type") in _VALUELESS_MATCHES and value.get("value"):
        errors.add(f"{path}.value", f"must not be set with type {value['type']}")


HEADER_MATCH = Obj(
    {
        "type": Enum("Exact", "Present", "RegularExpression", "Absent", "Prefix"),
        "name": HEADER_NAME,
        "value": Str(),
    },
    required=("name",),
    checks=(_header_match_value,),
)

HEADER_VALUE = Obj({"name": HEADER_NAME, "value": Str()}, required=("name", "value"))

# Headers a policy adds to a request or response (health checks, rate-limit replies).
HEADERS_ADD_SET = Obj({"add": List(HEADER_VALUE, max_items=16), "set": List(HEADER_VALUE, max_items=16)})


# backendRef kinds Kuma 2.14 takes; zonemesh has no MeshExternalService / MeshMultiZoneService
# resources yet: its route types refuse those as not supported yet (``backend_refs_not_yet``).
BACKEND_KINDS = (MESH_SERVICE, MESH_SERVICE_SUBSET, MESH_EXTERNAL_SERVICE, MESH_MULTI_ZONE_SERVICE)
BACKEND_KINDS_NOT_YET = (MESH_EXTERNAL_SERVICE, MESH_MULTI_ZONE_SERVICE)
# Kuma reads these as a reference to a MeshService *resource* (its port, its labels): zonemesh
# names services by their kuma.io/service tag only.
BACKEND_FIELDS_NOT_YET = {
    "port": "a backendRef port",
    "sectionName": "a backendRef sectionName",
    "labels": "selecting backends by labels",
}


def _backend_ref_kind(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    kind = value.get("kind")
    if kind not in BACKEND_KINDS:
        if isinstance(kind, str):
            errors.add(f"{path}.kind", f"must be one of: {', '.join(BACKEND_KINDS)}")
        return
    if not value.get("name") and not value.get("labels"):
        errors.add(f"{path}.name", f"must be set with kind {kind}")
    tags = value.get("tags")
    if kind == MESH_SERVICE_SUBSET and not tags:
        errors.add(f"{path}.tags", "must be set with kind MeshServiceSubset")
    if kind != MESH_SERVICE_SUBSET and tags:
        errors.add(f"{path}.tags", f"must not be set with kind {kind}; use MeshServiceSubset")
    if value.get("proxyTypes"):
        errors.add(f"{path}.proxyTypes", "must not be set in a backendRef")


def backend_ref_not_yet(ref: Mapping[str, Any], path: str, mesh: str) -> list[FieldError]:
    """What of a (valid) backendRef zonemesh cannot route to yet."""
    errors = []
    kind = ref.get("kind")
    if kind in BACKEND_KINDS_NOT_YET:
        errors.append(
            FieldError(f"{path}.kind", not_supported(f"backendRef kind {kind}") + f" (it has no {kind} resources)")
        )
    for field, what in BACKEND_FIELDS_NOT_YET.items():
        if ref.get(field) not in (None, {}, ""):
            reason = not_supported(what) + " (it has no MeshService resources: use name, the kuma.io/service)"
            errors.append(FieldError(f"{path}.{field}", reason))
    if ref.get("mesh") not in (None, mesh):
        errors.append(FieldError(f"{path}.mesh", not_supported("a backendRef to another mesh")))
    return errors


def _mirror_weight(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    weight = value.get("weight")
    if isinstance(weight, int) and weight != 1:
        errors.add(
            f"{path}.weight",
            "has no effect on a mirror (its percentage says how much is mirrored): only the default 1 is accepted",
        )


def backend_ref(*, weighted: bool) -> Obj:
    """Where a route sends traffic (``weighted``) or mirrors it. MeshServiceSubset (a service
    narrowed by tags) is allowed here even though it is not a targetRef kind: it only names a
    destination, it is never matched against proxies. ``namespace`` is accepted and ignored, as
    in a targetRef (universal has no namespaces); ``mesh`` must be the policy's own (checked
    by the route types' ``not_yet``, with what zonemesh cannot route to yet: ``backend_ref_not_yet``)."""
    fields: dict[str, Node] = {
        "kind": Str(min_len=1),
        "name": Str(min_len=1),
        "tags": Map(Str(min_len=1), key=Str(min_len=1)),
        "mesh": Str(min_len=1),
        "namespace": Str(),
        "port": PORT,
        "sectionName": Str(min_len=1),
        "labels": Map(Str(), key=Str(min_len=1)),
        "proxyTypes": List(Str()),
        "weight": Int(min=0),
    }
    checks: tuple[Check, ...] = (_backend_ref_kind,) if weighted else (_backend_ref_kind, _mirror_weight)
    return Obj(fields, required=("kind",), checks=checks)


def backoff_order(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    """``maxInterval`` below ``baseInterval`` would make Envoy reject the retry policy."""
    base, top = value.get("baseInterval"), value.get("maxInterval")
    if not (isinstance(base, str) and isinstance(top, str)):
        return
    try:
        if parse_duration(top) < parse_duration(base):
            errors.add(f"{path}.maxInterval", "must be greater than or equal to baseInterval")
    except ValueError:
        return  # the Duration nodes already reported it


def blocks_not_empty(*names: str) -> Check:
    """An empty ``http: {}`` block configures nothing; say so rather than ignore it."""

    def check(value: Mapping[str, Any], path: str, errors: Errors) -> None:
        for name in names:
            block = value.get(name)
            if isinstance(block, Mapping) and not block:
                errors.add(f"{path}.{name}", "must not be empty")

    return check


def type_matches_field(fields: Mapping[str, str]) -> Check:
    """For ``{type: X, <field for X>: {...}}`` unions: the field named by ``type`` must be set."""

    def check(value: Mapping[str, Any], path: str, errors: Errors) -> None:
        kind = value.get("type")
        field = fields.get(kind) if isinstance(kind, str) else None
        if field is not None and value.get(field) is None:
            errors.add(f"{path}.{field}", f"must be defined with type {kind}")

    return check


# --- fields a plugin does not apply yet (PolicySupport.not_yet) -------------------------


def _confs(spec: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    for direction in ("to", "from", "rules"):
        for i, entry in enumerate(spec.get(direction) or []):
            conf = entry.get("default") if isinstance(entry, Mapping) else None
            if isinstance(conf, Mapping):
                yield f"spec.{direction}[{i}].default", conf


def fields_not_yet(type_name: str, *fields: str) -> Callable[[Resource], list[FieldError]]:
    """A ``not_yet`` check refusing the dotted ``fields`` (e.g. ``http.rateLimitedBackOff``) in
    any ``to``/``from`` entry's or rule's ``default``: valid Kuma, not applied by zonemesh yet."""

    def check(res: Resource) -> list[FieldError]:
        errors = []
        for path, conf in _confs(res.spec):
            for field in fields:
                value: Any = conf
                for part in field.split("."):
                    value = value.get(part) if isinstance(value, Mapping) else None
                if value is not None:
                    errors.append(FieldError(f"{path}.{field}", not_supported(f"{type_name} {field}")))
        return errors

    return check


def all_not_yet(*checks: Callable[[Resource], list[FieldError]]) -> Callable[[Resource], list[FieldError]]:
    def run(res: Resource) -> list[FieldError]:
        return [error for check in checks for error in check(res)]

    return run


# --- semantic checks across the whole policy spec ---------------------------------------

SpecCheck = Callable[[Mapping[str, Any]], Iterable[FieldError]]


def policy_semantic(*checks: SpecCheck) -> SemanticCheck:
    """Run spec-level checks on a wrapped policy (paths are reported under ``spec.``)."""

    def run(res: Resource) -> list[FieldError]:
        errors: list[FieldError] = []
        for check in checks:
            errors.extend(check(res.spec))
        return errors

    return run


def top_kind(spec: Mapping[str, Any]) -> str:
    return str(top_level(spec)["kind"])


def _entries(spec: Mapping[str, Any], direction: str) -> list[Mapping[str, Any]]:
    return list(spec.get(direction) or [])


def not_empty(*directions: str) -> SpecCheck:
    """A policy with only empty direction lists does nothing; Kuma refuses it."""

    def check(spec: Mapping[str, Any]) -> list[FieldError]:
        present = [d for d in directions if d in spec and spec[d] is not None]
        if present and not any(_entries(spec, d) for d in present):
            return [FieldError(f"spec.{present[0]}", "needs at least one item")]
        return []

    return check


def gateway_to_mesh_only(spec: Mapping[str, Any]) -> list[FieldError]:
    """A gateway has no per-destination outbounds to select: its `to` can only be Mesh."""
    if top_kind(spec) != MESH_GATEWAY:
        return []
    return [
        FieldError(f"spec.to[{i}].targetRef.kind", "must be Mesh when the top-level targetRef is a MeshGateway")
        for i, entry in enumerate(_entries(spec, "to"))
        if entry["targetRef"]["kind"] != MESH
    ]


def sidecar_to_kinds(*kinds: str) -> SpecCheck:
    """Kinds allowed in `to` when the top-level targetRef is not a MeshGateway."""

    def check(spec: Mapping[str, Any]) -> list[FieldError]:
        if top_kind(spec) == MESH_GATEWAY:
            return []
        return [
            FieldError(
                f"spec.to[{i}].targetRef.kind",
                f"must be one of {', '.join(kinds)} unless the top-level targetRef is a MeshGateway",
            )
            for i, entry in enumerate(_entries(spec, "to"))
            if entry["targetRef"]["kind"] not in kinds
        ]

    return check


def to_only_for_gateway(spec: Mapping[str, Any]) -> list[FieldError]:
    """Inbound-side policies (MeshFaultInjection, MeshRateLimit) configure builtin gateways
    through `to` and sidecars through `from`; as in Kuma, `to` needs a top-level targetRef that
    can select gateways and `from` one that cannot (proxyTypes: [Sidecar], or a service)."""
    gateways = includes_gateways(top_level(spec))
    if gateways and _entries(spec, "from"):
        return [
            FieldError(
                "spec.from",
                "must not be defined when the top-level targetRef includes gateways; "
                "select only proxyTypes: [Sidecar], or select only gateways and use to",
            )
        ]
    if not gateways and _entries(spec, "to"):
        return [FieldError("spec.to", "can only be defined when the top-level targetRef includes gateways; use from")]
    return []


def to_only_for_gateway_rules(spec: Mapping[str, Any]) -> list[FieldError]:
    """Kuma's MeshRateLimit: `rules` (inbound) only when the scope cannot include gateways,
    which read `to`."""
    if includes_gateways(top_level(spec)) and _entries(spec, "rules"):
        return [
            FieldError(
                "spec.rules",
                "must not be defined when the top-level targetRef includes gateways; "
                "select only proxyTypes: [Sidecar], or select only gateways and use to",
            )
        ]
    return []


# --- Kuma 2.x inbound rules (`rules`) ----------------------------------------------------
#
# `rules: [{matches: [...], default: {...}}]` configure what the selected proxies receive: a rule
# without matches applies to every caller, one with matches to the callers a match selects (by
# the SPIFFE ID of their mTLS certificate, or the SNI they sent).

SPIFFE_ID = Str(
    pattern=r"spiffe://[a-z0-9._-]+(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._-]+)*",
    pattern_reason="must be a valid SPIFFE ID such as spiffe://<mesh>/<service> (no trailing slash)",
)
# Kuma: a DNS-1123 subdomain.
DNS_SUBDOMAIN = Str(
    max_len=253,
    pattern=r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*",
    pattern_reason="must be a lower-case DNS name (RFC 1123 subdomain)",
)

MATCH = Obj(
    {
        "spiffeID": Obj({"type": Enum("Exact", "Prefix"), "value": SPIFFE_ID}, required=("type", "value")),
        "sni": Obj({"type": Enum("Exact"), "value": DNS_SUBDOMAIN}, required=("type", "value")),
    },
    checks=(at_least_one("spiffeID", "sni"),),
)


def inbound_rule(conf: Node, *, matches: bool = True) -> Obj:
    """The schema of one entry of `rules`: its ``default`` (required: a rule without one configures
    nothing) and, where Kuma has them, ``matches``."""
    fields: dict[str, Node] = {"default": conf}
    if matches:
        fields["matches"] = List(MATCH)
    return Obj(fields, required=("default",))


def rules_alone(*others: str) -> SpecCheck:
    """Kuma: a policy with `rules` has none of ``others`` (its `from`, and for some types `to`)."""
    names = " and ".join(f"'{o}'" for o in others)
    reason = f"field{'s' if len(others) > 1 else ''} {names} must be empty when 'rules' is defined"

    def check(spec: Mapping[str, Any]) -> list[FieldError]:
        if _entries(spec, "rules") and any(_entries(spec, o) for o in others):
            return [FieldError("spec", reason)]
        return []

    return check


def rule_matches(spec: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """(path, match) of every match of every rule (well-formed documents only)."""
    for i, rule in enumerate(_entries(spec, "rules")):
        for j, match in enumerate(rule.get("matches") or []):
            yield f"spec.rules[{i}].matches[{j}]", match


SERVICE_TAG = "kuma.io/service"

# zonemesh's mesh traffic carries Kuma's legacy SNI (``<service>{mesh=<mesh>}``, see
# zone_cp/xds/envoy.py): a DNS name, as Kuma's `sni` matches take, never equals it.
SNI_NOT_YET = " (mesh traffic carries the legacy SNI <service>{mesh=<mesh>}, which no DNS name matches)"


def sni_not_yet(type_name: str) -> Callable[[Resource], list[FieldError]]:
    """A ``not_yet`` check refusing `sni` matches in rules."""

    def check(res: Resource) -> list[FieldError]:
        return [
            FieldError(f"{path}.sni", not_supported(f"{type_name} rules matching the sni") + SNI_NOT_YET)
            for path, match in rule_matches(res.spec)
            if match.get("sni") is not None
        ]

    return check


def source_conditioned(fields: Iterable[str]) -> SpecCheck:
    """Kuma: a rule whose matches select callers by SPIFFE ID cannot set ``fields`` (dotted paths
    in its ``default``): they configure the listener or the connection, not one caller's requests."""
    wanted = tuple(fields)

    def check(spec: Mapping[str, Any]) -> list[FieldError]:
        errors = []
        for i, rule in enumerate(_entries(spec, "rules")):
            if not any(m.get("spiffeID") for m in rule.get("matches") or []):
                continue
            for field in wanted:
                value: Any = rule.get("default")
                for part in field.split("."):
                    value = value.get(part) if isinstance(value, Mapping) else None
                if value is not None:
                    errors.append(
                        FieldError(
                            f"spec.rules[{i}].default.{field}",
                            "can't be specified when matches contain spiffeID because this field "
                            "cannot be conditioned on source identity",
                        )
                    )
        return errors

    return check


def callers_by_service_only(type_name: str) -> Callable[[Resource], list[FieldError]]:
    """A ``not_yet`` check: zonemesh knows a caller by its certificate, which carries only its
    service (SPIFFE ID ``spiffe://<mesh>/<service>``); a `from` entry selecting callers by other
    tags could not be enforced."""

    def check(res: Resource) -> list[FieldError]:
        errors = []
        for i, entry in enumerate(_entries(res.spec, "from")):
            ref = entry["targetRef"]
            tags = dict(ref.get("tags") or {})
            if ref["kind"] == MESH_SUBSET:
                tags.pop(SERVICE_TAG, None)
            if ref["kind"] in (MESH_SUBSET, MESH_SERVICE_SUBSET) and tags:
                errors.append(
                    FieldError(
                        f"spec.from[{i}].targetRef.tags",
                        not_supported(f"selecting {type_name} clients by tags other than {SERVICE_TAG}")
                        + " (a client certificate carries only its service)",
                    )
                )
        return errors

    return check


def only_gateways(spec: Mapping[str, Any]) -> bool:
    """Does the top-level targetRef select builtin gateways only?"""
    return selectable_proxy_types(top_level(spec)) == frozenset({GATEWAY})
