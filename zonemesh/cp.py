"""`zonemesh-cp`: run a control plane (standalone, global or zone)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = cfg.load(args)
    except cfg.ConfigError as exc:
        print(f"zonemesh-cp: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure(config.log_format, config.log_level)
    os.umask(PRIVATE_UMASK)  # the data dir, the database and keys: owner-only from their first byte
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
