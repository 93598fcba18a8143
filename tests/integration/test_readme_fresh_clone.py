"""The README's commands, exactly as a newcomer types them: in a fresh clone, a fresh venv and a
plain (non-editable) ``pip install .``.

The test venv cannot show this class of break: it imports the package from wherever pytest found
it, and runs no command from inside a clone. Issue 18: from a fresh clone, ``.venv/bin/zonemesh-lab
up`` died at once with ``No module named 'zonemesh.shared'`` (the clone's ``zonemesh/`` folder
shadowed the installed package in every ``python -m`` child). So this test copies the checkout as
a clone has it, runs the README's blocks verbatim through bash in that copy, with the user's
``python3`` and pip settings, and then the lab's check and ``down``.

What is changed, and only that: HOME (a temporary one, so the stores and the lab land there), the
control plane's ports (free ones, through ``ZONEMESH_*_PORT``, which a flag-less command line
leaves in charge; zmctl is pointed at it with its own config command), and the lab's ports only if
the default range 25000-25039 is taken on this machine (``--port-base``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from doc_blocks import README, block
from test_quickstart import LAB_PORTS, free_base

from zonemesh.jsonhttp import http

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LAB_BASE = 25000  # zonemesh.lab.topology.DEFAULT_PORT_BASE, what the README's command uses
INSTALL_LIMIT = 600.0  # a fresh venv and `pip install .` on a loaded 2-core machine


def fresh_clone(dest: Path) -> Path:
    """The files ``git clone`` of this checkout would give, uncommitted edits included: every file
    git tracks or would track (nothing ignored: no .venv, build/, *.egg-info)."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout, so there is no clone to make: {exc}")
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in this work tree is not in a clone of it
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    assert (dest / "README.md").is_file() and (dest / "zonemesh").is_dir()
    return dest


def newcomer_environment(home: Path, **extra: str) -> dict[str, str]:
    """A new terminal's environment: no test venv on PATH, no Python or zonemesh variables; the
    user's pip settings kept (pip reads them under XDG_CONFIG_HOME, which moving HOME would hide)."""
    real_home = Path.home()
    test_bin = str(Path(sys.executable).parent)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "ZONEMESH_", "ZMCTL_")) and key != "VIRTUAL_ENV"
    }
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != test_bin)
    env.setdefault("XDG_CONFIG_HOME", str(real_home / ".config"))
    env.setdefault("XDG_CACHE_HOME", str(real_home / ".cache"))
    home.mkdir(parents=True, exist_ok=True)
    return {**env, "HOME": str(home), **extra}


def sh(script: str, env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ports_free(base: int, count: int) -> bool:
    socks = []
    try:
        for port in range(base, base + count):
            sock = socket.socket()
            socks.append(sock)
            sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        for sock in socks:
            sock.close()


def install_and_run_a_control_plane(
    clone: Path, env: dict[str, str], diagnostics: int, log: Path
) -> subprocess.Popen[bytes]:
    """The README's first block, in a process group of its own as a terminal runs it; returns once
    the control plane is ready (the caller stops it with Ctrl-C: SIGINT to the group)."""
    command = block(README, "readme-install-run")
    assert "pip install ." in command and "-e" not in command.split()
    with log.open("wb") as out:
        shell = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", command],
            env=env,
            cwd=clone,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + INSTALL_LIMIT
        while True:
            assert shell.poll() is None, f"exit {shell.returncode}:\n{log.read_text(errors='replace')[-4000:]}"
            try:
                if http("GET", f"http://127.0.0.1:{diagnostics}/ready", timeout=1)[0] == 200:
                    return shell
            except OSError:
                pass  # still installing, or starting
            assert time.monotonic() < deadline, f"not ready in {INSTALL_LIMIT}s:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
    except BaseException:
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait(10)
        raise


@pytest.mark.timeout(INSTALL_LIMIT + 420)
def test_the_readme_commands_work_in_a_fresh_clone(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path / "zonemesh")
    api, diagnostics, xds = free_port(), free_port(), free_port()
    env = newcomer_environment(
        tmp_path / "home",
        ZONEMESH_API_PORT=str(api),
        ZONEMESH_DIAGNOSTICS_PORT=str(diagnostics),
        ZONEMESH_XDS_PORT=str(xds),
    )

    # 1. Install and run a control plane; then, "from another terminal", the README's two reads.
    shell = install_and_run_a_control_plane(clone, env, diagnostics, tmp_path / "cp.log")
    try:
        assert (clone / ".venv" / "bin" / "zonemesh-cp").exists()
        (installed,) = (clone / ".venv" / "lib").glob("python3*/site-packages/zonemesh/shared/__init__.py")
        assert not list(installed.parents[2].glob("__editable__*zonemesh*")), "not a plain install"
        assert "control_plane_started" in (tmp_path / "cp.log").read_text()  # --log-format console
        readme = README.read_text()
        for read in ("curl -s localhost:5681/meshes", ".venv/bin/zmctl get meshtimeouts -m default"):
            assert f"`{read}`" in readme, f"the README no longer says {read!r}"
        out = ok(sh(f"curl -s localhost:{api}/meshes", env, clone, timeout=30))
        assert [m["name"] for m in json.loads(out)["items"]] == ["default"]
        add = f".venv/bin/zmctl config control-planes add --name readme --address http://127.0.0.1:{api}"
        ok(sh(add, env, clone, timeout=30))
        out = ok(sh(".venv/bin/zmctl get meshtimeouts -m default", env, clone, timeout=60))
        assert "mesh-timeout-all-default" in out
    finally:
        os.killpg(shell.pid, signal.SIGINT)  # Ctrl-C in its terminal
        try:
            code = shell.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(shell.pid, signal.SIGKILL)
            code = shell.wait(10)
    assert code == 0, (tmp_path / "cp.log").read_text()[-3000:]

    # 2. The lab, from the same clone, with the venv the first block made.
    up_command = block(README, "readme-lab-up")
    assert up_command.split("#")[0].strip() == ".venv/bin/zonemesh-lab up"
    if not ports_free(DEFAULT_LAB_BASE, LAB_PORTS):
        up_command = up_command.replace("zonemesh-lab up", f"zonemesh-lab up --port-base {free_base()}")
    lab_dir = tmp_path / "home" / ".zonemesh" / "lab"
    try:
        out = ok(sh(up_command, env, clone, timeout=300))
        assert "Try:" in out and "zonemesh-lab check" in out, out
        check = sh(".venv/bin/zonemesh-lab check", env, clone, timeout=180)
        assert check.returncode == 0, check.stdout + check.stderr + _lab_logs(lab_dir)
        assert "FAIL" not in check.stdout
    finally:
        down = sh(".venv/bin/zonemesh-lab down", env, clone, timeout=120)
    assert ok(down).strip() == "lab stopped"
    state = json.loads((lab_dir / "state.json").read_text())
    assert state["phase"] == "stopped"
    leftovers = [p for p in state["processes"] if p["pid"] and _alive(p["pid"])]
    assert not leftovers, f"processes still running after down: {leftovers}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _lab_logs(directory: Path) -> str:
    return "\n".join(
        f"--- {log.name} ---\n{log.read_text(errors='replace')[-1500:]}"
        for log in sorted((directory / "logs").glob("*.log"))
    )
