"""Zone control plane assembly: what `zonemesh-cp run --mode zone|standalone` adds to the common parts."""

from __future__ import annotations

from zonemesh.shared.config import Config
from zonemesh.shared.runtime import Assembly


def assemble(config: Config) -> Assembly:
    assembly = Assembly()
    if config.mode == "zone" and config.global_address:  # federated: KDS stream to global (docs/kds.md)
        from zonemesh.zone_cp.kds_client import ZoneKds

        kds = ZoneKds(config)
        assembly.components.append(kds.run)
        assembly.routes += kds.routes()
    return assembly
