"""Run a module (the control plane) under tracemalloc; SIGUSR1 writes a snapshot.

    python -P bench/cp_tracemalloc.py OUT -m zonemesh.cp run ...

Each SIGUSR1 writes ``OUT.<k>`` (k = 1, 2, ...), a ``tracemalloc.Snapshot`` dump, for
``bench/xds_zone.py --tracemalloc OUT``: it signals once before any proxy registers, once with
every proxy registered and once with every stream connected, and prints the differences. Only
the bench uses it: the control plane itself never traces its allocations.
"""

from __future__ import annotations

import itertools
import runpy
import signal
import sys
import tracemalloc
from types import FrameType


def main() -> None:
    out, flag, module, *args = sys.argv[1:]
    if flag != "-m":
        raise SystemExit("usage: cp_tracemalloc.py OUT -m MODULE [ARGS...]")
    tracemalloc.start(12)
    counter = itertools.count(1)

    def dump(_signum: int, _frame: FrameType | None) -> None:
        tracemalloc.take_snapshot().dump(f"{out}.{next(counter)}")

    signal.signal(signal.SIGUSR1, dump)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
