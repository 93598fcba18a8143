"""Helpers for tests that run real zonemesh processes on 127.0.0.1.

Used by the project's own integration and e2e tests, and usable by anyone testing against
a real control plane: free loopback ports, a control plane subprocess with bounded waits,
and a small JSON HTTP client.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, Any]:
    """One JSON request; returns (status, decoded body or text). Never raises for HTTP errors."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


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
    process: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "cp.log"

    def start(self, wait: bool = True, timeout: float = 30.0) -> ControlPlaneProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "zonemesh.cp",
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
