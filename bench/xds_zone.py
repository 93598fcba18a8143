"""Zone xDS benchmark: one real zone control plane, N simulated Envoys speaking ADS over TLS.

The control plane is a real ``zonemesh-cp run --mode standalone`` process (SQLite store, the
self-signed xDS certificate it makes). The proxies are simulated by a few worker processes,
each running an asyncio loop with its share of gRPC clients. Every simulated proxy is a proxy
the zone knows: a dataplane token issued by ``POST /tokens/dataplane``, its Dataplane
registered over the DataplaneRegistration service (as ``zonemesh-dp`` does), then one ADS
stream on its own HTTP/2 connection, subscribing as Envoy does: clusters and listeners as
wildcards, endpoints/routes/secrets by the names the clusters and listeners refer to, EDS again
after every CDS update (Envoy's cluster warming), ACKing every response with its version and nonce.

Workload: ``--services`` services (default N/10), each proxy with its own address (a loopback IP,
so its own inbound listener and snapshot) in front of port 8080, ``--outbounds`` outbounds to
other services (mTLS clusters, EDS endpoints, RDS routes), builtin mTLS (SDS certificates per
service), the mesh's default policies plus a MeshTrafficPermission per service.

Measured:
- CP memory per proxy: RSS of the CP with all N configured minus its RSS before any
  Dataplane existed, divided by N;
- config generation time per proxy: the CP's ``xds_generation`` histogram (p50/p99
  interpolated within buckets) over the connect storm and the policy changes;
- delivery: ``--changes`` times per kind, the MeshTimeout ``mesh-timeout-all-default`` is updated
  through the HTTP API: ``request`` (its requestTimeout: one RDS response per proxy), ``connect``
  (its connectionTimeout: CDS, then the EDS warming clusters wait for), ``timeouts`` (both). Per
  proxy, the time from just before the PUT until it sent its last ACK for the new config (it
  checks the new values are in its clusters and routes); p50/p99 over all proxies and changes of
  a kind, and per change the time until all N had ACKed; CP and client CPU per change;
- the connect storm: all N streams opened at the same instant; how many were configured,
  how many streams failed (and were retried with backoff, as Envoy does), and how long it took.

Every wait is bounded. The clients run on the same 2 cores as the CP: figures include that
contention (and any other load on the machine).

    python bench/xds_zone.py --proxies 2000
    python bench/xds_zone.py --quick
    python bench/xds_zone.py --proxies 500 --profile /tmp/cp.prof   # cProfile of the CP process
    python bench/xds_zone.py --proxies 2000 --spy /tmp/cp   # py-spy of the CP: /tmp/cp.storm, .changes
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
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchlib import percentile

from zonemesh.testing import ControlPlaneProcess, http

RESULTS = Path(__file__).resolve().parent / "results" / "xds_zone.json"
MAX_PROXIES = 2000
MESH = "default"
TIMEOUT_POLICY = "mesh-timeout-all-default"
TARGETS = {"kb_per_proxy": 250.0, "delivery_p99_s": 1.3, "failed_streams": 0}

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
HCM = "envoy.filters.network.http_connection_manager"


# --- workload ------------------------------------------------------------------------------


def service_name(i: int) -> str:
    return f"svc-{i:04d}"


def proxy_spec(index: int, services: int, outbounds: int) -> tuple[str, dict[str, Any]]:
    """(name, Dataplane document) of proxy ``index``: its own address (a loopback IP, as a pod
    has its own IP) with one inbound in front of the app's port 8080, and a few outbounds."""
    service = index % services
    name = f"dp-{index:05d}"
    targets = [(service + 1 + k) % services for k in range(min(outbounds, max(services - 1, 0)))]
    doc = {
        "type": "Dataplane",
        "mesh": MESH,
        "name": name,
        "networking": {
            "address": f"127.1.{index // 250}.{index % 250 + 1}",
            "inbound": [
                {
                    "port": 8080,
                    "servicePort": 8080,
                    "tags": {"kuma.io/service": service_name(service), "kuma.io/protocol": "http", "replica": name},
                }
            ],
            "outbound": [
                {"port": 30000 + k, "tags": {"kuma.io/service": service_name(t)}} for k, t in enumerate(targets)
            ],
        },
    }
    return name, doc


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
    """Each service admits its two upstream neighbours (its consumers in this workload)."""
    sources = sorted({service_name((service - k) % services) for k in (1, 2)})
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


# What a change edits in the default MeshTimeout's `to`: "request" the requestTimeout (routes
# change: one RDS response per proxy); "connect" the connectionTimeout (clusters change: CDS,
# then EDS again for the warming clusters); "timeouts" both (CDS, EDS and RDS).
CHANGE_KINDS = ("request", "connect", "timeouts")
DEFAULT_TIMEOUTS = (5, 15)  # the default policy's (connectionTimeout, requestTimeout) seconds


def next_timeouts(current: tuple[int, int], kind: str) -> tuple[int, int]:
    connect, request = current
    return (connect + 1 if kind != "request" else connect, request + 1 if kind != "connect" else request)


def timeout_doc(timeouts: tuple[int, int]) -> dict[str, Any]:
    connect_seconds, request = timeouts[0], f"{timeouts[1]}s"
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
                        "connectionTimeout": f"{connect_seconds}s",
                        "idleTimeout": "1h",
                        "http": {"requestTimeout": request, "streamIdleTimeout": "30m"},
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


def histogram_delta(
    before: tuple[list[tuple[float, float]], float, float], after: tuple[list[tuple[float, float]], float, float]
) -> tuple[list[tuple[float, float]], float, float]:
    old = dict(before[0])
    return [(le, c - old.get(le, 0.0)) for le, c in after[0]], after[1] - before[1], after[2] - before[2]


def gc_collections(text: str) -> dict[str, float]:
    """The CP's garbage collections by generation (prometheus_client's default collector)."""
    found = re.findall(r'^python_gc_collections_total\{generation="(\d)"\} ([0-9.e+]+)$', text, re.M)
    return {gen: float(count) for gen, count in found}


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
    """A standalone control plane (SQLite store, warnings only), under cProfile if ``profile``."""

    profile: Path | None = None

    def __post_init__(self) -> None:
        self.args = ["--mode", "standalone", "--store", "sqlite", "--log-level", "warning"]
        if self.profile is not None:
            self.python_args = ["-m", "cProfile", "-o", str(self.profile)]

    def rss_kb(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_s(self) -> float:
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def thread_cpu_s(self) -> dict[str, float]:
        """CPU seconds by thread name (the main thread is "python"; gRPC core's threads are named)."""
        assert self.process is not None
        tick = os.sysconf("SC_CLK_TCK")
        out: dict[str, float] = {}
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                head, _, rest = (task / "stat").read_text().rpartition(")")
            except OSError:
                continue  # the thread ended meanwhile
            name = head.partition("(")[2]
            fields = rest.split()
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
        return out

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


Facts = tuple[str, tuple[tuple[str, frozenset[str]], ...], int | None]


@functools.lru_cache(maxsize=50_000)
def resource_facts(type_url: str, value: bytes) -> Facts:
    """(name, names of other types it refers to, timeout) of one resource, as Envoy finds them:
    EDS clusters -> endpoints, HCMs with RDS -> routes, TLS contexts -> SDS secrets. The timeout
    (seconds) is what the MeshTimeout changes: an EDS cluster's connect timeout, an outbound
    route's request timeout. Memoized by the
    resource bytes: proxies share most resources, and a cheap client leaves the CPU to the CP."""
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

    timeout: int | None = None
    if type_url == CLUSTER:
        cluster = cluster_pb2.Cluster.FromString(value)
        name = cluster.name
        if cluster.type == cluster_pb2.Cluster.EDS:
            refs[ENDPOINT].add(cluster.eds_cluster_config.service_name or cluster.name)
            timeout = int(cluster.connect_timeout.seconds)
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
                    timeout = int(route.route.timeout.seconds)
    else:
        name = secret_pb2.Secret.FromString(value).name
    return name, tuple((t, frozenset(n)) for t, n in refs.items() if n), timeout


@dataclass
class _TypeSub:
    names: set[str] = field(default_factory=set)
    nonce: str = ""
    version: str = ""
    received: set[str] | None = None  # names in the last response; None: nothing yet


class SimProxy:
    """One simulated Envoy: an ADS stream on its own connection, reconnecting with backoff."""

    def __init__(self, name: str, token: str, worker: Worker) -> None:
        self.name = name
        self.token = token
        self.worker = worker
        self.subs: dict[str, _TypeSub] = {}
        self.refs: dict[str, dict[str, set[str]]] = {}  # CDS/LDS -> names of other types they need
        self.configured_at: float | None = None
        self.connect_started: float | None = None
        self.last_ack: float = 0.0
        self.connect_timeout: int | None = None
        self.request_timeout: int | None = None
        self.failures: list[str] = []
        self.failed_at: list[float] = []  # seconds after the connect storm started
        self.responses = 0

    def has(self, expected: tuple[int, int] | None) -> bool:
        return expected is None or (self.connect_timeout, self.request_timeout) == tuple(expected)

    def is_configured(self) -> bool:
        if not self.subs or CLUSTER not in self.subs or LISTENER not in self.subs:
            return False
        return all(sub.received is not None and sub.names <= sub.received for sub in self.subs.values())

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
                self.failed_at.append(time.monotonic() - (self.connect_started or 0.0))
            except Exception as exc:
                if stop.is_set():
                    return
                self.failures.append(f"{type(exc).__name__}: {exc}")
                self.failed_at.append(time.monotonic() - (self.connect_started or 0.0))
            self.subs, self.refs = {}, {}
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 4.0)

    async def _stream(self, stop: asyncio.Event) -> None:
        import grpc
        from envoy.config.core.v3 import base_pb2
        from envoy.service.discovery.v3 import discovery_pb2

        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{self.worker.xds_port}",
            self.worker.credentials,
            options=[("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20)],
        )
        try:
            call = channel.stream_stream(
                ADS_METHOD,
                request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
            )(metadata=(("authorization", f"Bearer {self.token}"),))
            node = base_pb2.Node(id=f"{MESH}.{self.name}", cluster=self.name)
            self.subs = {CLUSTER: _TypeSub(), LISTENER: _TypeSub()}
            await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER))
            await call.write(discovery_pb2.DiscoveryRequest(type_url=LISTENER))
            while not stop.is_set():
                response = await call.read()
                if response is grpc.aio.EOF:
                    code = await call.code()
                    raise RuntimeError(f"stream ended: {code}")
                await self._on_response(call, response)
        finally:
            await channel.close(grace=None)

    async def _on_response(self, call: Any, response: Any) -> None:
        from envoy.service.discovery.v3 import discovery_pb2

        type_url = response.type_url
        sub = self.subs.setdefault(type_url, _TypeSub())
        sub.nonce, sub.version = response.nonce, response.version_info
        facts = [resource_facts(type_url, r.value) for r in response.resources]
        self.responses += 1
        sub.received = {name for name, _, _ in facts}
        if type_url == ROUTE:
            self.request_timeout = next((t for _, _, t in facts if t is not None), None)
        # ACK (Envoy ACKs with the version and nonce it was sent, naming what it wants).
        ack = discovery_pb2.DiscoveryRequest(
            type_url=type_url, version_info=sub.version, response_nonce=sub.nonce, resource_names=sorted(sub.names)
        )
        await call.write(ack)
        self.last_ack = time.monotonic()
        # Subscriptions the clusters and listeners refer to (Envoy's warming), by name.
        if type_url in (CLUSTER, LISTENER):
            if type_url == CLUSTER:
                self.connect_timeout = next((t for _, _, t in facts if t is not None), None)
            required: dict[str, set[str]] = {}
            for _, refs, _ in facts:
                for dep_type, names in refs:
                    required.setdefault(dep_type, set()).update(names)
            self.refs[type_url] = required
            for dep_type in (ENDPOINT, ROUTE, SECRET):
                wanted = set().union(*(refs.get(dep_type, set()) for refs in self.refs.values()))
                dep = self.subs.get(dep_type)
                # Envoy re-subscribes to EDS whenever CDS updates clusters (their endpoints are
                # owed again: cluster warming), even with the same names.
                resubscribe = type_url == CLUSTER and dep_type == ENDPOINT and dep is not None and bool(wanted)
                if (dep is None and not wanted) or (dep is not None and dep.names == wanted and not resubscribe):
                    continue
                dep = self.subs.setdefault(dep_type, _TypeSub())
                dep.names = wanted
                await call.write(
                    discovery_pb2.DiscoveryRequest(
                        type_url=dep_type,
                        version_info=dep.version,
                        response_nonce=dep.nonce,
                        resource_names=sorted(wanted),
                    )
                )
        if self.configured_at is None and self.is_configured():
            self.configured_at = time.monotonic()


class Worker:
    """A process with a share of the proxies; obeys commands from the coordinator's pipe."""

    def __init__(self, conn: Connection, params: dict[str, Any]) -> None:
        self.conn = conn
        self.params = params
        self.xds_port: int = params["xds_port"]
        self.api: str = params["api"]
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
        channel = grpc.aio.secure_channel(f"127.0.0.1:{self.xds_port}", self.credentials)
        stub = dataplane_pb2_grpc.DataplaneRegistrationStub(channel)
        sem = asyncio.Semaphore(8)
        loop = asyncio.get_running_loop()

        async def one(index: int) -> None:
            name, doc = proxy_spec(index, p["services"], p["outbounds"])
            body = {"mesh": MESH, "name": name, "type": "dataplane", "validFor": "24h"}
            async with sem:
                status, token = await loop.run_in_executor(
                    None, lambda: http("POST", f"{self.api}/tokens/dataplane", body, timeout=60)
                )
                if status != 200:
                    raise RuntimeError(f"token for {name}: {status} {token}")
                request = dataplane_pb2.RegisterRequest(
                    mesh=MESH, name=name, proxy_type="dataplane", dataplane_json=json.dumps(doc)
                )
                await stub.Register(request, metadata=(("authorization", f"Bearer {token}"),), timeout=60)
            self.proxies.append(SimProxy(name, str(token), self))

        await asyncio.gather(*(one(i) for i in indices))
        await channel.close()
        return {"registered": len(self.proxies)}

    async def cmd_connect(self, at: float) -> dict[str, Any]:
        """Open every stream at monotonic time ``at`` (the same instant in every worker)."""
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        for proxy in self.proxies:
            proxy.connect_started = time.monotonic()
            self.tasks.append(asyncio.create_task(proxy.run(self.stop)))
        return {"started": len(self.tasks)}

    async def cmd_status(self, expected: tuple[int, int] | None) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "configured": sum(p.configured_at is not None for p in self.proxies),
            "with_value": sum(p.has(expected) and p.configured_at is not None for p in self.proxies),
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
            "cpu_s": time.process_time(),
        }

    async def cmd_delivery(self, arg: tuple[float, int]) -> dict[str, Any]:
        t0, expected = arg
        return {
            "delivery_s": [p.last_ack - t0 for p in self.proxies if p.has(expected) and p.last_ack > t0],
            "missing": sum(not p.has(expected) for p in self.proxies),
        }

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

    def call(self, command: str, args: list[Any], timeout: float = 600) -> list[dict[str, Any]]:
        for conn, arg in zip(self.conns, args, strict=True):
            conn.send((command, arg))
        results = []
        for conn in self.conns:
            if not conn.poll(timeout):
                raise TimeoutError(f"worker did not answer {command!r} in {timeout}s")
            result = conn.recv()
            if "error" in result:
                raise RuntimeError(f"worker {command}: {result['error']}")
            results.append(result)
        return results

    def broadcast(self, command: str, arg: Any = None, timeout: float = 600) -> list[dict[str, Any]]:
        return self.call(command, [arg] * len(self.conns), timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.broadcast("stop", timeout=30)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


# --- the run ------------------------------------------------------------------------------


def wait_for(workers: Workers, expected: tuple[int, int] | None, n: int, timeout: float, key: str) -> float:
    """Wait until all n proxies satisfy ``key``; then until no ACK for a quiet moment. Returns when."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = workers.broadcast("status", expected)
        if sum(s[key] for s in status) >= n:
            break
        time.sleep(0.05)
    quiet_deadline = time.monotonic() + 10
    while time.monotonic() < quiet_deadline:
        status = workers.broadcast("status", expected)
        if min(s["last_ack_age"] for s in status) > 0.5:
            break
        time.sleep(0.1)
    return time.monotonic()


def start_spy(cp: ControlPlane, path: Path | None, phase: str) -> subprocess.Popen[bytes] | None:
    """py-spy the CP during one phase (collapsed stacks in PATH.<phase>); None without --spy."""
    if path is None:
        return None
    assert cp.process is not None
    out = f"{path}.{phase}"
    # py-spy installed in this venv need not be on PATH (the bench run as venv/bin/python)
    beside = Path(sys.executable).parent / "py-spy"
    spy_bin = str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"
    cmd = [spy_bin, "record", "--pid", str(cp.process.pid), "--format", "raw", "--nonblocking", "--output", out]
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.proxies
    with temp_dir(args.keep) as tmp:
        cp = ControlPlane(tmp / "cp", profile=args.profile)
        print(f"starting zone control plane (sqlite) in {tmp} ...", flush=True)
        cp.start(timeout=60)
        workers: Workers | None = None
        try:
            cp.apply(f"/meshes/{MESH}", mesh_doc())
            for s in range(args.services):
                doc = permission_doc(s, args.services)
                cp.apply(f"/meshes/{MESH}/meshtrafficpermissions/{doc['name']}", doc)
            time.sleep(1.0)
            params = {
                "xds_port": cp.xds_port,
                "api": cp.api,
                "ca_file": str(tmp / "cp" / "xds.crt"),
                "services": args.services,
                "outbounds": args.outbounds,
                "profile_clients": str(args.profile_clients) if args.profile_clients else None,
            }
            workers = Workers(args.workers, params)
            rss_base = cp.rss_kb()
            metrics_start = cp.metrics()
            print(f"registering {n} dataplanes (token + Register over gRPC) ...", flush=True)
            started = time.monotonic()
            shares = [list(range(w, n, args.workers)) for w in range(args.workers)]
            workers.call("register", shares)
            register_s = time.monotonic() - started
            time.sleep(1.0)
            rss_registered = cp.rss_kb()

            print(f"connecting {n} ADS streams at once ...", flush=True)
            storm_spy = start_spy(cp, args.spy, "storm")
            cpu_before = cp.cpu_s()
            clients_cpu_before = sum(s["cpu_s"] for s in workers.broadcast("status", None))
            at = time.monotonic() + 0.5
            workers.broadcast("connect", at)
            wait_for(workers, None, n, args.storm_timeout, "configured")
            configured = workers.broadcast("configured")
            stop_spy(storm_spy)
            storm_cpu = cp.cpu_s() - cpu_before
            configure_s = [x for c in configured for x in c["configure_s"]]
            all_at = max((x for c in configured for x in c["configured_at"]), default=at)
            failures = [f for c in configured for f in c["failures"]]
            storm = {
                "proxies": n,
                "configured": len(configure_s),
                "failed_streams": len(failures),
                "proxies_with_failed_stream": sum(c["failed_proxies"] for c in configured),
                "failure_examples": sorted(set(failures))[:5],
                "failed_after_s": summary_s([t for c in configured for t in c["failed_at"]]),
                "failure_debug": [d for c in configured for d in c["failure_debug"]][:6],
                "clients_cpu_s": round(sum(c["cpu_s"] for c in configured) - clients_cpu_before, 2),
                "time_to_all_configured_s": round(all_at - at, 3),
                "configure_s": summary_s(configure_s),
                "cp_cpu_s": round(storm_cpu, 2),
            }
            time.sleep(2.0)  # insight flushes, allocator settling
            rss_connected = cp.rss_kb()
            metrics_storm = cp.metrics()

            print(f"{args.changes} mesh-wide policy changes (PUT MeshTimeout {TIMEOUT_POLICY}) ...", flush=True)
            spy = start_spy(cp, args.spy, "changes")
            deliveries: dict[str, list[float]] = {kind: [] for kind in args.change_kinds}
            per_change: list[dict[str, Any]] = []
            missing_total = 0
            timeouts = DEFAULT_TIMEOUTS  # every change sets new ones
            for kind in args.change_kinds:
                for k in range(args.changes):
                    timeouts = next_timeouts(timeouts, kind)
                    cpu_before = cp.cpu_s()
                    threads_before = cp.thread_cpu_s()
                    status_before = workers.broadcast("status", None)
                    clients_before = sum(s["cpu_s"] for s in status_before)
                    responses_before = sum(s["responses"] for s in status_before)
                    t0 = time.monotonic()
                    cp.apply(f"/meshes/{MESH}/meshtimeouts/{TIMEOUT_POLICY}", timeout_doc(timeouts))
                    wait_for(workers, timeouts, n, args.change_timeout, "with_value")
                    cpu = cp.cpu_s() - cpu_before
                    threads = {k: round(v - threads_before.get(k, 0.0), 2) for k, v in cp.thread_cpu_s().items()}
                    status_after = workers.broadcast("status", None)
                    clients_cpu = sum(s["cpu_s"] for s in status_after) - clients_before
                    responses = sum(s["responses"] for s in status_after) - responses_before
                    results = workers.broadcast("delivery", (t0, timeouts))
                    samples = [x for r in results for x in r["delivery_s"]]
                    missing = sum(r["missing"] for r in results)
                    missing_total += missing
                    deliveries[kind] += samples
                    change = {
                        "kind": kind,
                        "change": k + 1,
                        "acked": len(samples),
                        "missing": missing,
                        "all_acked_s": round(max(samples), 4) if samples else None,
                        **summary_s(samples),
                        "cp_cpu_s": round(cpu, 3),
                        "clients_cpu_s": round(clients_cpu, 3),
                        "cp_threads_cpu_s": {k: v for k, v in threads.items() if v > 0},
                        "responses_per_proxy": round(responses / n, 2),
                    }
                    per_change.append(change)
                    print(
                        f"  {kind} change {k + 1}: {len(samples)}/{n} ACKed, p50 {change.get('p50_s')} s, "
                        f"p99 {change.get('p99_s')} s, all {change['all_acked_s']} s, "
                        f"CPU: CP {cpu:.2f} s, clients {clients_cpu:.2f} s, {responses / n:.1f} responses/proxy",
                        flush=True,
                    )
                    time.sleep(args.pause)
            stop_spy(spy)
            rss_end = cp.rss_kb()
            metrics_end = cp.metrics()
        finally:
            if workers is not None:
                workers.close()
            cp.stop()
            if args.profile:
                print(f"profile of the CP written to {args.profile}")

    gen_storm = histogram_delta(
        scrape_histogram(metrics_start, "xds_generation"), scrape_histogram(metrics_storm, "xds_generation")
    )
    gen_changes = histogram_delta(
        scrape_histogram(metrics_storm, "xds_generation"), scrape_histogram(metrics_end, "xds_generation")
    )
    delivery_metric = histogram_delta(
        scrape_histogram(metrics_storm, "xds_delivery"), scrape_histogram(metrics_end, "xds_delivery")
    )
    delivery: dict[str, Any] = {"missing": missing_total, "changes": per_change}
    for kind in args.change_kinds:
        mine = [c for c in per_change if c["kind"] == kind]
        delivery[kind] = {
            "per_proxy": summary_s(deliveries[kind]),
            "all_acked": summary_s([c["all_acked_s"] for c in mine if c["all_acked_s"] is not None]),
            "responses_per_proxy": mine[0]["responses_per_proxy"] if mine else None,
        }
    delivery["cp_metric_xds_delivery"] = {
        **histogram_summary(delivery_metric),
        "buckets": [[le, int(count)] for le, count in delivery_metric[0]],
    }
    gc_before, gc_after = gc_collections(metrics_storm), gc_collections(metrics_end)
    delivery["cp_gc_collections"] = {g: gc_after[g] - gc_before.get(g, 0.0) for g in gc_after}
    kb_per_proxy = (rss_connected - rss_base) / n
    return {
        "memory": {
            "rss_base_kb": rss_base,
            "rss_registered_kb": rss_registered,
            "rss_connected_kb": rss_connected,
            "rss_end_kb": rss_end,
            "kb_per_proxy": round(kb_per_proxy, 1),
            "kb_per_proxy_end": round((rss_end - rss_base) / n, 1),
        },
        "registration_s": round(register_s, 2),
        "generation": {"connect_storm": histogram_summary(gen_storm), "policy_changes": histogram_summary(gen_changes)},
        "delivery": delivery,
        "connect_storm": storm,
    }


def verdicts(report: dict[str, Any]) -> dict[str, Any]:
    storm = report["connect_storm"]
    result: dict[str, Any] = {
        "kb_per_proxy": {
            "measured": report["memory"]["kb_per_proxy"],
            "target": TARGETS["kb_per_proxy"],
            "ok": report["memory"]["kb_per_proxy"] <= TARGETS["kb_per_proxy"],
        },
    }
    for kind in report["params"]["change_kinds"]:
        p99 = report["delivery"][kind]["per_proxy"].get("p99_s")
        result[f"delivery_p99_s ({kind})"] = {
            "measured": p99,
            "target": TARGETS["delivery_p99_s"],
            "ok": p99 is not None and p99 <= TARGETS["delivery_p99_s"] and report["delivery"]["missing"] == 0,
        }
    result["connect_storm"] = {
        "measured": {"configured": storm["configured"], "failed_streams": storm["failed_streams"]},
        "target": {"configured": storm["proxies"], "failed_streams": TARGETS["failed_streams"]},
        "ok": storm["configured"] == storm["proxies"] and storm["failed_streams"] == 0,
    }
    return result


def print_table(report: dict[str, Any]) -> None:
    n = report["params"]["proxies"]
    mem, gen, dl, storm = report["memory"], report["generation"], report["delivery"], report["connect_storm"]
    rows = [
        (
            "CP memory per proxy",
            f"{mem['kb_per_proxy']} KB  (RSS {mem['rss_base_kb']} -> {mem['rss_connected_kb']} KB)",
        ),
        (
            "generation per proxy (storm)",
            f"p50 {gen['connect_storm']['p50_ms']} ms  p99 {gen['connect_storm']['p99_ms']} ms  "
            f"({gen['connect_storm']['count']} generations)",
        ),
        (
            "generation per proxy (changes)",
            f"p50 {gen['policy_changes']['p50_ms']} ms  p99 {gen['policy_changes']['p99_ms']} ms  "
            f"({gen['policy_changes']['count']} generations)",
        ),
    ]
    for kind in report["params"]["change_kinds"]:
        per_proxy, all_acked = dl[kind]["per_proxy"], dl[kind]["all_acked"]
        rows.append(
            (
                f"change -> ACK ({kind}), per proxy",
                f"p50 {per_proxy.get('p50_s')} s  p99 {per_proxy.get('p99_s')} s  max {per_proxy.get('max_s')} s  "
                f"({per_proxy['count']} ACKs, {dl[kind]['responses_per_proxy']} responses/proxy/change)",
            )
        )
        rows.append(
            (
                f"change -> all N ACKed ({kind})",
                f"p50 {all_acked.get('p50_s')} s  max {all_acked.get('max_s')} s over {all_acked['count']} changes",
            )
        )
    rows.append(
        (
            "connect storm",
            f"{storm['configured']}/{storm['proxies']} configured in {storm['time_to_all_configured_s']} s, "
            f"{storm['failed_streams']} failed streams, configure p50 {storm['configure_s'].get('p50_s')} s "
            f"p99 {storm['configure_s'].get('p99_s')} s",
        )
    )
    print(f"\nzone xDS, {n} proxies, {report['params']['services']} services:")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxies", type=int, default=MAX_PROXIES, help=f"simulated proxies (<= {MAX_PROXIES})")
    parser.add_argument("--services", type=int, help="services (default proxies/10, at least 2)")
    parser.add_argument("--outbounds", type=int, default=3, help="outbounds per proxy")
    parser.add_argument("--workers", type=int, default=3, help="client worker processes")
    parser.add_argument("--changes", type=int, default=5, help="mesh-wide policy changes to time, per kind")
    parser.add_argument(
        "--change-kinds", default=",".join(CHANGE_KINDS), help="connect (clusters) and/or timeouts (clusters+routes)"
    )
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between changes")
    parser.add_argument("--storm-timeout", type=float, default=180.0)
    parser.add_argument("--change-timeout", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 proxies, 2 changes")
    parser.add_argument("--profile", type=Path, help="run the CP under cProfile, writing this file")
    parser.add_argument("--spy", type=Path, help="py-spy the CP during the policy changes (collapsed stacks)")
    parser.add_argument("--profile-clients", type=Path, help="cProfile each worker, writing PATH.<pid>")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir (CP log)")
    parser.add_argument("--out", type=Path, help=f"JSON report (default {RESULTS}; --quick: *.quick.json)")
    args = parser.parse_args()
    if args.quick:
        args.proxies, args.changes, args.workers = min(args.proxies, 50), 2, 2
        args.out = args.out or RESULTS.with_suffix(".quick.json")
    if not 1 <= args.proxies <= MAX_PROXIES:
        parser.error(f"--proxies must be between 1 and {MAX_PROXIES}")
    args.services = args.services or max(2, args.proxies // 10)
    args.change_kinds = [k for k in args.change_kinds.split(",") if k]
    if not set(args.change_kinds) <= set(CHANGE_KINDS):
        parser.error(f"--change-kinds: choose among {', '.join(CHANGE_KINDS)}")
    args.out = args.out or RESULTS
    started = time.monotonic()
    report: dict[str, Any] = {
        "benchmark": "xds_zone",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "shared": True},
        "params": {
            "proxies": args.proxies,
            "services": args.services,
            "outbounds": args.outbounds,
            "workers": args.workers,
            "changes": args.changes,
            "change_kinds": args.change_kinds,
            "store": "sqlite",
            "mtls": "builtin",
        },
    }
    load_before = os.getloadavg()
    report.update(run(args))
    report["machine"]["load_average_1m"] = {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)}
    report["verdicts"] = verdicts(report)
    report["wall_s"] = round(time.monotonic() - started, 1)
    print_table(report)
    for name, verdict in report["verdicts"].items():
        status = "PASS" if verdict["ok"] else "FAIL"
        print(f"target {name}: {verdict['measured']} (target {verdict['target']}): {status}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
