"""Zone tokens with real processes: `zmctl generate zone-token` online (POST /tokens/zone) and
offline (--signing-key-path --kid), a zone connecting with each, key rotation through the API
(add key 2, reissue, delete key 1), `zmctl get zones` online state, and
`zmctl generate dataplane-token` against a zone control plane."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
from pathlib import Path

import grpc
import jwt
import pytest
from test_kds import WAIT, kds_connected, online, start_global, zone_process
from zonemesh.proto import kds_pb2, kds_pb2_grpc
from zonemesh.shared.tokens.keys import generate_private_key_pem

from zonemesh.spawn import python_module
from zonemesh.testing import ControlPlaneProcess, free_port, wait_until

pytestmark = pytest.mark.slow


def zmctl(address: str, home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), "ZMCTL_CONFIG": str(home / "zmctl.yaml")}
    proc = subprocess.run(
        python_module("zonemesh.ctl", "--cp-address", address, *args),
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def zone_states(glob: ControlPlaneProcess, home: Path) -> dict[str, str]:
    """NAME -> STATUS from the `zmctl get zones` table."""
    run = zmctl(glob.api, home, "get", "zones")
    assert run.returncode == 0, run.stderr
    header, *rows = run.stdout.splitlines()
    status = header.split().index("STATUS")
    return {row.split()[0]: row.split()[status] for row in rows}


def open_stream(port: int, ca: bytes, zone: str, token: str) -> grpc.aio.AioRpcError | None:
    """Open a KDS stream as ``zone`` with ``token``; the refusal, or None if global answered Welcome."""

    async def attempt() -> grpc.aio.AioRpcError | None:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            call = kds_pb2_grpc.KDSStub(channel).Sync(
                metadata=(("client-id", zone), ("authorization", f"Bearer {token}"))
            )
            try:
                await call.write(kds_pb2.Message(hello=kds_pb2.Hello(zone=zone)))
                first = await call.read()
                assert first.WhichOneof("kind") == "welcome"
                return None
            except grpc.aio.AioRpcError as exc:
                return exc
            finally:
                call.cancel()

    return asyncio.run(attempt())


def connect_time(zone: ControlPlaneProcess) -> float | None:
    status, body = zone.get("/status/kds")
    return body["connectTime"] if status == 200 and body["connected"] else None


def test_zone_tokens_issued_by_zmctl_and_rotated(tmp_path: Path) -> None:
    home = tmp_path / "home"
    kds_port = free_port()
    glob = start_global(tmp_path / "global", kds_port)
    processes = [glob]
    try:
        ca = tmp_path / "global" / "kds-tls.crt"
        run = zmctl(glob.api, home, "generate", "zone-token", "--zone", "zone-1", "--valid-for", "720h")
        assert run.returncode == 0, run.stderr
        token1 = run.stdout.strip()
        assert jwt.get_unverified_header(token1)["kid"] == "1"
        claims = jwt.decode(token1, options={"verify_signature": False})
        assert claims["Zone"] == "zone-1" and claims["Scope"] == ["cp", "ingress", "egress"]
        assert claims["exp"] - claims["iat"] >= 720 * 3600

        # a zone name no zone could connect with: zmctl refuses it (usage error, --zone named) before
        # asking global, which refuses it too (tests/integration/test_input_validation.py)
        bad = zmctl(glob.api, home, "generate", "zone-token", "--zone", "", "--valid-for", "1h")
        assert bad.returncode == 2 and "argument --zone: invalid name" in bad.stderr

        zone1 = zone_process(tmp_path / "zone-1", "zone-1", kds_port, token1, ca, "memory")
        processes.append(zone1.start())
        wait_until(lambda: zone_states(glob, home) == {"zone-1": "Online"}, WAIT, what="zone-1 Online in zmctl")

        # a dataplane token from the zone control plane
        run = zmctl(zone1.api, home, "generate", "dataplane-token", "--mesh", "default", "--name", "dp-1",
                    "--tag", "kuma.io/service=web", "--proxy-type", "dataplane", "--valid-for", "1h")  # fmt: skip
        assert run.returncode == 0, run.stderr
        dp_claims = jwt.decode(run.stdout.strip(), options={"verify_signature": False})
        assert (dp_claims["Name"], dp_claims["Mesh"], dp_claims["Tags"]) == (
            "dp-1",
            "default",
            {"kuma.io/service": ["web"]},
        )

        # rotation, offline: the operator adds key 2 at global and signs with it locally
        pem = generate_private_key_pem()
        key_file = tmp_path / "key-2.pem"
        key_file.write_bytes(pem)
        # as docs/kds.md shows it
        secret = f"type: GlobalSecret\nname: zone-token-signing-key-2\ndata: {base64.b64encode(pem).decode()}\n"
        run = zmctl(glob.api, home, "apply", "-f", "-", stdin=secret)
        assert run.returncode == 0, run.stderr
        run = zmctl(glob.api, home, "generate", "zone-token", "--zone", "zone-1", "--valid-for", "24h",
                    "--signing-key-path", str(key_file), "--kid", "2")  # fmt: skip
        assert run.returncode == 0, run.stderr
        token2 = run.stdout.strip()
        first = connect_time(zone1)
        (tmp_path / "zone-1" / "zone.token").write_text(token2)
        wait_until(lambda: connect_time(zone1) not in (None, first), WAIT, what="zone-1 reconnected with key 2")
        # online issuance now signs with the newest key
        run = zmctl(glob.api, home, "generate", "zone-token", "--zone", "zone-2", "--valid-for", "1h")
        assert jwt.get_unverified_header(run.stdout.strip())["kid"] == "2"

        # delete key 1: tokens signed by it stop working, the zone on key 2 keeps its stream
        run = zmctl(glob.api, home, "delete", "global-secrets", "zone-token-signing-key-1")
        assert run.returncode == 0, run.stderr
        refused = open_stream(kds_port, ca.read_bytes(), "zone-1", token1)
        assert refused is not None and refused.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "signing key 1 not found" in (refused.details() or "")
        assert open_stream(kds_port, ca.read_bytes(), "zone-1", token2) is None
        wait_until(lambda: kds_connected(zone1), WAIT, what="zone-1 connected")
        assert "zone_token_refused" in glob.logs() and "signing key 1 not found" in glob.logs()

        # revocation, as docs/kds.md shows it: the open stream on token 2 is closed, reconnects refused
        jti = jwt.decode(token2, options={"verify_signature": False})["jti"]
        revocations = (
            f"type: GlobalSecret\nname: zone-token-revocations\ndata: {base64.b64encode(jti.encode()).decode()}\n"
        )
        run = zmctl(glob.api, home, "apply", "-f", "-", stdin=revocations)
        assert run.returncode == 0, run.stderr
        wait_until(lambda: "revoked" in (zone1.get("/status/kds")[1]["lastError"] or ""), WAIT, what="zone-1 refused")
        wait_until(lambda: zone_states(glob, home) == {"zone-1": "Offline"}, WAIT, what="zone-1 Offline")
        token3 = zmctl(glob.api, home, "generate", "zone-token", "--zone", "zone-1", "--valid-for", "1h").stdout
        (tmp_path / "zone-1" / "zone.token").write_text(token3.strip())
        wait_until(lambda: zone_states(glob, home) == {"zone-1": "Online"}, WAIT, what="zone-1 back with token 3")

        # a zone killed with -9 shows Offline
        zone1.stop(signal.SIGKILL)
        wait_until(lambda: online(glob).get("zone-1") is False, WAIT, what="zone-1 offline")
        assert zone_states(glob, home) == {"zone-1": "Offline"}
    finally:
        for cp in processes:
            cp.kill()
