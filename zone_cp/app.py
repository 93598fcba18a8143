"""Zone control plane assembly: what `zonemesh-cp run --mode zone|standalone` adds to the common parts."""

from __future__ import annotations

from zonemesh.shared.config import Config
from zonemesh.shared.runtime import Assembly


def assemble(config: Config) -> Assembly:
    return Assembly()
