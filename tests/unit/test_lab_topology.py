"""The local lab's plan, checked without starting anything."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from zonemesh.shared.resources.codec import from_universal

from zonemesh.lab.main import check
from zonemesh.lab.supervisor import ALLOW_ALL, MESH_DOC
from zonemesh.lab.topology import Topology, plan
from zonemesh.testing import serve_in_thread


def all_ports(topo: Topology) -> list[int]:
    ports = [topo.control]
    for cp in (topo.global_cp, *topo.zones):
        ports += [cp.api, cp.diagnostics, cp.grpc] + ([cp.kds_proxy] if cp.kds_proxy else [])
    for proxy in topo.proxies:
        ports += [proxy.port, proxy.readiness]
    for work in topo.workloads:
        ports += [work.app_port, work.inbound, work.readiness, *(p for _, p in work.outbounds)]
    return ports


@pytest.mark.parametrize("port_base", [0, 25000])
def test_every_port_is_distinct(port_base: int, tmp_path: Path) -> None:
    topo = plan(tmp_path, zones=3, port_base=port_base)
    ports = all_ports(topo)
    assert len(ports) == len(set(ports))
    if port_base:
        assert all(port_base <= p < port_base + 100 for p in ports)


def test_fixed_base_gives_the_same_ports_every_time(tmp_path: Path) -> None:
    assert all_ports(plan(tmp_path, port_base=25000)) == all_ports(plan(tmp_path, port_base=25000))


def test_topology_has_the_documented_parts(tmp_path: Path) -> None:
    topo = plan(tmp_path)
    assert [z.name for z in topo.zones] == ["zone-1", "zone-2"]
    assert sorted((p.name, p.kind) for p in topo.proxies) == [
        ("egress-zone-1", "egress"),
        ("ingress-zone-1", "ingress"),
        ("ingress-zone-2", "ingress"),
    ]
    backends = {w.zone for w in topo.workloads if w.service == "backend"}
    assert backends == {"zone-1", "zone-2"}  # the backend runs in both zones
    front = topo.frontend()
    assert front.zone == "zone-1"
    assert front.upstream == f"http://127.0.0.1:{front.outbounds[0][1]}/"


def test_resources_the_lab_writes_are_valid(tmp_path: Path) -> None:
    """Every document the supervisor sends passes the same validation as the API's."""
    topo = plan(tmp_path)
    for doc in [MESH_DOC, ALLOW_ALL, *(w.dataplane() for w in topo.workloads)]:
        res, _ = from_universal(json.loads(json.dumps(doc)))
        assert res.name == doc["name"]


def test_round_trips_through_json(tmp_path: Path) -> None:
    topo = plan(tmp_path)
    assert Topology.from_json(topo.to_json()) == topo


def test_one_zone_is_not_a_multi_zone_lab(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 2 zones"):
        plan(tmp_path, zones=1)


def test_the_lab_verifies_tls_with_the_certificates_its_control_planes_generate(tmp_path: Path) -> None:
    """Each zone gets global's KDS certificate as --global-ca-file and each proxy its zone's xDS
    certificate as --ca-cert-file: the files the control planes write (shared/tls.py), never a
    skip-verify flag."""
    from zonemesh.global_cp.kds_server import KDS_TLS_NAME

    from zonemesh.lab.supervisor import Supervisor

    topo = plan(tmp_path)
    lab = Supervisor(topo)
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / f"{KDS_TLS_NAME}.crt").write_text("global's self-signed certificate")
    for zone in topo.zones:
        argv = lab.cp_argv(zone)
        assert argv[argv.index("--global-ca-file") + 1] == str(tmp_path / "global" / f"{KDS_TLS_NAME}.crt")
        assert argv[argv.index("--global-address") + 1] == f"grpcs://127.0.0.1:{zone.kds_proxy}"
        dp = lab.dp_argv(zone, "backend", tmp_path / "t", 1, {})
        assert dp[dp.index("--ca-cert-file") + 1] == str(tmp_path / zone.name / "xds.crt")  # zone_cp/app.py's
        assert dp[dp.index("--cp-address") + 1] == f"https://127.0.0.1:{zone.grpc}"
        assert not {"--global-tls-skip-verify", "--tls-skip-verify"} & {*argv, *dp}


def test_the_shipped_lab_does_not_import_the_test_helpers() -> None:
    """zonemesh-lab is a product command: it must not need zonemesh.testing (helpers for tests)."""
    probe = (
        "import importlib, pkgutil, sys, zonemesh.lab\n"
        "for m in pkgutil.iter_modules(zonemesh.lab.__path__): importlib.import_module('zonemesh.lab.' + m.name)\n"
        "print(sorted(n for n in sys.modules if n.startswith('zonemesh.')))"
    )
    out = subprocess.run([sys.executable, "-P", "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = out.stdout
    assert "'zonemesh.lab.supervisor'" in loaded and "'zonemesh.lab.container'" in loaded
    assert "zonemesh.testing" not in loaded


def test_replicas_add_global_replicas_an_etcd_cluster_and_a_kds_link_per_replica(tmp_path: Path) -> None:
    single = plan(tmp_path, port_base=25000)
    topo = plan(tmp_path, port_base=25000, replicas=2)
    assert all_ports(topo) == all_ports(single)  # the documented ports stay where they were
    assert [cp.name for cp in topo.globals] == ["global", "global-2"]
    assert [m.name for m in topo.etcd] == ["etcd-1", "etcd-2", "etcd-3"]
    assert all(len(z.more_kds_proxies) == 1 for z in topo.zones) and topo.zone_replicas == 1
    ports = all_ports(topo) + [p for g in topo.more_globals for p in (g.api, g.diagnostics, g.grpc)]
    ports += [p for z in topo.zones for p in z.more_kds_proxies] + [
        p for m in topo.etcd for p in (m.client, m.peer, m.metrics)
    ]
    assert len(ports) == len(set(ports))
    again = Topology.from_json(topo.to_json())
    assert again == topo
    assert Topology.from_json(single.to_json()).etcd == []  # a lab of one global has no etcd


def test_zone_replicas_beyond_what_the_lab_can_run_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="zone-1 can run 2 replica"):
        plan(tmp_path, replicas=3, zone_replicas=3)
    with pytest.raises(ValueError, match="global replicas: 1 to 3"):
        plan(tmp_path, replicas=4)


def test_zone_1_replicas_share_etcd_token_certificate_and_proxies_list_them(tmp_path: Path) -> None:
    """What `--replicas 2` gives zone-1 (topology.ZONE_REPLICAS_AVAILABLE)."""
    from zonemesh.lab.supervisor import Supervisor

    topo = plan(tmp_path, port_base=25000, replicas=2, zone_replicas=2)
    (replica,) = topo.more_zone_replicas
    assert (replica.name, replica.zone_name) == ("zone-1-2", "zone-1")
    assert [cp.name for cp in topo.replicas_of("zone-1")] == ["zone-1", "zone-1-2"]
    assert Topology.from_json(topo.to_json()) == topo
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "kds-tls.crt").write_text("")
    sup = Supervisor(topo)
    argv = " ".join(sup.cp_argv(replica))
    assert "--zone zone-1 " in argv and "--etcd-prefix /zonemesh-lab-zone-1 " in argv
    assert f"--xds-tls-cert-file {tmp_path / 'zone-1' / 'xds.crt'}" in argv
    assert f"--zone-token-file {tmp_path / 'tokens' / 'zone-1.token'}" in argv
    assert "--store sqlite" in " ".join(sup.cp_argv(topo.zone("zone-2")))  # one replica: its own SQLite
    frontend = sup.dp_argv(topo.zone("zone-1"), "frontend", tmp_path / "t", 1, {})
    addresses = frontend[frontend.index("--cp-address") + 1]
    assert addresses == f"https://127.0.0.1:{topo.zone('zone-1').grpc},https://127.0.0.1:{replica.grpc}"
    backend2 = sup.dp_argv(topo.zone("zone-2"), "backend-zone-2", tmp_path / "t", 1, {})
    assert backend2[backend2.index("--cp-address") + 1] == f"https://127.0.0.1:{topo.zone('zone-2').grpc}"


class _Answers(BaseHTTPRequestHandler):
    """A stand-in for one process of the lab: answers GET paths from ``self.server.answers``."""

    def do_GET(self) -> None:
        body = self.server.answers.get(self.path)  # type: ignore[attr-defined]
        raw = json.dumps(body).encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[int, dict[str, object]], None]]:
    with contextlib.ExitStack() as servers:

        def start(port: int, answers: dict[str, object]) -> None:
            server = servers.enter_context(serve_in_thread(_Answers, port))
            server.answers = answers  # type: ignore[attr-defined]

        yield start


def test_check_asks_the_replica_of_a_zone_that_answers_when_the_first_one_is_down(
    tmp_path: Path, serve: Callable[[int, dict[str, object]], None]
) -> None:
    """`chaos kill-leader zone-1` may kill `zone-1` itself: the license is then asked of zone-1-2."""
    topo = plan(tmp_path, replicas=2, zone_replicas=2)
    zone_1, zone_1_2 = topo.replicas_of("zone-1")
    assert (zone_1.name, zone_1_2.name) == ("zone-1", "zone-1-2")  # zone-1, the first, is not started
    license_doc = {"activeDataplaneProxies": 3, "allowedDataplaneProxies": 5, "demo": True}
    insights = {"items": [{"name": z.name, "zoneInsight": {"online": True}} for z in topo.zones]}
    for cp, leads in ((topo.global_cp, True), (topo.more_globals[0], False)):
        answers = {"/": {}, "/status/leader": {"leader": leads}, "/zones+insights": insights, "/license": license_doc}
        serve(cp.api, answers)
    for cp in (zone_1_2, topo.zone("zone-2")):
        serve(cp.api, {"/": {}, "/license": license_doc})
    serve(topo.frontend().app_port, {"/": {"upstream": {"zone": "zone-2"}}})

    results = {what: (ok, detail) for what, ok, detail in check(topo)}

    assert [what for what, (ok, _) in results.items() if not ok] == []
    assert results["license visible on zone-1"] == (True, "3/5 proxies, demo=True (asked zone-1-2)")
    assert results["license visible on zone-2"] == (True, "3/5 proxies, demo=True")
    assert results["one global replica leads"] == (True, "leader: global")
