"""What a KDS receiver refuses, resource by resource: global on upload, a zone on download.

Neither end trusts what the other sends more than an API client. A received resource passes the
checks an API document passes (``check_resource``: the name rule, a mesh exactly for mesh-scoped
types, labels, the type's schema and semantic checks), every field that names a zone
(``ResourceType.zone_refs``: a ZoneIngress's ``zone``, a ``kuma.io/zone`` tag...) names the zone the
resource comes from, and its origin and zone labels (either label set: zonemesh.io or kuma.io) say
no other owner than its sender (``labels.claimed_owner``: a zone's upload labelled as another zone's
or as global's; a resource from global labelled as a zone's, for a type not synced across zones).
Global adds what needs its store (the mesh exists, the name is not another owner's:
global_cp/kds_server.py).

A refused resource is named in the ACK (``Ack.rejected``, with the reason) and the rest of the
``Changes`` is applied; the sender retries only the refused ones (shared/kds/session.py).
"""

from __future__ import annotations

import json

from zonemesh.proto import kds_pb2
from zonemesh.shared.kds.codec import from_wire
from zonemesh.shared.resources.codec import check_resource
from zonemesh.shared.resources.labels import claimed_owner
from zonemesh.shared.resources.model import ORIGIN_GLOBAL, ORIGIN_ZONE, Resource
from zonemesh.shared.resources.registry import REGISTRY, Scope
from zonemesh.shared.resources.schema import Errors

# Kinds of refusal: the ``reason`` label of kds_upload_refused_total / kds_download_refused_total
# (a small fixed set, so that a flood of bad resources cannot blow up the metric's cardinality).
TYPE = "type"  # a type the receiver does not take from this peer, or not the message's type
INVALID = "invalid"  # fails validation as an API document would
MESH = "mesh"  # a mesh-scoped resource whose mesh does not exist at global
OWNERSHIP = "ownership"  # names another zone, or would overwrite what the receiver owns
# Refused resources logged one by one per message by the receiver (all are counted): a flood of
# bad resources does not flood the log.
LOG_REFUSED = 10


class Refused(Exception):
    """One received resource is not stored: ``kind`` (one of the kinds above) and ``reason``."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(reason)


def wire_key(wire: kds_pb2.Resource) -> kds_pb2.ResourceKey:
    return kds_pb2.ResourceKey(type=wire.type, mesh=wire.mesh, name=wire.name)


def rejection(key: kds_pb2.ResourceKey, refused: Refused) -> kds_pb2.Rejected:
    return kds_pb2.Rejected(key=key, reason=refused.reason)


def describe(errors: Errors) -> str:
    return "; ".join(f"{e.field}: {e.reason}" for e in errors)


def decode(wire: kds_pb2.Resource, expected_type: str) -> Resource:
    """The resource of an upsert, or Refused when it is not of the message's type or not JSON."""
    if wire.type != expected_type:
        raise Refused(TYPE, f"a {expected_type} message carries a {wire.type or 'resource without a type'}")
    try:
        return from_wire(wire)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
        reason = f"spec is not valid JSON: {exc}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise Refused(INVALID, reason) from None


def check_received(res: Resource, zone: str | None) -> None:
    """Raise Refused unless ``res`` is valid and its owner is its sender: ``zone`` (given) is the
    zone it comes from, and every zone it names is ``zone``; None: global's own resource."""
    errors = Errors()
    check_resource(res, errors)
    if errors:
        raise Refused(INVALID, describe(errors))
    claim = claimed_owner(res, ORIGIN_GLOBAL) if zone is None else claimed_owner(res, ORIGIN_ZONE, zone)
    if claim is not None:
        raise Refused(OWNERSHIP, claim)
    rtype = REGISTRY.get(res.type)
    if zone is None or rtype.zone_refs is None:
        return
    foreign = [f"{path} names zone {named!r}" for path, named in rtype.zone_refs(res) if named != zone]
    if foreign:
        raise Refused(OWNERSHIP, f"{'; '.join(foreign)}: a resource from zone {zone!r} may name only that zone")


def check_removal(key: kds_pb2.ResourceKey, expected_type: str) -> None:
    """A removal's key: of the message's type, with a mesh exactly when the type is mesh-scoped."""
    if key.type != expected_type:
        raise Refused(TYPE, f"a {expected_type} message removes a {key.type or 'resource without a type'}")
    mesh_scoped = REGISTRY.get(expected_type).scope is Scope.MESH
    if mesh_scoped != bool(key.mesh):
        where = "needs a mesh" if mesh_scoped else "is not mesh-scoped: no mesh"
        raise Refused(INVALID, f"mesh: {expected_type} {where}")
    if not key.name:
        raise Refused(INVALID, "name: must not be empty")
