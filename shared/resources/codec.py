"""Kuma "universal" YAML/JSON in and out, with field-by-field validation.

A universal document is flat: ``type``, ``name``, ``mesh`` (mesh-scoped types only),
``labels``, then either the spec fields (Mesh, Dataplane, ...) or a ``spec:`` key
(targetRef policies). Read-only metadata (creation/modification time, version) is
emitted on output and accepted back on input, so that ``zmctl get -o yaml`` output can be
re-applied; ``version`` then acts as an optimistic-concurrency precondition. What Kuma's output
carries and zonemesh does not keep (``kri``; a policy's ``status``) is accepted and dropped, so
that Kuma's ``get -o yaml`` output applies too.
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml
from zonemesh.shared.resources.model import Resource, format_time
from zonemesh.shared.resources.registry import REGISTRY, ResourceType, Scope, UnknownType
from zonemesh.shared.resources.schema import (
    MESH_NAME,
    Errors,
    FieldError,
    Int,
    Map,
    NameRule,
    Str,
    ValidationError,
    check_name,
)
from zonemesh.shared.resources.support import type_not_supported, unsupported
from zonemesh.shared.resources.types.targetref import resource_checks

META_FIELDS = ("type", "name", "mesh", "labels", "creationTime", "modificationTime", "version", "kri")
# Read-only parts of Kuma's output of a targetRef policy, accepted and dropped (zonemesh
# computes no policy status).
POLICY_OUTPUT_FIELDS = ("status",)
_LABELS = Map(Str(max_len=4096), key=Str(min_len=1, max_len=317))
MAX_VERSION = 2**63 - 1  # what every store can hold (SQLite INTEGER, etcd's int64 revisions)
_VERSION = Int(min=0, max=MAX_VERSION)

# Bounds on one document, whatever its source (API body, zmctl file, gRPC registration). Kuma's
# resources nest about 10 levels deep and hold a few hundred values; the bounds are far above
# that, and far below what would exhaust the interpreter's stack or the control plane's memory.
MAX_DEPTH = 64
# Counted with every YAML alias expanded: 9 aliases nested 9 deep ("billion laughs") parse in
# microseconds into shared objects, and would expand into 10^9 values in anything that walks them.
MAX_VALUES = 100_000


def to_universal(res: Resource) -> dict[str, Any]:
    rtype = REGISTRY.get(res.type)
    doc: dict[str, Any] = {"type": res.type}
    if rtype.scope is Scope.MESH:
        doc["mesh"] = res.mesh
    doc["name"] = res.name
    doc["creationTime"] = format_time(res.creation_time)
    doc["modificationTime"] = format_time(res.modification_time)
    doc["version"] = res.version
    if res.labels:
        doc["labels"] = dict(res.labels)
    if rtype.wrapped:
        doc["spec"] = res.spec
    else:
        doc.update(res.spec)
    return doc


def check_resource(res: Resource, errors: Errors, *, names: bool = True, support: bool = True) -> None:
    """Add to ``errors`` every reason ``res`` may not be stored, whatever brought it: an API or
    zmctl document (``from_universal``), a KDS upload at global, a KDS download at a zone, a
    document read back from the store before generation uses it.

    Checks the name rule (``names``; ``from_universal`` checks names itself, as they may come
    from the URL), that only mesh-scoped types have a mesh, the labels, the type's schema and
    then its semantic checks; for targetRef policies the targetRef rules that need the whole
    policy and (``support``) what zonemesh does not apply yet (``support.py``: a type not
    supported yet is then the only error). Not the store-dependent rules (does the mesh exist):
    see ``ResourceManager`` and the KDS upload path. Raises UnknownType for a type not in the
    registry.
    """
    rtype = REGISTRY.get(res.type)
    not_yet = type_not_supported(rtype) if support else []
    if not_yet:
        errors.extend(not_yet)  # nothing else matters: it could not be applied whatever it says
        return
    if names:
        errors.extend(rtype.name_errors(res.name, res.mesh))
    if rtype.scope is not Scope.MESH and res.mesh:
        errors.add("mesh", f"{rtype.name} is not mesh-scoped: remove the mesh field")
    _LABELS.check(res.labels, "labels", errors)
    rtype.spec.check(res.spec, "spec" if rtype.wrapped else "", errors)
    if not errors and rtype.semantic is not None:
        errors.extend(rtype.semantic(res))
    if not errors and rtype.policy:
        errors.extend(resource_checks(res.mesh, res.spec))
    if not errors and support:
        errors.extend(unsupported(res))


def validate_resource(res: Resource) -> None:
    """``check_resource`` with names: raises ValidationError listing every problem, or UnknownType."""
    errors = Errors()
    check_resource(res, errors)
    if errors:
        raise ValidationError(errors)


def from_universal(
    doc: Any,
    *,
    expected_type: ResourceType | None = None,
    mesh: str | None = None,
    name: str | None = None,
) -> tuple[Resource, int | None]:
    """Parse and validate one document entering zonemesh (API, zmctl, registration). Returns the
    resource and the version it was read at (None when the document carries no version). Raises
    ValidationError listing every problem found, including what zonemesh does not apply yet
    (support.py: a type not supported yet is the only error reported for its documents).

    ``expected_type``/``mesh``/``name`` come from the REST path; when the document states
    them too, they must agree.
    """
    return _parse(doc, expected_type, mesh, name, support=True)


def parse_universal(
    doc: Any,
    *,
    expected_type: ResourceType | None = None,
    mesh: str | None = None,
    name: str | None = None,
) -> tuple[Resource, int | None]:
    """``from_universal`` without the refusals of ``support.py`` (a type not supported yet, a
    section applied on none of the proxies its targetRef selects): for tests of the schemas of
    types zonemesh does not apply yet. Fields zonemesh cannot apply are still refused."""
    return _parse(doc, expected_type, mesh, name, support=False)


def _parse(
    doc: Any, expected_type: ResourceType | None, mesh: str | None, name: str | None, *, support: bool
) -> tuple[Resource, int | None]:
    errors = Errors()
    if not isinstance(doc, dict):
        raise ValidationError([FieldError("<root>", "must be an object (a YAML mapping)")])

    type_name = doc.get("type")
    rtype: ResourceType | None = expected_type
    if type_name is None:
        if expected_type is None:
            errors.add("type", "must be defined")
    elif not isinstance(type_name, str):
        errors.add("type", "must be a string")
    elif expected_type is not None and type_name != expected_type.name:
        errors.add("type", f"must be {expected_type.name} on this path, got {type_name}")
    else:
        try:
            rtype = REGISTRY.get(type_name)
        except UnknownType:
            known = ", ".join(sorted(t.name for t in REGISTRY))
            errors.add("type", f"unknown resource type {type_name!r} (known: {known})")
    if rtype is None:
        raise ValidationError(errors)
    not_yet = type_not_supported(rtype) if support else []
    if not_yet:
        # Nothing else in the document matters: it could not be applied whatever it says.
        raise ValidationError(not_yet, title=f"{rtype.name} is not supported yet by zonemesh")

    res_name = _meta_name(doc, "name", name, rtype.name_rule, errors)
    res_mesh = ""
    if rtype.scope is Scope.MESH:
        res_mesh = _meta_name(doc, "mesh", mesh, MESH_NAME, errors)
    elif doc.get("mesh") is not None:
        errors.add("mesh", f"{rtype.name} is not mesh-scoped: remove the mesh field")

    labels = doc.get("labels") or {}
    if not isinstance(labels, dict):
        errors.add("labels", "must be an object")
        labels = {}
    version = doc.get("version")
    if version is not None:
        _VERSION.check(version, "version", errors)

    spec: Any
    if rtype.wrapped:
        for key in doc:
            if key not in (*META_FIELDS, *POLICY_OUTPUT_FIELDS, "spec"):
                errors.add(key, "unknown field")
        spec = doc.get("spec")
        if spec is None:
            errors.add("spec", "must be defined")
            spec = {}
    else:
        spec = {k: v for k, v in doc.items() if k not in META_FIELDS}

    res = Resource(type=rtype.name, name=res_name, mesh=res_mesh, spec=spec, labels=labels)
    if isinstance(spec, dict):
        # The name and mesh were checked above, with the document's own messages (URL vs body).
        check_resource(res, errors, names=False, support=support)
    else:
        errors.add("spec", "must be an object")
        _LABELS.check(labels, "labels", errors)
    if errors:
        raise ValidationError(errors)
    return res, version if isinstance(version, int) else None


def _meta_name(doc: dict[str, Any], key: str, from_path: str | None, rule: NameRule, errors: Errors) -> str:
    """The name (or mesh) of the document, from its body or else from the URL; both are checked
    by the same rule, and must agree when both are given."""
    value = doc.get(key)
    if value is None:
        if from_path is None:
            errors.add(key, "must be defined")
            return ""
        errors.extend(check_name(from_path, key, rule))
        return from_path
    errors.extend(check_name(value, key, rule))
    if from_path is not None and value != from_path:
        errors.add(key, f"{key} from the URL ({from_path}) and from the body ({value}) must match")
    return value if isinstance(value, str) else ""


def parse_document(raw: str | bytes, where: str = "<body>") -> Any:
    """One JSON or YAML document (an API body, a registration), checked to be plain data within
    MAX_DEPTH and MAX_VALUES. Raises ValidationError (title "Invalid body") saying what is wrong."""
    text = _text(raw, where)
    if text.lstrip().startswith("{"):
        return parse_json(text, where)
    try:
        doc = yaml.safe_load(text)
    except RecursionError:
        raise _invalid(where, f"nested more than {MAX_DEPTH} levels deep") from None
    except (ValueError, yaml.YAMLError) as exc:  # ValueError: integers of over 4300 digits
        raise _invalid(where, f"invalid JSON/YAML: {exc}") from None
    check_plain(doc, where)
    return doc


def parse_json(raw: str | bytes, where: str = "<body>") -> Any:
    """Like parse_document, for JSON only (a gRPC registration's dataplane_json)."""
    try:
        doc = json.loads(_text(raw, where))
    except RecursionError:
        raise _invalid(where, f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # JSON syntax, integers of over 4300 digits
        raise _invalid(where, f"not valid JSON: {exc}") from None
    check_plain(doc, where)
    return doc


def check_plain(doc: Any, where: str = "<body>") -> None:
    """Refuse what is not JSON data within the bounds: YAML's dates, binaries and sets, non-string
    keys, NaN and infinities, nesting deeper than MAX_DEPTH, more than MAX_VALUES values. Iterative:
    its own stack cannot overflow."""
    stack: list[tuple[Any, int, str]] = [(doc, 1, "")]
    values = 0
    while stack:
        value, depth, path = stack.pop()
        values += 1
        if values > MAX_VALUES:
            raise _invalid(where, f"has more than {MAX_VALUES} values (YAML aliases count each time they are used)")
        if depth > MAX_DEPTH:
            raise _invalid(path or where, f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _invalid(
                        f"{path}[{key!r}]" if path else repr(key),
                        "keys must be strings (YAML reads unquoted on, off, yes, no, numbers and dates as "
                        "other types: quote the key)",
                    )
                stack.append((item, depth + 1, f"{path}.{key}" if path else key))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, f"{path}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            raise _invalid(path or where, "must be a finite number")
        elif value is not None and not isinstance(value, str | int | float):  # bool is an int
            raise _invalid(
                path or where,
                f"must be a string, number, boolean, null, list or object; YAML read a {type(value).__name__} "
                "here (quote the value to keep it a string)",
            )


def _text(raw: str | bytes, where: str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(where, f"must be UTF-8 text: the byte at position {exc.start} is not valid UTF-8") from None


def _invalid(where: str, reason: str) -> ValidationError:
    return ValidationError([FieldError(where, reason)], title="Invalid body")


def load_documents(text: str | bytes) -> list[Any]:
    """Split a (multi-document) YAML or JSON text into documents, skipping empty ones; each is
    checked like an API body (parse_document).

    Raises ValidationError with the line and column of a YAML syntax error.
    """
    text = _text(text, "<input>")
    try:
        docs = list(yaml.safe_load_all(text))
    except RecursionError:
        raise ValidationError(
            [FieldError("<input>", f"nested more than {MAX_DEPTH} levels deep")], title="Invalid YAML"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "<input>"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValidationError([FieldError(where, f"invalid YAML: {problem}")], title="Invalid YAML") from None
    except ValueError as exc:  # an integer of over 4300 digits
        raise ValidationError([FieldError("<input>", f"invalid YAML: {exc}")], title="Invalid YAML") from None
    docs = [d for d in docs if d is not None]
    for i, doc in enumerate(docs):
        try:
            check_plain(doc)
        except ValidationError as exc:
            raise ValidationError(exc.errors, title=f"Invalid YAML (document {i + 1})") from None
    return docs


def dump_yaml(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)
