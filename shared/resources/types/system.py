"""System types: secrets, zones and insights."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import ZONE_NAME, Bool, FieldError, Int, List, Obj, Str
from zonemesh.shared.resources.types.common import InsightSpec

if TYPE_CHECKING:
    from zonemesh.shared.store import Store

_SECRET_SPEC = Obj({"data": Str()}, required=("data",))


def _check_base64(res: Resource) -> list[FieldError]:
    try:
        base64.b64decode(res.spec.get("data", ""), validate=True)
    except (binascii.Error, ValueError):
        return [FieldError("data", "must be base64-encoded")]
    return []


async def _check_ca_secret(res: Resource, stored: Resource | None, store: Store) -> list[FieldError]:
    """A Secret a mesh CA in use reads may not change (shared/ca/checks.py)."""
    from zonemesh.shared.ca.checks import check_secret_write  # the CA code reads this module's types

    return await check_secret_write(res, stored, store)


async def _check_ca_secret_delete(res: Resource, store: Store) -> list[FieldError]:
    """A Secret a mesh's CA backend reads may not be deleted (shared/ca/checks.py)."""
    from zonemesh.shared.ca.checks import check_secret_delete

    return await check_secret_delete(res, store)


SECRET = register(
    ResourceType(
        name="Secret",
        plural="secrets",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES,
        spec=_SECRET_SPEC,
        semantic=_check_base64,
        sensitive=True,
        store_check=_check_ca_secret,
        delete_check=_check_ca_secret_delete,
    )
)

GLOBAL_SECRET = register(
    ResourceType(
        name="GlobalSecret",
        plural="globalsecrets",
        path_aliases=("global-secrets",),  # Kuma's alternative path, and the one zonemesh served first
        scope=Scope.GLOBAL,
        sync=Sync.LOCAL,
        spec=_SECRET_SPEC,
        semantic=_check_base64,
        sensitive=True,
    )
)

ZONE = register(
    ResourceType(
        name="Zone",
        plural="zones",
        insight="ZoneInsight",
        scope=Scope.GLOBAL,
        sync=Sync.LOCAL,
        spec=Obj({"enabled": Bool()}),
        name_rule=ZONE_NAME,  # the name a zone control plane connects with (KDS client-id)
    )
)

# Insights are written by the control planes; their spec is whatever the writer records.
_INSIGHT = InsightSpec()

ZONE_INSIGHT = register(
    ResourceType(
        name="ZoneInsight",
        plural="zoneinsights",
        rest_path="zone-insights",
        scope=Scope.GLOBAL,
        sync=Sync.LOCAL,
        system=True,
        spec=_INSIGHT,
    )
)

DATAPLANE_INSIGHT = register(
    ResourceType(
        name="DataplaneInsight",
        plural="dataplaneinsights",
        rest_path="dataplane-insights",
        scope=Scope.MESH,
        sync=Sync.ZONE_TO_GLOBAL,
        system=True,
        spec=_INSIGHT,
    )
)

# What a zone needs to check zone tokens issued by global, and nothing more: global derives it
# from its zone-token signing keys (public halves only) and revocation list whenever they change
# (shared/tokens/zone.py `publish_trust`), and KDS carries it to every zone like any other type.
ZONE_TOKEN_TRUST = register(
    ResourceType(
        name="ZoneTokenTrust",
        plural="zonetokentrusts",
        rest_path="zone-token-trusts",
        scope=Scope.GLOBAL,
        sync=Sync.GLOBAL_TO_ZONES,
        system=True,
        spec=Obj(
            {
                "publicKeys": List(Obj({"kid": Int(), "key": Str()}, required=("kid", "key"))),
                "revoked": List(Str()),
            }
        ),
    )
)

# What a zone needs to check the dataplane tokens global issues for one mesh, and nothing more:
# global derives it from its mesh's global signing keys (public halves only, by kid) whenever they
# change (shared/tokens/dataplane.py `publish_trust`); the private keys never leave global.
DATAPLANE_TOKEN_TRUST = register(
    ResourceType(
        name="DataplaneTokenTrust",
        plural="dataplanetokentrusts",
        rest_path="dataplane-token-trusts",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES,
        system=True,
        spec=Obj({"publicKeys": List(Obj({"kid": Int(), "key": Str()}, required=("kid", "key")))}),
    )
)
