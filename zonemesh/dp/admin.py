"""Where Envoy's admin API listens, and the agent's own calls to it.

The admin API has no authentication and full control: ``/config_dump`` shows the bootstrap,
dataplane token included (the ADS ``initial_metadata`` is not a field Envoy redacts), and
``POST /quitquitquit``, ``/runtime_modify``, ``/logging``, ``/drain_listeners`` stop or change
the proxy. So by default Envoy serves it only on a Unix socket in the agent's private work dir,
mode 0600: the user running zonemesh-dp (and root) can open it, nobody else. ``--admin-port N``
opts in to TCP on 127.0.0.1:N instead, which every local user and every process sharing the
proxy's network namespace can reach.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ADMIN_SOCKET_NAME = "envoy-admin.sock"
ADMIN_SOCKET_MODE = 0o600
ADMIN_TCP_ADDRESS = "127.0.0.1"
# sockaddr_un.sun_path is 108 bytes on Linux, its terminating NUL included: a longer path cannot
# be bound or connected to as such (a work dir under a long $HOME or pytest's tmp_path can be).
MAX_SOCKET_PATH_BYTES = 107

_dir_fds: dict[Path, int] = {}  # directories held open for socket_connect_path, for the process's life


def admin_socket_path(work_dir: Path) -> Path:
    """The admin socket zonemesh-dp gives Envoy by default: ``<work-dir>/envoy-admin.sock``."""
    return work_dir / ADMIN_SOCKET_NAME


def fits(path: Path | str) -> bool:
    return len(os.fsencode(path)) <= MAX_SOCKET_PATH_BYTES


def envoy_socket_path(path: Path) -> str:
    """The path Envoy binds: ``path`` itself when it fits in a socket address, else its name alone,
    relative to Envoy's working directory, which the supervisor makes the socket's directory."""
    return str(path) if fits(path) else path.name


def socket_connect_path(path: Path) -> str:
    """A path this process can connect to ``path`` by: ``path`` itself when it fits in a socket
    address, else the same file through ``/proc/self/fd/<directory fd>/`` (Linux), which does."""
    if fits(path):
        return str(path)
    directory = path.parent
    if directory not in _dir_fds:
        _dir_fds[directory] = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{_dir_fds[directory]}/{path.name}"


@dataclass(frozen=True)
class AdminAddress:
    """Envoy's admin address: a Unix socket (the default) or, with ``--admin-port``, a TCP port
    on 127.0.0.1. Exactly one of the two is set."""

    socket_path: Path | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        if (self.socket_path is None) == (self.port is None):
            raise ValueError("Envoy's admin address is a Unix socket or a TCP port, exactly one of them")

    def __str__(self) -> str:
        return f"unix:{self.socket_path}" if self.socket_path is not None else f"{ADMIN_TCP_ADDRESS}:{self.port}"

    @property
    def base_url(self) -> str:
        # Over the socket the host part only fills the Host header.
        return "http://localhost" if self.socket_path is not None else f"http://{ADMIN_TCP_ADDRESS}:{self.port}"

    def connector(self) -> aiohttp.BaseConnector:
        if self.socket_path is not None:
            return aiohttp.UnixConnector(path=socket_connect_path(self.socket_path))
        return aiohttp.TCPConnector()


async def admin_request(address: AdminAddress, method: str, path: str, within: float = 2.0) -> tuple[int, str]:
    """One request to Envoy's admin API: (status, body). Raises OSError, aiohttp.ClientError or
    TimeoutError when Envoy has not answered within ``within`` seconds (connect included)."""
    async with (
        aiohttp.ClientSession(connector=address.connector(), timeout=aiohttp.ClientTimeout(total=within)) as session,
        session.request(method, address.base_url + path) as response,
    ):
        return response.status, await response.text()
