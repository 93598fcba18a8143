"""Run mypy on the `zonemesh` package as it installs.

mypy cannot follow setuptools' editable import hook, so `zonemesh.shared` (folder `shared/`)
would be invisible to it. This builds a tree of symlinks with the installed layout under
build/typecheck/ (from [tool.zonemesh.packages] in pyproject.toml) and checks that.
"""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    roots: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["zonemesh"]["packages"]
    tree = ROOT / "build" / "typecheck"
    shutil.rmtree(tree, ignore_errors=True)
    package = tree / "zonemesh"
    package.mkdir(parents=True)
    for entry in (ROOT / roots["zonemesh"]).iterdir():
        if entry.name != "__pycache__":
            os.symlink(entry, package / entry.name)
    for name, folder in roots.items():
        if name != "zonemesh":
            os.symlink(ROOT / folder, package / name.split(".", 1)[1])
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", "zonemesh", *sys.argv[1:]]
    return subprocess.call(cmd, cwd=tree)


if __name__ == "__main__":
    sys.exit(main())
