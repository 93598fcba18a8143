"""ExternalService: a service outside the mesh (host:port), reachable by name from inside
it, optionally over TLS originated by the proxy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zonemesh.shared.resources.registry import ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import Bool, Enum, Errors, List, Obj, Str, join
from zonemesh.shared.resources.types.common import SERVICE_TAG, HostPort, Tags, split_host_port
from zonemesh.shared.resources.types.datasource import DATA_SOURCE, KEY_SOURCE


def _client_cert_with_key(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    """A client certificate is useless without its key, and the other way round."""
    has_cert, has_key = value.get("clientCert") is not None, value.get("clientKey") is not None
    if has_cert != has_key:
        missing = "clientKey" if has_cert else "clientCert"
        errors.add(f"{path}.{missing}", "clientCert and clientKey have to be defined together")


TLS = Obj(
    {
        "enabled": Bool(),
        "allowRenegotiation": Bool(),
        "serverName": Str(min_len=1),
        "caCert": DATA_SOURCE,
        "clientCert": DATA_SOURCE,
        "clientKey": KEY_SOURCE,
        "verification": Obj(
            {
                "mode": Enum("Secured", "SkipSAN", "SkipCA", "SkipAll"),
                "serverName": Str(min_len=1),
                "subjectAltNames": List(
                    Obj({"type": Enum("Exact", "Prefix"), "value": Str(min_len=1)}, required=("value",))
                ),
            }
        ),
    },
    checks=(_client_cert_with_key,),
)


def _service_is_not_the_host(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    """The service name becomes a mesh DNS name: equal to the real host, it would shadow it."""
    tags, networking = value.get("tags"), value.get("networking")
    if not isinstance(tags, Mapping) or not isinstance(networking, Mapping):
        return
    address = networking.get("address")
    try:
        host, _ = split_host_port(address) if isinstance(address, str) else ("", 0)
    except ValueError:
        return  # HostPort already reported it
    if host and tags.get(SERVICE_TAG) == host:
        errors.add(join(path, f'tags["{SERVICE_TAG}"]'), "cannot be the same as the host of networking.address")


EXTERNAL_SERVICE_SPEC = Obj(
    {
        "networking": Obj(
            {"address": HostPort(), "tls": TLS, "disableHostDNSLookup": Bool()},
            required=("address",),
        ),
        "tags": Tags(require_service=True),
    },
    required=("networking", "tags"),
    checks=(_service_is_not_the_host,),
)

EXTERNAL_SERVICE = register(
    ResourceType(
        name="ExternalService",
        plural="externalservices",
        rest_path="external-services",  # Kuma's
        path_aliases=("externalservices",),  # the path zonemesh served first
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES,
        spec=EXTERNAL_SERVICE_SPEC,
    )
)
