"""Helpers for tests that run real zonemesh processes on 127.0.0.1.

Used by the project's own integration and e2e tests, and usable by anyone testing against
a real control plane: free loopback ports, a control plane subprocess with bounded waits,
a small JSON HTTP client, and the pieces of a mesh on 127.0.0.1 (a demo HTTP app, sidecar
Dataplane documents, ``zonemesh-dp`` agents, zmctl, Envoy's admin API), and the system's
Chromium for driving the GUI.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.client import HTTPConnection  # the module name "http" is this module's http() below
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from zonemesh import jsonhttp
from zonemesh.spawn import python_module


def _ports_outside_the_ephemeral_range() -> tuple[int, int] | None:
    # The kernel gives outgoing connections ports of its ephemeral range: a port picked there can
    # be taken by any client before the test's server binds it ("address already in use").
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return None
    if low >= 12_000:
        return 10_000, low - 1
    if high <= 63_000:
        return high + 1, 65_535
    return None


_PORT_RANGE = _ports_outside_the_ephemeral_range()
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now: outside the ephemeral range where there is one, and never
    the same twice in one test process (two servers of one test cannot be given one port)."""
    if _PORT_RANGE is not None:
        for _ in range(200):  # bounded: fall back to the kernel's choice
            port = random.randint(*_PORT_RANGE)
            if port in _HANDED_OUT:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
    _HANDED_OUT.add(chosen)
    return chosen


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
    source: str | None = None,
) -> tuple[int, Any]:
    """One JSON request; returns (status, decoded body or text). Never raises for HTTP errors.

    ``source``: the local address to connect from (``non_loopback_address()``), so that a
    server on 127.0.0.1 sees a client that is not on loopback."""
    if source is not None:
        data = json.dumps(body).encode() if body is not None else None
        return _http_from(source, method, url, data, headers or {}, timeout)
    return jsonhttp.http(method, url, body, headers, timeout)


def _http_from(
    source: str, method: str, url: str, data: bytes | None, headers: dict[str, str], timeout: float
) -> tuple[int, Any]:
    parts = urllib.parse.urlsplit(url)
    conn = HTTPConnection(parts.hostname or "", parts.port, timeout=timeout, source_address=(source, 0))
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path or "/", body=data, headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        return response.status, jsonhttp.decoded(response.read())
    finally:
        conn.close()


def non_loopback_address() -> str | None:
    """An IPv4 address of one of this host's interfaces that is not loopback, or None.

    Tests connect FROM it TO 127.0.0.1 (``http(..., source=...)``): the packets never leave the
    host (the destination is loopback), yet the server sees a peer that is not on loopback, as
    a client on the network would be. Linux only (SIOCGIFADDR)."""
    import fcntl
    import ipaddress
    import struct

    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue  # no IPv4 address on this interface
        address = socket.inet_ntoa(packed[20:24])
        if ipaddress.ip_address(address).is_loopback:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address, 0))
            except OSError:
                continue
        return address
    return None


class ProcessExited(RuntimeError):
    """A process a test waits on has died: waiting longer cannot help."""


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; bounded by ``timeout``.

    Errors from the predicate count as "not yet", except ProcessExited, which ends the wait.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except ProcessExited:
            raise
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})" if last_error else "")
    )


@dataclass
class ControlPlaneProcess:
    """A `zonemesh-cp run` subprocess with its own ports and data directory."""

    data_dir: Path
    args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    api_port: int = field(default_factory=free_port)
    diagnostics_port: int = field(default_factory=free_port)
    xds_port: int = field(default_factory=free_port)  # used unless ``args`` name one
    python_args: Sequence[str] = ()  # before ``-m zonemesh.cp``: e.g. ``-m cProfile -o <file>``
    process: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "cp.log"

    def start(self, wait: bool = True, timeout: float = 30.0) -> ControlPlaneProcess:
        # A control plane refuses a data dir that others can read. Tests often create it first
        # (to put a zone token in it) with the default mode: as its operator, make it private.
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        cmd = [
            *python_module("zonemesh.cp", python_args=self.python_args),
            "run",
            "--data-dir",
            str(self.data_dir),
            "--api-address",
            "127.0.0.1",
            "--api-port",
            str(self.api_port),
            "--diagnostics-address",
            "127.0.0.1",
            "--diagnostics-port",
            str(self.diagnostics_port),
            *self.args,
        ]
        if "--xds-port" not in self.args:  # zone and standalone serve xDS: loopback, a port of their own
            cmd += ["--xds-address", "127.0.0.1", "--xds-port", str(self.xds_port)]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise ProcessExited(f"control plane exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
            status, _ = http("GET", f"http://127.0.0.1:{self.diagnostics_port}/ready", timeout=1)
            return status == 200

        try:
            wait_until(ready, timeout, what=f"control plane on :{self.api_port} to be ready")
        except TimeoutError:
            raise TimeoutError(f"control plane not ready in {timeout}s:\n{self.logs()[-3000:]}") from None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.stop(signal.SIGKILL)

    def get(self, path: str) -> tuple[int, Any]:
        return http("GET", self.api + path)

    def put(self, path: str, body: Any) -> tuple[int, Any]:
        return http("PUT", self.api + path, body)

    def delete(self, path: str) -> tuple[int, Any]:
        return http("DELETE", self.api + path)


# --- a mesh on 127.0.0.1 ---------------------------------------------------------------------

# ``python -c HTTP_APP <name> <port> [<cert file> <key file> [<client CA file>]]``: answers every
# GET on 127.0.0.1:<port> with its name; over TLS when given a certificate and key. With a client
# CA it requires a client certificate signed by it, and answers "<name> <client's CN>".
HTTP_APP = textwrap.dedent(
    """
    import http.server, ssl, sys
    name, port = sys.argv[1], int(sys.argv[2])
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = name
            peer = self.connection.getpeercert() if hasattr(self.connection, "getpeercert") else None
            if peer:
                body += " " + dict(pair[0] for pair in peer["subject"]).get("commonName", "")
            body = body.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    if len(sys.argv) > 3:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[3], sys.argv[4])
        if len(sys.argv) > 5:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(sys.argv[5])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
    """
)


@contextlib.contextmanager
def serve_in_thread(handler: type[BaseHTTPRequestHandler], port: int = 0) -> Iterator[ThreadingHTTPServer]:
    """A standard-library HTTP server on 127.0.0.1:``port`` (0: any free port) answering from a
    daemon thread of the test's own process; shut down on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def start_http_app(
    name: str, port: int, tls: tuple[Path, Path] | None = None, client_ca: Path | None = None
) -> subprocess.Popen[bytes]:
    """The demo app (HTTP_APP) as ``name`` on 127.0.0.1:``port``; ``tls``: (cert file, key file);
    ``client_ca``: require client certificates it signed (with ``tls``)."""
    args = [*map(str, tls or ()), *([str(client_ca)] if tls and client_ca else [])]
    return subprocess.Popen([sys.executable, "-c", HTTP_APP, name, str(port), *args])


# A mesh with builtin mTLS, and traffic permissions on it: allow everything, deny app-a -> app-b.
MTLS_MESH: dict[str, Any] = {
    "type": "Mesh",
    "name": "default",
    "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]},
}
ALLOW_ALL: dict[str, Any] = {
    "type": "MeshTrafficPermission",
    "mesh": "default",
    "name": "allow-all",
    "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]},
}
DENY_A_TO_B: dict[str, Any] = {
    "type": "MeshTrafficPermission",
    "mesh": "default",
    "name": "deny-a-to-b",
    "spec": {
        "targetRef": {"kind": "MeshService", "name": "app-b"},
        "from": [{"targetRef": {"kind": "MeshService", "name": "app-a"}, "default": {"action": "Deny"}}],
    },
}


def sidecar_dataplane(
    service: str,
    inbound: int,
    app: int,
    protocol: str = "http",
    outbound: Sequence[tuple[str, int]] = (),
    mesh: str | None = None,
) -> dict[str, Any]:
    """A Dataplane on 127.0.0.1: one inbound for ``service`` in front of ``app``, and an outbound
    port per (service, port) in ``outbound``."""
    networking: dict[str, Any] = {
        "address": "127.0.0.1",
        "inbound": [
            {"port": inbound, "servicePort": app, "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol}}
        ],
    }
    if outbound:
        networking["outbound"] = [{"port": port, "tags": {"kuma.io/service": name}} for name, port in outbound]
    doc: dict[str, Any] = {"type": "Dataplane"}
    if mesh is not None:
        doc["mesh"] = mesh
    doc["networking"] = networking
    return doc


def dp_run_command(
    *,
    xds_port: int,
    ca_file: Path | None,
    name: str,
    mesh: str,
    dataplane: Sequence[str],
    token_file: Path,
    admin_port: int | None = None,
    work_dir: Path,
    extra: Sequence[str] = (),
    readiness_port: int = 0,
) -> list[str]:
    """``zonemesh-dp run`` against a control plane's xDS port on 127.0.0.1, verifying its certificate
    against ``ca_file`` (the CP's ``<data dir>/xds.crt`` when self-signed; None: no --ca-cert-file,
    the system CA bundle, or ``--tls-skip-verify`` in ``extra``). ``dataplane`` names the proxy's
    document (``--dataplane-inline ...`` or ``--dataplane-file ...``).

    ``admin_port``: Envoy's admin API on TCP 127.0.0.1 (``--admin-port``, what ``EnvoyAdmin(name,
    port)`` reads); None: on its Unix socket ``admin_socket(work_dir)`` (the default, what
    ``EnvoyAdminSocket.of(name, work_dir)`` and ``envoy_admin`` read).
    ``readiness_port``: ``--readiness-port``; 0 (here, not zonemesh-dp's default 9902) for none, so
    that several agents on one host do not compete for 9902."""
    return [
        *python_module("zonemesh.dp.main"), "run",
        "--cp-address", f"https://127.0.0.1:{xds_port}",
        "--name", name, "--mesh", mesh,
        *dataplane,
        "--dataplane-token-file", str(token_file),
        *(["--ca-cert-file", str(ca_file)] if ca_file is not None else []),
        *(["--admin-port", str(admin_port)] if admin_port is not None else []),
        "--readiness-port", str(readiness_port),
        "--work-dir", str(work_dir),
        # Short drain: tests stop and restart agents often.
        "--drain-time", "0.5",
        *extra,
    ]  # fmt: skip


def zmctl(api: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``zmctl --cp-address <api> ...``, bounded; the caller checks the outcome."""
    cmd = python_module("zonemesh.ctl.main", "--cp-address", api, *args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def zmctl_ok(api: str, *args: str) -> str:
    """``zmctl`` that must succeed: its standard output."""
    out = zmctl(api, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    """Signal ``proc`` and wait for it; killed if it outlives ``timeout``. Its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 15) -> None:
    """SIGTERM to all (last started first), then wait for each: they shut down side by side."""
    procs = list(procs)
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def admin_socket(work_dir: Path) -> Path:
    """The Unix socket zonemesh-dp gives Envoy's admin API when it runs without ``--admin-port``."""
    from zonemesh.dp.admin import admin_socket_path

    return admin_socket_path(Path(work_dir))


class _UnixHTTPConnection(HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        from zonemesh.dp.admin import socket_connect_path

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(socket_connect_path(self.socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def envoy_admin(socket_path: Path, path: str, method: str = "GET", timeout: float = 5) -> tuple[int, str]:
    """One request to an Envoy admin API on a Unix socket: (status, body text). Raises OSError when
    the socket cannot be opened (no Envoy, or not this user's socket)."""
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


class _EnvoyAdminReads:
    """Reads of an Envoy's admin API, over whatever ``admin(path)`` uses."""

    def admin(self, path: str) -> str:
        raise NotImplementedError

    def stat(self, name: str) -> int:
        """The counter or gauge ``name`` exactly; 0 if Envoy has none by that name."""
        for line in self.admin(f"/stats?filter={name}").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def hosts(self, cluster: str) -> list[str]:
        """The endpoints Envoy has for ``cluster`` (admin /clusters)."""
        found = []
        for line in self.admin("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) >= 4 and parts[0] == cluster and parts[2] == "health_flags":
                found.append(parts[1])
        return found

    def config_dump(self, query: str = "") -> dict[str, Any]:
        return json.loads(self.admin("/config_dump" + query))  # type: ignore[no-any-return]

    def cluster(self, name: str) -> dict[str, Any]:
        """Dynamic cluster ``name`` from the config dump."""
        return dynamic_cluster(self.config_dump(), name)


@dataclass
class EnvoyAdmin(_EnvoyAdminReads):
    """An Envoy's admin API on TCP 127.0.0.1 (zonemesh-dp ``--admin-port``)."""

    name: str
    admin_port: int

    def admin(self, path: str) -> str:
        _, body = http("GET", f"http://127.0.0.1:{self.admin_port}{path}", timeout=5)
        return body if isinstance(body, str) else json.dumps(body)


@dataclass
class EnvoyAdminSocket(_EnvoyAdminReads):
    """An Envoy's admin API on its Unix socket: zonemesh-dp's default (no ``--admin-port``)."""

    name: str
    socket: Path

    @classmethod
    def of(cls, name: str, work_dir: Path) -> EnvoyAdminSocket:
        """The admin API of the zonemesh-dp run with ``--work-dir work_dir`` and no ``--admin-port``."""
        return cls(name, admin_socket(work_dir))

    def admin(self, path: str) -> str:
        return envoy_admin(self.socket, path)[1]


def dynamic_cluster(dump: dict[str, Any], name: str) -> dict[str, Any]:
    for section in dump["configs"]:
        for entry in section.get("dynamic_active_clusters", []):
            if entry["cluster"]["name"] == name:
                return entry["cluster"]  # type: ignore[no-any-return]
    raise AssertionError(f"cluster {name} not in the config dump")


def log_excerpt(name: str, text: str, tail: int = 4000) -> str:
    """A control plane's JSON log for a failure report: its warnings and errors in full (the
    last 200), then its last ``tail`` characters."""
    notable = [line for line in text.splitlines() if '"level": "warning"' in line or '"level": "error"' in line]
    return f"--- {name}: warnings and errors\n" + "\n".join(notable[-200:]) + f"\n--- {name}: log tail\n{text[-tail:]}"


def log_tails(paths: Iterable[Path], tail: int = 3000) -> list[str]:
    """The last ``tail`` characters of each log file (an agent's, which Envoy writes to as well),
    headed by its name, for a failure report beside ``log_excerpt``."""
    return [f"--- {p.name}: log tail\n{p.read_text(errors='replace')[-tail:]}" for p in paths]


# --- CA certificates for provided mesh CAs --------------------------------------------------------


@dataclass(frozen=True)
class TestCaCert:
    """A CA certificate and its key (PEM), as an operator would store them in Secrets."""

    __test__ = False  # not a pytest class

    cert_pem: bytes
    key_pem: bytes

    def chain(self, *above: TestCaCert) -> bytes:
        """This certificate followed by ``above`` (its issuers, up to the root): a provided CA's ``cert``."""
        return self.cert_pem + b"".join(c.cert_pem for c in above)


def make_ca_cert(
    name: str,
    *,
    issuer: TestCaCert | None = None,
    key_type: str = "ec",
    is_ca: bool = True,
    key_cert_sign: bool = True,
    not_before: float | None = None,
    valid_for: float = 365 * 24 * 3600,
    path_length: int | None = None,
) -> TestCaCert:
    """A CA certificate named ``name``, self-signed or signed by ``issuer``. ``key_type``: "ec"
    (P-256) or "rsa" (2048). ``is_ca``/``key_cert_sign`` False make a certificate that is not a
    usable CA; ``not_before``/``valid_for`` (unix time, seconds) an expired or future one."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP256R1()) if key_type == "ec" else rsa.generate_private_key(65537, 2048)
    )
    start = time.time() - 60 if not_before is None else not_before
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "zonemesh tests"), x509.NameAttribute(NameOID.COMMON_NAME, name)]
    )
    if issuer is not None:
        issuer_cert = x509.load_pem_x509_certificate(issuer.cert_pem)
        signing_key = serialization.load_pem_private_key(issuer.key_pem, password=None)
        assert isinstance(signing_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        issuer_name = issuer_cert.subject
    else:
        signing_key, issuer_name = key, subject
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(start, dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(start + valid_for, dt.UTC))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=path_length if is_ca else None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(signing_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return TestCaCert(cert.public_bytes(serialization.Encoding.PEM), key_pem)


# --- a real browser for the GUI ----------------------------------------------------------------

# Flags for the system's Chromium in tests and benches: headless, no sandbox (root in CI
# containers), and nothing that calls out to the internet.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def find_chromium() -> str | None:
    """The system's Chromium (Debian's ``chromium`` package; ``scripts/test.sh`` installs it where
    it can): ``$ZONEMESH_CHROMIUM``, else ``chromium`` or ``chromium-browser`` on the PATH. Never a
    browser downloaded by ``playwright install``."""
    configured = os.environ.get("ZONEMESH_CHROMIUM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None
