"""`zonemesh-cp`: run a control plane (standalone, global or zone); ``admin-token`` prints its admin token."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import structlog

from zonemesh import __version__
from zonemesh.shared import config as cfg
from zonemesh.shared.files import PRIVATE_UMASK
from zonemesh.shared.logs import configure


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zonemesh-cp", description="zonemesh control plane")
    parser.add_argument("--version", action="version", version=f"zonemesh-cp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run a control plane",
        description="Run a control plane. Settings: flags > ZONEMESH_* env > --config YAML > defaults.",
    )
    cfg.add_arguments(run)
    admin_token = sub.add_parser(
        "admin-token",
        help="print this control plane's admin user token, read from its store",
        description="Print the admin user token the control plane created on first start (the global "
        "secret admin-user-token), read straight from its store: the way to get it once "
        "api_localhost_is_admin is off. Give the same settings as to 'run' (--config, --data-dir, "
        "--store ...) and run it as the user the service runs as: whoever can read the store "
        "already holds every key in it.",
    )
    cfg.add_arguments(admin_token)
    return parser


class AdminTokenUnavailable(Exception):
    pass


def _check_store_readable(config: cfg.Config) -> None:
    """Refuse what would read nothing or damage the store, before opening it."""
    if config.store == "memory":
        raise AdminTokenUnavailable(
            "a memory store lives only inside the running control plane: read the admin token through its API "
            "(GET /global-secrets/admin-user-token from loopback while api_localhost_is_admin is on)"
        )
    if config.store != "sqlite":
        return
    path = Path(config.store_url().removeprefix("sqlite://"))
    if not path.exists():
        raise AdminTokenUnavailable(
            f"no store at {path}: start the control plane once, or give the settings it runs with "
            "(--config, --data-dir, --store-path)"
        )
    # SQLite may create -wal/-shm files next to it; owned by another user they would lock the service out.
    owner = path.stat().st_uid
    if owner != os.geteuid():
        raise AdminTokenUnavailable(
            f"{path} belongs to uid {owner}: run this as that user "
            "(e.g. sudo -u zonemesh zonemesh-cp admin-token ...), so that no file of the store changes owner"
        )


async def _read_admin_token(config: cfg.Config) -> str:
    from zonemesh.shared.api.auth import read_admin_token
    from zonemesh.shared.runtime import etcd_access
    from zonemesh.shared.store.factory import open_store
    from zonemesh.shared.tokens.tokens import InvalidToken

    # The same store settings as `run`: etcd's TLS, client certificate and user included.
    store = await open_store(config.store_url(), etcd_access(config))
    try:
        return await read_admin_token(store)
    except LookupError as exc:
        raise AdminTokenUnavailable(str(exc)) from None
    except InvalidToken as exc:
        raise AdminTokenUnavailable(
            f"the stored admin token would be refused ({exc.reason}); issue a new admin user token with another "
            "admin token, or for a moment with api_localhost_is_admin on (docs/api.md#recovering-admin-access)"
        ) from None
    finally:
        await store.close()


def admin_token(config: cfg.Config) -> int:
    """``zonemesh-cp admin-token``: the token on stdout, or why not on stderr with exit 1."""
    from zonemesh.shared.store import StoreError

    try:
        _check_store_readable(config)
        token = asyncio.run(_read_admin_token(config))
    except AdminTokenUnavailable as exc:
        print(f"zonemesh-cp: cannot read the admin token: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, StoreError) as exc:
        print(f"zonemesh-cp: cannot read the {config.store} store: {exc}", file=sys.stderr)
        return 1
    print(token)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = cfg.load(args)
    except cfg.ConfigError as exc:
        print(f"zonemesh-cp: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure(config.log_format, config.log_level)
    os.umask(PRIVATE_UMASK)  # the data dir, the database and keys: owner-only from their first byte
    if args.command == "admin-token":
        return admin_token(config)
    # Imported late: nothing heavy before the configuration is known to be valid.
    from zonemesh.shared.runtime import StartupRefused, run

    if config.mode == "global":
        from zonemesh.global_cp.app import assemble
    else:
        from zonemesh.zone_cp.app import assemble
    try:
        asyncio.run(run(config, assemble(config)))
    except StartupRefused as exc:
        structlog.get_logger("zonemesh.cp").error("startup_refused", reason=str(exc))
        print(f"zonemesh-cp: refusing to start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        structlog.get_logger("zonemesh.cp").error("startup_failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
