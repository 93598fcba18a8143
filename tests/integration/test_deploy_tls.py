"""docs/deployment.md, "TLS for KDS and xDS": the openssl commands as written make certificates
that a real global and zone accept — the zone verifies global's KDS certificate against ca.crt and
comes online, its xDS port verifies against ca.crt — and a zone given another CA is refused."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from doc_blocks import block

from zonemesh.testing import ControlPlaneProcess, free_port, http, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
]

# The VM addresses of the docs; on a test machine both control planes are on loopback.
ADDRESSES = {"IP:10.0.0.10": "IP:127.0.0.1", "IP:10.1.0.10": "IP:127.0.0.1"}


def make_certs(directory: Path) -> None:
    script = block("deployment.md", "tls-certs")
    for doc, here in ADDRESSES.items():
        assert doc in script, f"the docs no longer use {doc}: update ADDRESSES"
        script = script.replace(doc, here)
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=directory, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "kds.crt: OK" in proc.stdout and "xds.crt: OK" in proc.stdout, proc.stdout


def zone_process(data_dir: Path, kds_port: int, token: str, certs: Path, ca: Path) -> ControlPlaneProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "zone.token").write_text(token)
    args = [
        "--mode", "zone", "--zone", "zone-1", "--store", "memory",
        "--global-address", f"grpcs://127.0.0.1:{kds_port}",
        "--zone-token-file", str(data_dir / "zone.token"), "--global-ca-file", str(ca),
        "--xds-tls-cert-file", str(certs / "xds.crt"), "--xds-tls-key-file", str(certs / "xds.key"),
    ]  # fmt: skip
    return ControlPlaneProcess(data_dir, args=args)


def test_documented_certificates_secure_kds_and_xds(tmp_path: Path) -> None:
    certs, other = tmp_path / "certs", tmp_path / "other-ca"
    make_certs(certs)
    make_certs(other)  # a second, unrelated CA
    kds_port = free_port()
    args = [
        "--mode", "global", "--store", "memory", "--kds-address", "127.0.0.1", "--kds-port", str(kds_port),
        "--kds-tls-cert-file", str(certs / "kds.crt"), "--kds-tls-key-file", str(certs / "kds.key"),
    ]  # fmt: skip
    glob = ControlPlaneProcess(tmp_path / "global", args=args).start()
    zone = wrong = None
    try:
        assert not (tmp_path / "global" / "kds-tls.crt").exists(), "global made a self-signed pair despite the files"
        status, token = http("POST", glob.api + "/tokens/zone", {"zone": "zone-1", "validFor": "1h"})
        assert status == 200, token

        wrong = zone_process(tmp_path / "wrong", kds_port, token, certs, other / "ca.crt").start()
        zone = zone_process(tmp_path / "zone", kds_port, token, certs, certs / "ca.crt").start()

        def online() -> bool:
            status, body = http("GET", glob.api + "/zones+insights/zone-1")
            return status == 200 and bool(body["online"])

        wait_until(online, 30, what="zone-1 online at global over the documented certificates")

        # The zone's xDS port presents xds.crt: a client trusting only ca.crt verifies it.
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        with (
            socket.create_connection(("127.0.0.1", zone.xds_port), timeout=5) as sock,
            context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.getpeercert()["subject"] == ((("commonName", "zone-1.mesh.internal"),),)

        # The zone that trusts another CA never had a stream: the handshake fails, and says why.
        status, kds = http("GET", wrong.api + "/status/kds")
        assert status == 200 and not kds["connected"] and kds["globalInstanceId"] is None, kds
        assert kds["lastError"].startswith(
            f"global's KDS certificate at 127.0.0.1:{kds_port} did not verify against --global-ca-file "
            f"{other / 'ca.crt'}: unable to get local issuer certificate; give the CA that signed it with "
            "--global-ca-file"
        ), kds
    finally:
        for cp in (zone, wrong, glob):
            if cp is not None:
                cp.stop()
