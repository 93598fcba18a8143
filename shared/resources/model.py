"""The in-memory shape of a resource, independent of any store or wire format."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

# Labels every resource may carry; set by the control planes, never trusted from users on sync.
# These zonemesh.io labels are the canonical ones: every control plane reads them, every stored
# resource and every peer of an earlier version carries them.
ORIGIN_LABEL = "zonemesh.io/origin"
ZONE_LABEL = "zonemesh.io/zone"
DISPLAY_NAME_LABEL = "zonemesh.io/display-name"
ORIGIN_GLOBAL = "global"
ORIGIN_ZONE = "zone"
ORIGINS = (ORIGIN_GLOBAL, ORIGIN_ZONE)
# Kuma's names of the same labels (mesh_proto.ResourceOriginLabel, ZoneTag, DisplayName): written
# beside each zonemesh.io label with the same value, so that Kuma's tools, the GUI and label filters
# (``?filter[labels.kuma.io/zone]=zone-1``) see what they see on Kuma; accepted on input when they
# say what the zonemesh.io twin would (shared/resources/labels.py).
KUMA_ORIGIN_LABEL = "kuma.io/origin"
KUMA_ZONE_LABEL = "kuma.io/zone"
KUMA_DISPLAY_NAME_LABEL = "kuma.io/display-name"
KUMA_MESH_LABEL = "kuma.io/mesh"
KUMA_ENV_LABEL = "kuma.io/env"
TWINS = {ORIGIN_LABEL: KUMA_ORIGIN_LABEL, ZONE_LABEL: KUMA_ZONE_LABEL, DISPLAY_NAME_LABEL: KUMA_DISPLAY_NAME_LABEL}
DISPLAY_NAME_LABELS = (DISPLAY_NAME_LABEL, KUMA_DISPLAY_NAME_LABEL)


def set_label(labels: dict[str, str], key: str, value: str) -> None:
    """Set a zonemesh.io label (a key of ``TWINS``) and its kuma.io twin."""
    labels[key] = value
    labels[TWINS[key]] = value


def drop_label(labels: dict[str, str], key: str) -> None:
    """Remove a zonemesh.io label (a key of ``TWINS``) and its kuma.io twin."""
    labels.pop(key, None)
    labels.pop(TWINS[key], None)


class ResourceKey(NamedTuple):
    """Identity of a resource. ``mesh`` is "" for global-scoped types."""

    type: str
    mesh: str
    name: str

    def __str__(self) -> str:
        return f"{self.type}/{self.mesh}/{self.name}" if self.mesh else f"{self.type}/{self.name}"


def now() -> datetime:
    return datetime.now(UTC)


def format_time(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Resource:
    """One resource: identity, labels, a version for optimistic concurrency, and its spec.

    ``spec`` holds the type's own fields: for targetRef policies the content of their
    ``spec:`` key, for flat Kuma types (Mesh, Dataplane, ...) the fields beside type/name/mesh.
    """

    type: str
    name: str
    mesh: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    version: int = 0
    creation_time: datetime | None = None
    modification_time: datetime | None = None

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.type, self.mesh, self.name)

    @property
    def origin(self) -> str:
        """Where it was created: ``global``, ``zone``, or "" (a standalone control plane's)."""
        return self.labels.get(ORIGIN_LABEL, "")

    @property
    def display_name(self) -> str:
        """The name it was created with: a copy KDS renamed keeps it in its display-name label."""
        return self.labels.get(DISPLAY_NAME_LABEL) or self.name

    def copy(self) -> Resource:
        # Specs are JSON data (dicts, lists, scalars): copied by hand, ~5x faster than
        # copy.deepcopy, which matters as stores copy every resource they write (KDS: 10,000 at once).
        return Resource(
            type=self.type,
            name=self.name,
            mesh=self.mesh,
            spec=_copy_json(self.spec),
            labels=dict(self.labels),
            version=self.version,
            creation_time=self.creation_time,
            modification_time=self.modification_time,
        )

    # The storage record: a plain JSON-able dict every backend writes verbatim.
    def to_record(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "mesh": self.mesh,
            "spec": self.spec,
            "labels": self.labels,
            "version": self.version,
            "creationTime": format_time(self.creation_time),
            "modificationTime": format_time(self.modification_time),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Resource:
        return cls(
            type=record["type"],
            name=record["name"],
            mesh=record.get("mesh") or "",
            spec=record.get("spec") or {},
            labels=record.get("labels") or {},
            version=int(record.get("version") or 0),
            creation_time=parse_time(record.get("creationTime")),
            modification_time=parse_time(record.get("modificationTime")),
        )


_ATOMIC = frozenset({str, int, float, bool, type(None)})


def _copy_json(value: Any) -> Any:
    # Leaves are returned without a call: most values in a spec are leaves.
    kind = type(value)
    if kind is dict:
        return {k: v if type(v) in _ATOMIC else _copy_json(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _ATOMIC else _copy_json(v) for v in value]
    if kind in _ATOMIC:
        return value
    return copy.deepcopy(value)  # anything else (not JSON): be safe
