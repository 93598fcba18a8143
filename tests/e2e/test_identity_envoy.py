"""Mesh identity on real Envoys: a provided CA, certificate lifecycle, mesh constraints (issue 20).

One standalone control plane and two workloads on 127.0.0.1, each a tiny HTTP app behind a
``zonemesh-dp`` sidecar (the real Envoy binary):

    meshed client --> app-a's Envoy (outbound) ==mTLS==> app-b's Envoy (inbound) --> app B

The mesh's CA is the operator's own (``type: provided``): an intermediate CA signed by a root,
stored in mesh Secrets as the intermediate's certificate followed by the root, and the
intermediate's key. Every wait is bounded; every process is stopped at the end.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from zonemesh.shared.resources import REGISTRY

from zonemesh.testing import (
    ALLOW_ALL,
    ControlPlaneProcess,
    EnvoyAdmin,
    TestCaCert,
    dp_run_command,
    free_port,
    http,
    log_excerpt,
    make_ca_cert,
    sidecar_dataplane,
    start_http_app,
    stop_process,
    stop_processes,
    wait_until,
    zmctl,
    zmctl_ok,
)

pytestmark = pytest.mark.slow

MESH = "default"
BACKEND = "ca-provided"

PROVIDED_MESH: dict[str, Any] = {
    "type": "Mesh",
    "name": MESH,
    "mtls": {
        "enabledBackend": BACKEND,
        "backends": [
            {
                "name": BACKEND,
                "type": "provided",
                "dpCert": {"rotation": {"expiration": "1h"}},
                "conf": {"cert": {"secret": "operator-ca-cert"}, "key": {"secret": "operator-ca-key"}},
            }
        ],
    },
}


def _secret(name: str, pem: bytes) -> dict[str, Any]:
    return {"type": "Secret", "mesh": MESH, "name": name, "data": base64.b64encode(pem).decode()}


def _serial(pem: bytes) -> str:
    """As Envoy's admin shows a serial number: its bytes in hex (BoringSSL's BN_bn2hex), so a
    leading zero nibble stays (format(n, "x") dropped it: one random serial in 16 failed)."""
    number = x509.load_pem_x509_certificate(pem).serial_number
    return number.to_bytes((number.bit_length() + 7) // 8, "big").hex()


@dataclass
class Env:
    cp: ControlPlaneProcess
    work: Path
    root: TestCaCert
    intermediate: TestCaCert
    a: EnvoyAdmin
    b: EnvoyAdmin
    a_outbound: int
    b_inbound: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def put(self, doc: dict[str, Any]) -> tuple[int, Any]:
        return self.cp.put(REGISTRY.get(doc["type"]).item_path(doc["name"], doc.get("mesh", "")), doc)

    def put_ok(self, doc: dict[str, Any]) -> None:
        status, body = self.put(doc)
        assert status in (200, 201), body

    def meshed(self) -> tuple[int, str]:
        """A request through app-a's sidecar to app-b: mesh mTLS between the two Envoys."""
        try:
            status, body = http("GET", f"http://127.0.0.1:{self.a_outbound}/", timeout=3)
        except OSError as exc:
            return 0, str(exc)
        return status, str(body)

    def token(self, name: str) -> Path:
        token = zmctl_ok(
            self.cp.api, "generate", "dataplane-token", "--mesh", MESH, "--name", name, "--valid-for", "1h"
        )
        path = self.work / f"{name}.token"
        path.write_text(token.strip())
        return path

    def agent(self, name: str, dataplane: dict[str, Any], admin_port: int | None = None) -> subprocess.Popen[bytes]:
        cmd = dp_run_command(
            xds_port=self.cp.xds_port,
            ca_file=self.cp.data_dir / "xds.crt",
            name=name,
            mesh=MESH,
            dataplane=["--dataplane-inline", json.dumps(dataplane)],
            token_file=self.token(name),
            admin_port=admin_port,
            work_dir=self.work / name,
        )
        with (self.work / f"{name}-dp.log").open("wb") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)

    def certs(self, proxy: EnvoyAdmin) -> dict[str, Any]:
        """Envoy's admin ``/certs``: the CA and the certificate chain of each TLS context it holds."""
        doc = json.loads(proxy.admin("/certs"))
        assert isinstance(doc, dict)
        return doc


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("identity")
    cp = ControlPlaneProcess(work / "cp", args=["--mode", "standalone"])
    root = make_ca_cert("operator root", key_type="rsa")
    intermediate = make_ca_cert("operator mesh CA", issuer=root)
    a, b = EnvoyAdmin("app-a", free_port()), EnvoyAdmin("app-b", free_port())
    env = Env(cp, work, root, intermediate, a, b, a_outbound=free_port(), b_inbound=free_port())
    try:
        cp.start()
        env.put_ok({"type": "Mesh", "name": MESH})
        env.put_ok(_secret("operator-ca-cert", intermediate.chain(root)))
        env.put_ok(_secret("operator-ca-key", intermediate.key_pem))
        env.put_ok(PROVIDED_MESH)
        env.put_ok(ALLOW_ALL)
        for proxy, outbound in ((a, [("app-b", env.a_outbound)]), (b, [])):
            app_port = free_port()
            env.procs.append(start_http_app(proxy.name, app_port))
            inbound = env.b_inbound if proxy is b else free_port()
            dataplane = sidecar_dataplane(proxy.name, inbound, app_port, outbound=outbound)
            env.procs.append(env.agent(proxy.name, dataplane, proxy.admin_port))
        wait_until(lambda: env.meshed() == (200, "app-b"), timeout=40, what="app-a to reach app-b over mTLS")
        yield env
    except BaseException:
        for log in sorted(work.glob("*-dp.log")):
            print(f"--- {log.name} ---\n{log.read_text(errors='replace')[-4000:]}")
        print(f"--- control plane log ---\n{cp.logs()[-6000:]}")
        raise
    finally:
        stop_processes(env.procs)
        cp.kill()


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, env: Env) -> None:
    """A failed test shows what the control plane logged while it ran (tests/conftest.py)."""
    since = len(env.cp.logs())
    request.node.failure_logs = lambda: log_excerpt("control plane", env.cp.logs()[since:])


# --- provided CA ---------------------------------------------------------------------------------


def test_two_sidecars_talk_mtls_with_certificates_of_the_provided_ca(env: Env) -> None:
    assert env.meshed() == (200, "app-b")
    # app-b's inbound completed TLS handshakes (app-a's Envoy keeps its connection: at least one).
    assert env.b.stat(f"listener.127.0.0.1_{env.b_inbound}.ssl.handshake") > 0
    root_serial = _serial(env.root.cert_pem)
    for proxy, service in ((env.a, "app-a"), (env.b, "app-b")):
        contexts = env.certs(proxy)["certificates"]
        mesh_contexts = [
            c
            for c in contexts
            if c.get("cert_chain")
            and f"spiffe://{MESH}/{service}"
            in [san.get("uri") for san in c["cert_chain"][0].get("subject_alt_names", [])]
        ]
        assert mesh_contexts, contexts
        for context in mesh_contexts:
            # Each proxy trusts the operator's root, and only it: its peer's certificate, signed by
            # the intermediate, verifies only because the peer presents the intermediate with it.
            assert [ca["serial_number"] for ca in context["ca_cert"]] == [root_serial], context
            leaf = context["cert_chain"][0]
            assert leaf["serial_number"] not in (root_serial, _serial(env.intermediate.cert_pem))
            assert f"kuma://kuma.io/service/{service}" in [s.get("uri") for s in leaf["subject_alt_names"]]


def test_a_ca_that_cannot_work_is_refused_with_the_field_and_the_mesh_keeps_running(env: Env) -> None:
    before = [c["cert_chain"][0]["serial_number"] for c in env.certs(env.b)["certificates"] if c.get("cert_chain")]
    stranger = make_ca_cert("someone else's CA")
    expired = make_ca_cert("expired CA", not_before=1_600_000_000, valid_for=3600)
    leaf_only = make_ca_cert("not a CA", is_ca=False)
    env.put_ok(_secret("stranger-key", stranger.key_pem))
    env.put_ok(_secret("expired-cert", expired.cert_pem))
    env.put_ok(_secret("expired-key", expired.key_pem))
    env.put_ok(_secret("leaf-cert", leaf_only.cert_pem))
    env.put_ok(_secret("leaf-key", leaf_only.key_pem))
    cases = [
        ({"cert": {"secret": "operator-ca-cert"}, "key": {"secret": "stranger-key"}}, "conf.key", "does not match"),
        ({"cert": {"secret": "expired-cert"}, "key": {"secret": "expired-key"}}, "conf.cert", "expired at"),
        ({"cert": {"secret": "leaf-cert"}, "key": {"secret": "leaf-key"}}, "conf.cert", "'CA' must be set to 'true'"),
        ({"cert": {"secret": "no-such-secret"}, "key": {"secret": "stranger-key"}}, "conf.cert", "not found"),
    ]
    for conf, field_name, reason in cases:
        mesh = copy.deepcopy(PROVIDED_MESH)
        mesh["mtls"]["backends"].append({"name": "ca-next", "type": "provided", "conf": conf})
        mesh["mtls"]["enabledBackend"] = "ca-next"
        status, body = env.put(mesh)
        assert status == 400, body
        fields = {e["field"]: e["reason"] for e in body["invalid_parameters"]}
        assert reason in fields[f"mtls.backends[1].{field_name}"], fields
    # Nothing changed: the stored Mesh, the certificates the proxies hold, the traffic.
    status, stored = env.cp.get(f"/meshes/{MESH}")
    assert status == 200 and stored["mtls"]["enabledBackend"] == BACKEND
    assert [c["cert_chain"][0]["serial_number"] for c in env.certs(env.b)["certificates"] if c.get("cert_chain")] == (
        before
    )
    assert env.meshed() == (200, "app-b")
    # A Secret the CA in use reads can neither change nor go.
    status, body = env.put(_secret("operator-ca-key", stranger.key_pem))
    assert status == 400 and "would swap the CA" in json.dumps(body), body
    status, body = env.cp.delete(f"/meshes/{MESH}/secrets/operator-ca-cert")
    assert status == 400 and "remove the backend from the Mesh" in json.dumps(body), body


# --- certificate lifecycle ------------------------------------------------------------------------


def test_each_proxys_certificate_expiry_and_issuing_ca_are_visible(env: Env) -> None:
    leaf_expiry = {
        c["cert_chain"][0]["serial_number"]: c["cert_chain"][0]["expiration_time"]
        for c in env.certs(env.b)["certificates"]
        if c.get("cert_chain")
    }

    def insight() -> dict[str, Any]:
        status, body = env.cp.get(f"/meshes/{MESH}/dataplane-insights/app-b")
        return body.get("mTLS") or {} if status == 200 else {}

    mtls = wait_until(lambda: insight().get("issuedBackend") and insight(), timeout=15, what="app-b's insight mTLS")
    assert mtls["issuedBackend"] == BACKEND and mtls["supportedBackends"] == [BACKEND]
    expires = mtls["certificateExpirationTime"]
    # What Envoy holds is what the insight says (Envoy prints the time without fractions).
    assert any(expires.startswith(t.rstrip("Z")[:19]) for t in leaf_expiry.values()), (expires, leaf_expiry)

    table = zmctl_ok(env.cp.api, "inspect", "dataplanes", "--mesh", MESH)
    header, *rows = table.splitlines()
    assert "CERT EXPIRATION" in header and "CERT BACKEND" in header
    row = next(r for r in rows if r.split()[1] == "app-b")
    # kumactl's columns: the expiry as "YYYY-MM-DD HH:MM:SS" (UTC), the issuing and trusted backends.
    assert expires[:19].replace("T", " ") in row and BACKEND in row

    def gauge(name: str) -> float | None:
        status, text = http("GET", f"http://127.0.0.1:{env.cp.diagnostics_port}/metrics")
        found = re.search(rf'^{name}\{{[^}}]*mesh="{MESH}"[^}}]*\}} (\S+)$', str(text), re.M)
        return float(found.group(1)) if status == 200 and found else None

    left = wait_until(lambda: gauge("mesh_proxy_cert_expiry_seconds"), timeout=30, what="the expiry gauge")
    assert 0 < left <= 3600  # dpCert.rotation.expiration: 1h
    ca_left = gauge("mesh_ca_cert_expiry_seconds")
    assert ca_left is not None and 300 * 24 * 3600 < ca_left <= 365 * 24 * 3600  # the test CAs live a year


# --- mesh constraints -----------------------------------------------------------------------------


def _constrained(**constraints: Any) -> dict[str, Any]:
    mesh = copy.deepcopy(PROVIDED_MESH)
    mesh["constraints"] = {"dataplaneProxy": constraints}
    return mesh


def test_a_proxy_outside_the_mesh_constraints_is_refused_when_it_registers(env: Env) -> None:
    # app-a and app-b qualify (they stay connected); a proxy needs a team tag, or to be one of them.
    env.put_ok(
        _constrained(
            requirements=[
                {"tags": {"kuma.io/service": "app-a"}},
                {"tags": {"kuma.io/service": "app-b"}},
                {"tags": {"team": "*"}},
            ]
        )
    )
    try:
        since = len(env.cp.logs())
        outsider = env.agent("outsider", sidecar_dataplane("outsider", free_port(), free_port()))
        try:
            code = outsider.wait(timeout=60)
        finally:
            stop_process(outsider)
        said = (env.work / "outsider-dp.log").read_text(errors="replace")
        assert code == 2  # EXIT_USAGE: the Dataplane was refused
        assert "constraints.dataplaneProxy.requirements" in said and "match none" in said, said[-3000:]
        assert "dataplane_constraints_refused" in env.cp.logs()[since:]
        assert env.cp.get(f"/meshes/{MESH}/dataplanes/outsider")[0] == 404  # nothing registered
        # The zmctl way in is closed the same way.
        doc = {**sidecar_dataplane("outsider", free_port(), free_port()), "mesh": MESH, "name": "outsider"}
        status, body = env.put(doc)
        assert status == 400 and "match none" in json.dumps(body), body
    finally:
        env.put_ok(PROVIDED_MESH)
    assert env.meshed() == (200, "app-b")


def _events(text: str, event: str, proxy: str) -> list[str]:
    """The control plane's JSON log lines of ``event`` about ``proxy``."""
    return [line for line in text.splitlines() if f'"event": "{event}"' in line and proxy in line]


def test_a_constraint_change_disconnects_the_proxies_it_excludes_until_it_is_lifted(env: Env) -> None:
    since = len(env.cp.logs())
    env.put_ok(_constrained(restrictions=[{"tags": {"kuma.io/service": "app-a"}}]))
    try:
        wait_until(
            lambda: _events(env.cp.logs()[since:], "xds_stream_revoked", "default/app-a"),
            timeout=15,
            what="app-a's stream to be closed",
        )
        # Envoy reconnects at once, and is refused every time while the restriction holds.
        wait_until(
            lambda: len(_events(env.cp.logs()[since:], "dataplane_constraints_refused", '"app-a"')) >= 2,
            timeout=30,
            what="app-a's reconnects to be refused",
        )
        assert "restrictions[0]" in env.cp.logs()[since:]
        # app-b stays connected: its tags do not match the restriction.
        assert not _events(env.cp.logs()[since:], "xds_stream_revoked", "default/app-b")
        # app-a's Envoy is cut from the control plane: no config and no certificate renewal (it keeps
        # what it had until its certificate expires: docs/identity.md).
        assert env.a.stat("control_plane.connected_state") == 0
        assert env.b.stat("control_plane.connected_state") == 1
    finally:
        env.put_ok(PROVIDED_MESH)
    wait_until(lambda: env.a.stat("control_plane.connected_state") == 1, timeout=60, what="app-a to be admitted again")
    assert env.meshed() == (200, "app-b")
    assert zmctl(env.cp.api, "inspect", "dataplanes", "--mesh", MESH).returncode == 0


# --- CA rotation (last: it changes the mesh's CA) ----------------------------------------------------


class Traffic:
    """A request through app-a's sidecar to app-b every 50 ms, on a thread, counting failures."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.sent = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            status, body = self.env.meshed()
            self.sent += 1
            if (status, body) != (200, "app-b"):
                self.failed.append(f"{time.strftime('%H:%M:%S')} {status} {body[:200]}")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _ca_state(env: Env) -> dict[str, Any]:
    status, body = env.cp.get(f"/meshes/{MESH}/mesh-ca-states/{MESH}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def _rotated_to(env: Env, backend: str) -> bool:
    state = _ca_state(env)
    return state["phase"] == "Stable" and state["target"]["backend"] == backend


def _tls_failures(env: Env) -> dict[str, int]:
    """TLS failures on both ends of app-a -> app-b (a retry would hide them from the client)."""
    names = [
        f"listener.127.0.0.1_{env.b_inbound}.ssl.fail_verify_error",
        f"listener.127.0.0.1_{env.b_inbound}.ssl.connection_error",
        "cluster.app-b.ssl.fail_verify_error",
        "cluster.app-b.ssl.connection_error",
    ]
    return {name: (env.b if name.startswith("listener") else env.a).stat(name) for name in names}


def test_a_ca_rotation_builtin_and_back_fails_no_request(env: Env) -> None:
    builtin = {"name": "ca-builtin", "type": "builtin", "dpCert": {"rotation": {"expiration": "1h"}}}
    both = copy.deepcopy(PROVIDED_MESH)
    both["mtls"]["backends"].append(builtin)
    assert _rotated_to(env, BACKEND)
    # app-a's Envoy closes its connections to app-b after 200 ms, so requests keep making new mTLS
    # handshakes through the rotation (a pooled connection would hide what each step trusts).
    short_connections = {
        "type": "MeshTimeout",
        "mesh": MESH,
        "name": "short-connections",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"maxConnectionDuration": "200ms"}}}],
        },
    }
    env.put_ok(short_connections)
    wait_until(
        lambda: "max_connection_duration" in json.dumps(env.a.cluster("app-b")), timeout=15, what="app-a's timeout"
    )
    handshakes = env.b.stat(f"listener.127.0.0.1_{env.b_inbound}.ssl.handshake")
    tls_failures = _tls_failures(env)
    phases: set[str] = set()
    with Traffic(env) as traffic:
        time.sleep(0.5)
        for target in ("ca-builtin", BACKEND):
            both["mtls"]["enabledBackend"] = target
            env.put_ok(both)
            wait_until(
                lambda target=target: phases.add(_ca_state(env)["phase"]) or _rotated_to(env, target),  # type: ignore[func-returns-value]
                timeout=90,
                what=f"the rotation to {target} to finish",
            )
            insight = env.cp.get(f"/meshes/{MESH}/dataplane-insights/app-b")[1]
            assert insight["mTLS"]["issuedBackend"] == target
        time.sleep(0.5)
    assert traffic.sent > 40
    assert env.b.stat(f"listener.127.0.0.1_{env.b_inbound}.ssl.handshake") - handshakes > traffic.sent // 8
    assert not traffic.failed, traffic.failed[:10]
    # Not even a retried handshake failed: no proxy ever met a certificate it did not trust.
    assert _tls_failures(env) == tls_failures
    assert {"Trusting", "Reissuing"} & phases  # it went through the steps, not a jump
