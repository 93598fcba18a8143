"""The ``kuma-dp run`` lines of Kuma's docs (the project's seed pages) run as written against a real
control plane: ``zonemesh-dp`` takes them, registers the proxy and its real Envoy gets its config.

The lines below are copied from the pages verbatim, comments and all. What the test changes, and
only that: ``kuma-dp`` is ``zonemesh-dp``; the control plane's address is this test's (its port is a
free one, not 5678); ``/tmp/...`` files live in the test's directory (relative ones are there as
the cwd); the control plane's self-signed CA is the process's system CA bundle (``SSL_CERT_FILE``,
as an operator installing it in the host's trust store); and ``--readiness-port 0`` is appended so
that agents on one shared host do not compete for 9902. docs/dataplane.md lists every kuma-dp flag
and what zonemesh-dp does with it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zonemesh.spawn import python_module
from zonemesh.testing import (
    ControlPlaneProcess,
    free_port,
    http,
    log_excerpt,
    sidecar_dataplane,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.slow

WAIT = 60.0  # two cores shared with other work: generous, still bounded

# Seed 002 (Kong Mesh "Mesh" page): a Dataplane created on the control plane beforehand.
SEED_002 = """kuma-dp run \\
  --name=backend-1 \\
  --mesh=default \\
  --cp-address=https://127.0.0.1:5678 \\
  --dataplane-token-file=/tmp/kuma-dp-backend-1-token"""

# Seed 004 (Kong Mesh "Gateway" page): a builtin gateway from its Dataplane file, DNS off.
SEED_004 = """kuma-dp run \\
  --cp-address=https://localhost:5678/ \\
  --dns-enabled=false \\
  --dataplane-token-file=kuma-token-gateway \\ # this needs to be generated like for regular Dataplane
  --dataplane-file=my-gateway.yaml # the Dataplane resource described above"""

SEED_004_GATEWAY = """type: Dataplane
mesh: default
name: gateway-instance-1
networking:
  address: 127.0.0.1
  gateway:
    type: BUILTIN
    tags:
      kuma.io/service: edge-gateway
"""


def argv(line: str) -> list[str]:
    """A docs' shell line as a user means it: ``\\`` continues the line, ``# ...`` is a comment
    (seed 004 writes one after its ``\\``, which a shell would not take, but every reader does)."""
    parts = []
    for raw in line.splitlines():
        text = re.sub(r"\s#.*$", "", raw).rstrip()
        parts.append(text.removesuffix("\\"))
    return shlex.split(" ".join(parts))


def as_zonemesh_dp(args: list[str], xds_port: int, tmp: Path) -> list[str]:
    """The changes the module docstring lists, and nothing else."""
    assert args[:2] == ["kuma-dp", "run"], args
    out = python_module("zonemesh.dp.main", "run")
    for arg in args[2:]:
        arg = re.sub(r"^(--cp-address=https://[^:/]+):5678", rf"\1:{xds_port}", arg)
        arg = arg.replace("=/tmp/", f"={tmp}/")
        out.append(arg)
    return [*out, "--readiness-port", "0"]


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(tmp_path_factory.mktemp("seeds") / "cp", args=["--store", "memory"])
    try:
        process.start(timeout=WAIT)
        yield process
    finally:
        process.kill()


def token(cp: ControlPlaneProcess, name: str, **extra: Any) -> str:
    status, body = http(
        "POST", cp.api + "/tokens/dataplane", {"mesh": "default", "name": name, "validFor": "1h", **extra}
    )
    assert status == 200, body
    return str(body)


def subscription(cp: ControlPlaneProcess, name: str) -> dict[str, Any] | None:
    """The proxy's last xDS subscription once Envoy has acknowledged a config, else None."""
    status, body = cp.get(f"/meshes/default/dataplanes+insights/{name}")
    if status != 200:
        return None
    subs = (body.get("dataplaneInsight") or {}).get("subscriptions") or []
    if subs and "disconnectTime" not in subs[-1] and int(subs[-1]["status"]["total"]["responsesAcknowledged"]) > 0:
        return dict(subs[-1])
    return None


def run_until_connected(cp: ControlPlaneProcess, cmd: list[str], cwd: Path, name: str) -> dict[str, Any]:
    log = cwd / f"{name}.log"
    env = {**os.environ, "SSL_CERT_FILE": str(cp.data_dir / "xds.crt")}
    with log.open("wb") as out:
        agent = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:

        def connected() -> dict[str, Any] | None:
            if agent.poll() is not None:
                raise AssertionError(f"zonemesh-dp exited {agent.returncode}:\n{log.read_text()[-3000:]}")
            return subscription(cp, name)

        try:
            sub = wait_until(connected, WAIT, interval=0.5, what=f"{name}'s Envoy to acknowledge its config")
        except TimeoutError:
            raise AssertionError(
                log_excerpt(name, log.read_text(errors="replace")) + log_excerpt("control plane", cp.logs())
            ) from None
        assert sub["version"]["envoy"]["version"]
        return sub
    finally:
        assert stop_process(agent) == 0, log.read_text(errors="replace")[-3000:]


def test_seed_002_name_and_mesh_run_a_dataplane_created_beforehand(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    dataplane = {"name": "backend-1", **sidecar_dataplane("backend", free_port(), free_port(), mesh="default")}
    assert cp.put("/meshes/default/dataplanes/backend-1", dataplane)[0] in (200, 201)
    (tmp_path / "kuma-dp-backend-1-token").write_text(token(cp, "backend-1"))
    cmd = as_zonemesh_dp(argv(SEED_002), cp.xds_port, tmp_path)
    run_until_connected(cp, cmd, tmp_path, "backend-1")
    # The stored Dataplane was the proxy's, and it stays stored after the agent stops (kuma-dp's
    # form registers no document of its own, so there is nothing of its own to remove).
    status, stored = cp.get("/meshes/default/dataplanes/backend-1")
    assert status == 200, stored
    assert stored["networking"]["inbound"] == dataplane["networking"]["inbound"]


def test_seed_002_without_the_dataplane_on_the_control_plane_says_so(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    (tmp_path / "kuma-dp-backend-2-token").write_text(token(cp, "backend-2"))
    cmd = as_zonemesh_dp(argv(SEED_002.replace("backend-1", "backend-2")), cp.xds_port, tmp_path)
    out = subprocess.run(
        cmd,
        cwd=tmp_path,
        env={**os.environ, "SSL_CERT_FILE": str(cp.data_dir / "xds.crt")},
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert out.returncode != 0
    assert "backend-2" in out.stderr and "--dataplane-file" in out.stderr, out.stderr


def test_seed_004_gateway_with_dns_disabled(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    (tmp_path / "my-gateway.yaml").write_text(SEED_004_GATEWAY)
    (tmp_path / "kuma-token-gateway").write_text(token(cp, "gateway-instance-1"))
    args = argv(SEED_004)
    assert "--dns-enabled=false" in args and "--dataplane-file=my-gateway.yaml" in args
    run_until_connected(cp, as_zonemesh_dp(args, cp.xds_port, tmp_path), tmp_path, "gateway-instance-1")
    # The document's Dataplane was registered for the proxy's life and removed with it.
    status, body = cp.get("/meshes/default/dataplanes/gateway-instance-1")
    assert status == 404, json.dumps(body)
