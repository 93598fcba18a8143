"""Global control plane assembly: what `zonemesh-cp run --mode global` adds to the common parts."""

from __future__ import annotations

from zonemesh.shared.config import Config
from zonemesh.shared.runtime import Assembly


def assemble(config: Config) -> Assembly:
    from zonemesh.global_cp.api import global_routes
    from zonemesh.global_cp.kds_server import GlobalKds
    from zonemesh.global_cp.license import LicenseAuthority

    # Constructed first: an invalid, altered or expired license refuses the start before anything runs.
    authority = LicenseAuthority(config)
    kds = GlobalKds(config)
    from zonemesh.global_cp import mesh_ca

    return Assembly(
        components=[authority.run, mesh_ca.component, kds.run], routes=[*global_routes(kds), *authority.routes()]
    )
