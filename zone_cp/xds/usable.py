"""Which stored resources config generation may use: those that pass validation.

The API and KDS validate what they write (``check_resource``, shared/kds/trust.py), so a stored
resource that fails got there some other way: written by an older version, by hand, by a bug. It
is left out of generation, logged (``xds_resource_ignored``) and counted (``xds_resource_ignored_total``)
once per version, instead of failing every round that reads it: one bad Dataplane must not stop
its mesh, nor another zone's bad ZoneIngress the cross-zone view of every mesh.

Names are not checked here: a proxy whose stored name breaks today's name rule still gets config.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from zonemesh.shared.resources.codec import check_resource
from zonemesh.shared.resources.model import Resource, ResourceKey
from zonemesh.shared.resources.registry import UnknownType
from zonemesh.shared.resources.schema import Errors
from zonemesh.zone_cp.xds.metrics import XDS_RESOURCES_IGNORED

log = structlog.get_logger(__name__)


def usable(res: Resource) -> bool:
    """Does ``res`` pass validation? If not, say so (log and metric) and return False."""
    errors = Errors()
    try:
        check_resource(res, errors, names=False)
    except UnknownType as exc:
        errors.add("type", str(exc))
    if not errors:
        return True
    XDS_RESOURCES_IGNORED.labels(res.type).inc()
    log.warning(
        "xds_resource_ignored",
        type=res.type,
        mesh=res.mesh,
        name=res.name,
        errors="; ".join(f"{e.field}: {e.reason}" for e in errors),
    )
    return False


class UsableFilter:
    """``usable`` over resources read again every round: only versions not seen before are
    validated (and a bad one is logged once). The reader says when a resource is gone (``forget``),
    so that verdicts are kept for what exists only."""

    def __init__(self) -> None:
        self._verdicts: dict[ResourceKey, tuple[int, bool]] = {}

    def passes(self, res: Resource) -> bool:
        seen = self._verdicts.get(res.key)
        if seen is not None and seen[0] == res.version and res.version:
            return seen[1]
        ok = usable(res)
        self._verdicts[res.key] = (res.version, ok)
        return ok

    def forget(self, key: ResourceKey) -> None:
        self._verdicts.pop(key, None)

    def __call__(self, type: str, resources: Iterable[Resource]) -> list[Resource]:
        return [res for res in resources if self.passes(res)]
