"""Envoy's admin API is the proxy's: a real control plane, ``zonemesh-dp`` and the real Envoy.

The admin API has no authentication: ``GET /config_dump`` shows the dataplane token (the
bootstrap's ADS ``initial_metadata``, which Envoy does not redact) and ``POST /quitquitquit``,
``/runtime_modify``, ``/logging`` stop or change the proxy. So, by default:

- Envoy opens no TCP listener for admin: the TCP sockets it listens on are exactly the listeners
  its control plane gave it;
- the admin API is a Unix socket ``<work-dir>/envoy-admin.sock``, mode 0600, owned by the user
  running the agent, in a 0700 work dir; that user reads ``/stats`` and ``/config_dump`` through
  it (and finds the token there: the protection matters); ``nobody`` cannot open it, even when
  the operator's work dir lets others in;
- health checks read the agent's ``GET /ready`` on 127.0.0.1:``--readiness-port``: 200 ``LIVE``
  once Envoy is, 503 before Envoy runs, while it does not answer and while the agent shuts down,
  404 on every other path (none reaches the admin API);
- ``--admin-port N`` still serves the admin API on TCP 127.0.0.1:N (and then ``nobody`` reads the
  token from it: what the opt-in exposes).

The checks as another user fork a child that drops root for ``nobody`` (setgid/setuid 65534):
they need the tests to run as root, and are skipped otherwise. Every wait is bounded; every
process is stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import select
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest

from zonemesh.dp.envoy import find_envoy
from zonemesh.testing import (
    ControlPlaneProcess,
    EnvoyAdmin,
    EnvoyAdminSocket,
    ProcessExited,
    admin_socket,
    dp_run_command,
    envoy_admin,
    free_port,
    http,
    log_excerpt,
    log_tails,
    sidecar_dataplane,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.slow

WAIT = 60.0  # two cores shared with other work: generous, still bounded
OLD_DEFAULT_ADMIN_PORT = 9901


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(tmp_path_factory.mktemp("envoy-admin") / "cp", args=["--store", "memory"])
    try:
        process.start(timeout=WAIT)
        yield process
    finally:
        process.kill()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private directory with a short path (pytest's tmp_path can be too long for a socket path)."""
    path = Path(tempfile.mkdtemp(prefix="zm-ea-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Agent:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    work: Path
    token: str
    inbound: int
    readiness: int

    def events(self, event: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if f'"{event}"' in line:
                with contextlib.suppress(json.JSONDecodeError):
                    found.append(json.loads(line))
        return found

    def envoy_pid(self) -> int:
        started = self.events("envoy_started")
        assert started, self.log.read_text(errors="replace")[-3000:]
        return int(started[-1]["pid"])

    def ready(self, path: str = "/ready", method: str = "GET") -> tuple[int, str]:
        """The agent's readiness endpoint (raises OSError when nothing listens)."""
        status, body = http(method, f"http://127.0.0.1:{self.readiness}{path}", timeout=10)
        return status, str(body)

    def alive(self) -> None:
        if self.process.poll() is not None:
            raise ProcessExited(f"zonemesh-dp exited {self.process.returncode}:\n{self.log.read_text()[-3000:]}")


class Agents:
    """The zonemesh-dp agents a test starts, all stopped at its end."""

    def __init__(self, cp: ControlPlaneProcess, logs: Path) -> None:
        self.cp = cp
        self.logs = logs
        self.started: list[Agent] = []

    def start(self, name: str, work: Path, *extra: str, admin_port: int | None = None) -> Agent:
        status, token = http(
            "POST", self.cp.api + "/tokens/dataplane", {"mesh": "default", "name": name, "validFor": "1h"}
        )
        assert status == 200, token
        token_file = self.logs / f"{name}.token"
        token_file.write_text(str(token))
        inbound = free_port()
        readiness = free_port()
        dataplane = sidecar_dataplane(name, inbound, free_port())
        cmd = dp_run_command(
            xds_port=self.cp.xds_port,
            ca_file=self.cp.data_dir / "xds.crt",
            name=name,
            mesh="default",
            dataplane=["--dataplane-inline", json.dumps(dataplane)],
            token_file=token_file,
            admin_port=admin_port,
            work_dir=work,
            readiness_port=readiness,
            extra=extra,
        )
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        agent = Agent(name, process, log, work, str(token), inbound, readiness)
        self.started.append(agent)
        return agent

    def stop(self) -> None:
        for agent in self.started:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(agent.envoy_pid(), signal.SIGCONT)  # a test may have stopped it
            stop_process(agent.process)


@pytest.fixture
def agents(cp: ControlPlaneProcess, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Agents]:
    started = Agents(cp, tmp_path)
    since = len(cp.logs())

    def logs() -> str:
        own = log_tails((a.log for a in started.started), 3000)
        return "\n".join([*own, log_excerpt("control plane", cp.logs()[since:])])

    request.node.failure_logs = logs
    try:
        yield started
    finally:
        started.stop()


def wait_live(agent: Agent) -> None:
    def live() -> bool:
        agent.alive()
        return agent.ready() == (200, "LIVE")

    wait_until(live, WAIT, what=f"{agent.name}'s readiness endpoint to say LIVE")


def tcp_listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its socket inodes, looked up in its netns' tables)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def unix_listening_paths(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    paths = set()
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[6] in inodes and fields[5] == "01":  # 01: listening
            paths.add(fields[7])
    return paths


def listener_ports(dump: dict[str, Any]) -> set[int]:
    """The ports of the listeners Envoy got over xDS."""
    ports = set()
    for section in dump["configs"]:
        for entry in section.get("dynamic_listeners", []):
            address = entry["active_state"]["listener"]["address"]["socket_address"]
            ports.add(int(address["port_value"]))
    return ports


def bootstrap(dump: dict[str, Any]) -> dict[str, Any]:
    for section in dump["configs"]:
        if section["@type"].endswith("BootstrapConfigDump"):
            return section["bootstrap"]  # type: ignore[no-any-return]
    raise AssertionError("no bootstrap in the config dump")


# --- as another user -----------------------------------------------------------------------------


def as_nobody(action: Callable[[], str]) -> str:
    """``action``'s result (or the exception it raised, as text), run in a forked child that has
    dropped root for the user nobody. Needs root."""
    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            result = action()
        except BaseException as exc:
            result = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(BaseException):
                os.write(write, result.encode()[:4000])
            os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 30)
        assert ready, "the child running as nobody did not answer in 30 s"
        return os.read(read, 4000).decode()
    finally:
        os.close(read)
        for _ in range(100):  # bounded: 10 s
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def connect_unix(path: Path) -> Callable[[], str]:
    def action() -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
        return "connected"

    return action


def token_over_tcp(port: int, token: str) -> Callable[[], str]:
    def action() -> str:
        conn = HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/config_dump")
            body = conn.getresponse().read().decode(errors="replace")
        finally:
            conn.close()
        return "read the token" if token in body else "no token in the config dump"

    return action


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")


# --- the tests ------------------------------------------------------------------------------------


def test_by_default_envoy_admin_is_a_private_unix_socket_and_no_tcp_listener(agents: Agents, short_dir: Path) -> None:
    work = short_dir / "web-1"
    agent = agents.start("web-1", work)
    wait_live(agent)
    sock = admin_socket(work)
    envoy = EnvoyAdminSocket.of("web-1", work)

    # (3) its user reads the admin API through the socket, and the token is there to read.
    wait_until(lambda: agent.inbound in listener_ports(envoy.config_dump()), WAIT, what="the inbound listener")
    assert envoy.stat("server.live") == 1
    dump = envoy.config_dump()
    assert f"Bearer {agent.token}" in json.dumps(dump), "the dataplane token is in the config dump"
    boot = bootstrap(dump)
    assert boot["admin"]["address"] == {"pipe": {"path": str(sock), "mode": 0o600}}
    metadata = boot["node"]["metadata"]
    assert metadata["dataplane.admin.socketPath"] == str(sock) and "dataplane.admin.port" not in metadata

    # (1) Envoy listens on TCP only for its xDS listeners: no admin port; its admin is the socket.
    pid = agent.envoy_pid()
    tcp = tcp_listening_ports(pid)
    assert tcp == listener_ports(dump), f"Envoy listens on {tcp}; its xDS listeners are {listener_ports(dump)}"
    assert OLD_DEFAULT_ADMIN_PORT not in tcp
    assert str(sock) in unix_listening_paths(pid)

    # (2) mode 0600, owned by the agent's user, in a 0700 dir.
    st = sock.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert oct(stat.S_IMODE(st.st_mode)) == "0o600"
    assert st.st_uid == os.geteuid()
    assert oct(stat.S_IMODE(work.stat().st_mode)) == "0o700"

    if os.geteuid() == 0:
        refused = as_nobody(connect_unix(sock))
        assert refused.startswith("PermissionError"), refused


@needs_root
def test_nobody_cannot_open_the_socket_even_in_a_work_dir_others_may_enter(agents: Agents, short_dir: Path) -> None:
    """The socket's own mode keeps others out, whatever the operator's --work-dir allows."""
    short_dir.chmod(0o755)
    work = short_dir / "web-2"
    work.mkdir(mode=0o755)
    work.chmod(0o755)  # an existing --work-dir is kept as it is
    agent = agents.start("web-2", work)
    wait_live(agent)
    sock = admin_socket(work)
    assert as_nobody(lambda: "sees it" if stat.S_ISSOCK(os.stat(sock).st_mode) else "no socket") == "sees it"
    refused = as_nobody(connect_unix(sock))
    assert refused.startswith("PermissionError"), refused
    assert envoy_admin(sock, "/ready") == (200, "LIVE\n")  # while its owner can


def test_readiness_endpoint_answers_for_envoy_and_serves_nothing_else(agents: Agents, short_dir: Path) -> None:
    # Envoy through a wrapper that waits for a file: "before Envoy is up" lasts until the test says so.
    gate = short_dir / "gate"
    wrapper = short_dir / "envoy"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" != "--version" ]; then\n'
        f"  i=0; while [ ! -e {gate} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n"
        "fi\n"
        f'exec {find_envoy()} "$@"\n'
    )
    wrapper.chmod(0o700)
    work = short_dir / "web-3"
    agent = agents.start("web-3", work, "--envoy-binary", str(wrapper), "--drain-time", "5")

    def answering() -> tuple[int, str]:
        agent.alive()
        return agent.ready()

    # Before Envoy runs: 503.
    first = wait_until(answering, WAIT, what="the readiness endpoint to answer")
    assert first == (503, "NOT_READY")
    wait_until(lambda: agent.events("envoy_started"), WAIT, what="the agent to start Envoy")
    assert agent.ready() == (503, "NOT_READY")

    gate.touch()
    wait_live(agent)
    pid = agent.envoy_pid()

    # Nothing but /ready, and nothing reaches the admin API.
    for method, path in [
        ("GET", "/config_dump"),
        ("GET", "/stats"),
        ("GET", "/"),
        ("GET", "/ready/../config_dump"),
        ("GET", "/ready/x"),
        ("GET", "/readyz"),
        ("POST", "/quitquitquit"),
        ("POST", "/logging?level=trace"),
        ("POST", "/runtime_modify?a=b"),
    ]:
        status, body = agent.ready(path, method)
        assert status == 404, (method, path, status, body)
        assert agent.token not in body
    for method in ("POST", "PUT", "DELETE", "HEAD"):
        assert agent.ready("/ready", method)[0] == 405, method
    assert agent.ready() == (200, "LIVE")
    assert agent.envoy_pid() == pid and len(agent.events("envoy_started")) == 1  # Envoy untouched

    # Envoy not answering (stopped): 503, then LIVE again.
    os.kill(pid, signal.SIGSTOP)
    try:
        assert agent.ready() == (503, "NOT_READY")
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_live(agent)

    # The agent shutting down: 503 while Envoy drains, then nothing listens.
    agent.process.send_signal(signal.SIGTERM)
    wait_until(lambda: agent.ready() == (503, "TERMINATING"), 10, interval=0.05, what="503 while shutting down")
    assert agent.process.wait(30) == 0
    with pytest.raises(OSError):
        agent.ready()


def test_a_work_dir_too_long_for_a_socket_address_still_works(agents: Agents, short_dir: Path) -> None:
    """A Unix socket's path may have 107 bytes; a work dir under a long $HOME or pytest's tmp_path
    gives a longer one. Envoy binds it from its work dir, the agent reaches it all the same."""
    work = short_dir / ("w" * 100)
    assert len(str(admin_socket(work))) > 107
    agent = agents.start("web-4", work, "--drain-time", "5")
    wait_live(agent)  # the agent reached Envoy's /ready through the socket
    assert stat.S_IMODE(admin_socket(work).stat().st_mode) == 0o600
    assert EnvoyAdminSocket.of("web-4", work).stat("server.live") == 1
    agent.process.send_signal(signal.SIGTERM)
    assert agent.process.wait(30) == 0
    assert agent.events("envoy_draining"), "the agent drained Envoy through the socket"


def test_admin_port_opts_in_to_tcp_admin(agents: Agents, short_dir: Path) -> None:
    work = short_dir / "web-5"
    port = free_port()
    agent = agents.start("web-5", work, admin_port=port)
    wait_live(agent)  # readiness reads Envoy's /ready over TCP here
    envoy = EnvoyAdmin("web-5", port)
    assert envoy.stat("server.live") == 1
    boot = bootstrap(envoy.config_dump())
    assert boot["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": port}
    assert boot["node"]["metadata"]["dataplane.admin.port"] == str(port)
    assert port in tcp_listening_ports(agent.envoy_pid())
    assert not admin_socket(work).exists()
    warned = agent.events("envoy_admin_tcp")
    assert warned and "/config_dump" in warned[0]["risk"], agent.log.read_text()[-2000:]
    if os.geteuid() == 0:
        # What the opt-in gives away: any local user reads the proxy's token.
        assert as_nobody(token_over_tcp(port, agent.token)) == "read the token"
