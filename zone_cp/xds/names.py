"""Resource names as xDS streams subscribe to them, one copy for every stream that has them.

Every proxy of one shape subscribes to the same endpoints, routes and secrets by name, and each
request carries those names as strings of its own: kept per stream (its subscription, the open
watch's), they would be one copy per proxy of the same few names (~1 KB per proxy at 3 outbounds).
``SharedNames.of`` gives the one frozenset of those names that every stream holding them shares,
its names interned (``sys.intern``: the same string objects as every other stream's).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

NOTHING: frozenset[str] = frozenset()
# The table is swept of sets no stream holds any more each time it doubled since the last sweep.
MIN_SWEEP = 1024
# References to a set of the table that only the table holds, as counted in ``_sweep``: the
# table's key and value (the same object), the loop variable and getrefcount's argument.
_ONLY_THE_TABLE = 4


class SharedNames:
    """Equal subscriptions as one frozenset (``of``). Single event loop: no locking."""

    def __init__(self) -> None:
        self._sets: dict[frozenset[str], frozenset[str]] = {}
        self._sweep_at = MIN_SWEEP

    def of(self, names: Iterable[str]) -> frozenset[str]:
        """The frozenset of ``names``: the one already held by another stream if any."""
        wanted = frozenset(names)
        if not wanted:
            return NOTHING
        shared = self._sets.get(wanted)  # a State of the World stream asks this on every request
        if shared is None:
            shared = frozenset(map(sys.intern, wanted))
            self._sets[shared] = shared  # its own key: the table holds no second copy
            if len(self._sets) >= self._sweep_at:
                self._sweep()
        return shared

    def __len__(self) -> int:
        return len(self._sets)

    def _sweep(self) -> None:
        """Forget the sets no stream holds any more (streams closed, subscriptions changed)."""
        unused = [names for names in self._sets.values() if sys.getrefcount(names) <= _ONLY_THE_TABLE]
        for names in unused:
            del self._sets[names]
        self._sweep_at = max(MIN_SWEEP, 2 * len(self._sets))
