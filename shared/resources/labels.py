"""The labels control planes set, and what a user or a peer may say in them.

Where a resource was created (origin), by which zone, and under which name a renamed copy was
created are labels: ``zonemesh.io/origin``, ``zonemesh.io/zone``, ``zonemesh.io/display-name``,
each written with its Kuma twin (``kuma.io/origin``, ``kuma.io/zone``, ``kuma.io/display-name``)
and the same value (``model.TWINS``). The zonemesh.io ones are canonical: the control planes read
them, and every stored resource and every peer of an earlier version carries them; the kuma.io ones
are written beside them so that Kuma's tools and label filters work unchanged.

Nobody gets to say these labels: the resource manager stamps origin and zone on every API write
on global and on zones (``ResourceManager._stamp``), KDS sets them on what it stores (global: on
every upload; a zone: on what it renames). What a document says in them is accepted only when it
is the truth the control plane would stamp anyway (``write_errors``), so that Kuma documents
carrying them apply unchanged and nothing written there is silently replaced. A standalone control
plane stamps none and keeps a valid origin a document states, as Kuma does (nothing reads it
there). KDS refuses an upload or download whose labels claim another owner (``claimed_owner``).
"""

from __future__ import annotations

from collections.abc import Mapping

from zonemesh.shared.resources.model import (
    DISPLAY_NAME_LABEL,
    DISPLAY_NAME_LABELS,
    KUMA_ENV_LABEL,
    KUMA_MESH_LABEL,
    KUMA_ORIGIN_LABEL,
    KUMA_ZONE_LABEL,
    ORIGIN_GLOBAL,
    ORIGIN_LABEL,
    ORIGIN_ZONE,
    ORIGINS,
    ZONE_LABEL,
    Resource,
    set_label,
)
from zonemesh.shared.resources.registry import ResourceType, Scope
from zonemesh.shared.resources.schema import FieldError

ORIGIN_LABELS = (ORIGIN_LABEL, KUMA_ORIGIN_LABEL)
ZONE_LABELS = (ZONE_LABEL, KUMA_ZONE_LABEL)
_STAMPED = frozenset((*ORIGIN_LABELS, *ZONE_LABELS, *DISPLAY_NAME_LABELS))
# Kuma's kuma.io/env: the environment of the zone that created a resource. zonemesh runs universal only.
UNIVERSAL = "universal"

# The modes of ResourceManager (manager.Mode values), named here to keep this module import-free of it.
GLOBAL, ZONE, STANDALONE = "global", "zone", "standalone"


def _field(key: str) -> str:
    return f'labels["{key}"]'


def write_errors(res: Resource, rtype: ResourceType, mode: str, zone: str) -> list[FieldError]:
    """What an API write (``PUT``, ``zmctl apply``, a proxy's registration) may not say in its labels
    on a control plane of this ``mode`` (and zone name). Kuma's rules (api-server
    ``validateLabels``/``validateOriginForWrite``), plus: a label is refused rather than replaced."""
    labels = res.labels
    errors: list[FieldError] = []
    for key in ORIGIN_LABELS:
        value = labels.get(key)
        if value is None:
            continue
        if value not in ORIGINS:
            errors.append(FieldError(_field(key), f"unknown resource origin {value!r}: global or zone"))
        elif mode == GLOBAL and value != ORIGIN_GLOBAL:
            errors.append(FieldError(_field(key), f"the origin label must be set to {ORIGIN_GLOBAL!r} on global"))
        elif mode == ZONE and value != ORIGIN_ZONE:
            errors.append(
                FieldError(
                    _field(key),
                    f"the origin label must be set to {ORIGIN_ZONE!r} on a zone: what global creates comes "
                    "through KDS, never through this API",
                )
            )
    # A standalone control plane stamps no origin and keeps what a document says as it says it
    # (a Kuma export applies unchanged; nothing reads it there); the two sets may not disagree.
    origins = {labels[k] for k in ORIGIN_LABELS if k in labels}
    if len(origins) > 1:
        errors.append(FieldError(_field(KUMA_ORIGIN_LABEL), f"must say what {ORIGIN_LABEL} says"))
    if mode == ZONE and rtype.policy and not any(k in labels for k in ORIGIN_LABELS):
        # Kuma's guard against applying a policy at the wrong place: one created on a zone applies
        # in that zone only (disableOriginLabelValidation is not supported).
        errors.append(
            FieldError(
                _field(KUMA_ORIGIN_LABEL),
                f"the origin label must be set to {ORIGIN_ZONE!r}: a policy created on a federated zone applies "
                f"in zone {zone!r} only; add the label kuma.io/origin: zone to say so, or create the policy on "
                "the global control plane to apply it in every zone",
            )
        )
    for key in ZONE_LABELS:
        value = labels.get(key)
        if value is None:
            continue
        if mode == ZONE and value != zone:
            errors.append(FieldError(_field(key), f"{key} label should have {zone} value"))
        elif mode != ZONE:
            where = "global" if mode == GLOBAL else "a standalone control plane"
            errors.append(FieldError(_field(key), f"names the zone that created a resource: none did on {where}"))
    for key in DISPLAY_NAME_LABELS:
        value = labels.get(key)
        if value is not None and value != res.name:
            errors.append(
                FieldError(
                    _field(key),
                    f"must be the resource's name {res.name!r} or absent: control planes set it to the name a "
                    "renamed copy was created with",
                )
            )
    mesh_label = labels.get(KUMA_MESH_LABEL)
    if mesh_label is not None and (rtype.scope is not Scope.MESH or mesh_label != res.mesh):
        reason = (
            "kuma.io/mesh label must not differ from mesh set on resource"
            if rtype.scope is Scope.MESH
            else f"{rtype.name} is not mesh-scoped: remove the kuma.io/mesh label"
        )
        errors.append(FieldError(_field(KUMA_MESH_LABEL), reason))
    env = labels.get(KUMA_ENV_LABEL)
    if env is not None and env != UNIVERSAL:
        reason = f"must be {UNIVERSAL!r}: zonemesh runs on universal only (no Kubernetes)"
        errors.append(FieldError(_field(KUMA_ENV_LABEL), reason))
    return errors


def claimed_owner(res: Resource, origin: str, zone: str = "") -> str | None:
    """Why the origin and zone labels of a received ``res`` contradict its sender (``origin``:
    global for what global sends, zone for what ``zone`` uploads); None when they do not. Either
    label set counts: a copy is read by its zonemesh.io labels and shown by its kuma.io ones."""
    for key in ORIGIN_LABELS:
        value = res.labels.get(key)
        if value is not None and value != origin:
            return f"labels[{key!r}] is {value!r}: a resource {_sender(origin, zone)} is labelled {origin!r}"
    for key in ZONE_LABELS:
        value = res.labels.get(key)
        if value is not None and value != zone:
            if not zone:
                return f"labels[{key!r}] names zone {value!r}: global sends only resources created on global"
            why = f"a resource from zone {zone!r} may be labelled only with that zone"
            return f"labels[{key!r}] names zone {value!r}: {why}"
    return None


def _sender(origin: str, zone: str) -> str:
    return f"from zone {zone!r}" if origin == ORIGIN_ZONE else "from global"


def stamped(labels: Mapping[str, str], origin: str, zone: str = "", display_name: str = "") -> dict[str, str]:
    """``labels`` as KDS sends or stores them: origin, zone (when given) and display name (when
    given) set in both label sets, whatever ``labels`` said in them; the rest unchanged."""
    out = {k: v for k, v in labels.items() if k not in _STAMPED}
    set_label(out, ORIGIN_LABEL, origin)
    if zone:
        set_label(out, ZONE_LABEL, zone)
    if display_name:
        set_label(out, DISPLAY_NAME_LABEL, display_name)
    return out
