"""MeshTimeout: connection, idle and HTTP timeouts, inbound (`from`) and outbound (`to`)."""

from zonemesh.shared.resources.registry import PolicySupport, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import Duration, Obj
from zonemesh.shared.resources.types.targetref import (
    MESH,
    MESH_HTTP_ROUTE,
    MESH_SERVICE,
    TOP_KINDS,
    policy_spec,
)

CONF = Obj(
    {
        "connectionTimeout": Duration(),
        "idleTimeout": Duration(),
        "http": Obj(
            {
                "requestTimeout": Duration(),
                "streamIdleTimeout": Duration(),
                "maxStreamDuration": Duration(),
                "maxConnectionDuration": Duration(),
                "requestHeadersTimeout": Duration(),
            }
        ),
    }
)

MESH_TIMEOUT = register(
    ResourceType(
        name="MeshTimeout",
        plural="meshtimeouts",
        short_name="mt",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES,
        wrapped=True,
        policy=True,
        support=PolicySupport(plugin="meshtimeout"),
        spec=policy_spec(
            top=(*TOP_KINDS, MESH_HTTP_ROUTE),
            to=(MESH, MESH_SERVICE),
            from_=(MESH,),
            conf=CONF,
        ),
    )
)
