"""Durations as operators write them: "500ms", "3s", "5m", "720h", "1h30m"."""

from __future__ import annotations

import re

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
# The longest Go duration (int64 nanoseconds, ~292 years): beyond it a value means nothing real,
# and "1e400h" would be float infinity, which int() and every timer refuse.
MAX_SECONDS = (2**63 - 1) / 1e9
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``; raises ValueError with the accepted forms."""
    value = text.strip()
    pos, total = 0, 0.0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not value or pos != len(value):
        raise ValueError(f"invalid duration {text!r}: use e.g. 500ms, 3s, 5m, 720h or 1h30m")
    if not total <= MAX_SECONDS:
        raise ValueError(f"duration {text!r} is too long: at most 2562047h (about 292 years)")
    return total
