"""How zonemesh starts its own modules as child processes: ``python -P -m <module>``.

``python -m`` normally puts the current directory first on ``sys.path``. Run from inside a clone
of this repository, the clone's ``zonemesh/`` folder (which holds only the entry points: the rest
of the package lives in ``shared/``, ``zone_cp/``... and is mapped in only by the install) would
then shadow the installed package, and the child would die with ``No module named
'zonemesh.shared'``. ``-P`` (Python >= 3.11) leaves the current directory off ``sys.path``, so a
child imports exactly what its parent imported: the installed package. Every process that
zonemesh, its lab, its test helpers and its benchmarks start from a module goes through here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def python_module(module: str, *args: str, python_args: Sequence[str] = ()) -> list[str]:
    """The argv that runs ``module`` with this interpreter, never importing from the current
    directory; ``python_args`` go before ``-m module`` (e.g. ``-m cProfile -o <file>``)."""
    return [sys.executable, "-P", *python_args, "-m", module, *args]
