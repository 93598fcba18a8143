"""License types: written by control planes only (system), carried by KDS like any other type.

- License ``default`` (global → zones): the license in force as global sees it (allowed, expiry,
  demo, strict, aggregate active count, warnings) and the first start time of global (the demo
  license runs 30 days from it).
- LicenseQuota ``<zone>`` (global → zones): the proxy slots global granted that zone (strict mode).
- LicenseQuotaRequest ``request`` (zone → global, stored at global as ``<zone>.request``): how many
  slots the zone wants, with a sequence number the grant answers. See docs/license.md.
"""

from __future__ import annotations

from zonemesh.shared.resources.registry import ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import AnyValue, Int, Map, Obj, Str
from zonemesh.shared.resources.types.common import zone_field

_SYSTEM = Map(AnyValue())

LICENSE = register(
    ResourceType(
        name="License",
        plural="licenses",
        scope=Scope.GLOBAL,
        sync=Sync.GLOBAL_TO_ZONES,
        system=True,
        spec=_SYSTEM,
    )
)

LICENSE_QUOTA = register(
    ResourceType(
        name="LicenseQuota",
        plural="licensequotas",
        rest_path="license-quotas",
        scope=Scope.GLOBAL,
        sync=Sync.GLOBAL_TO_ZONES,
        system=True,
        spec=_SYSTEM,
    )
)

# The name of a zone's one request (stored at global as ``<zone>.request``).
QUOTA_REQUEST_NAME = "request"

# What zone_cp/license.py writes; global grants from ``want`` and ``seq`` (capped: global_cp/license.py).
_REQUEST = Obj(
    {"zone": Str(), "want": Int(min=0), "seq": Int(min=0), "used": Int(min=0)},
    required=("want", "seq"),
)

LICENSE_QUOTA_REQUEST = register(
    ResourceType(
        name="LicenseQuotaRequest",
        plural="licensequotarequests",
        rest_path="license-quota-requests",
        scope=Scope.GLOBAL,
        sync=Sync.ZONE_TO_GLOBAL,
        system=True,
        spec=_REQUEST,
        zone_refs=lambda res: zone_field(res.spec),
    )
)
