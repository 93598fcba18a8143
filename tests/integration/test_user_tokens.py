"""Loopback admin turned off, and user tokens as the way in, against real control plane processes
(SQLite store) on 127.0.0.1: `zonemesh-cp admin-token`, POST /tokens/user, admin and non-admin
tokens, revocation, signing key rotation, and zmctl with a control plane entry carrying a token."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from doc_blocks import block
from zonemesh.shared.tokens.keys import generate_private_key_pem

from zonemesh.spawn import python_module
from zonemesh.testing import ControlPlaneProcess, free_port, http

pytestmark = pytest.mark.slow

TIMEOUT: dict[str, Any] = {
    "type": "MeshTimeout",
    "mesh": "default",
    "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "3s"}}],
    },
}


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(tmp_path / "cp", args=["--no-api-localhost-is-admin"])
    process.start(timeout=30)
    try:
        yield process
    finally:
        process.kill()


def admin_token_from_host(cp: ControlPlaneProcess) -> subprocess.CompletedProcess[str]:
    """What the operator runs on the CP host: the same settings as `run`, no API call."""
    return subprocess.run(
        python_module("zonemesh.cp", "admin-token", "--data-dir", str(cp.data_dir), "--log-level", "error"),
        capture_output=True,
        text=True,
        timeout=60,
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def issue(cp: ControlPlaneProcess, admin: str, name: str, groups: list[str]) -> str:
    status, token = http(
        "POST", cp.api + "/tokens/user", {"name": name, "groups": groups, "validFor": "1h"}, bearer(admin)
    )
    assert status == 200, token
    assert isinstance(token, str)
    return token


def put_timeout(cp: ControlPlaneProcess, name: str, token: str | None) -> tuple[int, Any]:
    return http("PUT", f"{cp.api}/meshes/default/meshtimeouts/{name}", TIMEOUT, bearer(token) if token else None)


def put_secret(cp: ControlPlaneProcess, name: str, data: bytes, token: str) -> int:
    doc = {"type": "GlobalSecret", "name": name, "data": base64.b64encode(data).decode()}
    status, body = http("PUT", f"{cp.api}/global-secrets/{name}", doc, bearer(token))
    assert status in (200, 201), body
    return status


def test_loopback_admin_off_user_tokens_revocation_and_rotation(cp: ControlPlaneProcess) -> None:
    # Loopback is not admin: writes and secret reads are refused, ordinary reads stay open.
    status, body = put_timeout(cp, "t0", None)
    assert status == 401 and "api_localhost_is_admin is off" in body["detail"]
    assert http("GET", cp.api + "/global-secrets/admin-user-token")[0] == 401
    assert http("GET", cp.api + "/meshes")[0] == 200

    # The operator reads the first-start admin token on the host, and issues user tokens with it.
    read = admin_token_from_host(cp)
    assert read.returncode == 0, read.stderr
    admin = read.stdout.strip()
    ops = issue(cp, admin, "ops", ["mesh-system:admin"])
    dev = issue(cp, admin, "dev", ["team-a"])
    assert put_timeout(cp, "t1", ops)[0] == 201
    status, body = put_timeout(cp, "t2", dev)
    assert status == 403 and "'dev'" in body["detail"] and "mesh-system:admin" in body["detail"]
    assert http("GET", cp.api + "/meshes/default/meshtimeouts/t1", headers=bearer(dev))[0] == 200
    assert http("GET", cp.api + "/global-secrets", headers=bearer(dev))[0] == 403

    # Revocation: ops' jti in user-token-revocations refuses it from the next request on.
    jti = jwt.decode(ops, options={"verify_signature": False})["jti"]
    put_secret(cp, "user-token-revocations", jti.encode(), admin)
    status, body = put_timeout(cp, "t3", ops)
    assert status == 401 and f"token {jti} has been revoked" in body["detail"]
    assert http("GET", cp.api + "/meshes", headers=bearer(ops))[0] == 401  # reads too: never ignored

    # Rotation: key 2 signs new tokens; tokens of key 1 work until key 1 is deleted.
    put_secret(cp, "user-token-signing-key-2", generate_private_key_pem(), admin)
    fresh = issue(cp, admin, "ops-2", ["mesh-system:admin"])
    assert jwt.get_unverified_header(fresh)["kid"] == "2"
    assert put_timeout(cp, "t4", fresh)[0] == 201
    assert put_timeout(cp, "t5", admin)[0] == 201  # key 1 still verifies
    status, body = http("DELETE", cp.api + "/global-secrets/user-token-signing-key-1", headers=bearer(fresh))
    assert status == 200, body
    for old in (admin, dev):
        status, body = put_timeout(cp, "t6", old)
        assert status == 401 and "signing key 1 not found" in body["detail"]
    assert put_timeout(cp, "t6", fresh)[0] == 201

    # The stored admin token is dead now, and the host command says so instead of printing it.
    read = admin_token_from_host(cp)
    assert read.returncode == 1 and "would be refused (signing key 1 not found" in read.stderr
    assert admin not in read.stdout + read.stderr


def zmctl(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), "ZMCTL_CONFIG": str(home / "zmctl.yaml")}
    proc = subprocess.run(python_module("zonemesh.ctl", *args), capture_output=True, text=True, env=env, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_zmctl_works_through_a_control_plane_entry_with_a_token(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    admin_file = home / "admin.token"
    admin_file.write_text(admin_token_from_host(cp).stdout)
    admin_file.chmod(0o600)
    policy = home / "timeout.yaml"
    policy.write_text("type: MeshTimeout\nname: via-zmctl\nmesh: default\n" + _spec_yaml())

    # Without a token (plain --cp-address on loopback): refused, with the way out in the hint.
    run = zmctl(home, "--cp-address", cp.api, "apply", "-f", str(policy))
    assert run.returncode == 1 and "Unauthorized (401)" in run.stderr and "--auth-type tokens" in run.stderr

    add = ["config", "control-planes", "add", "--name", "cp", "--address", cp.api, "--auth-type", "tokens"]
    assert zmctl(home, *add, "--auth-conf", f"token-file={admin_file}").returncode == 0
    assert stat.S_IMODE((home / "zmctl.yaml").stat().st_mode) == 0o600
    assert zmctl(home, "apply", "-f", str(policy)).returncode == 0
    assert "via-zmctl" in zmctl(home, "get", "meshtimeouts").stdout

    issued = zmctl(home, "generate", "user-token", "--name", "dev", "--group", "team-a", "--valid-for", "1h")
    assert issued.returncode == 0, issued.stderr
    dev = issued.stdout.strip()
    assert jwt.decode(dev, options={"verify_signature": False})["Groups"] == ["team-a"]

    # kumactl's way: --auth-conf token=...; a non-admin token reads, and is refused writes with a 403.
    assert zmctl(home, *add, "--overwrite", "--auth-conf", f"token={dev}").returncode == 0
    assert "via-zmctl" in zmctl(home, "get", "meshtimeouts").stdout
    run = zmctl(home, "delete", "meshtimeout", "via-zmctl")
    assert run.returncode == 1 and "Forbidden (403)" in run.stderr and "not in the mesh-system:admin" in run.stderr

    shown = zmctl(home, "config", "view").stdout + zmctl(home, "config", "control-planes", "list").stdout
    assert dev not in shown and dev.split(".")[2] not in shown
    assert "token: <redacted>" in shown


def test_the_documented_path_runs_as_written(tmp_path: Path) -> None:
    """docs/deployment.md, "Turning loopback admin off", against a real global with loopback admin off.
    Only the data dir and the address move; `sudo -u zonemesh /opt/zonemesh/bin/` goes (the test
    user owns the store, the venv's programs are on PATH)."""
    kds_port = free_port()
    args = [
        "--mode",
        "global",
        "--no-api-localhost-is-admin",
        "--kds-address",
        "127.0.0.1",
        "--kds-port",
        str(kds_port),
    ]
    cp = ControlPlaneProcess(tmp_path / "global", args=args).start(timeout=30)
    try:
        script = block("deployment.md", "localhost-admin-off")
        for documented, here in {
            "sudo -u zonemesh /opt/zonemesh/bin/": "",
            "/var/lib/zonemesh/global": str(cp.data_dir),
            "http://10.0.0.10:5681": cp.api,
        }.items():
            assert documented in script, f"the docs no longer use {documented}"
            script = script.replace(documented, here)
        work = tmp_path / "operator"
        work.mkdir()
        (work / "mesh-timeout.yaml").write_text("type: MeshTimeout\nname: from-docs\nmesh: default\n" + _spec_yaml())
        bindir = str(Path(sys.executable).parent)
        env = {**os.environ, "HOME": str(work), "PATH": f"{bindir}:{os.environ['PATH']}"}
        env.pop("ZMCTL_CONFIG", None)
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, f"{script}\n{proc.stdout}\n{proc.stderr}"
        assert "default" in proc.stdout  # zmctl get meshes
        assert put_timeout(cp, "anonymous", None)[0] == 401  # loopback without a token: still refused
        status, body = http("GET", cp.api + "/meshes/default/meshtimeouts/from-docs")
        assert status == 200, body
        alice = (work / "alice.token").read_text().strip()
        assert jwt.decode(alice, options={"verify_signature": False})["Name"] == "alice"
        assert alice not in proc.stdout + proc.stderr
        config = work / ".zmctl" / "config.yaml"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600 and alice in config.read_text()
    finally:
        cp.kill()


def _spec_yaml() -> str:
    return (
        "spec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectionTimeout: 3s}\n"
    )
