"""The proxy agent's life: validate, register, bootstrap, supervise Envoy, drain, unregister."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import ssl
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import structlog
import yaml

from zonemesh import __version__
from zonemesh.dp.admin import AdminAddress, admin_socket_path
from zonemesh.dp.bootstrap import DEFAULT_XDS_PROTOCOL, XDS_PROTOCOLS, BootstrapParams, build_bootstrap
from zonemesh.dp.envoy import (
    EnvoyCrashLoop,
    EnvoyNotFound,
    EnvoySupervisor,
    SupervisorSettings,
    envoy_version,
    find_envoy,
)
from zonemesh.dp.readiness import DEFAULT_READINESS_PORT, READINESS_ADDRESS, ReadinessServer
from zonemesh.proto import dataplane_pb2, dataplane_pb2_grpc
from zonemesh.shared.tls import HOST_NAME_MISMATCH, first_dns_name, system_ca_file, verification_failure

log = structlog.get_logger("zonemesh.dp")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_UNTRUSTED = 4  # the control plane's certificate did not verify: nothing (no token) was sent
# The resource each proxy type registers; zone ingress/egress serve every mesh and have none.
RESOURCE_TYPES = {"dataplane": "Dataplane", "ingress": "ZoneIngress", "egress": "ZoneEgress"}
SUPPORTED_PROXY_TYPES = tuple(RESOURCE_TYPES)
ZONE_PROXY_TYPES = ("ingress", "egress")


class AgentError(Exception):
    """An expected failure: printed without a traceback, exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        self.code = code
        super().__init__(message)


class Unreachable(Exception):
    """A control plane address did not answer (before any request, with its token, was sent)."""


@dataclass
class AgentOptions:
    cp_address: str
    # The proxy's name and mesh: from the flags, else from its document (``prepare`` fills them
    # in). Without a document the proxy runs the Dataplane already stored under them.
    name: str | None
    mesh: str | None
    token_file: str
    dataplane_file: str | None = None  # "-": standard input
    dataplane_inline: str | None = None
    dataplane_vars: dict[str, str] = field(default_factory=dict)  # {{ key }} in the document (kuma-dp -v)
    ca_cert_file: str | None = None
    tls_skip_verify: bool = False
    proxy_type: str = "dataplane"
    # None: Envoy's admin on the Unix socket <work-dir>/envoy-admin.sock; a port: on TCP 127.0.0.1
    # (every local user can read the token from /config_dump there).
    admin_port: int | None = None
    readiness_port: int = DEFAULT_READINESS_PORT  # 0: no readiness endpoint
    envoy_binary: str | None = None
    work_dir: str | None = None
    concurrency: int = 1
    envoy_log_level: str = "warning"
    envoy_component_log_level: str | None = None  # Envoy's --component-log-level
    drain_seconds: float = 5.0
    xds_protocol: str = DEFAULT_XDS_PROTOCOL  # delta or sotw (bootstrap.XDS_PROTOCOLS)
    connect_timeout: float = 30.0
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)


def parse_cp_address(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "://" in address else f"https://{address}")
    if parts.scheme not in ("https", "grpcs"):
        raise AgentError(
            f"--cp-address {address!r}: the xDS port speaks TLS, use https://HOST:5678 (got {parts.scheme}://)",
            EXIT_USAGE,
        )
    if not parts.hostname:
        raise AgentError(f"--cp-address {address!r} has no host", EXIT_USAGE)
    return parts.hostname, parts.port or 5678


def parse_cp_addresses(addresses: str) -> list[tuple[str, int]]:
    """--cp-address: one address, or several replicas of the zone control plane, comma-separated
    (the flag may also be repeated: main joins them). Each is https://HOST[:5678]."""
    items = [item.strip() for item in addresses.split(",")]
    if not all(items):
        raise AgentError(f"--cp-address {addresses!r}: an empty address in the list", EXIT_USAGE)
    return [parse_cp_address(item) for item in items]


_VAR = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")
DEFAULT_MESH = "default"


def render_vars(text: str, variables: dict[str, str], source: str) -> str:
    """kuma-dp's ``--dataplane-var KEY=VALUE``: replace ``{{ KEY }}`` in the document. A placeholder
    without a value is refused (kuma-dp renders it empty, which would register a broken Dataplane)."""
    missing = sorted({m.group(1) for m in _VAR.finditer(text)} - set(variables))
    if missing:
        flags = " ".join(f"--dataplane-var {name}=VALUE" for name in missing)
        raise AgentError(f"{source} uses {{{{ {missing[0]} }}}} but no value was given: pass {flags}", EXIT_USAGE)
    return _VAR.sub(lambda m: variables[m.group(1)], text)


def read_document(opts: AgentOptions) -> tuple[Any, str] | None:
    """The proxy's document as parsed YAML and where it came from; None when the agent was given
    none (it then runs the Dataplane stored on the control plane under --name/--mesh)."""
    if opts.dataplane_file and opts.dataplane_inline:
        raise AgentError("give one of --dataplane-file and --dataplane-inline, not both", EXIT_USAGE)
    if not opts.dataplane_file and not opts.dataplane_inline:
        return None
    source = opts.dataplane_file or "--dataplane-inline"
    try:
        if opts.dataplane_file == "-":
            source, text = "the Dataplane on standard input", sys.stdin.read()
        elif opts.dataplane_file:
            text = Path(opts.dataplane_file).read_text()
        else:
            text = str(opts.dataplane_inline)
    except OSError as exc:
        raise AgentError(f"cannot read {source}: {exc.strerror}", EXIT_USAGE) from None
    text = render_vars(text, opts.dataplane_vars, source)
    try:
        return yaml.safe_load(text), source
    except yaml.YAMLError as exc:
        raise AgentError(f"{source} is not valid YAML: {exc}", EXIT_USAGE) from None


def load_dataplane(opts: AgentOptions) -> dict[str, Any] | None:
    """Read the Dataplane (or ZoneIngress/ZoneEgress) document and validate it locally; settle the
    proxy's name and mesh (``opts.name``/``opts.mesh``) from the flags and the document, which must
    agree. None: no document, the proxy runs the Dataplane stored on the control plane."""
    from zonemesh.shared.resources import REGISTRY
    from zonemesh.shared.resources.codec import from_universal, to_universal
    from zonemesh.shared.resources.schema import ValidationError

    type_name = RESOURCE_TYPES[opts.proxy_type]
    zone_proxy = opts.proxy_type in ZONE_PROXY_TYPES
    read = read_document(opts)
    if read is None:
        if zone_proxy:
            raise AgentError(
                f"--proxy-type {opts.proxy_type} needs its {type_name} document: pass --dataplane-file", EXIT_USAGE
            )
        if not opts.name:
            raise AgentError(
                "give the proxy's Dataplane document (--dataplane-file), or --name (and --mesh) of a Dataplane "
                "already created on the control plane",
                EXIT_USAGE,
            )
        opts.mesh = opts.mesh or DEFAULT_MESH
        return None
    doc, source = read
    if isinstance(doc, dict):
        for flag, key, given in (("--name", "name", opts.name), ("--mesh", "mesh", opts.mesh)):
            stated = doc.get(key)
            if given and stated is not None and stated != given and not (zone_proxy and key == "mesh"):
                raise AgentError(
                    f"{flag} {given} and the {key} in {source} ({stated}) differ: leave out {flag} (the document "
                    f"names the proxy, as kuma-dp reads it) or make them agree",
                    EXIT_USAGE,
                )
        doc.setdefault("type", type_name)
        opts.name = opts.name or (doc.get("name") if isinstance(doc.get("name"), str) else None)
        if not zone_proxy:
            opts.mesh = opts.mesh or (doc.get("mesh") if isinstance(doc.get("mesh"), str) else None) or DEFAULT_MESH
            doc.setdefault("mesh", opts.mesh)
        doc.setdefault("name", opts.name)
    if not opts.name:
        raise AgentError(f"{source} does not name the proxy: give it a `name:`, or pass --name", EXIT_USAGE)
    try:
        res, _ = from_universal(
            doc, expected_type=REGISTRY.get(type_name), mesh=None if zone_proxy else opts.mesh, name=opts.name
        )
    except ValidationError as exc:
        problems = "\n".join(f"  {e.field}: {e.reason}" for e in exc.errors)
        raise AgentError(f"{source} is not a valid {type_name}:\n{problems}", EXIT_USAGE) from None
    out = to_universal(res)
    for key in ("creationTime", "modificationTime", "version"):
        out.pop(key, None)
    return out


def first_service(dataplane: dict[str, Any]) -> str:
    networking = dataplane.get("networking") or {}
    gateway = networking.get("gateway")
    tag_sets = (
        [gateway.get("tags") or {}] if gateway else [i.get("tags") or {} for i in networking.get("inbound") or []]
    )
    for tags in tag_sets:
        if tags.get("kuma.io/service"):
            return str(tags["kuma.io/service"])
    return "unknown"


def fetch_server_certificate(host: str, port: int) -> str:
    """--tls-skip-verify: the certificate the CP presents right now, to be trusted unverified."""
    return ssl.get_server_certificate((host, port), timeout=10)


@dataclass(frozen=True)
class Prepared:
    """What the agent reads and checks before it starts anything (blocking file work, done up front)."""

    name: str
    mesh: str  # "" for a zone proxy (it serves every mesh)
    dataplane: dict[str, Any] | None  # None: the Dataplane stored on the control plane (name/mesh form)
    token: str
    envoy_binary: str
    envoy_version: str
    work_dir: Path
    ca_file: Path | None  # None: --tls-skip-verify
    ca_source: str  # what the CP's certificate is verified against, for messages
    admin: AdminAddress  # where Envoy's admin API listens


def read_token(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise AgentError(f"cannot read --dataplane-token-file {path}: {exc.strerror}", EXIT_USAGE) from None
    if not token:
        raise AgentError(f"--dataplane-token-file {path} is empty", EXIT_USAGE)
    return token


def resolve_ca_file(opts: AgentOptions, host: str, port: int) -> tuple[Path | None, str]:
    """The CA file the control plane's xDS certificate must chain to (for the registration call
    and for Envoy), and how to name it: --ca-cert-file, else the system CA bundle; None with
    --tls-skip-verify."""
    if opts.ca_cert_file and opts.tls_skip_verify:
        raise AgentError("give --ca-cert-file (verify) or --tls-skip-verify (do not), not both", EXIT_USAGE)
    if opts.ca_cert_file:
        path = Path(opts.ca_cert_file)
        if not path.is_file():
            raise AgentError(f"--ca-cert-file {path} does not exist", EXIT_USAGE)
        return path.resolve(), f"--ca-cert-file {path}"
    if opts.tls_skip_verify:
        log.warning(
            "cp_tls_verification_disabled",
            cp=f"{host}:{port}",
            risk="the control plane's certificate is not verified: anyone on the path receives the proxy's "
            "token and can impersonate the control plane (send this proxy any configuration)",
            fix="--ca-cert-file with the CA of the control plane's xDS certificate",
        )
        return None, "nothing (--tls-skip-verify)"
    system = system_ca_file()
    if system is None:
        raise AgentError(
            "no CA to verify the control plane's xDS certificate with: pass --ca-cert-file (a zone control "
            "plane's own self-signed certificate is xds.crt in its data dir); no system CA bundle was found "
            "either (SSL_CERT_FILE)",
            EXIT_USAGE,
        )
    return system, f"the system CA bundle {system}"


def untrusted(host: str, port: int, source: str, reason: str) -> AgentError:
    """The control plane's certificate did not verify: which one, against what, and the fix."""
    if reason == HOST_NAME_MISMATCH:
        fix = (
            f"use a --cp-address name or address its certificate holds, or give the control plane a "
            f"certificate for {host} (--xds-tls-cert-file)"
        )
    else:
        fix = (
            "pass --ca-cert-file with the CA that signed it (a zone control plane's own self-signed "
            "certificate is xds.crt in its data dir)"
        )
    return AgentError(
        f"the control plane's xDS certificate at {host}:{port} did not verify against {source}: {reason}; {fix}",
        EXIT_UNTRUSTED,
    )


def check_declared_admin_port(opts: AgentOptions, admin: AdminAddress, dataplane: dict[str, Any]) -> None:
    """A document's ``networking.admin.port`` must be where the agent serves Envoy's admin API:
    otherwise the operator expects it on a port that nothing (or something else) listens on."""
    declared = ((dataplane.get("networking") or {}).get("admin") or {}).get("port")
    if declared is not None and declared != opts.admin_port:
        where = f"its Unix socket {admin.socket_path}" if opts.admin_port is None else f"--admin-port {opts.admin_port}"
        raise AgentError(
            f"the {RESOURCE_TYPES[opts.proxy_type]} sets networking.admin.port {declared}, but Envoy's admin API "
            f"is on {where}: remove networking.admin.port, or pass --admin-port {declared} to serve the admin API "
            f"on TCP 127.0.0.1:{declared} (every local user can then read this proxy's token from it)",
            EXIT_USAGE,
        )


def resolve_admin(opts: AgentOptions, work_dir: Path, dataplane: dict[str, Any] | None) -> AdminAddress:
    """Where Envoy's admin API listens: the Unix socket ``<work-dir>/envoy-admin.sock`` (only this
    user can open it), or TCP 127.0.0.1:``--admin-port`` when the operator asks for it."""
    if opts.readiness_port and opts.readiness_port == opts.admin_port:
        raise AgentError(
            f"--readiness-port and --admin-port are both {opts.admin_port}: give them different ports", EXIT_USAGE
        )
    admin = (
        AdminAddress(socket_path=admin_socket_path(work_dir))
        if opts.admin_port is None
        else AdminAddress(port=opts.admin_port)
    )
    if dataplane is not None:
        check_declared_admin_port(opts, admin, dataplane)
    if opts.admin_port is not None:
        log.warning(
            "envoy_admin_tcp",
            address=f"127.0.0.1:{opts.admin_port}",
            risk="every local user and every process in this network namespace can read this proxy's dataplane "
            "token (GET /config_dump) and stop or reconfigure the proxy (POST /quitquitquit, /runtime_modify, "
            "/logging)",
            fix="leave out --admin-port: the admin API is then on a Unix socket only this user can open",
        )
    return admin


def prepare(opts: AgentOptions, work_dir: Path) -> Prepared:
    """Validate flags and files; raise AgentError (exit 2) before anything runs."""
    if opts.proxy_type not in SUPPORTED_PROXY_TYPES:
        raise AgentError(f"--proxy-type must be dataplane, ingress or egress (got {opts.proxy_type!r})", EXIT_USAGE)
    if opts.xds_protocol not in XDS_PROTOCOLS:
        raise AgentError(f"--xds-protocol must be delta or sotw (got {opts.xds_protocol!r})", EXIT_USAGE)
    if opts.proxy_type in ZONE_PROXY_TYPES:
        opts.mesh = ""  # a zone proxy serves every mesh; its Envoy node id is ".<name>"
    host, port = parse_cp_addresses(opts.cp_address)[0]
    dataplane = load_dataplane(opts)
    token = read_token(opts.token_file)
    try:
        binary = find_envoy(opts.envoy_binary)
    except EnvoyNotFound as exc:
        raise AgentError(str(exc), EXIT_USAGE) from None
    work_dir = work_dir.absolute()  # the admin socket's path is given to Envoy and printed for operators
    admin = resolve_admin(opts, work_dir, dataplane)
    work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_file, ca_source = resolve_ca_file(opts, host, port)
    assert opts.name and opts.mesh is not None  # load_dataplane settled them or refused
    return Prepared(
        name=opts.name,
        mesh=opts.mesh,
        dataplane=dataplane,
        token=token,
        envoy_binary=binary,
        envoy_version=envoy_version(binary),
        work_dir=work_dir,
        ca_file=ca_file,
        ca_source=ca_source,
        admin=admin,
    )


def write_bootstrap(path: Path, params: BootstrapParams) -> None:
    # The bootstrap holds the token: owner-only from the first byte.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(build_bootstrap(params), fh, indent=2)


class Agent:
    def __init__(self, opts: AgentOptions, prepared: Prepared) -> None:
        self.opts = opts
        self.prepared = prepared
        self.name, self.mesh = prepared.name, prepared.mesh
        # Every address of the zone control plane (its replicas); registration uses one at a time
        # and moves to the next when it does not answer, Envoy's xDS cluster lists them all.
        self.cps = parse_cp_addresses(opts.cp_address)
        self._current = 0
        self.host, self.port = self.cps[0]
        self.stop = asyncio.Event()
        self.registered = False
        self.keep_dataplane = False
        self._channel: grpc.aio.Channel | None = None

    async def _next_cp(self) -> None:
        """The next call goes to the next control plane address (another replica)."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        self._current = (self._current + 1) % len(self.cps)
        self.host, self.port = self.cps[self._current]

    async def _open_channel(self) -> grpc.aio.Channel:
        """The registration channel, verifying the CP's certificate as Envoy will (same CA file)."""
        options: list[tuple[str, Any]] = []
        if self.prepared.ca_file is not None:
            try:
                root = await asyncio.to_thread(self.prepared.ca_file.read_bytes)
            except OSError as exc:
                raise AgentError(f"cannot read {self.prepared.ca_source}: {exc.strerror}", EXIT_USAGE) from None
        else:
            # --tls-skip-verify: trust whatever certificate is presented now, under the name it gives.
            try:
                pem = await asyncio.to_thread(fetch_server_certificate, self.host, self.port)
            except OSError as exc:
                raise Unreachable(f"cannot reach the control plane at {self.host}:{self.port}: {exc}") from None
            root = pem.encode()
            name = first_dns_name(root)
            if name:
                options.append(("grpc.ssl_target_name_override", name))
        credentials = grpc.ssl_channel_credentials(root_certificates=root)
        return grpc.aio.secure_channel(f"{self.host}:{self.port}", credentials, options=options)

    # -- registration ---------------------------------------------------------------------

    async def _call(self, method: str, request: Any, token: str) -> Any:
        """``method`` on the control plane, retried while it is unavailable (up to connect_timeout):
        with several addresses, each retry goes to the next one, and the delay grows once per round."""
        metadata = (("authorization", f"Bearer {token}"),)
        deadline = asyncio.get_running_loop().time() + self.opts.connect_timeout
        delay = 0.2
        tried = 0
        while True:
            try:
                if self._channel is None:
                    self._channel = await self._open_channel()
                stub = dataplane_pb2_grpc.DataplaneRegistrationStub(self._channel)
                return await getattr(stub, method)(request, metadata=metadata, timeout=10)
            except Unreachable as exc:  # --tls-skip-verify fetches the certificate first: no answer
                code, details = grpc.StatusCode.UNAVAILABLE, str(exc)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                reason = verification_failure(exc.details() or "")
                if code == grpc.StatusCode.UNAVAILABLE and reason is not None:
                    # Refused before any byte of the request (the token) left: no use retrying.
                    raise untrusted(self.host, self.port, self.prepared.ca_source, reason) from None
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    raise AgentError(f"the control plane refused this proxy: {exc.details()}", EXIT_REFUSED) from None
                if code in (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.UNIMPLEMENTED,
                    grpc.StatusCode.FAILED_PRECONDITION,  # e.g. the mesh's constraints refuse its tags
                ):
                    raise AgentError(f"the control plane refused the Dataplane: {exc.details()}", EXIT_USAGE) from None
                details = exc.details() or ""
            if code != grpc.StatusCode.UNAVAILABLE or asyncio.get_running_loop().time() + delay > deadline:
                raise AgentError(f"{method} failed: {code.name}: {details}") from None
            tried += 1
            if len(self.cps) > 1:
                log.info("cp_unavailable_trying_next", method=method, cp=f"{self.host}:{self.port}", error=details)
                await self._next_cp()
                if tried % len(self.cps):
                    continue  # another address not tried in this round: at once
            log.info("cp_unavailable_retrying", method=method, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)

    async def register(self, dataplane: dict[str, Any] | None, token: str, envoy_ver: str) -> dict[str, Any]:
        """Register the proxy's document, or (None) the Dataplane stored under its name; returns
        the Dataplane the control plane holds for it."""
        request = dataplane_pb2.RegisterRequest(
            mesh=self.mesh,
            name=self.name,
            proxy_type=self.opts.proxy_type,
            dataplane_json="" if dataplane is None else json.dumps(dataplane),
            agent_version=__version__,
            envoy_version=envoy_ver,
        )
        response = await self._call("Register", request, token)
        self.registered = True
        self.keep_dataplane = dataplane is None  # created beforehand: it stays when the proxy stops
        log.info(
            "dataplane_registered",
            mesh=self.mesh,
            name=self.name,
            created=response.created,
            stored=dataplane is None,
            control_plane=response.control_plane_instance_id,
        )
        if response.dataplane_json:
            stored: dict[str, Any] = json.loads(response.dataplane_json)
            return stored
        if dataplane is None:  # a control plane that predates the name/mesh form ran nothing for it
            raise AgentError(
                "the control plane did not return the stored Dataplane: it does not support registering by "
                "--name/--mesh; pass --dataplane-file",
                EXIT_USAGE,
            )
        return dataplane

    async def unregister(self, token: str) -> None:
        if not self.registered:
            return
        request = dataplane_pb2.UnregisterRequest(
            mesh=self.mesh, name=self.name, proxy_type=self.opts.proxy_type, keep_dataplane=self.keep_dataplane
        )
        try:
            response = await asyncio.wait_for(self._call("Unregister", request, token), timeout=10)
            log.info("dataplane_unregistered", mesh=self.mesh, name=self.name, deleted=response.deleted)
        except (AgentError, TimeoutError) as exc:
            log.warning("dataplane_unregister_failed", error=str(exc))

    # -- the whole life -------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        # Before registering: a port that is taken stops the agent with nothing registered. Once
        # stop is set (SIGTERM), it answers 503 while Envoy drains.
        readiness = await self._start_readiness()
        try:
            return await self._serve()
        finally:
            if readiness is not None:
                await readiness.stop()

    async def _start_readiness(self) -> ReadinessServer | None:
        port = self.opts.readiness_port
        if not port:
            return None
        server = ReadinessServer(port, self.prepared.admin, self.stop)
        try:
            await server.start()
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise AgentError(
                f"cannot serve the readiness endpoint on {READINESS_ADDRESS}:{port}: {reason}; "
                "give a free port with --readiness-port (0: no readiness endpoint)"
            ) from None
        return server

    async def _serve(self) -> int:
        opts, prepared = self.opts, self.prepared
        try:
            dataplane = await self.register(prepared.dataplane, prepared.token, prepared.envoy_version)
            if prepared.dataplane is None:  # the stored Dataplane, seen only now
                check_declared_admin_port(opts, prepared.admin, dataplane)
            bootstrap = prepared.work_dir / "bootstrap.json"
            params = BootstrapParams(
                mesh=self.mesh,
                name=self.name,
                service=first_service(dataplane) if self.mesh else self.name,
                cp_host=self.cps[0][0],
                cp_port=self.cps[0][1],
                more_cps=tuple(self.cps[1:]),
                ca_cert_file=str(prepared.ca_file) if prepared.ca_file else None,
                token=prepared.token,
                admin_port=prepared.admin.port,
                admin_socket=str(prepared.admin.socket_path) if prepared.admin.socket_path else None,
                proxy_type=opts.proxy_type,
                agent_version=__version__,
                envoy_version=prepared.envoy_version,
                xds_protocol=opts.xds_protocol,
            )
            await asyncio.to_thread(write_bootstrap, bootstrap, params)
            settings = dataclasses.replace(opts.supervisor, drain_seconds=opts.drain_seconds)
            supervisor = EnvoySupervisor(
                prepared.envoy_binary,
                bootstrap,
                prepared.admin,
                concurrency=opts.concurrency,
                log_level=opts.envoy_log_level,
                component_log_level=opts.envoy_component_log_level,
                settings=settings,
            )
            code = EXIT_OK
            try:
                await supervisor.run(self.stop)
                log.info("shutdown_requested")
            except EnvoyCrashLoop as exc:
                log.error("envoy_crash_loop", error=str(exc))
                code = EXIT_FAILURE
            finally:
                await supervisor.drain_and_stop()
            return code
        finally:
            await self.unregister(prepared.token)
            if self._channel is not None:
                await self._channel.close()


def run(opts: AgentOptions) -> int:
    """Prepare (blocking checks), then run the agent's event loop until it stops."""
    with contextlib.ExitStack() as cleanup:
        if opts.work_dir:
            work = Path(opts.work_dir)
        else:
            work = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="zonemesh-dp-")))
        prepared = prepare(opts, work)
        return asyncio.run(Agent(opts, prepared).run())
