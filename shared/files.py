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


def exposed(path: Path, fix: str = "") -> str | None:
    """Why ``path`` is not private to this process's user, with ``fix`` or else the command that
    fixes it; None when it is private or does not exist (yet)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    uid = os.geteuid()
    if st.st_uid != uid:
        why = f"is owned by uid {st.st_uid}, not by the user running zonemesh (uid {uid})"
        command = f"chown {uid} {path}"
    elif st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        why = f"is accessible by group or others (mode {mode:04o}) and holds the control plane's secrets"
        command = f"chmod {700 if stat.S_ISDIR(st.st_mode) else 600} {path}"
    else:
        return None
    return f"{path} {why}: {fix or command}"
