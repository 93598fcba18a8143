"""What a TLS client of zonemesh trusts when it is given no CA file, checked against real gRPC.

gRPC's own default (``root_certificates=None``) is not the operating system's trust store: grpcio
uses the Mozilla bundle inside its wheel (or ``$GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``). Zones and
zonemesh-dp therefore read the system bundle themselves (shared/tls.py ``system_ca_file``), which
is also the file Envoy gets. These tests pin both facts, and that ``verification_failure`` reads
the errors gRPC really produces.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from zonemesh.shared.tls import HOST_NAME_MISMATCH, generate_self_signed, system_ca_file, verification_failure

from zonemesh.testing import free_port


class Echo(grpc.GenericRpcHandler):
    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(lambda request, context: b"ok")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A real gRPC server on 127.0.0.1 with a self-signed certificate for 127.0.0.1 only."""
    cert, key = generate_self_signed("test-server", ["127.0.0.1"])
    (tmp_path / "server.crt").write_bytes(cert)
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    srv.add_generic_rpc_handlers((Echo(),))
    port = srv.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    srv.start()
    yield port, tmp_path / "server.crt"
    srv.stop(0)


# A fresh process per case: gRPC computes its default roots once per process.
CLIENT = textwrap.dedent(
    """
    import sys, grpc
    from pathlib import Path
    from zonemesh.shared.tls import system_ca_file
    target, mode = sys.argv[1], sys.argv[2]
    root = None if mode == "grpc-default" else system_ca_file().read_bytes()
    with grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root)) as channel:
        try:
            channel.unary_unary("/t.T/Call")(b"", timeout=5)
            print("OK")
        except grpc.RpcError as exc:
            print(exc.details())
    """
)


def call_in_fresh_process(port: int, mode: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, f"127.0.0.1:{port}", mode],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        cwd="/",  # not the repository root: its zonemesh/ folder would shadow the installed package
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_grpc_default_roots_ignore_the_system_trust_store(server: tuple[int, Path]) -> None:
    port, cert = server
    # The operator's trust store (SSL_CERT_FILE, what OpenSSL and Python's ssl use) holds the
    # server's certificate: gRPC's default ignores it, the file zonemesh reads honours it.
    system = {"SSL_CERT_FILE": str(cert)}
    assert "CERTIFICATE_VERIFY_FAILED" in call_in_fresh_process(port, "grpc-default", system)
    assert call_in_fresh_process(port, "system-bundle", system) == "OK"
    # gRPC's default is not "no verification": it does verify, against its own bundle (or this).
    assert call_in_fresh_process(port, "grpc-default", {"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(cert)}) == "OK"


def test_system_ca_file_is_the_existing_bundle_or_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bundle.pem").write_bytes(generate_self_signed("ca", ["ca.example"])[0])
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "bundle.pem"))
    assert system_ca_file() == tmp_path / "bundle.pem"
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    assert system_ca_file() is None


def call(target: str, root: bytes) -> str:
    with grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root)) as channel:
        try:
            channel.unary_unary("/t.T/Call")(b"", timeout=5)
        except grpc.RpcError as exc:
            return str(exc.details())  # type: ignore[attr-defined]
    return "OK"


def test_verification_failure_reads_real_grpc_errors(server: tuple[int, Path]) -> None:
    port, cert = server
    other, _ = generate_self_signed("someone-else", ["127.0.0.1"])
    assert call(f"127.0.0.1:{port}", cert.read_bytes()) == "OK"
    assert verification_failure(call(f"127.0.0.1:{port}", other)) == "self signed certificate"
    # The certificate names 127.0.0.1 only: dialled as localhost, the name check refuses it.
    assert verification_failure(call(f"localhost:{port}", cert.read_bytes())) == HOST_NAME_MISMATCH
    # Not a certificate problem: nothing listens there.
    refused = call(f"127.0.0.1:{free_port()}", cert.read_bytes())
    assert "failed to connect" in refused and verification_failure(refused) is None


# --- the settings ----------------------------------------------------------------------------


def test_skip_verify_is_refused_where_it_cannot_take_effect(tmp_path: Path) -> None:
    from zonemesh.shared.config import Config, ConfigError, load

    zone = {"mode": "zone", "zone": "zone-1", "global_address": "grpcs://g:5685", "zone_token_file": "t"}
    Config(**zone, global_tls_skip_verify=True).validate()
    both = "give global_ca_file (verify) or global_tls_skip_verify (do not), not both"
    with pytest.raises(ConfigError, match=re.escape(both)):
        Config(**zone, global_tls_skip_verify=True, global_ca_file="ca.crt").validate()
    with pytest.raises(ConfigError, match="global_tls_skip_verify applies to a federated zone"):
        Config(mode="global", global_tls_skip_verify=True).validate()
    # Kuma's names for the two settings are honoured.
    env = {
        "ZONEMESH_MODE": "zone",
        "ZONEMESH_ZONE": "zone-1",
        "ZONEMESH_GLOBAL_ADDRESS": "grpcs://g:5685",
        "ZONEMESH_ZONE_TOKEN_FILE": "t",
        "KUMA_MULTIZONE_ZONE_KDS_TLS_SKIP_VERIFY": "true",
    }
    assert load(env=env).global_tls_skip_verify is True
    env.pop("KUMA_MULTIZONE_ZONE_KDS_TLS_SKIP_VERIFY")
    assert load(env={**env, "KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE": "/ca.crt"}).global_ca_file == "/ca.crt"
