"""kumactl's commands in zmctl, as real processes against real control planes on 127.0.0.1: inspect
zones / zoneingresses / zoneegresses / services / meshgateway / <policy>, inspect dataplane --type,
export (and apply -f of its output on a fresh control plane), completion and version."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from zonemesh.shared.resources import REGISTRY
from zonemesh.zone_cp.xds.testing import self_signed_server_cert

from zonemesh.spawn import python_module
from zonemesh.testing import ControlPlaneProcess, free_port, http, sidecar_dataplane

pytestmark = pytest.mark.slow

WAIT = 60.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Run:
    code: int
    out: str
    err: str


def zmctl(api: str, home: Path, *args: str, stdin: str | None = None) -> Run:
    env = {**os.environ, "HOME": str(home), "ZMCTL_CONFIG": str(home / "zmctl.yaml")}
    proc = subprocess.run(
        python_module("zonemesh.ctl", "--cp-address", api, *args),
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(tmp_path_factory.mktemp("kumactl") / "cp", args=["--store", "memory"])
    try:
        process.start(timeout=WAIT)
        populate(process)
        yield process
    finally:
        process.kill()


def put(cp: ControlPlaneProcess, path: str, doc: dict[str, Any]) -> None:
    status, body = cp.put(path, doc)
    assert status in (200, 201), body


def populate(cp: ControlPlaneProcess) -> None:
    for name, service, extra in (("web-1", "web", {"version": "v2"}), ("web-2", "web", {}), ("api-1", "api", {})):
        doc = {"name": name, **sidecar_dataplane(service, free_port(), free_port(), mesh="default")}
        doc["networking"]["inbound"][0]["tags"].update(extra)
        put(cp, f"/meshes/default/dataplanes/{name}", doc)
    gateway = {"address": "127.0.0.1", "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "edge"}}}
    put(cp, "/meshes/default/dataplanes/gw-1", {"type": "Dataplane", "name": "gw-1", "networking": gateway})
    put(
        cp,
        "/meshes/default/meshgateways/edge",
        {
            "type": "MeshGateway",
            "name": "edge",
            "selectors": [{"match": {"kuma.io/service": "edge"}}],
            "conf": {"listeners": [{"port": 8080, "protocol": "HTTP"}]},
        },
    )
    put(
        cp,
        "/meshes/default/meshtimeouts/web-timeout",
        {
            "type": "MeshTimeout",
            "name": "web-timeout",
            "spec": {
                "targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/service": "web", "version": "v2"}},
                "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "3s"}}],
            },
        },
    )
    put(
        cp,
        REGISTRY.get("ExternalService").item_path("httpbin", "default"),
        {
            "type": "ExternalService",
            "name": "httpbin",
            "networking": {"address": "httpbin.org:443"},
            "tags": {"kuma.io/service": "httpbin", "kuma.io/protocol": "http"},
        },
    )


def table(text: str) -> list[list[str]]:
    """kumactl's tables: columns separated by two spaces or more."""
    import re

    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines() if line.strip()]


def test_inspect_dataplanes_has_kumactls_columns_and_filters(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    run = zmctl(cp.api, tmp_path, "inspect", "dataplanes", "-m", "default")
    assert run.code == 0, run.err
    rows = table(run.out)
    assert rows[0][:8] == [
        "MESH",
        "NAME",
        "TAGS",
        "STATUS",
        "LAST CONNECTED AGO",
        "LAST UPDATED AGO",
        "TOTAL UPDATES",
        "TOTAL ERRORS",
    ]
    assert rows[0][-3:] == ["ENVOY VERSION", "DEPENDENCIES VERSIONS", "NOTES"]
    assert sorted(r[1] for r in rows[1:]) == ["api-1", "gw-1", "web-1", "web-2"]
    run = zmctl(cp.api, tmp_path, "inspect", "dataplanes", "--tag", "version=v2")
    assert [r[1] for r in table(run.out)[1:]] == ["web-1"], run.out
    run = zmctl(cp.api, tmp_path, "inspect", "dataplanes", "--gateway")
    assert [r[1] for r in table(run.out)[1:]] == ["gw-1"], run.out
    run = zmctl(cp.api, tmp_path, "inspect", "dataplanes", "--ingress")
    assert run.code == 2 and "zmctl inspect zoneingresses" in run.err


def test_inspect_services_lists_each_service_with_its_proxies(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    run = zmctl(cp.api, tmp_path, "inspect", "services", "--mesh", "default")
    assert run.code == 0, run.err
    rows = table(run.out)
    assert rows[0] == ["SERVICE", "STATUS", "DATAPLANES"]
    # No proxy runs: every one is offline, as kumactl shows it.
    assert rows[1:] == [
        ["api", "Offline", "0/1"],
        ["edge", "Offline", "0/1"],
        ["httpbin", "Offline", "0/0"],
        ["web", "Offline", "0/2"],
    ]


def test_inspect_policy_lists_the_proxies_it_selects(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    run = zmctl(cp.api, tmp_path, "inspect", "meshtimeout", "web-timeout", "-m", "default")
    assert run.code == 0, run.err
    assert run.out.splitlines() == ["Affected data plane proxies:", "", "  web-1"]
    run = zmctl(cp.api, tmp_path, "inspect", "meshtimeout", "web-timeout", "--new-api")
    assert run.code == 0, run.err
    assert table(run.out) == [["Type", "Mesh", "Name"], ["Dataplane", "default", "web-1"], ["Total: 1"]]
    run = zmctl(cp.api, tmp_path, "inspect", "meshtimeout", "missing")
    assert run.code != 0 and "missing" in run.err


def test_inspect_meshgateway_names_its_builtin_proxies(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    run = zmctl(cp.api, tmp_path, "inspect", "meshgateway", "edge")
    assert run.code == 0, run.err
    assert run.out.split() == ["gw-1"]


def test_inspect_zone_proxies_have_kumactls_columns(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    networking = {"address": "127.0.0.1", "port": 10001, "advertisedAddress": "127.0.0.1", "advertisedPort": 10001}
    put(
        cp,
        REGISTRY.get("ZoneIngress").item_path("ingress-1"),
        {"type": "ZoneIngress", "name": "ingress-1", "networking": networking},
    )
    for command in ("zoneingresses", "zone-ingresses", "zoneegresses"):
        run = zmctl(cp.api, tmp_path, "inspect", command)
        assert run.code == 0, run.err
        assert table(run.out)[0] == [
            "NAME",
            "STATUS",
            "LAST CONNECTED AGO",
            "LAST UPDATED AGO",
            "TOTAL UPDATES",
            "TOTAL ERRORS",
            "KUMA-DP VERSION",
            "ENVOY VERSION",
        ], run.out
    rows = table(zmctl(cp.api, tmp_path, "inspect", "zoneingresses").out)
    assert rows[1] == ["ingress-1", "Offline", "never", "never", "0", "0"]  # never connected: no versions
    run = zmctl(cp.api, tmp_path, "inspect", "zoneingress", "ingress-1")
    assert run.code == 0 and '"listeners"' in run.out, run.err
    run = zmctl(cp.api, tmp_path, "inspect", "zoneingress", "ingress-1", "--type", "policies")
    assert run.code == 1 and "Policies are not applied on ZoneIngress" in run.err


def test_inspect_dataplane_types(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    run = zmctl(cp.api, tmp_path, "inspect", "dataplane", "web-1", "--type", "config")
    assert run.code == 0, run.err
    assert '"clusters"' in run.out
    for kind in ("stats", "clusters"):
        run = zmctl(cp.api, tmp_path, "inspect", "dataplane", "web-1", "--type", kind)
        assert run.code == 1
        assert "envoy-admin.sock" in run.err and f"http://localhost/{kind}" in run.err


def test_inspect_zones_on_a_standalone_control_plane_says_where_to_ask(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    run = zmctl(cp.api, tmp_path, "inspect", "zones")
    assert run.code == 1
    assert "standalone mode" in run.err and "global control plane" in run.err


def test_inspect_zones_and_policies_on_global(tmp_path: Path) -> None:
    glob = ControlPlaneProcess(tmp_path / "global", args=["--mode", "global", "--store", "memory"])
    try:
        glob.start(timeout=WAIT)
        run = zmctl(glob.api, tmp_path, "inspect", "zones", "-o", "json")
        assert run.code == 0, run.err
        run = zmctl(glob.api, tmp_path, "inspect", "zones")
        assert run.code == 0, run.err
        assert table(run.out)[0] == [
            "NAME",
            "STATUS",
            "LAST CONNECTED AGO",
            "LAST UPDATED AGO",
            "TOTAL UPDATES",
            "TOTAL ERRORS",
            "ZONE-CP VERSION",
            "BACKEND",
        ]
        # Which proxies a policy selects is the zones' to say: global names them.
        put(
            glob,
            "/meshes/default/meshtimeouts/t1",
            {
                "type": "MeshTimeout",
                "name": "t1",
                "spec": {
                    "targetRef": {"kind": "Mesh"},
                    "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "3s"}}],
                },
            },
        )
        run = zmctl(glob.api, tmp_path, "inspect", "meshtimeout", "t1")
        assert run.code == 1
        assert "computed by the zone control planes" in run.err, run.err
    finally:
        glob.kill()


# -- export ----------------------------------------------------------------------------------------


def export_all(api: str, home: Path) -> str:
    run = zmctl(api, home, "export", "--profile", "all", "--include-admin")
    assert run.code == 0, run.err
    assert "keep the file private" in run.err  # it holds Secrets
    header, _, body = run.out.partition("\n")
    assert header.startswith("# Product: ") and body.startswith("---\n"), run.out[:300]
    return body


def test_export_applied_on_a_fresh_control_plane_gives_identical_resources(
    cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    key, cert = self_signed_server_cert("client.example")
    put(cp, "/meshes/other", {"type": "Mesh", "name": "other"})
    secret = REGISTRY.get("Secret")
    put(cp, secret.item_path("ext-key", "other"), {"type": "Secret", "name": "ext-key", "data": b64(key)})
    put(
        cp,
        REGISTRY.get("ExternalService").item_path("ext-tls", "other"),
        {
            "type": "ExternalService",
            "name": "ext-tls",
            "tags": {"kuma.io/service": "ext-tls", "kuma.io/protocol": "http"},
            "networking": {
                "address": "127.0.0.1:9443",
                "tls": {"enabled": True, "clientCert": {"inline": b64(cert)}, "clientKey": {"secret": "ext-key"}},
            },
        },
    )
    # A default policy deleted on the source stays deleted on the restored control plane.
    assert cp.delete("/meshes/other/meshretries/mesh-retry-all-default")[0] == 200
    exported = export_all(cp.api, tmp_path)
    docs = [d for d in yaml.safe_load_all(exported) if d]
    keys = {(d["type"], d.get("mesh", ""), d["name"]) for d in docs}
    for wanted in (
        ("Dataplane", "default", "gw-1"),
        ("MeshGateway", "default", "edge"),
        ("MeshTimeout", "default", "web-timeout"),
        ("ExternalService", "other", "ext-tls"),
        ("Secret", "other", "ext-key"),
    ):
        assert wanted in keys, wanted
    assert ("MeshRetry", "other", "mesh-retry-all-default") not in keys
    assert not any("version" in d or "creationTime" in d for d in docs)
    # apply's order: Meshes first (creating no default policies of their own), GlobalSecrets last
    assert [d["type"] for d in docs[:2]] == ["Mesh", "Mesh"] and docs[-1]["type"] == "GlobalSecret"
    assert all(d["skipCreatingInitialPolicies"] == ["*"] for d in docs[:2])

    fresh = ControlPlaneProcess(tmp_path / "fresh", args=["--store", "memory"])
    try:
        fresh.start(timeout=WAIT)
        run = zmctl(fresh.api, tmp_path, "apply", "-f", "-", stdin=exported)
        assert run.code == 0, run.err
        assert export_all(fresh.api, tmp_path) == exported
        status, es = fresh.get(REGISTRY.get("ExternalService").item_path("ext-tls", "other"))
        assert status == 200 and es["networking"]["tls"]["clientKey"] == {"secret": "ext-key"}, es
        status, stored = fresh.get(secret.item_path("ext-key", "other"))
        assert status == 200 and base64.b64decode(stored["data"]) == key
        assert fresh.get("/meshes/other/meshretries/mesh-retry-all-default")[0] == 404
    finally:
        fresh.kill()


def test_export_refuses_inline_keys_it_cannot_restore_and_leaves_secrets_out_by_default(tmp_path: Path) -> None:
    key, cert = self_signed_server_cert("client.example")
    source = ControlPlaneProcess(tmp_path / "source", args=["--store", "memory"])
    try:
        source.start(timeout=WAIT)
        path = REGISTRY.get("ExternalService").item_path("ext-inline", "default")
        tls = {"enabled": True, "clientCert": {"inline": b64(cert)}, "clientKey": {"inline": b64(key)}}
        doc = {
            "type": "ExternalService",
            "name": "ext-inline",
            "tags": {"kuma.io/service": "ext-inline", "kuma.io/protocol": "http"},
            "networking": {"address": "127.0.0.1:9443", "tls": tls},
        }
        put(source, path, doc)
        run = zmctl(source.api, tmp_path, "export", "--profile", "all")
        assert run.code == 1 and run.out == ""
        assert 'ExternalService "ext-inline" in mesh "default": networking.tls.clientKey' in run.err, run.err
        assert "move each key into a Secret" in run.err
        assert b64(key) not in run.err and "PRIVATE KEY" not in run.err
        assert source.delete(path)[0] == 200
        run = zmctl(source.api, tmp_path, "export", "--profile", "all")
        assert run.code == 0, run.err
        assert "type: Secret" not in run.out and "type: GlobalSecret" not in run.out
        assert "PRIVATE KEY" not in run.out and "type: Mesh\n" in run.out
        # kumactl's default profile (federation): what a global holds, without the targetRef policies.
        put(source, "/meshes/default/dataplanes/web-1", {"name": "web-1", **sidecar_dataplane("web", 1, 2)})
        run = zmctl(source.api, tmp_path, "export")
        assert run.code == 0, run.err
        types = {d["type"] for d in yaml.safe_load_all(run.out) if d}
        assert "Mesh" in types and not types & {"MeshTimeout", "Dataplane", "GlobalSecret"}, types
        run = zmctl(source.api, tmp_path, "export", "--profile", "federation-with-policies")
        assert run.code == 0, run.err
        assert "MeshTimeout" in {d["type"] for d in yaml.safe_load_all(run.out) if d}
        run = zmctl(source.api, tmp_path, "export", "--format", "kubernetes")
        assert run.code == 2 and "zonemesh has no Kubernetes mode" in run.err
    finally:
        source.kill()


def test_version_names_client_and_server(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    from zonemesh import __version__

    run = zmctl(cp.api, tmp_path, "version")
    assert run.code == 0, run.err
    assert run.out.splitlines() == [f"Client: zonemesh {__version__}", f"Server: zonemesh {__version__}"]
    run = zmctl(cp.api, tmp_path, "version", "--detailed")
    assert run.code == 0 and '"mode": "standalone"' in run.out, run.out


def test_export_by_a_non_admin_never_reads_secrets(tmp_path: Path) -> None:
    """Reading Secrets needs an admin: a reader's export without them works, one with them is refused."""
    source = ControlPlaneProcess(tmp_path / "cp", args=["--no-api-localhost-is-admin"])  # sqlite: admin-token reads it
    try:
        source.start(timeout=WAIT)
        admin = subprocess.run(
            python_module("zonemesh.cp", "admin-token", "--data-dir", str(source.data_dir), "--log-level", "error"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert admin.returncode == 0, admin.stderr
        status, reader = http(
            "POST",
            source.api + "/tokens/user",
            {"name": "ci", "groups": ["readers"], "validFor": "1h"},
            {"Authorization": f"Bearer {admin.stdout.strip()}"},
        )
        assert status == 200, reader
        (tmp_path / "reader.token").write_text(str(reader))
        add = zmctl(
            source.api, tmp_path, "config", "control-planes", "add", "--name", "cp", "--address", source.api,
            "--auth-type", "tokens", "--auth-conf", f"token-file={tmp_path / 'reader.token'}",
        )  # fmt: skip
        assert add.code == 0, add.err

        def as_reader(*args: str) -> Run:
            env = {**os.environ, "HOME": str(tmp_path), "ZMCTL_CONFIG": str(tmp_path / "zmctl.yaml")}
            proc = subprocess.run(
                python_module("zonemesh.ctl", *args), capture_output=True, text=True, env=env, timeout=60
            )
            return Run(proc.returncode, proc.stdout, proc.stderr)

        run = as_reader("export", "--profile", "all")
        assert run.code == 0, run.err
        assert "type: Mesh\n" in run.out and "type: Secret" not in run.out
        run = as_reader("export")  # federation: a migration needs the Secrets
        assert run.code == 1 and run.out == ""
        assert "reading secrets needs an admin user token" in run.err, run.err
    finally:
        source.kill()
