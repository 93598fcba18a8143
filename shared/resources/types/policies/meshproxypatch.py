"""MeshProxyPatch: changes to the Envoy config generated for the selected proxies, applied last.

``spec.default.appendModifications`` lists modifications, each of exactly one kind (Kuma 2.14's
``api/v1alpha1``): ``cluster``, ``listener``, ``networkFilter``, ``httpFilter``, ``virtualHost``, each
with an ``operation``, an optional ``match`` and a ``value`` (YAML or JSON of the Envoy message of
that kind) or ``jsonPatches`` (Patch only). Every ``value`` is parsed here as the Envoy message it
must be (the xds-protos classes): a value Envoy's schema would not read is refused with the
field that holds it, never stored. What Envoy itself refuses (a bad regex, two listeners on one
address) shows as a NACK naming the policy (docs/policies.md#meshproxypatch).

How it applies: ``zone_cp/xds/policies/meshproxypatch.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf.message import Message
from zonemesh.shared import jsonpatch, protojson
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import WHOLE, PolicySupport, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import AnyValue, Enum, Errors, FieldError, List, Map, Node, Obj, Str
from zonemesh.shared.resources.types.targetref import TOP_KINDS, target_ref

CLUSTER, LISTENER, NETWORK_FILTER, HTTP_FILTER, VIRTUAL_HOST = (
    "cluster",
    "listener",
    "networkFilter",
    "httpFilter",
    "virtualHost",
)
KINDS = (CLUSTER, LISTENER, NETWORK_FILTER, HTTP_FILTER, VIRTUAL_HOST)

# The Envoy message a modification's value is, per kind.
MESSAGES: dict[str, type[Message]] = {
    CLUSTER: cluster_pb2.Cluster,
    LISTENER: listener_pb2.Listener,
    NETWORK_FILTER: listener_components_pb2.Filter,
    HTTP_FILTER: hcm_pb2.HttpFilter,
    VIRTUAL_HOST: route_components_pb2.VirtualHost,
}

ADD, REMOVE, PATCH = "Add", "Remove", "Patch"
ADD_FIRST, ADD_LAST, ADD_BEFORE, ADD_AFTER = "AddFirst", "AddLast", "AddBefore", "AddAfter"
# Operations per kind (Kuma's enums): resources are added, removed or patched; filters are
# inserted at a place in their chain.
RESOURCE_OPERATIONS = (ADD, REMOVE, PATCH)
FILTER_OPERATIONS = (REMOVE, PATCH, ADD_FIRST, ADD_BEFORE, ADD_AFTER, ADD_LAST)
OPERATIONS = {
    CLUSTER: RESOURCE_OPERATIONS,
    LISTENER: RESOURCE_OPERATIONS,
    VIRTUAL_HOST: RESOURCE_OPERATIONS,
    NETWORK_FILTER: FILTER_OPERATIONS,
    HTTP_FILTER: FILTER_OPERATIONS,
}


def _json_patch_fields(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    """Kuma's JsonPatchBlock rules: ``from`` with move/copy only (and needed there), ``value``
    with add/replace only (and needed there), the root cannot be removed."""
    op = value.get("op")
    if op in ("move", "copy") and value.get("from") is None:
        errors.add(f"{path}.from", f"must be defined with op {op}")
    if op not in ("move", "copy") and "from" in value:
        errors.add(f"{path}.from", "is allowed only with op move or copy")
    if op in ("add", "replace") and "value" not in value:
        errors.add(f"{path}.value", f"must be defined with op {op}")
    if op not in ("add", "replace") and "value" in value:
        errors.add(f"{path}.value", "is allowed only with op add or replace")
    target = value.get("path")
    if op == "remove" and target in ("", "/"):
        errors.add(f"{path}.path", "the root cannot be removed")
    for field in ("path", "from"):
        pointer = value.get(field)
        if isinstance(pointer, str) and pointer and not pointer.startswith("/"):
            errors.add(f"{path}.{field}", "must be a JSON Pointer: empty, or starting with /")


JSON_PATCH = Obj(
    {"op": Enum(*jsonpatch.OPERATIONS), "path": Str(), "value": AnyValue(), "from": Str()},
    required=("op", "path"),
    checks=(_json_patch_fields,),
)

_TAGS = Map(Str(), key=Str(min_len=1))
_ORIGIN = Str(min_len=1)
_FILTER_MATCH = Obj({"name": Str(min_len=1), "origin": _ORIGIN, "listenerName": Str(min_len=1), "listenerTags": _TAGS})
_MATCHES: dict[str, Node] = {
    CLUSTER: Obj({"name": Str(min_len=1), "origin": _ORIGIN}),
    LISTENER: Obj({"name": Str(min_len=1), "origin": _ORIGIN, "tags": _TAGS}),
    NETWORK_FILTER: _FILTER_MATCH,
    HTTP_FILTER: _FILTER_MATCH,
    VIRTUAL_HOST: Obj({"name": Str(min_len=1), "origin": _ORIGIN, "routeConfigurationName": Str(min_len=1)}),
}


def _modification_of(kind: str) -> Obj:
    return Obj(
        {
            "match": _MATCHES[kind],
            "operation": Enum(*OPERATIONS[kind]),
            "value": Str(),
            "jsonPatches": List(JSON_PATCH),
        },
        required=("operation", "match") if kind == VIRTUAL_HOST else ("operation",),
    )


def _exactly_one_kind(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    present = [kind for kind in KINDS if value.get(kind) is not None]
    if len(present) != 1:
        errors.add(
            path,
            f"exactly one modification can be defined at a time ({', '.join(KINDS)}); {len(present)} are defined",
        )


MODIFICATION = Obj({kind: _modification_of(kind) for kind in KINDS}, checks=(_exactly_one_kind,))

CONF = Obj({"appendModifications": List(MODIFICATION, min_items=1)}, required=("appendModifications",))

SPEC = Obj({"targetRef": target_ref(TOP_KINDS, top_level=True), "default": CONF}, required=("default",))


# --- values: Envoy messages ------------------------------------------------------------------


def _yaml_or_none(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None  # reported by load_value


def load_value(kind: str, text: str) -> Message:
    """A modification's ``value`` (YAML or JSON text) as the Envoy message of its kind; raises
    ``protojson.ProtoJsonError`` saying what is wrong."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise protojson.ProtoJsonError(f"is not valid YAML or JSON: {exc}") from None
    return protojson.parse(MESSAGES[kind], doc)


# Fields of Envoy's TLS messages that hold key material, as a DataSource.
_KEY_FIELDS = ("privateKey", "private_key", "pkcs12", "password")


def _inline_keys(doc: Any) -> bool:
    """Does ``doc`` (a value's JSON) hold private key material inline?"""
    if isinstance(doc, Mapping):
        for key, value in doc.items():
            if key in _KEY_FIELDS and isinstance(value, Mapping) and set(value) - {"filename"}:
                return True
            if _inline_keys(value):
                return True
        return False
    if isinstance(doc, list):
        return any(_inline_keys(item) for item in doc)
    return isinstance(doc, str) and "PRIVATE KEY-----" in doc


def _check_value(kind: str, operation: str, mod: Mapping[str, Any], path: str) -> list[FieldError]:
    text = mod.get("value")
    if not isinstance(text, str):
        return []
    if "PRIVATE KEY-----" in text or _inline_keys(_yaml_or_none(text)):
        # A policy is readable by every API reader and synced to every zone: no secret in it.
        return [
            FieldError(
                f"{path}.value",
                "must not hold private key material inline: policies are not secret; refer to a file "
                "(filename) or to an SDS secret the proxy already has",
            )
        ]
    try:
        message = load_value(kind, text)
    except protojson.ProtoJsonError as exc:
        name = MESSAGES[kind].DESCRIPTOR.full_name
        return [FieldError(f"{path}.value", f"native Envoy resource is not a valid {name}: {exc}")]
    if operation == ADD and kind in (CLUSTER, LISTENER) and not getattr(message, "name", ""):
        return [FieldError(f"{path}.value", f"must set the name of the {kind} it adds")]
    if operation != PATCH and kind in (NETWORK_FILTER, HTTP_FILTER) and not getattr(message, "name", ""):
        return [FieldError(f"{path}.value", f"must set the name of the {kind} it adds")]
    return []


def _check_modification(kind: str, mod: Mapping[str, Any], path: str) -> list[FieldError]:
    """Kuma's per-kind rules (validator.go), and every value parsed as its Envoy message."""
    errors: list[FieldError] = []
    operation = str(mod.get("operation"))
    match: Mapping[str, Any] = mod.get("match") or {}
    has_value, has_patches = mod.get("value") is not None, bool(mod.get("jsonPatches"))
    if operation == PATCH:
        if has_value and has_patches:
            errors.append(FieldError(path, "must have only one of value, jsonPatches"))
        elif not has_value and not has_patches:
            errors.append(FieldError(path, "must have exactly one of value, jsonPatches"))
    else:
        if mod.get("jsonPatches") is not None:
            errors.append(FieldError(f"{path}.jsonPatches", f"is allowed only with operation Patch, not {operation}"))
        if operation == REMOVE and has_value:
            errors.append(FieldError(f"{path}.value", "must not be defined with operation Remove"))
        if operation != REMOVE and not has_value:
            errors.append(FieldError(f"{path}.value", f"must be defined with operation {operation}"))
    if operation == ADD and kind in (CLUSTER, LISTENER) and mod.get("match") is not None:
        errors.append(FieldError(f"{path}.match", f"must not be defined with operation Add: the {kind} is new"))
    if operation == ADD and kind == VIRTUAL_HOST and match.get("name") is not None:
        errors.append(FieldError(f"{path}.match.name", "must not be defined with operation Add"))
    if kind in (NETWORK_FILTER, HTTP_FILTER):
        if operation in (ADD_BEFORE, ADD_AFTER, PATCH) and match.get("name") is None:
            place = {ADD_BEFORE: "before which", ADD_AFTER: "after which", PATCH: "that"}[operation]
            errors.append(FieldError(f"{path}.match.name", f"must be defined: the filter {place} this one applies"))
        if operation in (ADD_FIRST, ADD_LAST) and match.get("name") is not None:
            errors.append(
                FieldError(
                    f"{path}.match.name",
                    f"is not used by {operation} (it names the filter AddBefore/AddAfter/Patch/Remove act on); "
                    "select the listeners with listenerName, listenerTags or origin",
                )
            )
    if has_value:
        errors.extend(_check_value(kind, operation, mod, path))
    return errors


def _semantic(res: Resource) -> list[FieldError]:
    errors: list[FieldError] = []
    mods = (res.spec.get("default") or {}).get("appendModifications") or []
    for i, modification in enumerate(mods):
        for kind in KINDS:
            mod = modification.get(kind)
            if isinstance(mod, Mapping):
                errors.extend(_check_modification(kind, mod, f"spec.default.appendModifications[{i}].{kind}"))
    return errors


MESH_PROXY_PATCH = register(
    ResourceType(
        name="MeshProxyPatch",
        plural="meshproxypatches",
        short_name="mpp",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES | Sync.ZONE_TO_GLOBAL,
        wrapped=True,
        policy=True,
        # Its one conf (``default``, no to/from) applies to the whole config of each selected proxy.
        support=PolicySupport(plugin="meshproxypatch", sidecar=(WHOLE,), gateway=(WHOLE,)),
        spec=SPEC,
        semantic=_semantic,
    )
)
