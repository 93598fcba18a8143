"""zonemesh-dp without a control plane: flag and file checks (exit 2 with the reason, nothing
started), the bootstrap, and the Envoy supervisor's restart backoff and crash-loop limit, with
real child processes standing in for a crashing Envoy."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from zonemesh.dp import main as dp_main
from zonemesh.dp.admin import AdminAddress
from zonemesh.dp.agent import EXIT_FAILURE, EXIT_USAGE, AgentError, AgentOptions, prepare
from zonemesh.dp.bootstrap import BootstrapParams, build_bootstrap
from zonemesh.dp.envoy import EnvoyCrashLoop, EnvoySupervisor, SupervisorSettings


@pytest.fixture(autouse=True)
def keep_log_config() -> Iterator[None]:
    """``main`` configures structlog for the captured stream; put the suite's config back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


DATAPLANE = "networking: {address: 127.0.0.1, inbound: [{port: 8080, tags: {kuma.io/service: web}}]}"


def run(tmp_path: Path, *extra: str, token: str | None = "header.payload.signature") -> list[str]:
    args = ["run", "--cp-address", "https://127.0.0.1:1", "--name", "web-1", "--mesh", "default"]
    if token is not None:
        (tmp_path / "token").write_text(token)
    args += ["--dataplane-token-file", str(tmp_path / "token"), "--work-dir", str(tmp_path / "work"), *extra]
    return args


@pytest.mark.parametrize(
    ("extra", "token", "message"),
    [
        (["--dataplane-inline", DATAPLANE, "--proxy-type", "ingress"], "t", "is not a valid ZoneIngress"),
        (["--dataplane-inline", DATAPLANE, "--proxy-type", "egress"], "t", "is not a valid ZoneEgress"),
        (["--dataplane-inline", "networking: {port: 0}", "--proxy-type", "egress"], "t", "networking.port"),
        (["--dataplane-inline", DATAPLANE], None, "cannot read --dataplane-token-file"),
        (["--dataplane-inline", DATAPLANE], "", "is empty"),
        (["--dataplane-inline", "networking: {inbound: [{port: 0}]}"], "t", "is not a valid Dataplane"),
        (["--dataplane-inline", "networking: [unclosed"], "t", "is not valid YAML"),
        (["--dataplane-file", "/nonexistent/dp.yaml"], "t", "cannot read /nonexistent/dp.yaml"),
    ],
)
def test_bad_flags_and_files_exit_2_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], token: str | None, message: str
) -> None:
    assert dp_main.main(run(tmp_path, *extra, token=token)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "work" / "bootstrap.json").exists()


def test_plaintext_control_plane_address_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = run(tmp_path, "--dataplane-inline", DATAPLANE)
    args[args.index("https://127.0.0.1:1")] = "http://127.0.0.1:5678"
    assert dp_main.main(args) == EXIT_USAGE
    assert "the xDS port speaks TLS, use https://HOST:5678" in capsys.readouterr().err


def test_unknown_proxy_type_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        dp_main.main(run(tmp_path, "--dataplane-inline", DATAPLANE, "--proxy-type", "gateway"))
    assert exc.value.code == 2


def test_bootstrap_names_the_node_and_carries_the_token_as_metadata() -> None:
    params = BootstrapParams("default", "web-1", "web", "127.0.0.1", 5678, "/ca.pem", "tok", 9901)
    boot = build_bootstrap(params)
    text = json.dumps(boot)
    assert boot["node"]["id"] == "default.web-1"
    assert '"Bearer tok"' in text and "/ca.pem" in text
    assert boot["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_bootstrap_speaks_delta_xds_unless_sotw_is_asked_for(tmp_path: Path) -> None:
    params = BootstrapParams("default", "web-1", "web", "127.0.0.1", 5678, "/ca.pem", "tok", 9901)
    assert build_bootstrap(params)["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    sotw = dataclasses.replace(params, xds_protocol="sotw")
    assert build_bootstrap(sotw)["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"
    args = dp_main.build_parser().parse_args(run(tmp_path, "--dataplane-inline", DATAPLANE))
    assert args.xds_protocol == "delta"
    with pytest.raises(SystemExit) as exc:
        dp_main.main(run(tmp_path, "--dataplane-inline", DATAPLANE, "--xds-protocol", "rest"))
    assert exc.value.code == EXIT_USAGE
    with pytest.raises(ValueError, match="choose among delta, sotw"):
        build_bootstrap(dataclasses.replace(params, xds_protocol="rest"))
    options = AgentOptions("https://127.0.0.1:1", "web-1", "default", str(tmp_path / "token"), xds_protocol="rest")
    with pytest.raises(AgentError, match="--xds-protocol must be delta or sotw") as refused:
        prepare(options, tmp_path / "work")
    assert refused.value.code == EXIT_USAGE


def test_bootstrap_admin_is_a_0600_unix_socket_unless_a_tcp_port_is_asked_for() -> None:
    socket_params = BootstrapParams(
        "default", "web-1", "web", "127.0.0.1", 5678, "/ca.pem", "tok", None, admin_socket="/run/dp/envoy-admin.sock"
    )
    boot = build_bootstrap(socket_params)
    assert boot["admin"] == {"address": {"pipe": {"path": "/run/dp/envoy-admin.sock", "mode": 0o600}}}
    metadata = boot["node"]["metadata"]
    assert metadata["dataplane.admin.socketPath"] == "/run/dp/envoy-admin.sock"
    assert "dataplane.admin.port" not in metadata  # nothing listens on a port

    tcp = build_bootstrap(dataclasses.replace(socket_params, admin_port=9905, admin_socket=None))
    assert tcp["admin"] == {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9905}}}
    assert tcp["node"]["metadata"]["dataplane.admin.port"] == "9905"
    assert "dataplane.admin.socketPath" not in tcp["node"]["metadata"]

    for both_or_neither in (
        dataclasses.replace(socket_params, admin_port=9905),
        dataclasses.replace(socket_params, admin_socket=None),
    ):
        with pytest.raises(ValueError, match="exactly one"):
            build_bootstrap(both_or_neither)


def test_a_socket_path_too_long_for_a_socket_address_is_bound_from_its_directory() -> None:
    long_socket = "/" + "d" * 100 + "/envoy-admin.sock"
    params = BootstrapParams(
        "default", "web-1", "web", "127.0.0.1", 5678, "/ca.pem", "tok", None, admin_socket=long_socket
    )
    boot = build_bootstrap(params)
    assert boot["admin"]["address"]["pipe"]["path"] == "envoy-admin.sock"  # Envoy runs in its directory
    assert boot["node"]["metadata"]["dataplane.admin.socketPath"] == long_socket
    supervisor = EnvoySupervisor("envoy", Path("/b.json"), AdminAddress(socket_path=Path(long_socket)))
    assert supervisor.admin.socket_path == Path(long_socket)


def test_admin_defaults_to_the_socket_and_readiness_to_9902() -> None:
    args = dp_main.build_parser().parse_args(run(Path("/nonexistent"), "--dataplane-inline", DATAPLANE, token=None))
    assert args.admin_port is None
    assert args.readiness_port == 9902
    args = dp_main.build_parser().parse_args(
        [*run(Path("/x"), "--dataplane-inline", DATAPLANE, token=None), "--readiness-port", "0", "--admin-port", "9901"]
    )
    assert (args.readiness_port, args.admin_port) == (0, 9901)


@pytest.mark.parametrize("flags", [["--readiness-port", "70000"], ["--admin-port", "0"], ["--readiness-port", "x"]])
def test_bad_ports_are_usage_errors(tmp_path: Path, flags: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        dp_main.main(run(tmp_path, "--dataplane-inline", DATAPLANE, *flags))
    assert exc.value.code == 2


@pytest.mark.parametrize(
    ("flags", "where"),
    [([], "its Unix socket {work}/envoy-admin.sock"), (["--admin-port", "9905"], "--admin-port 9905")],
)
def test_a_dataplane_admin_port_the_agent_would_not_open_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], where: str
) -> None:
    """networking.admin.port is accepted only when it is what Envoy's admin listens on."""
    with_admin = (
        "networking: {address: 127.0.0.1, admin: {port: 9901}, inbound: [{port: 8080, tags: {kuma.io/service: web}}]}"
    )
    assert dp_main.main(run(tmp_path, "--dataplane-inline", with_admin, *flags)) == EXIT_USAGE
    message = (
        f"the Dataplane sets networking.admin.port 9901, but Envoy's admin API is on "
        f"{where.format(work=tmp_path / 'work')}: remove networking.admin.port, or pass --admin-port 9901 to serve "
        "the admin API on TCP 127.0.0.1:9901 (every local user can then read this proxy's token from it)"
    )
    assert message in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_readiness_and_admin_on_one_port_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = run(tmp_path, "--dataplane-inline", DATAPLANE, "--admin-port", "9950", "--readiness-port", "9950")
    assert dp_main.main(args) == EXIT_USAGE
    assert "--readiness-port and --admin-port are both 9950: give them different ports" in capsys.readouterr().err


def test_a_taken_readiness_port_stops_the_agent_before_it_registers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ca.crt").write_text("not used: the agent stops before it connects")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = run(tmp_path, "--dataplane-inline", DATAPLANE, "--ca-cert-file", str(tmp_path / "ca.crt"))
        assert dp_main.main([*args, "--readiness-port", str(port)]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert f"cannot serve the readiness endpoint on 127.0.0.1:{port}" in err, err
    assert "give a free port with --readiness-port (0: no readiness endpoint)" in err
    assert not (tmp_path / "work" / "bootstrap.json").exists()


def test_bootstrap_verifies_the_control_plane_unless_told_not_to() -> None:
    params = BootstrapParams("default", "web-1", "web", "127.0.0.1", 5678, "/ca.pem", "tok", 9901)
    tls = build_bootstrap(params)["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
    assert tls["common_tls_context"]["validation_context"] == {
        "trusted_ca": {"filename": "/ca.pem"},
        "match_typed_subject_alt_names": [{"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}],
    }
    skip = dataclasses.replace(params, ca_cert_file=None)  # --tls-skip-verify
    tls = build_bootstrap(skip)["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
    assert "validation_context" not in tls["common_tls_context"]


def test_ca_file_and_skip_verify_together_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ca.crt").write_text("x")
    args = run(tmp_path, "--dataplane-inline", DATAPLANE, "--ca-cert-file", str(tmp_path / "ca.crt"))
    with pytest.raises(SystemExit) as exc:
        dp_main.main([*args, "--tls-skip-verify"])
    assert exc.value.code == EXIT_USAGE
    assert "not allowed with argument" in capsys.readouterr().err


def test_no_ca_file_and_no_system_bundle_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-bundle.pem"))
    assert dp_main.main(run(tmp_path, "--dataplane-inline", DATAPLANE)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "no CA to verify the control plane's xDS certificate with: pass --ca-cert-file" in err, err
    assert not (tmp_path / "work" / "bootstrap.json").exists()


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-envoy"
    path.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    path.chmod(0o755)
    return str(path)


async def test_supervisor_restarts_with_backoff_then_gives_up_on_a_crash_loop(tmp_path: Path) -> None:
    binary = script(tmp_path, "sys.exit(7)")
    settings = SupervisorSettings(initial_backoff=0.05, max_backoff=0.2, max_restarts=3, healthy_after=30)
    supervisor = EnvoySupervisor(binary, tmp_path / "bootstrap.json", 1, settings=settings)
    started = time.monotonic()
    with pytest.raises(EnvoyCrashLoop, match=r"exited 4 times in a row \(last exit code 7\)"):
        await asyncio.wait_for(supervisor.run(asyncio.Event()), timeout=20)
    assert supervisor.restarts == 3
    assert time.monotonic() - started >= 0.05 + 0.1 + 0.2  # backoff doubled, capped


async def test_supervisor_stops_a_running_child_when_asked(tmp_path: Path) -> None:
    binary = script(tmp_path, "time.sleep(60)")
    settings = SupervisorSettings(drain_seconds=0, stop_timeout=5)
    supervisor = EnvoySupervisor(binary, tmp_path / "bootstrap.json", 1, settings=settings)
    stop = asyncio.Event()
    task = asyncio.create_task(supervisor.run(stop))
    for _ in range(100):
        if supervisor.process is not None:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert await supervisor.drain_and_stop() == -15  # SIGTERM


def test_envoy_dies_with_an_agent_killed_without_cleanup(tmp_path: Path) -> None:
    """SIGKILL to the agent leaves no Envoy behind (Linux parent-death signal)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal is Linux only")
    pid_file = tmp_path / "envoy.pid"
    binary = script(tmp_path, f"import os\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)")
    agent = tmp_path / "agent.py"
    agent.write_text(
        "import asyncio, pathlib\n"
        "from zonemesh.dp.envoy import EnvoySupervisor\n"
        f"s = EnvoySupervisor({binary!r}, pathlib.Path('b.json'), 1)\n"
        "asyncio.run(s.run(asyncio.Event()))\n"
    )
    proc = subprocess.Popen([sys.executable, str(agent)])
    try:
        for _ in range(200):  # bounded: 20 s
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.1)
        envoy_pid = int(pid_file.read_text())
        proc.kill()
        proc.wait(10)
        for _ in range(100):  # bounded: 10 s
            if not _alive(envoy_pid):
                break
            time.sleep(0.1)
        assert not _alive(envoy_pid), "the child outlived its killed agent"
    finally:
        proc.kill()
        proc.wait(10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # Reparented to init (or a subreaper) and not yet reaped: a zombie is dead too.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return True
