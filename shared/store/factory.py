"""Open a Store from a URL, so that configuration is one string.

- ``memory://``
- ``sqlite:///abs/path.db`` (absolute) or ``sqlite://relative/path.db``
- ``etcd://host:port[,host2:port2][?prefix=/zonemesh]``

Async because the etcd backend must reach the cluster and start its watch before use; the
SQLite file is also opened before returning, so a bad path fails at startup, not later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from zonemesh.shared.store.base import Store

SCHEMES = ("memory", "sqlite", "etcd")


@dataclass(frozen=True)
class EtcdAccess:
    """How to reach a protected etcd, kept out of the URL (no secret in a string that gets logged):
    TLS when a CA or a client certificate is given (PEM files), etcd auth when a username is given.
    Files are read when the store opens."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    password_file: str = ""


async def open_store(url: str, etcd: EtcdAccess | None = None) -> Store:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(
            f"unsupported store URL {url!r}: use memory://, sqlite:///path/to/file.db or "
            "etcd://host:port[,host:port][?prefix=/zonemesh]"
        )

    if scheme == "memory":
        if rest:
            raise ValueError(f"invalid store URL {url!r}: memory:// takes nothing after the scheme")
        from zonemesh.shared.store.memory import MemoryStore

        return MemoryStore()

    if scheme == "sqlite":
        # Not urlsplit: a file name is not a host, and "?" or "#" are legal in file names.
        if not rest:
            raise ValueError(f"invalid store URL {url!r}: give a file, e.g. sqlite:///var/lib/zonemesh/zonemesh.db")
        from zonemesh.shared.store.sqlite import SqliteStore

        return await SqliteStore.open(rest)

    parts = urlsplit(url)
    # urlsplit would choke on "h1:2379,h2:2379" when asked for .port; only split, never parse.
    hosts = parts.netloc
    if not hosts or parts.path not in ("", "/") or parts.fragment:
        raise ValueError(f"invalid store URL {url!r}: expected etcd://host:port[,host:port][?prefix=/zonemesh]")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(query) - {"prefix"})
    if unknown:
        raise ValueError(f"invalid store URL {url!r}: unknown parameter(s) {', '.join(unknown)}; only prefix is known")
    prefix = query.get("prefix", ["/zonemesh"])[-1]
    if not prefix.startswith("/"):
        raise ValueError(f"invalid store URL {url!r}: prefix must start with '/' (got {prefix!r})")
    from zonemesh.shared.store.etcd import EtcdStore

    return await EtcdStore.open(hosts, prefix=prefix, access=etcd)
