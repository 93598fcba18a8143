"""The compose lab's container roles (zonemesh/lab/container.py) and compose file, checked without docker.

compose/test.sh runs the real thing; these catch a wrong argument or an inconsistent compose
file before anyone waits for images to build.
"""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from zonemesh.shared.resources.codec import from_universal

from zonemesh.lab import container
from zonemesh.lab.container import ContainerError, Paths

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose" / "docker-compose.yaml"


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


# --- argument building -----------------------------------------------------------------------


def test_global_uses_etcd_and_listens_for_other_containers(tmp_path: Path) -> None:
    argv = container.cp_argv("global", Paths(tmp_path))
    assert flag(argv, "--store") == "etcd"
    assert flag(argv, "--etcd-endpoints") == "etcd:2379"
    assert flag(argv, "--api-address") == "0.0.0.0"
    assert flag(argv, "--kds-address") == "0.0.0.0"
    assert flag(argv, "--data-dir") == str(tmp_path)


def test_zone_uses_sqlite_and_the_files_init_and_global_export(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "data", tmp_path / "admin", tmp_path / "secrets")
    argv = container.cp_argv("zone", paths, "zone-2")
    assert flag(argv, "--store") == "sqlite"
    assert flag(argv, "--zone") == "zone-2"
    # The hostname global's self-signed KDS certificate names (compose sets `hostname: global`).
    assert flag(argv, "--global-address") == "grpcs://global:5685"
    assert flag(argv, "--zone-token-file") == str(tmp_path / "secrets" / "tokens" / "zone-2.token")
    assert flag(argv, "--global-ca-file") == str(tmp_path / "secrets" / "ca" / "global-kds.crt")


@pytest.mark.parametrize(("mode", "zone", "message"), [("zone", "", "needs --zone"), ("standalone", "", "unknown")])
def test_wrong_cp_mode_is_refused(mode: str, zone: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match=message):
        container.cp_argv(mode, Paths(tmp_path), zone)


def test_sidecar_dials_its_zone_by_hostname_with_the_exported_ca(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "data", tmp_path / "admin", tmp_path / "secrets")
    resource = container.dataplane_resource("backend-zone-1", "zone-1", "backend", "172.18.0.5")
    argv = container.dp_argv("zone-1", "backend-zone-1", resource, paths)
    assert flag(argv, "--cp-address") == "https://zone-1:5678"
    assert flag(argv, "--ca-cert-file") == str(tmp_path / "secrets" / "ca" / "zone-1-xds.crt")
    assert flag(argv, "--dataplane-token-file") == str(tmp_path / "secrets" / "tokens" / "backend-zone-1.token")
    assert json.loads(flag(argv, "--dataplane-inline")) == resource


def test_every_zone_and_proxy_verifies_tls_with_the_exported_certificates(tmp_path: Path) -> None:
    """Global exports the KDS certificate it generates and every zone verifies global with it; each
    zone exports its xDS certificate and every proxy of that zone verifies it. No skip-verify."""
    from zonemesh.global_cp.kds_server import KDS_TLS_NAME

    paths = Paths(tmp_path / "data", tmp_path / "admin", tmp_path / "secrets")
    generated, exported = container.exported_certificate("global", "", paths)
    assert generated == paths.data / f"{KDS_TLS_NAME}.crt"
    for zone in ("zone-1", "zone-2"):
        argv = container.cp_argv("zone", paths, zone)
        assert flag(argv, "--global-ca-file") == str(exported)
        zone_generated, zone_exported = container.exported_certificate("zone", zone, paths)
        assert zone_generated == paths.data / "xds.crt"  # zone_cp/app.py's self-signed xDS certificate
        resource = container.dataplane_resource(f"backend-{zone}", zone, "backend", "172.18.0.5")
        proxies = [container.dp_argv(zone, f"backend-{zone}", resource, paths)]
        for kind in ("ingress", "egress"):
            zone_proxy = container.zone_proxy_resource(kind, "172.18.0.6")
            proxies.append(container.dp_argv(zone, f"{kind}-{zone}", zone_proxy, paths, proxy_type=kind))
        for dp in proxies:
            assert flag(dp, "--ca-cert-file") == str(zone_exported)
            assert flag(dp, "--cp-address") == f"https://{zone}:5678"  # a name zone's certificate holds
        assert not {"--global-tls-skip-verify", "--tls-skip-verify"} & {*argv, *(a for dp in proxies for a in dp)}


def test_resources_the_containers_register_are_valid() -> None:
    """The same validation as the API's: a typo here would only show as a refused proxy in docker."""
    docs = [
        container.dataplane_resource("frontend", "zone-1", "frontend", "172.18.0.9", [("backend", 10001)]),
        container.dataplane_resource("backend-zone-2", "zone-2", "backend", "172.18.0.7"),
        {**container.zone_proxy_resource("ingress", "172.18.0.6"), "name": "ingress-zone-1"},
        {**container.zone_proxy_resource("egress", "172.18.0.8"), "name": "egress-zone-1"},
    ]
    for doc in docs:
        res, _ = from_universal(json.loads(json.dumps(doc)))
        assert res.name == doc["name"]
    ingress = docs[2]["networking"]
    assert (ingress["advertisedAddress"], ingress["advertisedPort"]) == ("172.18.0.6", container.ZONE_PROXY_PORT)


def test_unknown_zone_proxy_kind_is_refused() -> None:
    with pytest.raises(ContainerError, match="ingress or egress"):
        container.zone_proxy_resource("gateway", "10.0.0.1")


def test_parse_pairs() -> None:
    assert container.parse_pairs("frontend:zone-1, backend-zone-2:zone-2,") == [
        ("frontend", "zone-1"),
        ("backend-zone-2", "zone-2"),
    ]
    assert container.parse_pairs("") == []
    for bad in ("frontend", "frontend:", ":zone-1", "a:b:c"):
        with pytest.raises(ContainerError, match=repr(bad)):
            container.parse_pairs(bad)


# --- files, waits, healthcheck ---------------------------------------------------------------


def test_write_private_is_owner_only_and_replaces_whole(tmp_path: Path) -> None:
    target = tmp_path / "tokens" / "zone-1.token"
    container.write_private(target, b"first")
    container.write_private(target, b"second")
    assert target.read_bytes() == b"second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["zone-1.token"]  # no temporary file left


def test_wait_until_gives_up_with_what_it_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container, "POLL", 0.01)
    with pytest.raises(ContainerError, match=r"timed out after 0s waiting for the zone token"):
        container.wait_until("the zone token", lambda: False, limit=0.05)
    calls = iter([False, True])
    container.wait_until("flaky", lambda: next(calls), limit=5)


class _Status(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503 if self.path == "/not-ready" else 200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def status_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_health(status_server: str, tmp_path: Path) -> None:
    exported = tmp_path / "global.token"
    assert container.health(status_server + "/ready", [str(exported)]) == 1  # not exported yet
    exported.write_text("t")
    assert container.health(status_server + "/ready", [str(exported)]) == 0
    assert container.health(status_server + "/not-ready", [str(exported)]) == 1
    assert container.health("http://127.0.0.1:1/ready", []) == 1  # nothing listening


def test_init_keeps_a_token_already_issued(tmp_path: Path) -> None:
    """`docker compose up` reruns init: tokens on disk stay (no API call: no admin token is there)."""
    paths = Paths(tmp_path / "data", tmp_path / "admin", tmp_path / "secrets")
    container.write_private(paths.token("zone-1"), b"issued-before")
    container.Init(paths).issue("zone-1", "global", "http://global:5681", "/tokens/zone", {"zone": "zone-1"})
    assert paths.token("zone-1").read_bytes() == b"issued-before"


def test_init_refuses_proxies_in_unknown_zones(tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match="zone-3"):
        container.Init(Paths(tmp_path)).run(["zone-1", "zone-2"], [("ingress", "zone-3")], [])


# --- the compose file ------------------------------------------------------------------------


def test_compose_publishes_on_loopback_only() -> None:
    for name, service in compose_services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_init_issues_a_token_for_every_proxy_service() -> None:
    """init's lists and the proxy/app services must name the same proxies, or one waits forever."""
    services = compose_services()
    init = services["init"]["command"]
    zones = flag(init, "--zones").split(",")
    zone_proxies = {f"{kind}-{zone}" for kind, zone in container.parse_pairs(flag(init, "--zone-proxies"))}
    dataplanes = dict(container.parse_pairs(flag(init, "--dataplanes")))
    assert sorted(n for n, s in services.items() if s["command"][0] in ("global", "zone")) == ["global", *zones]
    proxies = {f"{flag(s['command'], '--kind')}-{flag(s['command'], '--zone')}" for s in services.values()
               if s["command"][0] == "proxy"}  # fmt: skip
    assert proxies == zone_proxies
    apps = {}
    for service in services.values():
        command = service["command"]
        if command[0] == "app":
            zone = flag(command, "--zone")
            name = flag(command, "--name") if "--name" in command else f"{flag(command, '--service')}-{zone}"
            apps[name] = zone
    assert apps == dataplanes
    # The cross-zone demo: a backend in each zone, the frontend in zone-1.
    assert {z for n, z in apps.items() if n.startswith("backend")} == set(zones)


def test_compose_services_wait_for_what_they_need() -> None:
    services = compose_services()
    for name, service in services.items():
        role = service["command"][0]
        if role in ("proxy", "app"):
            zone = flag(service["command"], "--zone")
            assert service["depends_on"] == {
                "init": {"condition": "service_completed_successfully"},
                zone: {"condition": "service_healthy"},
            }, name
        if role != "init":
            assert "healthcheck" in service, f"{name} has no healthcheck"
        if role in ("global", "zone"):
            assert service["hostname"] == name  # the self-signed certificates name the hostname
    assert services["init"]["restart"] == "no"
    # Named volumes keep global's etcd data and each zone's SQLite across restarts.
    assert "etcd-data:/data" in services["etcd"]["volumes"]
    assert "zone-1-data:/data" in services["zone-1"]["volumes"]
