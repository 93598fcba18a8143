"""docs/quickstart.md, run as written: every ``sh`` block marked ``<!-- tested: NAME -->`` goes
through bash with ``set -euo pipefail``, in a fresh HOME, with this venv's programs on PATH.

What is changed, and only that: the ports. The standalone control plane gets free ports through
``ZONEMESH_*_PORT`` (lower precedence than flags, and the documented command has none), zmctl is
pointed at it through its own config file, and ``localhost:5681`` in curl lines becomes that port.
The lab gets ``--port-base B`` and the documented ports ``250NN`` become ``B+NN`` (the lab's ports are
fixed offsets from the base, docs/lab.md)."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from doc_blocks import block

from zonemesh.testing import free_port, http, wait_until

pytestmark = pytest.mark.slow

PAGE = "quickstart.md"
LAB_PORTS = 40  # the lab uses base .. base+27 with two zones; keep a margin


def environment(home: Path, **extra: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "HOME": str(home), "PATH": f"{bindir}:{os.environ['PATH']}", **extra}


def sh(script: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_standalone_quickstart(tmp_path: Path) -> None:
    api, diagnostics, xds = free_port(), free_port(), free_port()
    env = environment(
        tmp_path / "home",
        ZONEMESH_API_PORT=str(api),
        ZONEMESH_DIAGNOSTICS_PORT=str(diagnostics),
        ZONEMESH_XDS_PORT=str(xds),
        ZMCTL_CONFIG=str(tmp_path / "zmctl.yaml"),
    )
    ok(sh(f"zmctl config control-planes add --name quickstart --address http://127.0.0.1:{api}", env, tmp_path))

    argv = shlex.split(block(PAGE, "standalone-run"))
    log = (tmp_path / "cp.log").open("wb")
    cp = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:

        def ready() -> bool:
            assert cp.poll() is None, (tmp_path / "cp.log").read_text()
            return http("GET", f"http://127.0.0.1:{diagnostics}/ready", timeout=1)[0] == 200

        wait_until(ready, 30, what="the quickstart control plane")
        assert "control_plane_started" in (tmp_path / "cp.log").read_text()  # --log-format console
        assert (tmp_path / "home" / ".zonemesh" / "standalone" / "zonemesh.db").is_file()

        try_it = block(PAGE, "standalone-try")
        assert "localhost:5681" in try_it
        out = ok(sh(try_it.replace("localhost:5681", f"localhost:{api}"), env, tmp_path))
        meshes, _ = json.JSONDecoder().raw_decode(out)  # curl prints no newline after the body
        assert [m["name"] for m in meshes["items"]] == ["default"]
        assert "mesh-timeout-all-default" in out

        out = ok(sh(block(PAGE, "first-policy"), env, tmp_path))
        assert 'Created MeshTimeout "backend-timeouts" in mesh "default"' in out
        assert "requestTimeout: 10s" in out and "version: 1" in out
        assert 'Deleted MeshTimeout "backend-timeouts" in mesh "default"' in out

        refused = sh(block(PAGE, "invalid-policy"), env, tmp_path)
        assert refused.returncode == 1, refused
        assert "nothing was applied" in refused.stderr
        assert 'connectionTimeout: invalid duration "2x"' in refused.stderr
        status, _ = http("GET", f"http://127.0.0.1:{api}/meshes/default/meshtimeouts/backend-timeouts")
        assert status == 404
    finally:
        cp.send_signal(signal.SIGINT)  # "Stop the control plane with Ctrl-C"
        assert cp.wait(15) == 0


def free_base() -> int:
    """A port base with LAB_PORTS free ports above it (checked by binding), away from the default 25000."""
    for _ in range(50):
        base = random.randrange(30000, 60000 - LAB_PORTS, 100)
        socks = []
        try:
            for port in range(base, base + LAB_PORTS):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free range of ports for the lab")


def test_lab_quickstart(tmp_path: Path) -> None:
    base = free_base()
    env = environment(tmp_path / "home")

    def doc(name: str) -> str:
        text = block(PAGE, name).replace("zonemesh-lab up", f"zonemesh-lab up --port-base {base}")
        return re.sub(r"127\.0\.0\.1:250(\d\d)\b", lambda m: f"127.0.0.1:{base + int(m.group(1))}", text)

    up = sh(doc("lab-up"), env, tmp_path, timeout=300)
    try:
        out = ok(up)
        assert f"curl -s http://127.0.0.1:{base + 25}/" in out, "up no longer prints the documented curl"

        out = ok(sh(doc("lab-try"), env, tmp_path))  # ends with `zonemesh-lab check`: exit 0 required
        answer, _ = json.JSONDecoder().raw_decode(out)
        assert answer["service"] == "frontend" and answer["upstream"]["service"] == "backend", answer
        assert re.search(r"zone-1\s+true\s+Online", out) and re.search(r"zone-2\s+true\s+Online", out), out

        out = ok(sh(doc("lab-failover"), env, tmp_path))
        assert 'Created MeshHealthCheck "backend-health"' in out
        answers = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert len(answers) == 5, out
        zones = [a.get("upstream", {}).get("zone") for a in answers]
        assert zones == ["zone-2"] * 5, answers  # no error, no answer from the killed zone-1 backend

        out = ok(sh(doc("lab-partition"), env, tmp_path))
        assert re.search(r"zone-1\s+true\s+Offline", out), out
        get_zones = f"zmctl --cp-address http://127.0.0.1:{base + 1} get zones"
        wait_until(
            lambda: re.search(r"zone-1\s+true\s+Online", ok(sh(get_zones, env, tmp_path))),
            30,
            what="zone-1 back online after `chaos heal`",
        )
    finally:
        down = sh(doc("lab-down"), env, tmp_path, timeout=120)
    assert ok(down).strip() == "lab stopped"
