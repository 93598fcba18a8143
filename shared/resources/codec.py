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

from typing import Any

import yaml
from zonemesh.shared.resources.model import Resource, format_time
from zonemesh.shared.resources.registry import REGISTRY, ResourceType, Scope, UnknownType
from zonemesh.shared.resources.schema import (
    Errors,
    FieldError,
    Int,
    Map,
    Name,
    Str,
    ValidationError,
)
from zonemesh.shared.resources.support import type_not_supported, unsupported
from zonemesh.shared.resources.types.targetref import resource_checks

META_FIELDS = ("type", "name", "mesh", "labels", "creationTime", "modificationTime", "version", "kri")
# Read-only parts of Kuma's output of a targetRef policy, accepted and dropped (zonemesh
# computes no policy status).
POLICY_OUTPUT_FIELDS = ("status",)
_LABELS = Map(Str(max_len=4096), key=Str(min_len=1, max_len=317))
_VERSION = Int(min=0)


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
        Name.check(res.name, "name", errors)
        if rtype.scope is Scope.MESH:
            Name.check(res.mesh, "mesh", errors)
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

    res_name = _meta_str(doc, "name", name, errors)
    res_mesh = ""
    if rtype.scope is Scope.MESH:
        res_mesh = _meta_str(doc, "mesh", mesh, errors)
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


def _meta_str(doc: dict[str, Any], key: str, from_path: str | None, errors: Errors) -> str:
    value = doc.get(key)
    if value is None:
        if from_path is None:
            errors.add(key, "must be defined")
            return ""
        return from_path
    Name.check(value, key, errors)
    if from_path is not None and value != from_path:
        errors.add(key, f"{key} from the URL ({from_path}) and from the body ({value}) must match")
    return value if isinstance(value, str) else ""


def load_documents(text: str) -> list[Any]:
    """Split a (multi-document) YAML or JSON text into documents, skipping empty ones.

    Raises ValidationError with the line and column of a YAML syntax error.
    """
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "<input>"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValidationError([FieldError(where, f"invalid YAML: {problem}")], title="Invalid YAML") from None
    return [d for d in docs if d is not None]


def dump_yaml(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)
