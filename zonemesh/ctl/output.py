"""Pure formatting: tables, ages, YAML/JSON, resource descriptions. No I/O, no HTTP.

Tables follow kumactl: MESH (mesh-scoped types), NAME, a few columns that say the most about
the type, then AGE. The extra columns are chosen from the registry's descriptor (policies get
TARGETREF) or, for the handful of types with a telling field, by type name below.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from zonemesh.shared.resources.codec import dump_yaml
from zonemesh.shared.resources.registry import ResourceType, Scope

Doc = Mapping[str, Any]
NONE = "-"  # a cell with nothing to show


# -- plain text helpers --------------------------------------------------------------------


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by three spaces, like kumactl/kubectl."""
    table = [list(headers), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = ["   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in table]
    return "\n".join(lines)


def format_age(created: str | None, now: datetime) -> str:
    """kubectl-style age of an RFC 3339 timestamp: 42s, 5m, 3h, 12d, 2y."""
    if not created:
        return NONE
    try:
        then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return NONE
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size, limit in (("s", 1, 120), ("m", 60, 120), ("h", 3600, 48), ("d", 86400, 730)):
        if seconds < size * limit:
            return f"{seconds // size}{unit}"
    return f"{seconds // (365 * 86400)}y"


def describe(type_name: str, name: str | None, mesh: str | None = None) -> str:
    """``MeshTimeout "x" in mesh "default"`` / ``Zone "zone-1"``: how messages name a resource."""
    text = f'{type_name} "{name}"' if name else type_name
    return f'{text} in mesh "{mesh}"' if mesh else text


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False)


def to_yaml(docs: Sequence[Doc]) -> str:
    """Universal documents as multi-document YAML (re-appliable with ``zmctl apply -f -``)."""
    return dump_yaml([dict(d) for d in docs]).rstrip("\n") if docs else ""


def format_tags(tags: Mapping[str, Any] | None) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted((tags or {}).items()))


def format_target_ref(ref: Any) -> str:
    """``Mesh``, ``MeshService/backend``, ``MeshSubset version=v1``, ``Mesh proxyTypes=Gateway``."""
    if not isinstance(ref, Mapping) or not ref.get("kind"):
        return NONE
    text = str(ref["kind"])
    if ref.get("name"):
        text += f"/{ref['name']}"
    if ref.get("tags"):
        text += f" {format_tags(ref['tags'])}"
    if ref.get("proxyTypes"):
        text += f" proxyTypes={','.join(map(str, ref['proxyTypes']))}"
    return text


# -- connection status ---------------------------------------------------------------------


def connection_status(insight: Doc | None) -> tuple[str, str]:
    """(status, last connect time) from an insight's KDS/xDS ``subscriptions`` (Kuma's shape).

    Online means the latest subscription has not been disconnected; no insight at all means
    the control plane did not report one, so the status is unknown rather than offline.
    """
    if insight is None:
        return NONE, NONE
    subscriptions = [s for s in insight.get("subscriptions") or [] if isinstance(s, Mapping)]
    if not subscriptions:
        return "Offline", NONE
    last = subscriptions[-1]
    return ("Offline" if last.get("disconnectTime") else "Online"), str(last.get("connectTime") or NONE)


# -- resource tables -----------------------------------------------------------------------


@dataclass
class TableContext:
    """What a table needs besides the documents: the time, and insights fetched alongside."""

    now: datetime
    zone_insights: Mapping[str, Doc] | None = None  # by zone name; None: not available

    def zone_status(self, name: str) -> str:
        if self.zone_insights is None:
            return NONE
        insight = self.zone_insights.get(name, {})
        # Global's own verdict (heartbeat-based, from /zones+insights) beats reading subscriptions.
        state = insight.get("state")
        return str(state) if state else connection_status(insight)[0]


Cell = Callable[[Doc, TableContext], str]


@dataclass(frozen=True)
class Column:
    header: str
    cell: Cell


def _networking(doc: Doc) -> Doc:
    value = doc.get("networking")
    return value if isinstance(value, Mapping) else {}


def dataplane_tags(doc: Doc) -> str:
    """The tags of every inbound (and of a gateway), deduplicated: what identifies a proxy."""
    networking = _networking(doc)
    merged: dict[str, set[str]] = {}
    groups = [i.get("tags") for i in networking.get("inbound") or [] if isinstance(i, Mapping)]
    gateway = networking.get("gateway")
    if isinstance(gateway, Mapping):
        groups.append(gateway.get("tags"))
    for tags in groups:
        for key, value in (tags or {}).items():
            merged.setdefault(key, set()).add(str(value))
    return " ".join(f"{k}={','.join(sorted(v))}" for k, v in sorted(merged.items())) or NONE


def dataplane_kind(doc: Doc) -> str:
    """``sidecar``, or ``gateway:builtin`` / ``gateway:delegated`` (seed 004): gateways stand out."""
    gateway = _networking(doc).get("gateway")
    if not isinstance(gateway, Mapping):
        return "sidecar"
    return f"gateway:{str(gateway.get('type') or 'DELEGATED').lower()}"


def gateway_listeners(doc: Doc) -> str:
    """A MeshGateway's listeners: ``HTTP:8080/foo.example.com TCP:9090`` (crossMesh marked)."""
    parts = []
    for listener in (doc.get("conf") or {}).get("listeners") or []:
        text = f"{listener.get('protocol')}:{listener.get('port')}"
        if listener.get("hostname") not in (None, "", "*"):
            text += f"/{listener['hostname']}"
        if listener.get("crossMesh"):
            text += "(cross-mesh)"
        parts.append(text)
    return " ".join(parts) or NONE


def mesh_mtls(doc: Doc) -> str:
    """``builtin/ca-1`` for the enabled backend, ``off`` without mTLS."""
    mtls = doc.get("mtls") or {}
    enabled = mtls.get("enabledBackend")
    if not enabled:
        return "off"
    backend: Doc = next((b for b in mtls.get("backends") or [] if b.get("name") == enabled), {})
    return f"{backend.get('type', '?')}/{enabled}"


def _field(*path: str) -> Cell:
    def cell(doc: Doc, ctx: TableContext) -> str:
        value: Any = doc
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        return NONE if value is None or value == "" else str(value)

    return cell


# Columns telling the most about a type, beyond MESH/NAME/AGE. Keyed by type name because
# they read that type's own fields; a type not listed here still gets the generic table.
_TYPE_COLUMNS: dict[str, list[Column]] = {
    "Mesh": [Column("MTLS", lambda d, c: mesh_mtls(d))],
    "Dataplane": [
        Column("TAGS", lambda d, c: dataplane_tags(d)),
        Column("ADDRESS", _field("networking", "address")),
        Column("KIND", lambda d, c: dataplane_kind(d)),
    ],
    "MeshGateway": [Column("LISTENERS", lambda d, c: gateway_listeners(d))],
    "Zone": [
        Column("ENABLED", lambda d, c: str(d.get("enabled", True)).lower()),
        Column("STATUS", lambda d, c: c.zone_status(str(d.get("name")))),
    ],
    "ZoneIngress": [
        Column("ZONE", _field("zone")),
        Column("ADDRESS", lambda d, c: _host_port(_networking(d), "address", "port")),
        Column("ADVERTISED", lambda d, c: _host_port(_networking(d), "advertisedAddress", "advertisedPort")),
    ],
    "ZoneEgress": [
        Column("ZONE", _field("zone")),
        Column("ADDRESS", lambda d, c: _host_port(_networking(d), "address", "port")),
    ],
    "ExternalService": [
        Column("ADDRESS", _field("networking", "address")),
        Column("TAGS", lambda d, c: format_tags(d.get("tags")) or NONE),
    ],
}
_POLICY_COLUMNS = [Column("TARGETREF", lambda d, c: format_target_ref((d.get("spec") or {}).get("targetRef")))]


def _host_port(networking: Doc, host_key: str, port_key: str) -> str:
    host, port = networking.get(host_key), networking.get(port_key)
    if not host:
        return NONE
    return f"{host}:{port}" if port else str(host)


def columns_for(rtype: ResourceType) -> list[Column]:
    columns = []
    if rtype.scope is Scope.MESH:
        columns.append(Column("MESH", _field("mesh")))
    columns.append(Column("NAME", _field("name")))
    columns += _POLICY_COLUMNS if rtype.policy else _TYPE_COLUMNS.get(rtype.name, [])
    columns.append(Column("AGE", lambda d, c: format_age(d.get("creationTime"), c.now)))
    return columns


def resource_table(rtype: ResourceType, docs: Iterable[Doc], ctx: TableContext) -> str:
    columns = columns_for(rtype)
    return render_table([c.header for c in columns], ([c.cell(d, ctx) for c in columns] for d in docs))


# -- inspect -------------------------------------------------------------------------------


@dataclass
class MeshSummary:
    name: str
    mtls: str
    dataplanes: int
    policies: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mtls": self.mtls, "dataplanes": self.dataplanes, "policies": self.policies}


def mesh_summary_table(summaries: Iterable[MeshSummary]) -> str:
    rows = [
        [
            s.name,
            s.mtls,
            str(s.dataplanes),
            ", ".join(f"{t}={n}" for t, n in sorted(s.policies.items()) if n) or NONE,
        ]
        for s in summaries
    ]
    return render_table(["NAME", "MTLS", "DATAPLANES", "POLICIES"], rows)


def dataplane_overview(item: Doc) -> tuple[Doc, Doc | None]:
    """Split an item of ``dataplanes+insights`` (``{dataplane, dataplaneInsight}``) or of a plain
    dataplane list (the flat Dataplane itself, no insight) into (dataplane, insight)."""
    dataplane = item.get("dataplane")
    if isinstance(dataplane, Mapping):
        insight = item.get("dataplaneInsight")
        return {**item, **dataplane}, insight if isinstance(insight, Mapping) else {}
    return item, None
