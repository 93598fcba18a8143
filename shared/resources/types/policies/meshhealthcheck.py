"""MeshHealthCheck: active health checks of the destinations (`to`) a proxy sends to."""

from zonemesh.shared.resources.registry import PolicySupport, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import Bool, Duration, Int, List, Obj, Str, at_least_one
from zonemesh.shared.resources.types.policies.common import (
    HEADERS_ADD_SET,
    HTTP_STATUS,
    PERCENTAGE,
    not_empty,
    policy_semantic,
)
from zonemesh.shared.resources.types.targetref import (
    MESH,
    MESH_SERVICE,
    TOP_KINDS,
    policy_spec,
)

CONF = Obj(
    {
        "interval": Duration(positive=True),
        "timeout": Duration(positive=True),
        "unhealthyThreshold": Int(min=1),
        "healthyThreshold": Int(min=1),
        "initialJitter": Duration(positive=True),
        "intervalJitter": Duration(positive=True),
        "intervalJitterPercent": Int(min=0, max=100),
        "healthyPanicThreshold": PERCENTAGE,
        "failTrafficOnPanic": Bool(),
        "noTrafficInterval": Duration(positive=True),
        "eventLogPath": Str(min_len=1),
        "alwaysLogHealthCheckFailures": Bool(),
        "reuseConnection": Bool(),
        # send/receive are base64 payloads; Envoy decodes them.
        "tcp": Obj({"disabled": Bool(), "send": Str(), "receive": List(Str())}),
        "http": Obj(
            {
                "disabled": Bool(),
                "path": Str(min_len=1),
                "expectedStatuses": List(HTTP_STATUS),
                "requestHeadersToAdd": HEADERS_ADD_SET,
            }
        ),
        "grpc": Obj({"disabled": Bool(), "serviceName": Str(), "authority": Str()}),
    },
    checks=(at_least_one("http", "tcp", "grpc"),),
)

MESH_HEALTH_CHECK = register(
    ResourceType(
        name="MeshHealthCheck",
        plural="meshhealthchecks",
        short_name="mhc",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES | Sync.ZONE_TO_GLOBAL,
        wrapped=True,
        policy=True,
        support=PolicySupport(plugin="meshhealthcheck", sidecar=("to",), gateway=("to",)),
        spec=policy_spec(
            top=TOP_KINDS,
            to=(MESH, MESH_SERVICE),
            conf=CONF,
        ),
        semantic=policy_semantic(not_empty("to")),
    )
)
