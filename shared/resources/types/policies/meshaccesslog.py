"""MeshAccessLog: where proxies write access logs for outbound (`to`) and inbound (`from`)
traffic: a file, a TCP collector or an OpenTelemetry collector."""

from zonemesh.shared.resources.registry import NOT_SUPPORTED_YET, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import AnyValue, Bool, Enum, List, Obj, Str
from zonemesh.shared.resources.types.common import HostPort, exactly_one
from zonemesh.shared.resources.types.policies.common import (
    not_empty,
    policy_semantic,
    type_matches_field,
)
from zonemesh.shared.resources.types.targetref import (
    MESH,
    MESH_SERVICE,
    TOP_KINDS,
    policy_spec,
)

# Kuma 2.4+ writes `type: File` beside `file: {...}`; older documents omit it. Both are
# accepted, but a stated type must name the block that is actually given.
_FORMAT_FIELDS = {"Plain": "plain", "Json": "json"}

FORMAT = Obj(
    {
        "type": Enum(*_FORMAT_FIELDS),
        "plain": Str(min_len=1),
        "json": List(Obj({"key": Str(min_len=1), "value": Str(min_len=1)}, required=("key", "value")), min_items=1),
        "omitEmptyValues": Bool(),
    },
    checks=(exactly_one("plain", "json"), type_matches_field(_FORMAT_FIELDS)),
)

_BACKEND_FIELDS = {"Tcp": "tcp", "File": "file", "OpenTelemetry": "openTelemetry"}

BACKEND = Obj(
    {
        "type": Enum(*_BACKEND_FIELDS),
        "tcp": Obj({"address": HostPort(), "format": FORMAT}, required=("address",)),
        "file": Obj({"path": Str(min_len=1), "format": FORMAT}, required=("path",)),
        "openTelemetry": Obj(
            {
                "endpoint": HostPort(),
                "attributes": List(
                    Obj(
                        {
                            "key": Str(
                                pattern=r"[a-z](?:[a-z0-9]|[._][a-z0-9])*",
                                pattern_reason="must be a lower-case OpenTelemetry attribute name",
                            ),
                            "value": Str(),
                        },
                        required=("key", "value"),
                    )
                ),
                # An OTLP AnyValue, passed to the collector as the user wrote it.
                "body": AnyValue(),
            },
            required=("endpoint",),
        ),
    },
    checks=(exactly_one(*_BACKEND_FIELDS.values()), type_matches_field(_BACKEND_FIELDS)),
)

# `backends: []` turns logging off for traffic a less specific policy logs.
CONF = Obj({"backends": List(BACKEND)}, required=("backends",))

MESH_ACCESS_LOG = register(
    ResourceType(
        name="MeshAccessLog",
        plural="meshaccesslogs",
        short_name="mal",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES | Sync.ZONE_TO_GLOBAL,
        wrapped=True,
        policy=True,
        from_as_rules=True,  # Kuma's IsFromAsRules
        support=NOT_SUPPORTED_YET,
        spec=policy_spec(
            top=TOP_KINDS,
            to=(MESH, MESH_SERVICE),
            from_=(MESH,),
            conf=CONF,
        ),
        semantic=policy_semantic(not_empty("to", "from")),
    )
)
