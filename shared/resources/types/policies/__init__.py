"""One module per targetRef policy: its schema and its semantic checks.

Each module registers its type with the registry when imported; `common` holds the
pieces several policies share.
"""

from zonemesh.shared.resources.types.policies import (  # noqa: F401
    meshaccesslog,
    meshcircuitbreaker,
    meshfaultinjection,
    meshhealthcheck,
    meshhttproute,
    meshloadbalancingstrategy,
    meshpassthrough,
    meshproxypatch,
    meshratelimit,
    meshretry,
    meshtcproute,
    meshtimeout,
    meshtls,
    meshtrafficpermission,
)
