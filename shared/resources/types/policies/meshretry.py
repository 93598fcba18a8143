"""MeshRetry: retries of outbound (`to`) TCP connections, HTTP requests and gRPC calls."""

import re
from collections.abc import Mapping
from typing import Any

from zonemesh.shared.resources.registry import PolicySupport, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import (
    Duration,
    Enum,
    Errors,
    Int,
    List,
    Map,
    Obj,
    Str,
    at_least_one,
)
from zonemesh.shared.resources.types.policies.common import (
    HEADER_MATCH,
    HEADER_NAME,
    backoff_order,
    blocks_not_empty,
    gateway_to_mesh_only,
    not_empty,
    policy_semantic,
)
from zonemesh.shared.resources.types.targetref import (
    MESH,
    MESH_HTTP_ROUTE,
    MESH_SERVICE,
    TOP_KINDS,
    policy_spec,
)

# Conditions Kuma names; any HTTP status code ("503") is accepted too. Kuma defines "5xx"
# but documents "5XX", so both spellings are taken.
HTTP_RETRY_ON = (
    "5xx",
    "5XX",
    "GatewayError",
    "Reset",
    "Retriable4xx",
    "ConnectFailure",
    "EnvoyRatelimited",
    "RefusedStream",
    "Http3PostConnectFailure",
    "HttpMethodConnect",
    "HttpMethodDelete",
    "HttpMethodGet",
    "HttpMethodHead",
    "HttpMethodOptions",
    "HttpMethodPatch",
    "HttpMethodPost",
    "HttpMethodPut",
    "HttpMethodTrace",
)
GRPC_RETRY_ON = ("Canceled", "DeadlineExceeded", "Internal", "ResourceExhausted", "Unavailable")

BACK_OFF = Obj(
    {"baseInterval": Duration(positive=True), "maxInterval": Duration(positive=True)},
    checks=(at_least_one("baseInterval", "maxInterval"), backoff_order),
)

RATE_LIMITED_BACK_OFF = Obj(
    {
        "maxInterval": Duration(positive=True),
        "resetHeaders": List(
            Obj({"name": HEADER_NAME, "format": Enum("Seconds", "UnixTimestamp")}, required=("name", "format")),
            min_items=1,
        ),
    },
    required=("resetHeaders",),
)


def _http_retry_on(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    items = value.get("retryOn")
    if not isinstance(items, list):
        return
    for i, item in enumerate(items):
        if not isinstance(item, str) or item in HTTP_RETRY_ON:
            continue
        if not (re.fullmatch(r"[0-9]{3}", item) and 100 <= int(item) <= 599):
            errors.add(
                f"{path}.retryOn[{i}]",
                f"unknown item {item!r}; use one of {', '.join(HTTP_RETRY_ON)} or an HTTP status code",
            )


def _host_selection(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    predicates = value.get("hostSelection")
    if not isinstance(predicates, list):
        return
    seen_priorities = False
    for i, predicate in enumerate(predicates):
        if not isinstance(predicate, Mapping):
            continue
        kind = predicate.get("predicate")
        if kind == "OmitHostsWithTags" and not predicate.get("tags"):
            errors.add(f"{path}.hostSelection[{i}].tags", "must be defined with predicate OmitHostsWithTags")
        if kind == "OmitPreviousPriorities":
            if seen_priorities:
                errors.add(f"{path}.hostSelection[{i}].predicate", "OmitPreviousPriorities must only be specified once")
            seen_priorities = True
        elif predicate.get("updateFrequency") is not None:
            errors.add(
                f"{path}.hostSelection[{i}].updateFrequency", "can only be set with predicate OmitPreviousPriorities"
            )


HTTP = Obj(
    {
        "numRetries": Int(min=0),
        "perTryTimeout": Duration(),
        "backOff": BACK_OFF,
        "rateLimitedBackOff": RATE_LIMITED_BACK_OFF,
        "retryOn": List(Str(min_len=1)),
        "retriableResponseHeaders": List(HEADER_MATCH),
        "retriableRequestHeaders": List(HEADER_MATCH),
        "hostSelection": List(
            Obj(
                {
                    "predicate": Enum("OmitPreviousHosts", "OmitHostsWithTags", "OmitPreviousPriorities"),
                    "tags": Map(Str(min_len=1), key=Str(min_len=1)),
                    "updateFrequency": Int(min=1),
                },
                required=("predicate",),
            )
        ),
        "hostSelectionMaxAttempts": Int(min=0),
    },
    checks=(_http_retry_on, _host_selection),
)

GRPC = Obj(
    {
        "numRetries": Int(min=0),
        "perTryTimeout": Duration(),
        "backOff": BACK_OFF,
        "rateLimitedBackOff": RATE_LIMITED_BACK_OFF,
        "retryOn": List(Enum(*GRPC_RETRY_ON)),
    }
)

CONF = Obj(
    {
        "tcp": Obj({"maxConnectAttempt": Int(min=1)}, required=("maxConnectAttempt",)),
        "http": HTTP,
        "grpc": GRPC,
    },
    checks=(at_least_one("tcp", "http", "grpc"), blocks_not_empty("http", "grpc")),
)

MESH_RETRY = register(
    ResourceType(
        name="MeshRetry",
        plural="meshretries",
        short_name="mr",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES | Sync.ZONE_TO_GLOBAL,
        wrapped=True,
        policy=True,
        # With a top-level MeshHTTPRoute: that route's retry policy (generators/outbound.py).
        support=PolicySupport(plugin="meshretry", sidecar=("to",), gateway=("to",), per_route=("http", "grpc")),
        spec=policy_spec(
            top=(*TOP_KINDS, MESH_HTTP_ROUTE),
            to=(MESH, MESH_SERVICE),
            conf=CONF,
        ),
        semantic=policy_semantic(not_empty("to"), gateway_to_mesh_only),
    )
)
