"""`zonemesh-cp run` as a real process: defaults, persistence across restarts, config errors, shutdown."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from zonemesh.spawn import python_module
from zonemesh.testing import ControlPlaneProcess, http

POLICY = {
    "type": "MeshRetry",
    "name": "retry-backend",
    "mesh": "default",
    "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"http": {"numRetries": 2}}}],
    },
}

pytestmark = pytest.mark.slow


def test_sqlite_default_store_survives_restart(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(tmp_path / "cp", args=["--log-format", "json"]).start()
    try:
        status, meshes = cp.get("/meshes")
        assert status == 200
        assert [m["name"] for m in meshes["items"]] == ["default"]
        status, _ = cp.put("/meshes/default/meshretries/retry-backend", POLICY)
        assert status == 201
        _, before = cp.get("/meshes/default/meshretries/retry-backend")
        _, token_before = cp.get("/global-secrets/admin-user-token")
        assert cp.stop() == 0, cp.logs()
        assert '"event": "control_plane_stopped"' in cp.logs()

        assert (tmp_path / "cp" / "zonemesh.db").exists()
        cp.start()
        status, after = cp.get("/meshes/default/meshretries/retry-backend")
        assert status == 200
        assert after == before
        _, meshes = cp.get("/meshes")
        assert meshes["total"] == 1  # the default mesh is not created twice
        _, timeouts = cp.get("/meshes/default/meshtimeouts")
        assert timeouts["total"] == 2
        _, token_after = cp.get("/global-secrets/admin-user-token")
        assert token_after["data"] == token_before["data"]
    finally:
        cp.kill()


@pytest.mark.parametrize("env_name", ["ZONEMESH_DEFAULTS_SKIP_MESH_CREATION", "KUMA_DEFAULTS_SKIP_MESH_CREATION"])
def test_skip_default_mesh(tmp_path: Path, env_name: str) -> None:
    cp = ControlPlaneProcess(tmp_path / "cp", args=["--store", "memory"], env={env_name: "true"}).start()
    try:
        status, meshes = cp.get("/meshes")
        assert status == 200 and meshes["total"] == 0
    finally:
        cp.kill()


def test_metrics_and_health(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(tmp_path / "cp", args=["--store", "memory"]).start()
    try:
        base = f"http://127.0.0.1:{cp.diagnostics_port}"
        assert http("GET", base + "/healthz")[0] == 200
        assert http("GET", base + "/ready")[0] == 200
        status, text = http("GET", base + "/metrics")
        assert status == 200 and "python_info" in text
    finally:
        cp.kill()


@pytest.mark.parametrize(
    ("args", "config_text", "message"),
    [
        (["--mode", "bogus"], None, "mode must be one of"),
        (["--mode", "zone"], None, "zone mode needs a zone name"),
        (["--api-port", "http"], None, "--api-port: expected an integer"),
        ([], "api_port: 5681\nno_such_setting: 1\n", "unknown setting 'no_such_setting'"),
        ([], "api_port: [unclosed\n", "is not valid YAML"),
    ],
)
def test_bad_configuration_is_refused_clearly(
    tmp_path: Path, args: list[str], config_text: str | None, message: str
) -> None:
    if config_text is not None:
        config = tmp_path / "config.yaml"
        config.write_text(config_text)
        args = [*args, "--config", str(config)]
    result = subprocess.run(python_module("zonemesh.cp", "run", *args), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr


def test_port_in_use_fails_with_a_clear_error(tmp_path: Path) -> None:
    first = ControlPlaneProcess(tmp_path / "a", args=["--store", "memory"]).start()
    try:
        second = ControlPlaneProcess(tmp_path / "b", args=["--store", "memory"], api_port=first.api_port)
        second.start(wait=False)
        assert second.process is not None
        assert second.process.wait(20) == 1
        assert "startup_failed" in second.logs()
    finally:
        first.kill()


@pytest.mark.etcd
def test_etcd_store_process_survives_restart(tmp_path: Path, etcd_server: Any) -> None:
    store_args = ["--store", "etcd", "--etcd-endpoints", etcd_server.endpoint, "--etcd-prefix", "/process-test"]
    cp = ControlPlaneProcess(tmp_path / "cp", args=store_args).start()
    try:
        assert [m["name"] for m in cp.get("/meshes")[1]["items"]] == ["default"]
        assert cp.put("/meshes/default/meshretries/retry-backend", POLICY)[0] == 201
        bad = {**POLICY, "spec": {**POLICY["spec"], "targetRef": {"kind": "Nope"}}}
        status, body = cp.put("/meshes/default/meshretries/retry-backend", bad)
        assert status == 400 and body["invalid_parameters"][0]["field"] == "spec.targetRef.kind"
        assert cp.stop() == 0
        cp.start()
        status, after = cp.get("/meshes/default/meshretries/retry-backend")
        assert status == 200 and after["spec"] == POLICY["spec"] and after["version"] == 1
        assert cp.get("/meshes")[1]["total"] == 1
    finally:
        cp.kill()


def refused(cp: ControlPlaneProcess) -> str:
    """Start ``cp``, which must refuse to start: exit 1 within 30 s, with no traceback; its log."""
    cp.start(wait=False)
    try:
        assert cp.process is not None
        assert cp.process.wait(30) == 1, cp.logs()
    finally:
        cp.kill()
    assert "Traceback" not in cp.logs()
    return cp.logs()


@pytest.mark.etcd
def test_etcd_over_tls_with_a_client_certificate(tmp_path: Path, etcd_tls_server: Any) -> None:
    server, pki = etcd_tls_server
    store = ["--store", "etcd", "--etcd-endpoints", server.endpoint, "--etcd-prefix", f"/tls-{tmp_path.name}"]
    client = ["--etcd-cert-file", str(pki.client_cert), "--etcd-key-file", str(pki.client_key)]
    cp = ControlPlaneProcess(tmp_path / "cp", args=[*store, "--etcd-ca-file", str(pki.ca), *client]).start()
    try:
        assert cp.put("/meshes/default/meshretries/retry-backend", POLICY)[0] == 201
        assert cp.get("/meshes/default/meshretries/retry-backend")[0] == 200
        assert cp.get("/config")[1]["etcd_ca_file"] == str(pki.ca)
    finally:
        cp.kill()

    wrong = ControlPlaneProcess(tmp_path / "wrong", args=[*store, "--etcd-ca-file", str(pki.other_ca), *client])
    assert (
        f"zonemesh-cp: refusing to start: etcd at {server.endpoint}: etcd's certificate is not signed by the CA "
        "of etcd_ca_file"
    ) in refused(wrong)


@pytest.mark.etcd
def test_etcd_with_auth(tmp_path: Path, etcd_auth_server: Any) -> None:
    from etcd_secure import AUTH_PREFIX, PASSWORD, USER

    store = ["--store", "etcd", "--etcd-endpoints", etcd_auth_server.endpoint]
    store += ["--etcd-prefix", f"{AUTH_PREFIX}/{tmp_path.name}", "--etcd-username", USER]
    cp = ControlPlaneProcess(tmp_path / "cp", args=store, env={"ZONEMESH_ETCD_PASSWORD": PASSWORD}).start()
    try:
        assert cp.put("/meshes/default/meshretries/retry-backend", POLICY)[0] == 201
        _, config = cp.get("/config")
        assert config["etcd_username"] == USER and config["etcd_password"] == "<redacted>"
        assert PASSWORD not in json.dumps(config)
    finally:
        cp.kill()
    assert PASSWORD not in cp.logs()

    wrong = ControlPlaneProcess(tmp_path / "wrong", args=store, env={"ZONEMESH_ETCD_PASSWORD": "guessed"})
    logs = refused(wrong)
    assert (
        f"zonemesh-cp: refusing to start: etcd at {etcd_auth_server.endpoint}: etcd refused the user or password "
        "(etcd_username, etcd_password or etcd_password_file)"
    ) in logs
    assert "guessed" not in logs


@pytest.mark.etcd
def test_unreachable_etcd_is_refused_clearly(tmp_path: Path) -> None:
    store = ["--store", "etcd", "--etcd-endpoints", "127.0.0.1:1"]
    assert "zonemesh-cp: refusing to start: cannot reach etcd at 127.0.0.1:1: UNAVAILABLE" in refused(
        ControlPlaneProcess(tmp_path / "cp", args=store)
    )
