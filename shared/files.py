"""Paths that hold secrets: the data dir, the SQLite database, private keys.

The database holds every mesh CA key, token signing key and the admin token, so whoever can read
it is admin of the mesh. Such paths must be private to the user running zonemesh: owned by it,
nothing for group or others (a directory 0700, a file 0600).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Everything a zonemesh process creates is owner-only (directories 0700, files 0600): set at the
# start of zonemesh-cp and zonemesh-dp, and inherited by what they run (Envoy).
PRIVATE_UMASK = 0o077


def exposed(path: Path) -> str | None:
    """Why ``path`` is not private to this process's user, with the command that fixes it; None
    when it is private or does not exist (yet)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if st.st_uid != os.geteuid():
        return (
            f"{path} is owned by uid {st.st_uid}, not by the user running zonemesh (uid {os.geteuid()}): "
            f"chown {os.geteuid()} {path}"
        )
    if st.st_mode & 0o077:
        private = "700" if stat.S_ISDIR(st.st_mode) else "600"
        return (
            f"{path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}) and holds the "
            f"control plane's secrets: chmod {private} {path}"
        )
    return None
