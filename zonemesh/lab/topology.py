"""What the local lab runs, as data: a pure function of (directory, ports, zone count).

The lab is the product's first impression, so its topology mirrors the compose lab:

    global (SQLite, demo license) <- KDS (through a chaos proxy per zone) - zone-1, zone-2
    zone-1: ingress, egress, frontend (+ sidecar, outbound to backend), backend (+ sidecar)
    zone-2: ingress, backend (+ sidecar)

With ``replicas`` > 1 (``zonemesh-lab up --replicas 2``), global runs as that many replicas on a
3-member etcd cluster (etcd-1..3), and each zone is given the KDS address of every replica (one
chaos proxy per zone and replica). ``zone_replicas`` is the replica count of zone-1 (up to
ZONE_REPLICAS_AVAILABLE): its replicas share an etcd prefix, its token and its xDS certificate, and
its proxies are given every replica's address (docs/ha.md#zone-replicas).

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
ETCD_MEMBERS = 3  # the etcd cluster global replicas share: one member may die
MAX_REPLICAS = 3
# Replicas of zone-1 the lab can run: 1 until several zone processes may share one store.
ZONE_REPLICAS_AVAILABLE = 2


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
    more_kds_proxies: list[int] = field(default_factory=list)  # zones: one per further global replica
    zone: str = ""  # a zone's further replica ("zone-1-2"): the zone it serves ("zone-1")

    @property
    def zone_name(self) -> str:
        return self.zone or self.name

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api}"


@dataclass
class EtcdMember:
    """One member of the etcd cluster that global replicas share."""

    name: str  # "etcd-1"
    client: int
    peer: int
    metrics: int  # plain HTTP /health and /metrics


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
    more_globals: list[ControlPlane] = field(default_factory=list)  # global replicas after global_cp
    etcd: list[EtcdMember] = field(default_factory=list)  # with several global replicas: their store
    zone_replicas: int = 1  # replicas of zone-1
    more_zone_replicas: list[ControlPlane] = field(default_factory=list)  # zone-1's replicas after zone-1

    @property
    def globals(self) -> list[ControlPlane]:
        """Every global replica, ``global_cp`` first."""
        return [self.global_cp, *self.more_globals]

    def replicas_of(self, name: str) -> list[ControlPlane]:
        """The processes of control plane ``name`` ("global" or a zone)."""
        if name == "global":
            return self.globals
        return [self.zone(name), *(cp for cp in self.more_zone_replicas if cp.zone == name)]

    def on_etcd(self, cp: ControlPlane) -> bool:
        """Whether ``cp`` keeps its store in the lab's etcd: global's replicas, a zone's replicas."""
        return len(self.replicas_of("global" if cp.mode == "global" else cp.zone_name)) > 1

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
            more_globals=[ControlPlane(**g) for g in raw.get("more_globals", [])],
            etcd=[EtcdMember(**m) for m in raw.get("etcd", [])],
            zone_replicas=raw.get("zone_replicas", 1),
            more_zone_replicas=[ControlPlane(**z) for z in raw.get("more_zone_replicas", [])],
        )


def plan(directory: Path, zones: int = 2, port_base: int = 0, replicas: int = 1, zone_replicas: int = 1) -> Topology:
    """The lab's processes and ports. ``port_base=0`` takes free ports (tests); otherwise
    ports are ``port_base + n`` in a fixed order, so a documented lab always has the same ones
    (the ports of further global replicas and of etcd come after all the others)."""
    if zones < 2:
        raise ValueError("a multi-zone lab needs at least 2 zones")
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"global replicas: 1 to {MAX_REPLICAS} (got {replicas})")
    if not 1 <= zone_replicas <= ZONE_REPLICAS_AVAILABLE:
        raise ValueError(
            f"zone-1 can run {ZONE_REPLICAS_AVAILABLE} replica(s) for now (got {zone_replicas}): the lab does not "
            "start several zone processes yet"
        )
    extra, zone_extra = replicas - 1, zone_replicas - 1
    etcd = extra or zone_extra  # replicas of global or of zone-1 share the lab's etcd cluster
    needed = 5 + zones * 5 + 6 * (zones + 1) + extra * (3 + zones) + zone_extra * (4 + extra)
    needed += 3 * ETCD_MEMBERS if etcd else 0
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
    topo = Topology(directory, global_cp, zone_cps, proxies, workloads, control, zone_replicas=zone_replicas)
    if extra:
        topo.more_globals = [
            ControlPlane(f"global-{i}", "global", next(ports), next(ports), next(ports)) for i in range(2, replicas + 1)
        ]
        for zone_cp in zone_cps:
            zone_cp.more_kds_proxies = [next(ports) for _ in range(extra)]
    first = zone_cps[0]
    topo.more_zone_replicas = [
        ControlPlane(
            f"{first.name}-{i}",
            "zone",
            next(ports),
            next(ports),
            next(ports),
            kds_proxy=next(ports),
            more_kds_proxies=[next(ports) for _ in range(extra)],
            zone=first.name,
        )
        for i in range(2, zone_replicas + 1)
    ]
    if etcd:
        topo.etcd = [EtcdMember(f"etcd-{i}", next(ports), next(ports), next(ports)) for i in range(1, ETCD_MEMBERS + 1)]
    return topo
