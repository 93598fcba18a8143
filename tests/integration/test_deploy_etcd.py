"""docs/deployment.md, "etcd: TLS and client certificates": the openssl commands as written make
certificates that a real etcd (client certificates required) and a control plane with the etcd
unit's --etcd-* settings accept."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import run_etcd
from doc_blocks import block

from zonemesh.testing import ControlPlaneProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.etcd,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "docs" / "examples" / "systemd" / "zonemesh-global-etcd.service"
# The docs' member address and shared name; on a test machine etcd is on loopback.
NAMES = {"IP:10.0.0.5": "IP:127.0.0.1", "DNS:etcd.mesh.internal": "DNS:localhost"}


POLICY = {
    "type": "MeshRetry",
    "name": "retry-backend",
    "mesh": "default",
    "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"http": {"numRetries": 2}}}],
    },
}


def joined(text: str) -> str:
    """Shell and systemd continuation lines joined."""
    return text.replace("\\\n", " ")


def etcd_settings(unit: str) -> list[str]:
    """The --store and --etcd-* flags of the unit's ExecStart, with their values."""
    line = next(line for line in joined(unit).splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))[2:]  # after `zonemesh-cp run`: flag value pairs
    pairs = zip(argv[::2], argv[1::2], strict=True)
    return [item for flag, value in pairs if flag == "--store" or flag.startswith("--etcd-") for item in (flag, value)]


def test_documented_etcd_certificates(tmp_path: Path) -> None:
    script = block("deployment.md", "etcd-certs")
    for doc, here in NAMES.items():
        assert doc in script, f"the docs no longer use {doc}: update NAMES"
        script = script.replace(doc, here)
    certs = tmp_path / "certs"
    certs.mkdir()
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=certs, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "etcd-1.crt: OK" in proc.stdout and "client.crt: OK" in proc.stdout, proc.stdout

    settings = etcd_settings(UNIT.read_text())
    assert " ".join(settings) in " ".join(joined((ROOT / "docs" / "deployment.md").read_text()).split())
    files = {"/etc/zonemesh/etcd/ca.crt": "etcd-ca.crt", "/etc/zonemesh/etcd/client.crt": "client.crt"}
    files["/etc/zonemesh/etcd/client.key"] = "client.key"
    member = ["--client-cert-auth", f"--trusted-ca-file={certs / 'etcd-ca.crt'}"]
    member += [f"--cert-file={certs / 'etcd-1.crt'}", f"--key-file={certs / 'etcd-1.key'}"]
    with run_etcd(tmp_path / "etcd", *member, scheme="https") as etcd:
        args: list[Any] = []
        for value in settings:
            if value in files:
                value = str(certs / files[value])
            elif value == "etcd.mesh.internal:2379":
                value = f"localhost:{etcd.port}"
            args.append(value)
        cp = ControlPlaneProcess(tmp_path / "cp", args=[*args, "--etcd-prefix", "/deploy-test"]).start()
        try:
            assert cp.put("/meshes/default/meshretries/retry-backend", POLICY)[0] == 201
            assert cp.get("/meshes/default/meshretries/retry-backend")[0] == 200
        finally:
            assert cp.stop() == 0
