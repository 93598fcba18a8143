"""What the local lab runs, as data: a pure function of (directory, ports, zone count).

The lab is the product's first impression, so its topology mirrors the compose lab:

    global (SQLite, demo license) <- KDS (through a chaos proxy per zone) - zone-1, zone-2
    zone-1: ingress, egress, frontend (+ sidecar, outbound to backend), backend (+ sidecar)
    zone-2: ingress, backend (+ sidecar)

Everything listens on 127.0.0.1. The supervisor (supervisor.py) turns this plan into processes;
keeping the plan pure lets a unit test check ports, order and arguments without starting anything.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MESH = "default"
DEFAULT_PORT_BASE = 25000  # `zonemesh-lab up` without --port-base: the frontend is then on :25xxx


def _free_ports(count: int) -> Iterator[int]:
    """Ports the kernel has free right now; held open together so they are distinct."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        ports = [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()
    return iter(ports)


@dataclass
class ControlPlane:
    name: str  # "global", "zone-1"
    mode: str  # "global" | "zone"
    api: int
    diagnostics: int
    grpc: int  # KDS port on global, xDS port on zones
    kds_proxy: int = 0  # zones: the chaos proxy in front of global's KDS port

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api}"


@dataclass
class Workload:
    """A demo app with its sidecar: the app on ``app_port``, the sidecar's inbound on ``inbound``."""

    name: str  # dataplane name, unique in the mesh: "backend-zone-2"
    zone: str
    service: str
    app_port: int
    inbound: int
    readiness: int  # zonemesh-dp --readiness-port: GET /ready (Envoy's admin is on a socket in its work dir)
    upstream: str = ""  # frontend: the URL of its sidecar's outbound listener
    outbounds: list[tuple[str, int]] = field(default_factory=list)  # (service, port)

    def dataplane(self) -> dict[str, Any]:
        networking: dict[str, Any] = {
            "address": "127.0.0.1",
            "inbound": [
                {
                    "port": self.inbound,
                    "servicePort": self.app_port,
                    "tags": {"kuma.io/service": self.service, "kuma.io/protocol": "http", "kuma.io/zone": self.zone},
                }
            ],
        }
        if self.outbounds:
            networking["outbound"] = [{"port": p, "tags": {"kuma.io/service": s}} for s, p in self.outbounds]
        return {"type": "Dataplane", "mesh": MESH, "name": self.name, "networking": networking}


@dataclass
class ZoneProxy:
    """A zone ingress or egress: a zonemesh-dp with ``--proxy-type``."""

    name: str
    zone: str
    kind: str  # "ingress" | "egress"
    port: int
    readiness: int  # zonemesh-dp --readiness-port


@dataclass
class Topology:
    directory: Path
    global_cp: ControlPlane
    zones: list[ControlPlane]
    proxies: list[ZoneProxy]
    workloads: list[Workload]
    control: int  # the supervisor's own HTTP port: status and chaos commands

    def zone(self, name: str) -> ControlPlane:
        for zone in self.zones:
            if zone.name == name:
                return zone
        raise KeyError(f"no zone {name!r} in the lab; zones: {', '.join(z.name for z in self.zones)}")

    def work_dir(self, proxy: str) -> Path:
        """A proxy's zonemesh-dp --work-dir: its bootstrap and Envoy's admin socket envoy-admin.sock."""
        return self.directory / "proxies" / proxy

    def frontend(self) -> Workload:
        return next(w for w in self.workloads if w.service == "frontend")

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Topology:
        raw = json.loads(text)
        return cls(
            directory=Path(raw["directory"]),
            global_cp=ControlPlane(**raw["global_cp"]),
            zones=[ControlPlane(**z) for z in raw["zones"]],
            proxies=[ZoneProxy(**p) for p in raw["proxies"]],
            workloads=[Workload(**{**w, "outbounds": [tuple(o) for o in w["outbounds"]]}) for w in raw["workloads"]],
            control=raw["control"],
        )


def plan(directory: Path, zones: int = 2, port_base: int = 0) -> Topology:
    """The lab's processes and ports. ``port_base=0`` takes free ports (tests); otherwise
    ports are ``port_base + n`` in a fixed order, so a documented lab always has the same ones."""
    if zones < 2:
        raise ValueError("a multi-zone lab needs at least 2 zones")
    needed = 5 + zones * 5 + 6 * (zones + 1)
    ports = _free_ports(needed) if port_base == 0 else iter(range(port_base, port_base + needed))

    control = next(ports)
    global_cp = ControlPlane("global", "global", next(ports), next(ports), next(ports))
    zone_cps = [
        ControlPlane(f"zone-{i}", "zone", next(ports), next(ports), next(ports), kds_proxy=next(ports))
        for i in range(1, zones + 1)
    ]
    proxies = [ZoneProxy(f"ingress-{z.name}", z.name, "ingress", next(ports), next(ports)) for z in zone_cps]
    proxies.append(ZoneProxy("egress-zone-1", "zone-1", "egress", next(ports), next(ports)))
    workloads = [
        Workload(f"backend-{z.name}", z.name, "backend", next(ports), next(ports), next(ports)) for z in zone_cps
    ]
    outbound = next(ports)
    workloads.insert(
        0,
        Workload(
            "frontend",
            "zone-1",
            "frontend",
            next(ports),
            next(ports),
            next(ports),
            upstream=f"http://127.0.0.1:{outbound}/",
            outbounds=[("backend", outbound)],
        ),
    )
    return Topology(directory, global_cp, zone_cps, proxies, workloads, control)
