"""zonemesh-dp with several control plane addresses, on the real Envoy binary (docs/dataplane.md).

Two sidecars, app-a -> app-b, each given three addresses of its control plane: one where nothing
listens, and two TCP forwarders (separate processes) in front of one standalone control plane,
standing for two replicas. Registration skips the dead address; Envoy's xDS cluster lists all
three; kill -9 of the forwarder app-a's Envoy streams through moves its stream to the other one
(a change made afterwards reaches it); kill -9 of the control plane itself leaves both Envoys
serving traffic with their last configuration.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from zonemesh.testing import (
    ControlPlaneProcess,
    EnvoyAdminSocket,
    dp_run_command,
    free_port,
    http,
    sidecar_dataplane,
    start_http_app,
    stop_processes,
    wait_until,
    zmctl_ok,
)

pytestmark = pytest.mark.slow

# ``python -c FORWARDER <listen port> <target port>``: copies bytes both ways between each client
# on 127.0.0.1:<listen port> and 127.0.0.1:<target port> (TLS passes through untouched).
FORWARDER = textwrap.dedent(
    """
    import socket, sys, threading
    listen, target = int(sys.argv[1]), int(sys.argv[2])
    def pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    server = socket.create_server(("127.0.0.1", listen))
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", target))
        except OSError:
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pipe, args=(a, b), daemon=True).start()
    """
)


@dataclass
class Forwarder:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def get(url: str) -> tuple[int, str]:
    status, body = http("GET", url, timeout=3)
    return status, body if isinstance(body, str) else json.dumps(body)


def ads_connection(envoy: EnvoyAdminSocket) -> str | None:
    """The control plane address Envoy's ADS stream is connected to now (one active connection)."""
    active = []
    for line in envoy.admin("/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "ads_cluster" and parts[2] == "cx_active" and parts[3] != "0":
            active.append(parts[1])
    return active[0] if len(active) == 1 else None


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    stop_processes(started)


def test_envoy_moves_to_another_control_plane_address_and_keeps_its_config_when_all_are_gone(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    xds_port = free_port()
    cp = ControlPlaneProcess(
        tmp_path / "cp", args=["--mode", "standalone", "--xds-address", "127.0.0.1", "--xds-port", str(xds_port)]
    )
    try:
        cp.start()
        forwarders = []
        for _ in range(2):
            port = free_port()
            forwarders.append(
                Forwarder(port, subprocess.Popen([sys.executable, "-c", FORWARDER, str(port), str(xds_port)]))
            )
            procs.append(forwarders[-1].process)
        dead = free_port()  # nothing listens there
        addresses = ",".join(f"https://127.0.0.1:{port}" for port in (dead, *(f.port for f in forwarders)))

        ports = {name: (free_port(), free_port()) for name in ("app-a", "app-b")}  # inbound, app
        a_out = free_port()
        envoys = {}
        for name, (inbound, app) in ports.items():
            procs.append(start_http_app(name, app))
            outbound = [("app-b", a_out)] if name == "app-a" else []
            dataplane = sidecar_dataplane(name, inbound, app, outbound=outbound)
            token = zmctl_ok(
                cp.api, "generate", "dataplane-token", "--mesh", "default", "--name", name, "--valid-for", "1h"
            )
            (tmp_path / f"{name}.token").write_text(token.strip())
            cmd = dp_run_command(
                xds_port=xds_port,
                ca_file=cp.data_dir / "xds.crt",
                name=name,
                mesh="default",
                dataplane=["--dataplane-inline", json.dumps(dataplane)],
                token_file=tmp_path / f"{name}.token",
                work_dir=tmp_path / name,
            )
            cmd[cmd.index("--cp-address") + 1] = addresses
            with (tmp_path / f"{name}-dp.log").open("wb") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
            envoys[name] = EnvoyAdminSocket.of(name, tmp_path / name)
        url = f"http://127.0.0.1:{a_out}/"
        wait_until(lambda: get(url) == (200, "app-b"), 60, what="app-a's outbound reaching app-b through both Envoys")

        # registration went past the dead address; Envoy's xDS cluster lists all three
        assert '"cp_unavailable_trying_next"' in (tmp_path / "app-a-dp.log").read_text()
        envoy = envoys["app-a"]
        assert sorted(envoy.hosts("ads_cluster")) == sorted(
            f"127.0.0.1:{p}" for p in (dead, *(f.port for f in forwarders))
        )
        on = wait_until(lambda: ads_connection(envoy), 30, what="app-a's ADS stream on one address")
        assert on != f"127.0.0.1:{dead}"

        # kill -9 of the "replica" app-a's Envoy is on: its stream moves to the other one
        doomed = next(f for f in forwarders if f.address == on)
        other = next(f for f in forwarders if f is not doomed)
        doomed.process.kill()
        doomed.process.wait(10)
        killed = time.monotonic()
        wait_until(
            lambda: ads_connection(envoy) == other.address, 60, interval=0.05, what=f"app-a's ADS on {other.address}"
        )
        print(f"\napp-a's Envoy streamed from {other.address} {time.monotonic() - killed:.2f}s after kill -9 of {on}")
        assert get(url) == (200, "app-b")
        # ... and the stream is live there: a second app-b instance registered now reaches app-a's Envoy
        extra_port = free_port()
        second = {**sidecar_dataplane("app-b", extra_port, free_port()), "name": "app-b-2", "mesh": "default"}
        status, body = cp.put("/meshes/default/dataplanes/app-b-2", second)
        assert status in (200, 201), body
        wait_until(
            lambda: f"127.0.0.1:{extra_port}" in envoy.hosts("app-b"), 60, what="app-b-2 in app-a's Envoy endpoints"
        )
        status, body = cp.delete("/meshes/default/dataplanes/app-b-2")
        assert status == 200, body
        wait_until(lambda: f"127.0.0.1:{extra_port}" not in envoy.hosts("app-b"), 60, what="app-b-2 gone again")

        # every control plane address gone: both Envoys keep their last configuration, traffic flows
        cp.kill()
        other.process.kill()
        for _ in range(5):
            assert get(url) == (200, "app-b")
        assert all(p.poll() is None for p in procs if p not in (doomed.process, other.process))
        assert envoy.stat("control_plane.connected_state") == 0
    except BaseException:
        for name in ("app-a", "app-b"):
            log = tmp_path / f"{name}-dp.log"
            if log.is_file():
                print(f"--- {name} agent log ---\n{log.read_text(errors='replace')[-4000:]}")
        print(f"--- control plane log ---\n{cp.logs()[-4000:]}")
        raise
    finally:
        cp.kill()
