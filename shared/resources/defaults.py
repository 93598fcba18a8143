"""The default policies created with every mesh (seed 002, "Skipping default resource creation").

The specs are exactly the seed's; `skipCreatingInitialPolicies` on the Mesh lists names
to skip, or `*` for all of them.
"""

from __future__ import annotations

import copy
from typing import Any

from zonemesh.shared.resources.model import Resource

_DEFAULTS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "MeshTimeout",
        "mesh-gateways-timeout-all-default",
        {
            "targetRef": {"kind": "Mesh", "proxyTypes": ["Gateway"]},
            "to": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {"idleTimeout": "1h", "http": {"streamIdleTimeout": "5s"}},
                }
            ],
            "from": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {
                        "idleTimeout": "5m",
                        "http": {"streamIdleTimeout": "5s", "requestHeadersTimeout": "500ms"},
                    },
                }
            ],
        },
    ),
    (
        "MeshTimeout",
        "mesh-timeout-all-default",
        {
            "targetRef": {"kind": "Mesh", "proxyTypes": ["Sidecar"]},
            "to": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {
                        "connectionTimeout": "5s",
                        "idleTimeout": "1h",
                        "http": {"requestTimeout": "15s", "streamIdleTimeout": "30m"},
                    },
                }
            ],
            "from": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {
                        "connectionTimeout": "10s",
                        "idleTimeout": "2h",
                        "http": {"requestTimeout": "0s", "streamIdleTimeout": "1h", "maxStreamDuration": "0s"},
                    },
                }
            ],
        },
    ),
    (
        "MeshRetry",
        "mesh-retry-all-default",
        {
            "targetRef": {"kind": "Mesh"},
            "to": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {
                        "tcp": {"maxConnectAttempt": 5},
                        "http": {
                            "numRetries": 5,
                            "perTryTimeout": "16s",
                            "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"},
                        },
                        "grpc": {
                            "numRetries": 5,
                            "perTryTimeout": "16s",
                            "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"},
                        },
                    },
                }
            ],
        },
    ),
    (
        "MeshCircuitBreaker",
        "mesh-circuit-breaker-all-default",
        {
            "targetRef": {"kind": "Mesh"},
            "to": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {
                        "connectionLimits": {
                            "maxConnections": 1024,
                            "maxPendingRequests": 1024,
                            "maxRetries": 3,
                            "maxRequests": 1024,
                        }
                    },
                }
            ],
        },
    ),
]

DEFAULT_POLICY_NAMES = tuple(name for _, name, _ in _DEFAULTS)


def default_policies(mesh: str) -> list[Resource]:
    return [Resource(type=t, name=name, mesh=mesh, spec=copy.deepcopy(spec)) for t, name, spec in _DEFAULTS]
