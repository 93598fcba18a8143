"""Global control plane assembly: what `zonemesh-cp run --mode global` adds to the common parts."""

from __future__ import annotations

from zonemesh.shared.config import Config
from zonemesh.shared.runtime import Assembly


def assemble(config: Config) -> Assembly:
    from zonemesh.global_cp.api import global_routes
    from zonemesh.global_cp.kds_server import GlobalKds

    kds = GlobalKds(config)
    return Assembly(components=[kds.run], routes=global_routes(kds))
