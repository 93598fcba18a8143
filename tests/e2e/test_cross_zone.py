"""Cross-zone traffic with real processes and real Envoys, all on 127.0.0.1.

    global CP ──KDS── zone-1 CP                       zone-2 CP
                       app-a + sidecar  ─┐             ingress-2 (Envoy, SNI passthrough)
                       egress-1 (Envoy) ─┼─mTLS──────▶      │
                       ingress-1                            ▼
                                                       app-b + sidecar (the only app-b)

app-a in zone-1 calls app-b, which runs only in zone-2: directly through zone-2's ingress,
then (Mesh ``routing.zoneEgress: true``) through zone-1's egress; an ExternalService on
127.0.0.1 is reached by name through the egress. Policies are created on global. The mesh
CA is global's, so both zones' proxies trust each other; the ingress never holds a key.

Every wait is bounded; every process is stopped at the end.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from zonemesh.shared.kds.naming import hashed_name
from zonemesh.shared.tokens.keys import generate_private_key_pem
from zonemesh.zone_cp.xds.envoy import Destination
from zonemesh.zone_cp.xds.testing import self_signed_server_cert

from zonemesh.testing import (
    ALLOW_ALL,
    DENY_A_TO_B,
    MTLS_MESH,
    ControlPlaneProcess,
    EnvoyAdmin,
    dp_run_command,
    free_port,
    http,
    log_excerpt,
    make_ca_cert,
    sidecar_dataplane,
    start_http_app,
    stop_processes,
    wait_until,
    zmctl,
    zmctl_ok,
)

pytestmark = pytest.mark.slow

# global's allow-all as zones store it: under Kuma's hashed name (shared/kds/naming.py)
ALLOW_ALL_ON_ZONES = f"/meshes/default/meshtrafficpermissions/{hashed_name('default', 'allow-all')}"

WAIT = 60.0  # two cores shared with other work: generous, still bounded


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        status, body = http("GET", url, timeout=timeout)
    except OSError as exc:  # connection reset / refused while config converges
        return 0, str(exc)
    return status, body if isinstance(body, str) else json.dumps(body)


class Envoy(EnvoyAdmin):
    def config_dump(self, query: str = "?include_eds") -> dict[str, Any]:
        return super().config_dump(query)


@dataclass
class World:
    work: Path
    glob: ControlPlaneProcess
    zones: dict[str, ControlPlaneProcess]
    xds_ports: dict[str, int]
    a_out: int = 0
    ext_out: int = 0
    ext_port: int = 0
    tls_out: int = 0
    tls_port: int = 0
    tls_ca: str = ""
    mtls_out: int = 0  # a-1's outbound to ext-mtls, a server that requires a client certificate
    mtls_port: int = 0
    mtls_pems: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # server, client-1/2/3: (cert, key)
    ingress: dict[str, Envoy] = field(default_factory=dict)
    egress: Envoy | None = None
    a: Envoy | None = None
    b: Envoy | None = None
    b_proc: subprocess.Popen[bytes] | None = None
    b_ports: tuple[int, int, int] = (0, 0, 0)  # inbound, app, admin
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # -- control planes -------------------------------------------------------------------

    def put_global(self, doc: dict[str, Any]) -> None:
        rtype = {"Mesh": "meshes", "MeshTrafficPermission": "meshtrafficpermissions"}.get(
            doc["type"], doc["type"].lower() + "s"
        )
        path = f"/meshes/{doc['name']}" if doc["type"] == "Mesh" else f"/meshes/{doc['mesh']}/{rtype}/{doc['name']}"
        status, body = self.glob.put(path, doc)
        assert status in (200, 201), body

    def token(self, zone: str, path: str, body: dict[str, Any]) -> Path:
        status, token = http("POST", self.zones[zone].api + path, body)
        assert status == 200 and isinstance(token, str), token
        name = body.get("name") or "-".join(body.get("scope") or [])
        token_file = self.work / f"{zone}-{name}.token"
        token_file.write_text(token)
        return token_file

    def zmctl_zone_token(self, zone: str, scope: str, suffix: str = "") -> Path:
        """As docs/cross-zone.md shows: GLOBAL issues the zone proxies' tokens (as in Kuma)."""
        out = zmctl_ok(self.glob.api, "generate", "zone-token", "--zone", zone, "--scope", scope, "--valid-for", "1h")
        token_file = self.work / f"{zone}-{scope}{suffix}.token"
        token_file.write_text(out.strip())
        return token_file

    # -- proxies --------------------------------------------------------------------------

    def start_agent(
        self, zone: str, name: str, doc: dict[str, Any], token_file: Path, admin_port: int, proxy_type: str
    ) -> subprocess.Popen[bytes]:
        spec = self.work / f"{zone}-{name}.json"
        spec.write_text(json.dumps(doc))
        cmd = dp_run_command(
            xds_port=self.xds_ports[zone],
            ca_file=self.zones[zone].data_dir / "xds.crt",
            name=name,
            mesh="default",
            dataplane=["--dataplane-file", str(spec)],
            token_file=token_file,
            admin_port=admin_port,
            work_dir=self.work / f"{zone}-{name}",
            extra=["--proxy-type", proxy_type],
        )
        with (self.work / f"{zone}-{name}.log").open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start_app(self, name: str, port: int) -> None:
        self.procs.append(start_http_app(name, port))

    def start_zone_proxy(self, zone: str, proxy_type: str, port: int = 0) -> Envoy:
        port, admin = port or free_port(), free_port()
        networking: dict[str, Any] = {"address": "127.0.0.1", "port": port}
        if proxy_type == "ingress":
            networking.update(advertisedAddress="127.0.0.1", advertisedPort=port)
        doc = {"type": "ZoneIngress" if proxy_type == "ingress" else "ZoneEgress", "networking": networking}
        token = self.zmctl_zone_token(zone, proxy_type)
        proc = self.start_agent(zone, f"{proxy_type}-{zone[-1]}", doc, token, admin, proxy_type)
        envoy = Envoy(f"{proxy_type}-{zone}", admin)
        envoy.port = port  # type: ignore[attr-defined]
        envoy.proc = proc  # type: ignore[attr-defined]
        return envoy

    def start_b(self) -> None:
        inbound, app, admin = self.b_ports
        doc = sidecar_dataplane("app-b", inbound, app)
        token = self.token("zone-2", "/tokens/dataplane", {"mesh": "default", "name": "b-1", "validFor": "1h"})
        self.b_proc = self.start_agent("zone-2", "b-1", doc, token, admin, "dataplane")
        self.b = Envoy("b-1", admin)

    def control_planes(self) -> dict[str, ControlPlaneProcess]:
        return {"global": self.glob, **self.zones}

    def logs(self, since: dict[str, int] | None = None) -> str:
        """The proxies' log tails, and what each control plane logged since the offsets in
        ``since`` (warnings and errors in full, the rest as its last 4,000 characters)."""
        parts = [f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.work.glob("*.log"))]
        for name, cp in self.control_planes().items():
            parts.append(log_excerpt(f"{name} CP", cp.logs()[(since or {}).get(name, 0) :]))
        return "\n".join(parts)


def start_zone(work: Path, zone: str, kds_port: int, token: str, xds_port: int) -> ControlPlaneProcess:
    data = work / zone
    data.mkdir(parents=True, exist_ok=True)
    (data / "zone.token").write_text(token)
    args = [
        "--mode", "zone", "--zone", zone, "--store", "memory",
        "--xds-address", "127.0.0.1", "--xds-port", str(xds_port),
        "--global-address", f"grpcs://127.0.0.1:{kds_port}",
        "--zone-token-file", str(data / "zone.token"), "--global-ca-file", str(work / "global" / "kds-tls.crt"),
    ]  # fmt: skip
    return ControlPlaneProcess(data, args=args).start(timeout=WAIT)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("cross-zone")
    kds_port = free_port()
    glob = ControlPlaneProcess(
        work / "global",
        args=["--mode", "global", "--store", "memory", "--kds-address", "127.0.0.1", "--kds-port", str(kds_port)],
    ).start(timeout=WAIT)
    w = World(work, glob, {}, {"zone-1": free_port(), "zone-2": free_port()})
    try:
        for zone in ("zone-1", "zone-2"):
            status, token = http("POST", glob.api + "/tokens/zone", {"zone": zone, "validFor": "24h"})
            assert status == 200, token
            w.zones[zone] = start_zone(work, zone, kds_port, str(token), w.xds_ports[zone])
        w.put_global(MTLS_MESH)
        w.put_global(ALLOW_ALL)
        for cp in w.zones.values():
            wait_until(
                lambda cp=cp: cp.get(ALLOW_ALL_ON_ZONES)[0] == 200,
                WAIT,
                what="policies in zones",
            )
            ca = "/meshes/default/secrets/default.ca-builtin-cert-ca-1"
            wait_until(lambda cp=cp, ca=ca: cp.get(ca)[0] == 200, WAIT, what="global's mesh CA in zones")

        # zone-2: app-b and its sidecar, and the zone's ingress
        w.b_ports = (free_port(), free_port(), free_port())
        w.start_app("app-b", w.b_ports[1])
        w.start_b()
        w.ingress["zone-2"] = w.start_zone_proxy("zone-2", "ingress")
        w.ingress["zone-1"] = w.start_zone_proxy("zone-1", "ingress")
        w.egress = w.start_zone_proxy("zone-1", "egress")

        # zone-1: app-a calling app-b and the external service by name
        a_in, a_app, a_admin = free_port(), free_port(), free_port()
        w.a_out, w.ext_out, w.ext_port = free_port(), free_port(), free_port()
        w.start_app("app-a", a_app)
        w.start_app("external", w.ext_port)
        w.tls_out, w.tls_port = free_port(), free_port()
        cert, key = self_signed_server_cert("127.0.0.1")  # SANs: IP 127.0.0.1, DNS localhost
        (work / "ext-tls.crt").write_bytes(cert)
        (work / "ext-tls.key").write_bytes(key)
        w.tls_ca = cert.decode()
        w.procs.append(start_http_app("external-tls", w.tls_port, tls=(work / "ext-tls.crt", work / "ext-tls.key")))
        # ext-mtls: trusts the client certificates client-1 and client-2 (self-signed), not client-3.
        w.mtls_out, w.mtls_port = free_port(), free_port()
        w.mtls_pems = {name: self_signed_server_cert(host) for name, host in MTLS_NAMES.items()}
        for name, (cert, key) in w.mtls_pems.items():
            (work / f"{name}.crt").write_bytes(cert)
            (work / f"{name}.key").write_bytes(key)
        (work / "clients-ca.crt").write_bytes(w.mtls_pems["client-1"][0] + w.mtls_pems["client-2"][0])
        server_files = (work / "ext-mtls.crt", work / "ext-mtls.key")
        w.procs.append(
            start_http_app("external-mtls", w.mtls_port, tls=server_files, client_ca=work / "clients-ca.crt")
        )
        outbound = [("app-b", w.a_out), ("ext-http", w.ext_out), ("ext-tls", w.tls_out), ("ext-mtls", w.mtls_out)]
        doc = sidecar_dataplane("app-a", a_in, a_app, outbound=outbound)
        token = w.token("zone-1", "/tokens/dataplane", {"mesh": "default", "name": "a-1", "validFor": "1h"})
        w.start_agent("zone-1", "a-1", doc, token, a_admin, "dataplane")
        w.a = Envoy("a-1", a_admin)
        yield w
    except BaseException:
        print(w.logs())
        raise
    finally:
        stop_processes(w.procs)
        for cp in w.zones.values():
            cp.stop()
        glob.stop()


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, world: World) -> None:
    """A failed test shows what the control planes logged while it ran (tests/conftest.py)."""
    since = {name: len(cp.logs()) for name, cp in world.control_planes().items()}
    request.node.failure_logs = lambda: world.logs(since)


def call_b(w: World) -> tuple[int, str]:
    return get(f"http://127.0.0.1:{w.a_out}/")


def test_app_in_zone_1_reaches_a_service_only_in_zone_2_through_its_ingress(world: World) -> None:
    w = world
    assert w.a is not None and w.b is not None
    ingress = w.ingress["zone-2"]
    stat = "tcp.ingress_default_app-b.downstream_cx_rx_bytes_total"  # connections are reused: count bytes
    wait_until(lambda: call_b(w) == (200, "app-b"), WAIT, what="app-a -> app-b across zones")
    before = ingress.stat(stat)
    for _ in range(3):
        assert call_b(w) == (200, "app-b")
    assert ingress.stat(stat) > before  # the requests crossed zone-2's ingress
    # zone-1's proxy sees zone-2's ingress as the endpoint of app-b, not app-b's own address
    assert w.a.hosts("app-b") == [f"127.0.0.1:{ingress.port}"]  # type: ignore[attr-defined]
    # mTLS end to end: app-b's sidecar terminated TLS for a client certificate of the mesh ...
    assert w.b.stat(f"listener.127.0.0.1_{w.b_ports[0]}.ssl.handshake") >= 1
    # ... while the ingress holds no secret at all and only passes bytes through
    dump = ingress.config_dump()
    text = json.dumps(dump)
    assert "PRIVATE KEY" not in text and "dynamic_active_secrets" not in text
    listeners = json.dumps([c for c in dump["configs"] if "ListenersConfigDump" in c["@type"]])
    assert "tls_inspector" in listeners and "transport_socket" not in listeners
    # the ingress went zone-2 -> global -> zone-1, with zone-2's instances of app-b
    for cp in (w.glob, w.zones["zone-1"]):
        status, synced = cp.get("/zoneingresses/zone-2.ingress-2")
        assert status == 200, synced
        assert synced["zone"] == "zone-2" and synced["labels"]["zonemesh.io/zone"] == "zone-2"
        assert {
            "tags": {"kuma.io/service": "app-b", "kuma.io/protocol": "http"},
            "instances": 1,
            "mesh": "default",
        } in (synced["availableServices"])
    assert w.zones["zone-2"].get("/zoneingresses/zone-1.ingress-1")[0] == 200  # and the other way round
    assert w.zones["zone-2"].get("/zoneingresses/zone-2.ingress-2")[0] == 404  # not its own back
    # the zone control plane shows what it generates for the ingress
    status, config = w.zones["zone-2"].get("/zoneingresses/ingress-2/_config")
    assert status == 200, config
    chains = config["xds"]["listeners"][0]["filterChains"]
    assert "app-b{mesh=default}" in [c["filterChainMatch"]["serverNames"][0] for c in chains]
    assert not config["xds"]["secrets"]
    assert w.zones["zone-2"].get("/zoneingresses/nope/_config")[0] == 404


def test_deny_policy_on_global_blocks_the_cross_zone_call_and_deleting_it_restores_it(world: World) -> None:
    w = world
    w.put_global(DENY_A_TO_B)
    wait_until(lambda: call_b(w)[0] == 403, WAIT, what="deny applied in zone-2")
    assert w.b is not None and w.b.stat("http.localhost_" + str(w.b_ports[1]) + ".rbac.denied") >= 1
    assert w.glob.delete("/meshes/default/meshtrafficpermissions/deny-a-to-b")[0] == 200
    wait_until(lambda: call_b(w) == (200, "app-b"), WAIT, what="deny removed")


def _timeout_to_b(seconds: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "type": "MeshTimeout",
        "mesh": "default",
        "name": "timeouts",
        "labels": labels or {},
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [
                {"targetRef": {"kind": "MeshService", "name": "app-b"}, "default": {"connectionTimeout": f"{seconds}s"}}
            ],
        },
    }


def test_a_zone_policy_wins_in_its_zone_over_globals_of_the_same_name(world: World) -> None:
    """Kuma 2.x: zone-1 creates its own MeshTimeout named like global's; zone-1's proxy takes the
    zone's (Kuma's origin order), global shows it under its hashed name; deleted, global's is back."""
    w, a = world, world.a
    assert a is not None
    timeouts = "/meshes/default/meshtimeouts/timeouts"
    at_global = f"/meshes/default/meshtimeouts/{hashed_name('default', 'timeouts', 'zone-1')}"
    globals_on_zone = f"/meshes/default/meshtimeouts/{hashed_name('default', 'timeouts')}"
    w.put_global(_timeout_to_b(4))
    wait_until(lambda: a.cluster("app-b").get("connect_timeout") == "4s", WAIT, what="global's timeout")
    status, body = w.zones["zone-1"].put(timeouts, _timeout_to_b(7, {"kuma.io/origin": "zone"}))
    assert status == 201, body
    wait_until(lambda: a.cluster("app-b").get("connect_timeout") == "7s", WAIT, what="zone's timeout")
    wait_until(lambda: w.glob.get(at_global)[0] == 200, WAIT, what="zone-1's timeout at global")
    assert w.zones["zone-2"].get(timeouts)[0] == 404  # not in zone-2
    assert w.zones["zone-1"].delete(timeouts)[0] == 200
    wait_until(lambda: a.cluster("app-b").get("connect_timeout") == "4s", WAIT, what="global's again")
    assert w.glob.delete(timeouts)[0] == 200
    wait_until(lambda: w.zones["zone-1"].get(globals_on_zone)[0] == 404, WAIT, what="global's deleted in zone-1")


def test_through_zone_1_egress_with_routing_zone_egress(world: World) -> None:
    w = world
    assert w.a is not None and w.egress is not None
    w.put_global({**MTLS_MESH, "routing": {"zoneEgress": True}})
    egress_port = w.egress.port  # type: ignore[attr-defined]
    wait_until(lambda: w.a.hosts("app-b") == [f"127.0.0.1:{egress_port}"], WAIT, what="app-b via the egress")  # type: ignore[union-attr]
    wait_until(lambda: call_b(w) == (200, "app-b"), WAIT, what="app-a -> egress -> ingress -> app-b")
    stat = "tcp.egress_default_app-b.downstream_cx_rx_bytes_total"
    ingress_stat = "tcp.ingress_default_app-b.downstream_cx_rx_bytes_total"
    before, ingress_before = w.egress.stat(stat), w.ingress["zone-2"].stat(ingress_stat)
    for _ in range(3):
        assert call_b(w) == (200, "app-b")
    assert w.egress.stat(stat) > before
    assert w.ingress["zone-2"].stat(ingress_stat) > ingress_before
    # the egress passes app-b's TLS through as well: it holds only its own zone-egress identity
    assert "spiffe://default/app-b" not in json.dumps(w.egress.config_dump())


def test_external_service_by_name_through_the_egress(world: World) -> None:
    w = world
    assert w.egress is not None
    external = {
        "type": "ExternalService",
        "mesh": "default",
        "name": "ext-http",
        "tags": {"kuma.io/service": "ext-http", "kuma.io/protocol": "http"},
        "networking": {"address": f"127.0.0.1:{w.ext_port}"},
    }
    status, body = w.glob.put("/meshes/default/externalservices/ext-http", external)
    assert status == 201, body
    url = f"http://127.0.0.1:{w.ext_out}/"
    wait_until(lambda: get(url) == (200, "external"), WAIT, what="ExternalService via the egress")
    assert w.egress.stat("tcp.egress_default_ext-http.downstream_cx_total") >= 1

    # The egress checks MeshTrafficPermission for external services, by the caller's SPIFFE ID.
    deny = {
        "type": "MeshTrafficPermission",
        "mesh": "default",
        "name": "no-ext-for-a",
        "spec": {
            "targetRef": {"kind": "MeshService", "name": "ext-http"},
            "from": [{"targetRef": {"kind": "MeshService", "name": "app-a"}, "default": {"action": "Deny"}}],
        },
    }
    w.put_global(deny)
    wait_until(lambda: get(url)[0] not in (0, 200), WAIT, what="egress denies app-a -> ext-http")
    assert w.egress.stat("egress_default_ext-http.rbac.denied") >= 1
    assert w.glob.delete("/meshes/default/meshtrafficpermissions/no-ext-for-a")[0] == 200
    wait_until(lambda: get(url) == (200, "external"), WAIT, what="allowed again")


def test_stopping_zone_2s_service_removes_it_from_zone_1_within_seconds(world: World) -> None:
    w = world
    assert w.a is not None and w.b_proc is not None
    w.put_global(MTLS_MESH)  # straight to the remote ingress again: the endpoint to watch is zone-2's ingress
    ingress_port = w.ingress["zone-2"].port  # type: ignore[attr-defined]
    wait_until(lambda: w.a.hosts("app-b") == [f"127.0.0.1:{ingress_port}"], WAIT, what="direct again")  # type: ignore[union-attr]
    w.b_proc.send_signal(signal.SIGTERM)  # the agent drains and unregisters its Dataplane
    stopped = time.monotonic()
    assert w.b_proc.wait(30) == 0
    wait_until(lambda: w.a.hosts("app-b") == [], 30, interval=0.2, what="zone-2 gone from app-b's endpoints")  # type: ignore[union-attr]
    print(f"zone-2 removed from zone-1's endpoints {time.monotonic() - stopped:.1f}s after SIGTERM to app-b's agent")
    assert call_b(w)[0] != 200
    w.start_b()  # back, for the next test
    wait_until(lambda: call_b(w) == (200, "app-b"), WAIT, what="app-b back")


def test_external_service_with_tls_origination_directly_and_through_the_egress(world: World) -> None:
    """The app speaks plain HTTP to its outbound; the proxy (directly) or the egress originates
    TLS to localhost, verifying the server against the ExternalService's caCert."""
    w = world
    assert w.egress is not None
    external: dict[str, Any] = {
        "type": "ExternalService",
        "mesh": "default",
        "name": "ext-tls",
        "tags": {"kuma.io/service": "ext-tls", "kuma.io/protocol": "http"},
        "networking": {
            "address": f"localhost:{w.tls_port}",
            "disableHostDNSLookup": True,  # Envoy resolves "localhost" itself
            "tls": {"enabled": True, "caCert": {"inlineString": w.tls_ca}},
        },
    }
    assert w.glob.put("/meshes/default/externalservices/ext-tls", external)[0] == 201
    url = f"http://127.0.0.1:{w.tls_out}/"
    wait_until(lambda: get(url) == (200, "external-tls"), WAIT, what="TLS ExternalService, direct")
    assert w.egress.stat("tcp.egress_default_ext-tls.downstream_cx_total") == 0  # not via the egress

    # Through the egress, the control plane resolving the host this time.
    external["networking"]["disableHostDNSLookup"] = False
    assert w.glob.put("/meshes/default/externalservices/ext-tls", external)[0] == 200
    w.put_global({**MTLS_MESH, "routing": {"zoneEgress": True}})
    wait_until(lambda: w.a.hosts("ext-tls") == [f"127.0.0.1:{w.egress.port}"], WAIT, what="via egress")  # type: ignore[union-attr]
    wait_until(lambda: get(url) == (200, "external-tls"), WAIT, what="TLS ExternalService through the egress")
    assert w.egress.stat("tcp.egress_default_ext-tls.downstream_cx_total") >= 1

    # A CA that did not sign the server's certificate: the origination fails, nothing leaks through.
    other_ca, _ = self_signed_server_cert("127.0.0.1")
    external["networking"]["tls"]["caCert"] = {"inlineString": other_ca.decode()}
    assert w.glob.put("/meshes/default/externalservices/ext-tls", external)[0] == 200
    wait_until(lambda: get(url)[0] == 503, WAIT, what="untrusted server refused")
    w.put_global(MTLS_MESH)


MTLS_NAMES = {"ext-mtls": "127.0.0.1", "client-1": "client-1", "client-2": "client-2", "client-3": "client-3"}


def put_secret(w: World, name: str, data: bytes) -> None:
    doc = {"type": "Secret", "mesh": "default", "name": name, "data": base64.b64encode(data).decode()}
    status, body = w.glob.put(f"/meshes/default/secrets/{name}", doc)
    assert status in (200, 201), body


def present_client(w: World, client: str) -> None:
    """The Secrets ext-mtls's clientCert and clientKey refer to, holding ``client``'s pair."""
    cert, key = w.mtls_pems[client]
    put_secret(w, "ext-mtls-cert", cert)
    put_secret(w, "ext-mtls-key", key)


def assert_no_key(w: World, text: str) -> None:
    keys = [key for _, key in w.mtls_pems.values()]
    assert "PRIVATE KEY" not in text and not any(base64.b64encode(k).decode() in text for k in keys)


def assert_dump_has_the_secret_but_no_key(w: World, path: str) -> None:
    status, body = w.zones["zone-1"].get(path)
    assert status == 200, body
    (secret,) = [s for s in body["xds"]["secrets"] if s["name"] == "external_cert:secret:default:ext-mtls"]
    assert secret["tlsCertificate"]["privateKey"] == {"inlineBytes": "<redacted>"}
    assert_no_key(w, json.dumps(body))


def test_external_service_with_client_certificate_and_key_from_secrets(world: World) -> None:
    """A server on 127.0.0.1 that requires a client certificate (it answers with the client's CN):
    the ExternalService's caCert, clientCert and clientKey are ``secret:`` references to Secrets
    created on global. Missing first (a clear error, the proxy keeps its last config), then created,
    rotated, replaced by a certificate the server refuses; directly from the sidecar and through
    zone-1's egress. No config dump shows a key."""
    w = world
    assert w.a is not None and w.egress is not None
    zone_1 = w.zones["zone-1"]
    external: dict[str, Any] = {
        "type": "ExternalService",
        "mesh": "default",
        "name": "ext-mtls",
        "tags": {"kuma.io/service": "ext-mtls", "kuma.io/protocol": "http"},
        "networking": {
            "address": f"127.0.0.1:{w.mtls_port}",
            "tls": {
                "enabled": True,
                "caCert": {"secret": "ext-mtls-ca"},
                "clientCert": {"secret": "ext-mtls-cert"},
                "clientKey": {"secret": "ext-mtls-key"},
            },
        },
    }
    url = f"http://127.0.0.1:{w.mtls_out}/"
    log_start = len(zone_1.logs())
    assert w.glob.put("/meshes/default/externalservices/ext-mtls", external)[0] == 201
    missing = "ExternalService 'ext-mtls' networking.tls.clientCert: secret 'ext-mtls-cert' not found in mesh 'default'"

    def config_error() -> str:
        status, body = zone_1.get("/meshes/default/dataplanes/a-1/_config")
        return str(body.get("detail")) if status == 500 and isinstance(body, dict) else ""

    assert missing in wait_until(config_error, WAIT, what="a-1's generation to fail on the missing Secret")
    wait_until(lambda: missing in zone_1.logs()[log_start:], WAIT, what="the error in zone-1's log")
    assert '"event": "xds_generation_failed"' in zone_1.logs()[log_start:]
    assert call_b(w) == (200, "app-b")  # a-1 keeps its last config meanwhile

    try:
        put_secret(w, "ext-mtls-ca", w.mtls_pems["ext-mtls"][0])
        present_client(w, "client-1")
        wait_until(lambda: get(url) == (200, "external-mtls client-1"), WAIT, what="mTLS with client-1 from Secrets")

        # Rotation: the new pair reaches Envoy over SDS, no restart.
        present_client(w, "client-2")
        wait_until(lambda: get(url) == (200, "external-mtls client-2"), WAIT, what="client-2 after rotation")
        # A certificate the server does not trust: refused, so Envoy presents what the Secret holds.
        present_client(w, "client-3")
        wait_until(lambda: get(url)[0] == 503, WAIT, what="client-3 refused by the server")
        present_client(w, "client-2")
        wait_until(lambda: get(url) == (200, "external-mtls client-2"), WAIT, what="client-2 again")
        assert_dump_has_the_secret_but_no_key(w, "/meshes/default/dataplanes/a-1/_config")

        # Through zone-1's egress: it reads the same Secrets and originates the mTLS itself.
        w.put_global({**MTLS_MESH, "routing": {"zoneEgress": True}})
        wait_until(lambda: w.a.hosts("ext-mtls") == [f"127.0.0.1:{w.egress.port}"], WAIT, what="via egress")  # type: ignore[union-attr]
        wait_until(lambda: get(url) == (200, "external-mtls client-2"), WAIT, what="mTLS through the egress")
        assert w.egress.stat("tcp.egress_default_ext-mtls.downstream_cx_total") >= 1
        assert_dump_has_the_secret_but_no_key(w, "/zoneegresses/egress-1/_config")
        # Nor in any control plane's log (a certificate/key mismatch mid-rotation made Envoy NACK).
        for cp in w.control_planes().values():
            assert_no_key(w, cp.logs())
    finally:
        w.put_global(MTLS_MESH)


def start_bad_ingress(w: World, name: str, token: Path) -> str:
    """An ingress agent in zone-1 with ``token``: refused before anything is registered."""
    doc = {"type": "ZoneIngress", "networking": {"address": "127.0.0.1", "port": free_port()}}
    proc = w.start_agent("zone-1", name, doc, token, free_port(), "ingress")
    assert proc.wait(30) == 3  # refused: no Envoy started
    assert w.zones["zone-1"].get(f"/zoneingresses/{name}")[0] == 404
    return (w.work / f"zone-1-{name}.log").read_text()


@pytest.mark.parametrize(
    ("scope", "zone", "reason"),
    [
        ("egress", "zone-1", "does not include 'ingress'"),
        ("ingress", "zone-2", "token was issued for zone 'zone-2', not for zone 'zone-1'"),
    ],
)
def test_zone_proxy_with_a_wrong_zone_token_is_refused(world: World, scope: str, zone: str, reason: str) -> None:
    token = world.zmctl_zone_token(zone, scope, suffix="-wrong")
    assert reason in start_bad_ingress(world, f"bad-{zone}-{scope}", token)


def test_a_token_signed_by_a_key_global_does_not_hold_is_refused(world: World) -> None:
    key = world.work / "stranger.pem"
    key.write_bytes(generate_private_key_pem())
    out = zmctl(
        world.glob.api, "generate", "zone-token", "--zone", "zone-1", "--scope", "ingress",
        "--valid-for", "1h", "--signing-key-path", str(key), "--kid", "1",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    token = world.work / "stranger.token"
    token.write_text(out.stdout.strip())
    assert "signature verification failed" in start_bad_ingress(world, "bad-stranger", token)


def test_a_federated_zone_refuses_to_issue_zone_tokens_and_points_to_global(world: World) -> None:
    api = world.zones["zone-1"].api
    status, body = http("POST", api + "/tokens/zone", {"zone": "zone-1", "scope": ["ingress"]})
    assert status == 400 and "issued by the global control plane" in json.dumps(body)
    out = zmctl(api, "generate", "zone-token", "--zone", "zone-1", "--scope", "ingress", "--valid-for", "1h")
    assert out.returncode != 0 and "generate zone-token --zone zone-1" in out.stderr + out.stdout
    # the zone holds no zone-token signing key, only the public keys global published
    status, secrets = world.zones["zone-1"].get("/global-secrets")
    assert status == 200 and not [s for s in secrets["items"] if s["name"].startswith("zone-token-signing-key")]
    status, trust = world.zones["zone-1"].get("/zone-token-trusts/zone-token")
    assert status == 200 and trust["publicKeys"] and "PRIVATE" not in json.dumps(trust)


def test_rotated_key_on_global_reaches_the_zone_and_a_revoked_token_is_refused_there(world: World) -> None:
    w = world
    key = w.work / "key-2.pem"
    key.write_bytes(generate_private_key_pem())
    secret = {
        "type": "GlobalSecret",
        "name": "zone-token-signing-key-2",
        "data": base64.b64encode(key.read_bytes()).decode(),
    }
    assert w.glob.put("/global-secrets/zone-token-signing-key-2", secret)[0] == 201
    added = time.monotonic()

    def has_key_2() -> bool:
        status, trust = w.zones["zone-1"].get("/zone-token-trusts/zone-token")
        return status == 200 and 2 in [k["kid"] for k in trust["publicKeys"]]

    wait_until(has_key_2, WAIT, interval=0.05, what="global's key 2 published to zone-1")
    print(f"global's new zone-token key reached zone-1 {time.monotonic() - added:.2f}s after it was added")
    token = w.zmctl_zone_token("zone-1", "ingress", suffix="-kid-2")
    claims = jwt.decode(token.read_text(), options={"verify_signature": False})
    assert jwt.get_unverified_header(token.read_text())["kid"] == "2"
    doc = {"type": "ZoneIngress", "networking": {"address": "127.0.0.1", "port": free_port()}}
    proc = w.start_agent("zone-1", "ingress-kid-2", doc, token, free_port(), "ingress")
    wait_until(
        lambda: w.zones["zone-1"].get("/zoneingresses/ingress-kid-2")[0] == 200, WAIT, what="kid-2 ingress admitted"
    )
    proc.send_signal(signal.SIGTERM)  # unregisters
    assert proc.wait(30) == 0
    revocations = {
        "type": "GlobalSecret",
        "name": "zone-token-revocations",
        "data": base64.b64encode(claims["jti"].encode()).decode(),
    }
    assert w.glob.put("/global-secrets/zone-token-revocations", revocations)[0] == 201
    revoked = time.monotonic()

    def refused() -> bool:
        status, trust = w.zones["zone-1"].get("/zone-token-trusts/zone-token")
        return status == 200 and claims["jti"] in trust["revoked"]

    wait_until(refused, WAIT, interval=0.05, what="revocation published to zone-1")
    print(f"a revocation on global reached zone-1 {time.monotonic() - revoked:.2f}s after it was written")
    assert f"token {claims['jti']} has been revoked" in start_bad_ingress(w, "ingress-revoked", token)


def zone_split(zone_1: int, zone_2: int) -> dict[str, Any]:
    """A MeshHTTPRoute splitting app-a's calls to app-b by zone (``kuma.io/zone`` subsets)."""
    refs = [
        {"kind": "MeshServiceSubset", "name": "app-b", "tags": {"kuma.io/zone": zone}, "weight": weight}
        for zone, weight in (("zone-1", zone_1), ("zone-2", zone_2))
    ]
    rule = {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "default": {"backendRefs": refs}}
    return {
        "type": "MeshHTTPRoute",
        "mesh": "default",
        "name": "app-b-by-zone",
        "spec": {"to": [{"targetRef": {"kind": "MeshService", "name": "app-b"}, "rules": [rule]}]},
    }


def test_mesh_http_route_splits_across_zones_by_weight(world: World) -> None:
    """With app-b in both zones, locality keeps app-a's calls in zone-1; a MeshHTTPRoute created
    on global sends them all to zone-2 (0/1, through zone-2's ingress, by the subset's SNI),
    then both ways (1/1); deleting it gives locality back."""
    w = world
    assert w.a is not None
    inbound, app, admin = free_port(), free_port(), free_port()
    w.start_app("app-b@zone-1-split", app)
    doc = sidecar_dataplane("app-b", inbound, app)
    token = w.token("zone-1", "/tokens/dataplane", {"mesh": "default", "name": "b-split", "validFor": "1h"})
    local = w.start_agent("zone-1", "b-split", doc, token, admin, "dataplane")
    ingress = w.ingress["zone-2"]
    try:
        wait_until(lambda: call_b(w) == (200, "app-b@zone-1-split"), WAIT, what="locality: the zone-1 instance")
        w.put_global(zone_split(0, 1))
        wait_until(lambda: call_b(w) == (200, "app-b"), WAIT, what="the route: all to zone-2")
        assert {call_b(w)[1] for _ in range(20)} == {"app-b"}
        # app-a's Envoy reaches the zone-2 subset through zone-2's ingress only.
        subset = Destination.to("app-b", {"kuma.io/zone": "zone-2"}).cluster_name
        assert w.a.hosts(subset) == [f"127.0.0.1:{ingress.port}"]  # type: ignore[attr-defined]
        sni = "app-b{kuma.io/zone=zone-2,mesh=default}"
        assert sni in json.dumps(w.a.cluster(subset)) and sni in json.dumps(ingress.config_dump())
        w.put_global(zone_split(1, 1))
        wait_until(
            lambda: {call_b(w)[1] for _ in range(40)} == {"app-b", "app-b@zone-1-split"}, WAIT, what="1/1 across zones"
        )
    finally:
        assert w.glob.delete("/meshes/default/meshhttproutes/app-b-by-zone")[0] in (200, 404)
        wait_until(lambda: call_b(w) == (200, "app-b@zone-1-split"), WAIT, what="locality again")
        local.send_signal(signal.SIGTERM)
        assert local.wait(30) == 0
    wait_until(lambda: call_b(w) == (200, "app-b"), WAIT, what="zone-2 only again")


def test_local_instances_first_remote_zone_when_none_is_left(world: World) -> None:
    """Locality: with app-b also in zone-1, zone-1's calls stay in zone-1; zone-2 takes over
    when the local instance goes."""
    w = world
    assert w.a is not None
    inbound, app, admin = free_port(), free_port(), free_port()
    w.start_app("app-b@zone-1", app)
    doc = {
        "type": "Dataplane",
        "networking": {
            "address": "127.0.0.1",
            "inbound": [
                {"port": inbound, "servicePort": app, "tags": {"kuma.io/service": "app-b", "kuma.io/protocol": "http"}}
            ],
        },
    }
    token = w.token("zone-1", "/tokens/dataplane", {"mesh": "default", "name": "b-local", "validFor": "1h"})
    local = w.start_agent("zone-1", "b-local", doc, token, admin, "dataplane")
    ingress = f"127.0.0.1:{w.ingress['zone-2'].port}"  # type: ignore[attr-defined]
    wait_until(lambda: sorted(w.a.hosts("app-b")) == sorted([f"127.0.0.1:{inbound}", ingress]), WAIT, what="both")  # type: ignore[union-attr]
    wait_until(lambda: call_b(w) == (200, "app-b@zone-1"), WAIT, what="local instance serving")
    answers = {call_b(w)[1] for _ in range(20)}
    assert answers == {"app-b@zone-1"}  # priority 0 healthy: nothing crosses zones
    local.send_signal(signal.SIGTERM)
    assert local.wait(30) == 0
    wait_until(lambda: call_b(w) == (200, "app-b"), WAIT, what="zone-2 takes over")
    assert {call_b(w)[1] for _ in range(5)} == {"app-b"}


def test_a_ca_rotation_driven_by_global_fails_no_cross_zone_request(world: World) -> None:
    """builtin -> provided -> builtin on global while a-1 (zone-1) calls app-b (zone-2) every 50 ms,
    its connections closed every 200 ms so that handshakes keep happening: global steps the
    MeshCAState from the insights both zones upload, the zones follow it, nothing fails."""
    w = world
    w.put_global(MTLS_MESH)
    wait_until(lambda: call_b(w) == (200, "app-b"), WAIT, what="app-b from a-1")
    root = make_ca_cert("operator root", key_type="rsa")
    intermediate = make_ca_cert("operator mesh CA", issuer=root)
    put_secret(w, "rotation-ca-cert", intermediate.chain(root))
    put_secret(w, "rotation-ca-key", intermediate.key_pem)
    mesh = json.loads(json.dumps(MTLS_MESH))
    mesh["mtls"]["backends"].append(
        {
            "name": "ca-provided",
            "type": "provided",
            "conf": {"cert": {"secret": "rotation-ca-cert"}, "key": {"secret": "rotation-ca-key"}},
        }
    )
    w.put_global(mesh)
    short = {
        "type": "MeshTimeout",
        "mesh": "default",
        "name": "short-connections",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"maxConnectionDuration": "200ms"}}}],
        },
    }
    status, body = w.glob.put("/meshes/default/meshtimeouts/short-connections", short)
    assert status in (200, 201), body

    def state(cp: ControlPlaneProcess) -> dict[str, Any]:
        status, body = cp.get("/meshes/default/mesh-ca-states/default")
        return body if status == 200 else {}

    def stable_on(target: str) -> bool:
        return all(
            state(cp).get("phase") == "Stable" and state(cp)["target"]["backend"] == target
            for cp in (w.glob, *w.zones.values())
        )

    assert w.a is not None and w.b is not None
    listener = f"listener.127.0.0.1_{w.b_ports[0]}"
    tls_stats = [
        (w.b, f"{listener}.ssl.fail_verify_error"),
        (w.b, f"{listener}.ssl.connection_error"),
        (w.a, "cluster.app-b.ssl.fail_verify_error"),
        (w.a, "cluster.app-b.ssl.connection_error"),
    ]
    tls_before = [envoy.stat(name) for envoy, name in tls_stats]
    sent, failed, phases = 0, [], set()
    stop = threading.Event()

    def traffic() -> None:
        nonlocal sent
        while not stop.wait(0.05):
            result = call_b(w)
            sent += 1
            if result != (200, "app-b"):
                failed.append(f"{time.strftime('%H:%M:%S')} {result}")

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        time.sleep(1)
        for target in ("ca-provided", "ca-1"):
            mesh["mtls"]["enabledBackend"] = target
            w.put_global(mesh)
            wait_until(
                lambda target=target: phases.add(state(w.glob).get("phase")) or stable_on(target),  # type: ignore[func-returns-value]
                120,
                what=f"the rotation to {target} in every zone",
            )
        time.sleep(1)
    finally:
        stop.set()
        thread.join(10)
        w.glob.delete("/meshes/default/meshtimeouts/short-connections")
    assert sent > 40
    assert not failed, failed[:10]
    # Not even a handshake that a retry would hide failed, on either end.
    assert [envoy.stat(name) for envoy, name in tls_stats] == tls_before
    assert {"Trusting", "Reissuing"} & phases
    w.put_global(MTLS_MESH)  # the provided backend goes once nothing uses it


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def test_a_killed_ingress_is_dropped_by_other_zones_and_used_again_once_back(world: World) -> None:
    """SIGKILL zone-2's ingress (agent and Envoy: nothing unregisters it): its ADS stream closes,
    its ZoneIngressInsight goes offline and reaches zone-1, which stops routing to it."""
    w = world
    assert w.a is not None
    ingress = w.ingress["zone-2"]
    port = ingress.port  # type: ignore[attr-defined]
    wait_until(lambda: w.a.hosts("app-b") == [f"127.0.0.1:{port}"], WAIT, what="zone-2's ingress in use")  # type: ignore[union-attr]
    wait_until(lambda: call_b(w) == (200, "app-b"), WAIT, what="app-b through zone-2's ingress")
    agent: subprocess.Popen[bytes] = ingress.proc  # type: ignore[attr-defined]
    envoys = children(agent.pid)
    assert envoys, "the ingress agent runs Envoy as its child"
    killed = time.monotonic()
    for pid in [agent.pid, *envoys]:
        os.kill(pid, signal.SIGKILL)
    agent.wait(10)

    def offline(cp: ControlPlaneProcess, name: str) -> bool:
        status, insight = cp.get(f"/zone-ingress-insights/{name}")
        return status == 200 and bool(insight["subscriptions"][-1].get("disconnectTime"))

    # Hop by hop (zone-2 -> global -> zone-1 -> app-a's Envoy), so that a failure names the hop.
    hops = [
        ("zone-2 closes its killed ingress's subscription", lambda: offline(w.zones["zone-2"], "ingress-2")),
        ("global has it offline", lambda: offline(w.glob, "zone-2.ingress-2")),
        ("zone-1 has it offline", lambda: offline(w.zones["zone-1"], "zone-2.ingress-2")),
        ("zone-1's app-a no longer routes to it", lambda: w.a.hosts("app-b") == []),  # type: ignore[union-attr]
    ]
    for what, reached in hops:
        wait_until(reached, 30, interval=0.1, what=what)
        print(f"{what}: {time.monotonic() - killed:.2f}s after SIGKILL")
    assert call_b(w)[0] != 200
    # still registered (nobody unregistered it), but offline everywhere
    assert w.zones["zone-1"].get("/zoneingresses/zone-2.ingress-2")[0] == 200

    w.ingress["zone-2"] = w.start_zone_proxy("zone-2", "ingress", port=port)  # restarted, same address
    wait_until(lambda: w.a.hosts("app-b") == [f"127.0.0.1:{port}"], WAIT, what="zone-2's ingress back in zone-1")  # type: ignore[union-attr]
    wait_until(lambda: call_b(w) == (200, "app-b"), WAIT, what="traffic back through zone-2's ingress")
    status, insight = w.zones["zone-1"].get("/zone-ingress-insights/zone-2.ingress-2")
    assert status == 200 and not insight["subscriptions"][-1].get("disconnectTime")


def test_killing_global_keeps_existing_cross_zone_routes(world: World) -> None:
    w = world
    ingress = w.ingress["zone-2"]
    if ingress.proc.poll() is not None:  # type: ignore[attr-defined]  # left dead by a failed test above
        w.ingress["zone-2"] = w.start_zone_proxy("zone-2", "ingress", port=ingress.port)  # type: ignore[attr-defined]
    wait_until(lambda: call_b(w) == (200, "app-b"), WAIT, what="app-b through zone-2's ingress")
    w.glob.kill()
    time.sleep(3)  # well past the KDS heartbeat timeout: the zones know global is gone
    for cp in w.zones.values():
        status, body = cp.get("/status/kds")
        assert status == 200 and body["connected"] is False, body
    for _ in range(5):
        assert call_b(w) == (200, "app-b")
