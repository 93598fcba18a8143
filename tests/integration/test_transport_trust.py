"""Transport trust with real processes: a zone verifies global's KDS certificate and zonemesh-dp
its control plane's xDS certificate before sending a token, unless told not to.

The impostor is a real gRPC server on 127.0.0.1 with a self-signed certificate of its own, as an
on-path attacker would run: it records the metadata of every call that reaches it. A client that
verifies never gets that far, so the impostor never sees its token; one that skips verification
hands the token over (what --global-tls-skip-verify / --tls-skip-verify give away).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from zonemesh.shared.tls import generate_self_signed, system_ca_file

from zonemesh.testing import (
    ControlPlaneProcess,
    EnvoyAdmin,
    dp_run_command,
    free_port,
    http,
    sidecar_dataplane,
    stop_process,
    wait_until,
    zmctl_ok,
)

pytestmark = pytest.mark.slow

WAIT = 30.0
ZONE_TOKEN = "zone-token-that-must-not-leak"
DP_TOKEN = "dataplane-token-that-must-not-leak"


@dataclass
class Impostor(grpc.GenericRpcHandler):
    """Answers every method (KDS Sync, dataplane Register) by recording its metadata, then refusing."""

    port: int = 0
    cert: Path = Path()
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        def handle(requests: Any, context: grpc.ServicerContext) -> Any:
            with self.lock:
                self.calls.append((handler_call_details.method, dict(context.invocation_metadata())))  # type: ignore[attr-defined]
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "an impostor, not a control plane")

        return grpc.stream_stream_rpc_method_handler(handle)

    def tokens(self) -> list[str]:
        with self.lock:
            return [md["authorization"] for _, md in self.calls if "authorization" in md]


@pytest.fixture
def impostor(tmp_path: Path) -> Iterator[Impostor]:
    cert, key = generate_self_signed("impostor", ["127.0.0.1", "localhost"])
    (tmp_path / "impostor.crt").write_bytes(cert)
    recorder = Impostor(cert=tmp_path / "impostor.crt")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((recorder,))
    recorder.port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    server.start()
    yield recorder
    server.stop(0)


def events(cp: ControlPlaneProcess, name: str) -> list[dict[str, Any]]:
    found = []
    for line in cp.logs().splitlines():
        if f'"{name}"' in line:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == name:
                found.append(event)
    return found


def zone_process(data_dir: Path, kds_port: int, token: str, *trust: str) -> ControlPlaneProcess:
    """A federated zone (memory store) dialling grpcs://127.0.0.1:<kds_port>; ``trust``: its TLS flags."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "zone.token").write_text(token)
    args = [
        "--mode", "zone", "--zone", data_dir.name, "--store", "memory",
        "--global-address", f"grpcs://127.0.0.1:{kds_port}",
        "--zone-token-file", str(data_dir / "zone.token"), *trust,
    ]  # fmt: skip
    return ControlPlaneProcess(data_dir, args=args)


def kds_status(zone: ControlPlaneProcess) -> dict[str, Any]:
    status, body = zone.get("/status/kds")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def refused_by_tls(zone: ControlPlaneProcess) -> dict[str, Any]:
    """/status/kds once the zone has failed at least twice (each attempt is logged)."""
    return wait_until(  # type: ignore[no-any-return]
        lambda: (s := kds_status(zone))["failedAttempts"] >= 2 and s, WAIT, what="two refused attempts"
    )


def system_bundle_refusal(kds_port: int) -> str:
    """What a zone without --global-ca-file says about a self-signed global on this machine."""
    system = system_ca_file()
    if system is None:
        return "no CA to verify global's KDS certificate with: give --global-ca-file"
    return (
        f"global's KDS certificate at 127.0.0.1:{kds_port} did not verify against the system CA bundle "
        f"{system}: self signed certificate; give the CA that signed it with --global-ca-file (global's own "
        "self-signed certificate is kds-tls.crt in global's data dir)"
    )


# --- zone -> global --------------------------------------------------------------------------


def test_zone_without_a_ca_file_never_gives_its_token_to_an_impostor(tmp_path: Path, impostor: Impostor) -> None:
    zone = zone_process(tmp_path / "zone-1", impostor.port, ZONE_TOKEN)
    try:
        zone.start()
        status = refused_by_tls(zone)
        assert impostor.calls == []  # no call, so no token: TLS failed before the first byte of it
        assert status["connected"] is False
        assert status["lastError"].startswith(system_bundle_refusal(impostor.port)), status["lastError"]
        failures = events(zone, "global_connection_failed")
        assert len(failures) >= 2 and all(f["error"] == status["lastError"] for f in failures), failures
    finally:
        zone.stop()


def test_zone_told_to_skip_verification_hands_its_token_to_anyone(tmp_path: Path, impostor: Impostor) -> None:
    """What --global-tls-skip-verify gives away, shown: the impostor receives the zone token."""
    zone = zone_process(tmp_path / "zone-1", impostor.port, ZONE_TOKEN, "--global-tls-skip-verify")
    try:
        zone.start()
        wait_until(impostor.tokens, WAIT, what="the impostor to receive a call")
        assert impostor.tokens()[0] == f"Bearer {ZONE_TOKEN}"
        assert impostor.calls[0][0] == "/zonemesh.kds.v1.KDS/Sync"
        assert len(events(zone, "global_tls_verification_disabled")) == 1
    finally:
        zone.stop()


def test_zones_and_a_real_global(tmp_path: Path) -> None:
    """Global's self-signed KDS certificate: without a CA file a zone does not connect and says
    why; with global's kds-tls.crt it does; with --global-tls-skip-verify it does, with a warning."""
    kds_port = free_port()
    args = ["--mode", "global", "--store", "memory", "--kds-address", "127.0.0.1", "--kds-port", str(kds_port)]
    glob = ControlPlaneProcess(tmp_path / "global", args=args)
    zones: list[ControlPlaneProcess] = []
    try:
        glob.start()

        def token(zone: str) -> str:
            status, body = http("POST", glob.api + "/tokens/zone", {"zone": zone, "validFor": "1h"})
            assert status == 200, body
            return str(body)

        ca = tmp_path / "global" / "kds-tls.crt"
        unverified = zone_process(tmp_path / "zone-1", kds_port, token("zone-1"))
        verified = zone_process(tmp_path / "zone-2", kds_port, token("zone-2"), "--global-ca-file", str(ca))
        skipping = zone_process(tmp_path / "zone-3", kds_port, token("zone-3"), "--global-tls-skip-verify")
        for zone in (unverified, verified, skipping):
            zones.append(zone)  # before start: stopped below even if its start fails
            zone.start()

        wait_until(lambda: kds_status(verified)["connected"], WAIT, what="zone-2 (CA file) connected")
        wait_until(lambda: kds_status(skipping)["connected"], WAIT, what="zone-3 (skip verify) connected")
        [warning] = events(skipping, "global_tls_verification_disabled")
        assert "anyone on the path to global receives the zone token" in warning["risk"]
        assert events(verified, "global_tls_verification_disabled") == []

        status = refused_by_tls(unverified)
        assert not status["connected"]
        assert status["lastError"].startswith(system_bundle_refusal(kds_port)), status["lastError"]
        _, online = glob.get("/zones+insights")
        assert {z["name"]: z["online"] for z in online["items"]} == {"zone-2": True, "zone-3": True}
    finally:
        for cp in [*zones, glob]:
            cp.stop()


# --- zonemesh-dp -> zone control plane -------------------------------------------------------


def run_dp(tmp_path: Path, xds_port: int, ca_file: Path | None, *extra: str) -> subprocess.CompletedProcess[str]:
    """``zonemesh-dp run`` until it exits on its own (bounded)."""
    (tmp_path / "dp.token").write_text(DP_TOKEN)
    cmd = dp_run_command(
        xds_port=xds_port,
        ca_file=ca_file,
        name="app-a",
        mesh="default",
        dataplane=["--dataplane-inline", json.dumps(sidecar_dataplane("app-a", free_port(), free_port()))],
        token_file=tmp_path / "dp.token",
        admin_port=free_port(),
        work_dir=tmp_path / "dp",
        extra=extra,
    )
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_dp_without_a_ca_file_refuses_an_impostor_before_sending_its_token(tmp_path: Path, impostor: Impostor) -> None:
    out = run_dp(tmp_path, impostor.port, None)
    assert impostor.calls == []
    assert out.returncode == 4, out.stderr
    system = system_ca_file()
    expected = (
        f"the control plane's xDS certificate at 127.0.0.1:{impostor.port} did not verify against the system "
        f"CA bundle {system}: self signed certificate; pass --ca-cert-file with the CA that signed it"
        if system
        else "no CA to verify the control plane's xDS certificate with: pass --ca-cert-file"
    )
    assert expected in out.stderr, out.stderr
    assert impostor.calls == []
    assert not (tmp_path / "dp" / "bootstrap.json").exists()


@pytest.mark.parametrize("trust", ["--tls-skip-verify", "--ca-cert-file"])
def test_dp_that_trusts_the_impostor_sends_it_the_token(tmp_path: Path, impostor: Impostor, trust: str) -> None:
    """The impostor's own certificate as --ca-cert-file, or --tls-skip-verify: the token reaches it
    (and the agent exits 3, refused). This is what verification prevents."""
    extra = ["--ca-cert-file", str(impostor.cert)] if trust == "--ca-cert-file" else ["--tls-skip-verify"]
    out = run_dp(tmp_path, impostor.port, None, *extra)
    assert out.returncode == 3, out.stderr
    assert impostor.tokens() == [f"Bearer {DP_TOKEN}"]
    assert impostor.calls[0][0] == "/zonemesh.dataplane.v1.DataplaneRegistration/Register"
    assert ("cp_tls_verification_disabled" in out.stdout + out.stderr) == (trust == "--tls-skip-verify")


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    """A standalone control plane with its self-signed xDS certificate (<data dir>/xds.crt)."""
    cp = ControlPlaneProcess(tmp_path / "cp", args=["--store", "memory"])
    try:
        yield cp.start()
    finally:
        cp.stop()


def start_dp(
    tmp_path: Path, cp: ControlPlaneProcess, *extra: str, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], EnvoyAdmin]:
    token = zmctl_ok(cp.api, "generate", "dataplane-token", "--mesh", "default", "--name", "app-a", "--valid-for", "1h")
    token = token.strip()
    (tmp_path / "dp.token").write_text(token)
    admin = free_port()
    cmd = dp_run_command(
        xds_port=cp.xds_port,
        ca_file=None,
        name="app-a",
        mesh="default",
        dataplane=["--dataplane-inline", json.dumps(sidecar_dataplane("app-a", free_port(), free_port()))],
        token_file=tmp_path / "dp.token",
        admin_port=admin,
        work_dir=tmp_path / "dp",
        extra=extra,
    )
    log = (tmp_path / "dp.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    log.close()
    return proc, EnvoyAdmin("app-a", admin)


def test_dp_refuses_a_real_control_planes_self_signed_certificate_without_its_ca(
    tmp_path: Path, cp: ControlPlaneProcess
) -> None:
    out = run_dp(tmp_path, cp.xds_port, None)
    assert out.returncode == 4, out.stderr
    assert "did not verify against the system CA bundle" in out.stderr or "no CA to verify" in out.stderr
    assert "--ca-cert-file" in out.stderr
    _, dataplanes = cp.get("/meshes/default/dataplanes")
    assert dataplanes["total"] == 0


@pytest.mark.parametrize("trust", ["system-bundle", "skip-verify"])
def test_envoy_reaches_the_control_plane_with_the_system_bundle_or_when_told_not_to_verify(
    tmp_path: Path, cp: ControlPlaneProcess, trust: str
) -> None:
    """No --ca-cert-file: the registration call and Envoy verify against the system bundle
    (SSL_CERT_FILE names the CP's certificate here), or, with --tls-skip-verify, neither does."""
    if trust == "system-bundle":
        env, extra = {**os.environ, "SSL_CERT_FILE": str(cp.data_dir / "xds.crt")}, []
    else:
        env, extra = dict(os.environ), ["--tls-skip-verify"]
    proc, envoy = start_dp(tmp_path, cp, *extra, env=env)
    try:
        wait_until(
            lambda: proc.poll() is None and envoy.stat("control_plane.connected_state") == 1,
            WAIT,
            what="Envoy connected to the control plane",
        )
        bootstrap = json.loads((tmp_path / "dp" / "bootstrap.json").read_text())
        cluster = bootstrap["static_resources"]["clusters"][0]
        context = cluster["transport_socket"]["typed_config"]["common_tls_context"]
        if trust == "system-bundle":
            assert context["validation_context"]["trusted_ca"] == {"filename": str(cp.data_dir / "xds.crt")}
        else:
            assert "validation_context" not in context
    finally:
        assert stop_process(proc) == 0, (tmp_path / "dp.log").read_text()[-3000:]
