"""Private keys are not served to the network (issue 15, finding 3), over a real control plane process.

"From the network" is real, without leaving the host: the client connects FROM one of this
host's non-loopback addresses TO the API on 127.0.0.1 (``zonemesh.testing.non_loopback_address``),
so the control plane sees a peer that is not on loopback, exactly as a client on the network
(X-Forwarded-For is not trusted, so it cannot be faked with a header). Traffic only ever goes
to 127.0.0.1. The resources are written from loopback (the admin, as an operator on the host).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from zonemesh.zone_cp.xds.testing import self_signed_server_cert

from zonemesh.spawn import python_module
from zonemesh.testing import ControlPlaneProcess, http, non_loopback_address, sidecar_dataplane, wait_until, zmctl_ok

pytestmark = pytest.mark.slow

CERT, KEY = self_signed_server_cert("client.example")
GATEWAY_CERT, GATEWAY_KEY = self_signed_server_cert("secure.example.com")
KEYS = (KEY, GATEWAY_KEY)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def leaks(body: Any) -> bool:
    text = body if isinstance(body, str) else json.dumps(body)
    return "PRIVATE KEY" in text or any(k.decode() in text or b64(k) in text for k in KEYS)


@dataclass
class Env:
    cp: ControlPlaneProcess
    source: str  # a non-loopback address of this host, to connect from
    admin_token: str

    def remote(self, path: str, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return http("GET", self.cp.api + path, headers=headers, source=self.source)

    def put(self, path: str, doc: dict[str, Any]) -> None:
        status, body = self.cp.put(path, doc)
        assert status in (200, 201), body


def external_service(name: str, tls: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "ExternalService",
        "mesh": "default",
        "name": name,
        "tags": {"kuma.io/service": name, "kuma.io/protocol": "http"},
        "networking": {"address": "127.0.0.1:9443", "tls": {"enabled": True, **tls}},
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    source = non_loopback_address()
    if source is None:
        pytest.skip("this host has no non-loopback IPv4 address to connect from")
    cp = ControlPlaneProcess(tmp_path_factory.mktemp("cp"), args=["--mode", "standalone", "--store", "memory"])
    cp.start(timeout=30)
    try:
        status, secret = cp.get("/global-secrets/admin-user-token")
        assert status == 200, secret
        env = Env(cp, source, base64.b64decode(secret["data"]).decode())
        env.put(
            "/meshes/default",
            {
                "type": "Mesh",
                "name": "default",
                "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]},
            },
        )
        env.put(
            "/meshes/default/secrets/ext-key",
            {"type": "Secret", "mesh": "default", "name": "ext-key", "data": b64(KEY)},
        )
        env.put(
            "/meshes/default/secrets/ext-cert",
            {"type": "Secret", "mesh": "default", "name": "ext-cert", "data": b64(CERT)},
        )
        inline = {"clientCert": {"inlineString": CERT.decode()}, "clientKey": {"inline": b64(KEY)}}
        env.put("/meshes/default/externalservices/ext-inline", external_service("ext-inline", inline))
        refs = {"clientCert": {"secret": "ext-cert"}, "clientKey": {"secret": "ext-key"}}
        env.put("/meshes/default/externalservices/ext-secret", external_service("ext-secret", refs))
        gateway = {
            "type": "MeshGateway",
            "mesh": "default",
            "name": "edge",
            "selectors": [{"match": {"kuma.io/service": "edge"}}],
            "conf": {
                "listeners": [
                    {
                        "port": 8443,
                        "protocol": "HTTPS",
                        "tls": {"certificates": [{"inlineString": (GATEWAY_CERT + GATEWAY_KEY).decode()}]},
                    }
                ]
            },
        }
        env.put("/meshes/default/meshgateways/edge", gateway)
        web = sidecar_dataplane("web", 8080, 8081, outbound=[("ext-inline", 10001), ("ext-secret", 10002)])
        env.put("/meshes/default/dataplanes/web-1", {**web, "mesh": "default", "name": "web-1"})
        edge = {"type": "Dataplane", "mesh": "default", "name": "edge-1"}
        edge["networking"] = {
            "address": "127.0.0.1",
            "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "edge"}},
        }
        env.put("/meshes/default/dataplanes/edge-1", edge)
        egress = {"type": "ZoneEgress", "name": "egress-1", "networking": {"address": "127.0.0.1", "port": 10010}}
        env.put("/zoneegresses/egress-1", egress)
        # The xDS side sees the Dataplanes (its watch) before their config can be asked for (503 until then).
        for name in ("web-1", "edge-1"):
            path = f"/meshes/default/dataplanes/{name}/_config"
            wait_until(lambda path=path: cp.get(path)[0] != 503, 30, what=f"{name} known to the xDS server")
        yield env
    except BaseException:
        print(cp.logs()[-6000:])
        raise
    finally:
        cp.kill()


SECRET_READS = [
    "/meshes/default/secrets/ext-key",
    "/meshes/default/secrets",
    "/secrets",
    "/global-secrets",
    "/global-secrets/admin-user-token",
]
CONFIG_DUMPS = [
    "/meshes/default/dataplanes/web-1/_config",
    "/meshes/default/dataplanes/edge-1/_config",
    "/zoneegresses/egress-1/_config",
    "/zoneingresses/nobody/_config",
]


@pytest.mark.parametrize("path", SECRET_READS + CONFIG_DUMPS)
def test_without_a_token_secret_reads_and_config_dumps_are_refused(env: Env, path: str) -> None:
    status, body = env.remote(path)
    assert status == 401, body
    assert not leaks(body)


@pytest.mark.parametrize("path", SECRET_READS + CONFIG_DUMPS)
def test_a_token_that_is_not_valid_is_refused_too(env: Env, path: str) -> None:
    assert env.remote(path, token=env.admin_token[:-4] + "AAAA")[0] == 401


@pytest.mark.parametrize("path", CONFIG_DUMPS[:3])
def test_with_the_admin_token_a_config_dump_is_served_with_every_key_redacted(env: Env, path: str) -> None:
    status, body = env.remote(path, token=env.admin_token)
    assert status == 200, body
    assert not leaks(body)
    text = json.dumps(body)
    assert "<redacted>" in text  # there were keys, and they were replaced
    if path.endswith("web-1/_config") or path.startswith("/zoneegresses"):
        # ExternalService certificates and keys come over SDS, named by mesh and service.
        names = {s["name"] for s in body["xds"]["secrets"]}
        assert {"external_cert:secret:default:ext-inline", "external_cert:secret:default:ext-secret"} <= names


def test_with_the_admin_token_a_secret_read_is_served(env: Env) -> None:
    status, body = env.remote("/meshes/default/secrets/ext-key", token=env.admin_token)
    assert status == 200 and base64.b64decode(body["data"]) == KEY


@pytest.mark.parametrize(
    "path",
    [
        "/meshes/default/externalservices/ext-inline",
        "/meshes/default/externalservices",
        "/externalservices",
        "/meshes/default/meshgateways/edge",
        "/meshes/default/meshgateways",
        "/meshgateways",
    ],
)
def test_resource_reads_never_show_an_inline_key_with_or_without_a_token(env: Env, path: str) -> None:
    for token in (None, env.admin_token):
        status, body = env.remote(path, token=token)
        assert status == 200, body
        assert not leaks(body)
        assert "<redacted sha256:" in json.dumps(body)


def test_zmctl_get_output_applied_back_keeps_the_keys(env: Env) -> None:
    before = env.cp.get("/meshes/default/externalservices/ext-inline")[1]
    marker = before["networking"]["tls"]["clientKey"]["inlineString"]
    assert re.fullmatch(r"<redacted sha256:[0-9a-f]{16}>", marker)
    for kind, name in (("externalservice", "ext-inline"), ("meshgateway", "edge")):
        shown = zmctl_ok(env.cp.api, "get", kind, name, "-m", "default", "-o", "yaml")
        assert not leaks(shown)
        applied = subprocess.run(
            python_module("zonemesh.ctl.main", "--cp-address", env.cp.api, "apply", "-f", "-"),
            input=shown,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert applied.returncode == 0, applied.stderr
    after = env.cp.get("/meshes/default/externalservices/ext-inline")[1]
    assert after["version"] == before["version"] + 1  # written again...
    assert after["networking"]["tls"]["clientKey"]["inlineString"] == marker  # ...with the very same key
    # and the proxy's config still carries a key for it (redacted in the dump, but there).
    status, body = env.remote("/meshes/default/dataplanes/web-1/_config", token=env.admin_token)
    assert status == 200, body
    (cert,) = [s for s in body["xds"]["secrets"] if s["name"] == "external_cert:secret:default:ext-inline"]
    assert cert["tlsCertificate"]["privateKey"] == {"inlineBytes": "<redacted>"}
