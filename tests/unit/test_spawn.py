"""Child processes import the installed package, never a ``zonemesh/`` folder in the current directory.

A clone of this repository has a ``zonemesh/`` folder (the entry points only; ``shared/`` and the
rest are mapped in by the install). ``python -m zonemesh...`` run from inside the clone puts the
clone first on ``sys.path``, and the child dies with ``No module named 'zonemesh.shared'``
(issue 18: ``zonemesh-lab up`` from a fresh clone). Everything zonemesh, its lab, its test
helpers and its benchmarks start goes through ``zonemesh.spawn.python_module`` (``python -P``).
"""

from __future__ import annotations

import ast
import itertools
import json
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import yaml

import zonemesh
from zonemesh.spawn import python_module

ROOT = Path(__file__).resolve().parents[2]
# Where this project's Python lives: the installed package's sources, the tests and the benchmarks.
PYTHON_TREES = ("zonemesh", "shared", "global_cp", "zone_cp", "tests", "bench", "scripts")


def decoy_checkout(directory: Path) -> Path:
    """A directory laid out like a clone: a ``zonemesh/`` folder that is not the installed package."""
    package = directory / "zonemesh"
    decoy = "raise ImportError('imported the decoy checkout, not the install')\n"
    for sub in ("", "ctl", "lab", "cp"):
        (package / sub).mkdir(parents=True, exist_ok=True)
        (package / sub / "__init__.py").write_text(decoy)
    return directory


@pytest.mark.parametrize(
    ("module", "args", "expected"),
    [
        ("zonemesh.ctl.main", ("--help",), "usage: zmctl"),
        ("zonemesh.lab.main", ("--help",), "usage: zonemesh-lab"),
        ("zonemesh.cp", ("--help",), "usage: zonemesh-cp"),
    ],
)
def test_a_child_started_inside_a_checkout_runs_the_installed_package(
    tmp_path: Path, module: str, args: tuple[str, ...], expected: str
) -> None:
    run = subprocess.run(
        python_module(module, *args), cwd=decoy_checkout(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert expected in run.stdout


def _spawns_of_our_modules(tree: ast.AST) -> list[int]:
    """Lines of list/tuple displays holding ``"-m", "zonemesh..."``: a child started without
    ``python_module``, which the current directory can shadow."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.List | ast.Tuple):
            items = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            for first, second in itertools.pairwise(items):
                if first == "-m" and isinstance(second, str) and second.startswith("zonemesh"):
                    found.append(node.lineno)
    return found


def test_every_child_of_ours_is_started_through_python_module() -> None:
    offenders = []
    for top in PYTHON_TREES:
        for path in sorted((ROOT / top).rglob("*.py")):
            if "_pb2" in path.name:
                continue
            for line in _spawns_of_our_modules(ast.parse(path.read_text(), str(path))):
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert not offenders, "start these with zonemesh.spawn.python_module (python -P):\n" + "\n".join(offenders)


def test_the_image_starts_its_roles_without_the_working_directory_on_the_path() -> None:
    """The compose image's entrypoint and every healthcheck: ``python -P -m zonemesh...``."""
    commands = [list(yaml.safe_load(line.split("ENTRYPOINT", 1)[1])) for line in _dockerfile_lines("ENTRYPOINT")]
    services = yaml.safe_load((ROOT / "compose" / "docker-compose.yaml").read_text())["services"]
    commands += [s["healthcheck"]["test"] for s in services.values() if "healthcheck" in s]
    assert commands
    for command in commands:
        at = command.index("-m")
        assert command[at + 1].startswith("zonemesh")
        assert "-P" in command[:at], command


def _dockerfile_lines(instruction: str) -> list[str]:
    return [
        line
        for line in (ROOT / "compose" / "Dockerfile").read_text().splitlines()
        if line.startswith(instruction + " ")
    ]


def test_the_tests_import_the_package_as_installed() -> None:
    """CI installs the package as users do (``pip install '.[dev]'``, not editable): the tests must
    then import that install, not the checkout's ``zonemesh/`` folder (pytest's rootdir and
    conftest handling must not put the repository root on sys.path)."""
    direct_url = json.loads(metadata.distribution("zonemesh").read_text("direct_url.json") or "{}")
    if direct_url.get("dir_info", {}).get("editable"):
        pytest.skip("an editable install: the checkout is the package")
    # The venv may sit inside the checkout (.venv/lib/.../site-packages): what must not be imported
    # is the checkout's own zonemesh/ folder.
    assert not Path(zonemesh.__file__).resolve().is_relative_to((ROOT / "zonemesh").resolve()), zonemesh.__file__
