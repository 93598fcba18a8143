"""MeshTLS on real Envoys: mode, TLS versions and ciphers as clients see them.

One standalone control plane and two workloads on 127.0.0.1, each a tiny HTTP app behind a
``zonemesh-dp`` sidecar (the real Envoy binary):

    meshed client --> app-a's Envoy (outbound) ==mTLS==> app-b's Envoy (inbound :b_in) --> app B
    probe clients (plaintext, or TLS with a mesh certificate) -----------^

The mesh CA is the test's own, stored as the builtin CA's Secrets before mTLS is enabled: the
test signs probe certificates with it, so a probe is a mesh client whose TLS version and ciphers
the test chooses. The MeshTLS documents applied are read from docs/policies.md. Every wait is
bounded; every process is stopped at the end.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection  # the module name "http" is zonemesh.testing.http here
from pathlib import Path
from typing import Any

import pytest
import yaml
from zonemesh.shared.ca.backend import issue_workload_cert
from zonemesh.shared.ca.builtin import generate_ca
from zonemesh.shared.ca.material import SigningCA, load_signing_ca
from zonemesh.shared.resources import REGISTRY

from zonemesh.testing import (
    ALLOW_ALL,
    MTLS_MESH,
    ControlPlaneProcess,
    EnvoyAdmin,
    dp_run_command,
    free_port,
    http,
    log_excerpt,
    sidecar_dataplane,
    start_http_app,
    stop_processes,
    wait_until,
    zmctl_ok,
)

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs" / "policies.md"
MESH = "default"
BACKEND = "ca-1"


def example(name: str) -> dict[str, Any]:
    """The YAML block after ``<!-- example: name -->`` in docs/policies.md."""
    found = re.search(rf"<!-- example: {re.escape(name)} -->\n```yaml\n(.*?)```", DOCS.read_text(), re.S)
    assert found, f"docs/policies.md has no example {name!r}"
    doc = yaml.safe_load(found.group(1))
    assert isinstance(doc, dict)
    return doc


@dataclass
class Mesh:
    cp: ControlPlaneProcess
    work: Path
    ca: SigningCA
    a: EnvoyAdmin
    b: EnvoyAdmin
    a_outbound: int
    b_inbound: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def put(self, doc: dict[str, Any]) -> None:
        path = REGISTRY.get(doc["type"]).item_path(doc["name"], doc.get("mesh", ""))
        status, body = self.cp.put(path, doc)
        assert status in (200, 201), body

    def delete(self, doc: dict[str, Any]) -> None:
        status, body = self.cp.delete(REGISTRY.get(doc["type"]).item_path(doc["name"], doc.get("mesh", "")))
        assert status == 200, body

    def meshed(self) -> tuple[int, str]:
        """A request through app-a's sidecar to app-b: mesh mTLS between the two Envoys."""
        status, body = http("GET", f"http://127.0.0.1:{self.a_outbound}/", timeout=3)
        return status, str(body)

    def plaintext(self) -> tuple[int, str]:
        """A plaintext request straight to app-b's inbound port (no sidecar, no certificate)."""
        status, body = http("GET", f"http://127.0.0.1:{self.b_inbound}/", timeout=3)
        return status, str(body)

    def listener_tls(self) -> dict[str, Any]:
        """app-b's inbound listener as its Envoy runs it: the TLS context of its mTLS chain."""
        name = f"inbound:127.0.0.1:{self.b_inbound}"
        for section in self.b.config_dump("?resource=dynamic_listeners")["configs"]:
            if section.get("name") == name:
                chains = section["active_state"]["listener"]["filter_chains"]
                secure = [c for c in chains if "transport_socket" in c]
                assert len(secure) == 1, chains
                return secure[0]["transport_socket"]["typed_config"]["common_tls_context"]  # type: ignore[no-any-return]
        raise AssertionError(f"{name} not in app-b's config dump")

    def cluster_tls(self) -> dict[str, Any]:
        """app-a's cluster to app-b as its Envoy runs it: the client end's TLS context."""
        return self.a.cluster("app-b")["transport_socket"]["typed_config"]["common_tls_context"]  # type: ignore[no-any-return]

    def inbound_stat(self, suffix: str) -> int:
        return self.b.stat(f"listener.127.0.0.1_{self.b_inbound}.{suffix}")


def _secret(name: str, pem: bytes) -> dict[str, Any]:
    return {"type": "Secret", "mesh": MESH, "name": name, "data": base64.b64encode(pem).decode()}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("meshtls")
    cp = ControlPlaneProcess(work / "cp", args=["--mode", "standalone"])
    # The builtin CA uses the Secrets it finds (it generates them only when absent): the test's own.
    ca_cert_pem, ca_key_pem = generate_ca(MESH, BACKEND, 2048, 24 * 3600, time.time())
    ca = load_signing_ca(BACKEND, ca_cert_pem, ca_key_pem, time.time())
    a, b = EnvoyAdmin("app-a", free_port()), EnvoyAdmin("app-b", free_port())
    env = Mesh(cp, work, ca, a, b, a_outbound=free_port(), b_inbound=free_port())
    try:
        cp.start()
        env.put({"type": "Mesh", "name": MESH})
        env.put(_secret(f"{MESH}.ca-builtin-cert-{BACKEND}", ca_cert_pem))
        env.put(_secret(f"{MESH}.ca-builtin-key-{BACKEND}", ca_key_pem))
        env.put(MTLS_MESH)
        env.put(ALLOW_ALL)
        for proxy, outbound in ((a, [("app-b", env.a_outbound)]), (b, [])):
            app_port = free_port()
            env.procs.append(start_http_app(proxy.name, app_port))
            inbound = env.b_inbound if proxy is b else free_port()
            dataplane = sidecar_dataplane(proxy.name, inbound, app_port, outbound=outbound)
            if proxy is b:
                dataplane["labels"] = {"app": "legacy"}  # docs/policies.md's Permissive example selects it
            token = zmctl_ok(
                cp.api, "generate", "dataplane-token", "--mesh", MESH, "--name", proxy.name, "--valid-for", "1h"
            ).strip()
            (work / f"{proxy.name}.token").write_text(token)
            cmd = dp_run_command(
                xds_port=cp.xds_port,
                ca_file=cp.data_dir / "xds.crt",
                name=proxy.name,
                mesh=MESH,
                dataplane=["--dataplane-inline", json.dumps(dataplane)],
                token_file=work / f"{proxy.name}.token",
                admin_port=proxy.admin_port,
                work_dir=work / proxy.name,
            )
            with (work / f"{proxy.name}-dp.log").open("wb") as out:
                env.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
        wait_until(lambda: env.meshed() == (200, "app-b"), timeout=30, what="app-a to reach app-b over mesh mTLS")
        yield env
    except BaseException:
        for name in ("app-a", "app-b"):
            log = work / f"{name}-dp.log"
            if log.is_file():
                print(f"--- {name} agent log ---\n{log.read_text(errors='replace')[-4000:]}")
        print(f"--- control plane log ---\n{cp.logs()[-6000:]}")
        raise
    finally:
        stop_processes(env.procs)
        cp.kill()


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, mesh: Mesh) -> None:
    """A failed test shows what the control plane logged while it ran (tests/conftest.py)."""
    since = len(mesh.cp.logs())
    request.node.failure_logs = lambda: log_excerpt("control plane", mesh.cp.logs()[since:])


@pytest.fixture
def probe_cert(mesh: Mesh, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A client certificate of the mesh CA (``spiffe://default/tls-probe``): (cert, key, CA) files."""
    cert = issue_workload_cert(mesh.ca, MESH, "tls-probe", 3600, time.time())
    paths = tmp_path / "probe.crt", tmp_path / "probe.key", tmp_path / "ca.crt"
    for path, pem in zip(paths, (cert.cert_pem, cert.key_pem, mesh.ca.cert_pem), strict=True):
        path.write_bytes(pem)
    return paths


def tls_get(
    port: int,
    files: tuple[Path, Path, Path],
    *,
    version: ssl.TLSVersion | None = None,
    cipher: str | None = None,
) -> tuple[int, str, str, str]:
    """GET / over TLS with the probe certificate, limited to one TLS ``version`` and/or one
    TLS 1.2 ``cipher``: (status, body, negotiated version, negotiated cipher). Raises
    ssl.SSLError (or OSError) when the handshake is refused."""
    cert, key, ca = files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.check_hostname = False  # the server's certificate names a SPIFFE ID, not a host
    if version is not None:
        context.minimum_version = context.maximum_version = version
    if cipher is not None:
        context.set_ciphers(cipher)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        negotiated, suite = str(tls.version()), tls.cipher()[0]
        conn = HTTPConnection("127.0.0.1", port, timeout=5)
        conn.sock = tls
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status, response.read().decode(), negotiated, suite


def refused(request: Any) -> bool:
    try:
        request()
    except (ssl.SSLError, OSError):
        return True
    return False


# --- mode ------------------------------------------------------------------------------------


def test_permissive_takes_plaintext_and_strict_refuses_it_at_tls(mesh: Mesh) -> None:
    # Mesh backend STRICT, no MeshTLS: the default is untouched.
    assert refused(mesh.plaintext)
    permissive = example("meshtls-permissive")
    mesh.put(permissive)
    try:
        wait_until(lambda: mesh.plaintext() == (200, "app-b"), timeout=15, what="app-b's inbound to take plaintext")
        assert mesh.meshed() == (200, "app-b")  # mesh clients keep talking mTLS to the same port
        handshakes = mesh.inbound_stat("ssl.handshake")
        assert mesh.meshed() == (200, "app-b")
        assert mesh.inbound_stat("ssl.handshake") > handshakes  # ...through the TLS chain

        strict = json.loads(json.dumps(permissive))
        strict["spec"]["rules"][0]["default"]["mode"] = "Strict"
        mesh.put(strict)
        wait_until(lambda: refused(mesh.plaintext), timeout=15, what="app-b's inbound to refuse plaintext")
        # Refused by the TLS handshake (Envoy reads the plaintext request as a bad ClientHello).
        errors = mesh.inbound_stat("ssl.connection_error")
        assert refused(mesh.plaintext)
        assert mesh.inbound_stat("ssl.connection_error") > errors
        assert mesh.meshed() == (200, "app-b")
    finally:
        mesh.delete(permissive)
    assert mesh.meshed() == (200, "app-b")


def test_a_plaintext_client_has_no_identity_for_traffic_permissions(mesh: Mesh) -> None:
    """Permissive does not bypass MeshTrafficPermission: a permission naming the callers lets
    mesh clients in (by certificate) and not a plaintext client (it has none)."""
    permissive = example("meshtls-permissive")
    only_a = {
        "type": "MeshTrafficPermission",
        "mesh": MESH,
        "name": "app-b-callers",
        "spec": {
            "targetRef": {"kind": "MeshService", "name": "app-b"},
            "from": [
                {"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}},
                {"targetRef": {"kind": "MeshService", "name": "app-a"}, "default": {"action": "Allow"}},
            ],
        },
    }
    mesh.put(permissive)
    try:
        wait_until(lambda: mesh.plaintext() == (200, "app-b"), timeout=15, what="plaintext admitted (allow-all)")
        mesh.put(only_a)
        wait_until(lambda: mesh.plaintext()[0] == 403, timeout=15, what="plaintext denied by app-b's RBAC")
        assert mesh.meshed() == (200, "app-b")
    finally:
        mesh.delete(only_a)
        mesh.delete(permissive)


# --- versions and ciphers --------------------------------------------------------------------


def test_tls13_minimum_refuses_a_tls12_client_and_the_mesh_talks_tls13(
    mesh: Mesh, probe_cert: tuple[Path, Path, Path]
) -> None:
    port = mesh.b_inbound
    # Without MeshTLS a mesh client may use TLS 1.2 (waited for: an earlier test's permission may
    # still be leaving app-b's Envoy).
    wait_until(
        lambda: tls_get(port, probe_cert, version=ssl.TLSVersion.TLSv1_2)[:3] == (200, "app-b", "TLSv1.2"),
        timeout=15,
        what="a TLS 1.2 mesh client admitted by app-b",
    )
    policy = example("meshtls-tls13")
    mesh.put(policy)
    try:
        wait_until(
            lambda: mesh.listener_tls().get("tls_params", {}).get("tls_minimum_protocol_version") == "TLSv1_3",
            timeout=15,
            what="TLS 1.3 minimum on app-b's inbound listener",
        )
        with pytest.raises(ssl.SSLError):
            tls_get(port, probe_cert, version=ssl.TLSVersion.TLSv1_2)
        assert tls_get(port, probe_cert, version=ssl.TLSVersion.TLSv1_3)[:3] == (200, "app-b", "TLSv1.3")

        # The client end got it too (Envoy's client default maximum, 1.2, would fail every handshake).
        wait_until(
            lambda: mesh.cluster_tls().get("tls_params", {}).get("tls_maximum_protocol_version") == "TLSv1_3",
            timeout=15,
            what="TLS 1.3 on app-a's cluster to app-b",
        )
        before = mesh.a.stat("cluster.app-b.ssl.versions.TLSv1.3")
        wait_until(lambda: mesh.meshed() == (200, "app-b"), timeout=15, what="app-a to reach app-b again")
        assert mesh.a.stat("cluster.app-b.ssl.versions.TLSv1.3") > before
    finally:
        mesh.delete(policy)
    wait_until(
        lambda: "tls_params" not in mesh.listener_tls(),
        timeout=15,
        what="the TLS parameters gone from app-b's listener",
    )
    assert tls_get(port, probe_cert, version=ssl.TLSVersion.TLSv1_2)[0] == 200


def test_ciphers_are_configured_on_both_ends_and_others_are_refused(
    mesh: Mesh, probe_cert: tuple[Path, Path, Path]
) -> None:
    port, tls12 = mesh.b_inbound, ssl.TLSVersion.TLSv1_2
    policy = example("meshtls-ciphers")
    wanted = policy["spec"]["from"][0]["default"]["tlsCiphers"]
    assert wanted == ["ECDHE-ECDSA-AES256-GCM-SHA384"]
    other = "ECDHE-ECDSA-AES128-GCM-SHA256"  # Envoy's first choice without MeshTLS
    assert tls_get(port, probe_cert, version=tls12, cipher=other)[3] == other
    # Why MeshTLS refuses a list of ECDHE-RSA-* ciphers only: the workload certificates are
    # ECDSA, so no such suite can be negotiated, with or without MeshTLS.
    with pytest.raises(ssl.SSLError):
        tls_get(port, probe_cert, version=tls12, cipher="ECDHE-RSA-AES128-GCM-SHA256")
    mesh.put(policy)
    try:
        wait_until(
            lambda: mesh.listener_tls().get("tls_params", {}).get("cipher_suites") == wanted,
            timeout=15,
            what="the cipher on app-b's inbound listener",
        )
        wait_until(
            lambda: mesh.cluster_tls().get("tls_params", {}).get("cipher_suites") == wanted,
            timeout=15,
            what="the cipher on app-a's cluster to app-b",
        )
        with pytest.raises(ssl.SSLError):
            tls_get(port, probe_cert, version=tls12, cipher=other)
        assert tls_get(port, probe_cert, version=tls12, cipher=wanted[0]) == (200, "app-b", "TLSv1.2", wanted[0])
        before = mesh.inbound_stat(f"ssl.ciphers.{wanted[0]}")
        wait_until(lambda: mesh.meshed() == (200, "app-b"), timeout=15, what="app-a to reach app-b again")
        assert mesh.inbound_stat(f"ssl.ciphers.{wanted[0]}") > before  # the mesh negotiated it too
    finally:
        mesh.delete(policy)


# --- MeshPassthrough ---------------------------------------------------------------------------


def test_mesh_passthrough_is_refused_and_says_why(mesh: Mesh) -> None:
    # Kuma's own example: only these external destinations may be reached.
    doc = {
        "type": "MeshPassthrough",
        "mesh": MESH,
        "name": "allow-some",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "default": {
                "passthroughMode": "Matched",
                "appendMatch": [
                    {"type": "Domain", "value": "httpbin.org", "port": 443, "protocol": "tls"},
                    {"type": "CIDR", "value": "10.0.0.0/8", "port": 5432, "protocol": "tcp"},
                ],
            },
        },
    }
    status, body = mesh.cp.put(REGISTRY.get("MeshPassthrough").item_path(doc["name"], MESH), doc)
    assert status == 400, body
    assert body["title"] == "MeshPassthrough is not supported yet by zonemesh"
    (reason,) = [p["reason"] for p in body["invalid_parameters"] if p["field"] == "type"]
    assert "no transparent proxying" in reason, reason
    assert mesh.cp.get(REGISTRY.get("MeshPassthrough").item_path(doc["name"], MESH))[0] == 404
