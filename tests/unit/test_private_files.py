"""Secrets at rest: which paths a control plane refuses to start with (shared/files.py, shared/runtime.py).
The same rules against a real `zonemesh-cp`: tests/integration/test_secrets_at_rest.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from zonemesh.shared.config import Config
from zonemesh.shared.files import exposed
from zonemesh.shared.runtime import StartupRefused, refuse_exposed_secrets


def made(path: Path, mode: int, directory: bool = False) -> Path:
    if directory:
        path.mkdir()
    else:
        path.write_text("secret")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o700, 0o500])
def test_private_directory(tmp_path: Path, mode: int) -> None:
    assert exposed(made(tmp_path / "d", mode, directory=True)) is None


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_file(tmp_path: Path, mode: int) -> None:
    assert exposed(made(tmp_path / "f", mode)) is None


def test_missing_path_is_not_exposed(tmp_path: Path) -> None:
    assert exposed(tmp_path / "not-yet") is None


@pytest.mark.parametrize(("mode", "shown"), [(0o755, "0755"), (0o750, "0750"), (0o701, "0701"), (0o710, "0710")])
def test_directory_open_to_others(tmp_path: Path, mode: int, shown: str) -> None:
    path = made(tmp_path / "d", mode, directory=True)
    assert exposed(path) == (
        f"{path} is accessible by group or others (mode {shown}) and holds the control plane's secrets: "
        f"chmod 700 {path}"
    )


@pytest.mark.parametrize(("mode", "shown"), [(0o644, "0644"), (0o640, "0640"), (0o604, "0604"), (0o620, "0620")])
def test_file_open_to_others(tmp_path: Path, mode: int, shown: str) -> None:
    path = made(tmp_path / "f", mode)
    assert exposed(path) == (
        f"{path} is accessible by group or others (mode {shown}) and holds the control plane's secrets: "
        f"chmod 600 {path}"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_file_of_another_user(tmp_path: Path) -> None:
    path = made(tmp_path / "f", 0o600)
    os.chown(path, 65534, -1)
    assert exposed(path) == (f"{path} is owned by uid 65534, not by the user running zonemesh (uid 0): chown 0 {path}")


# --- what the control plane checks --------------------------------------------------------------


def refusal(config: Config) -> str:
    with pytest.raises(StartupRefused) as info:
        refuse_exposed_secrets(config)
    return str(info.value)


def test_fresh_start_is_accepted(tmp_path: Path) -> None:
    refuse_exposed_secrets(Config(data_dir=str(tmp_path / "new")))


def test_private_data_dir_is_accepted(tmp_path: Path) -> None:
    data = made(tmp_path / "data", 0o700, directory=True)
    for name in ("zonemesh.db", "zonemesh.db-wal", "zonemesh.db-shm", "xds.key", "xds.crt"):
        made(data / name, 0o600)
    made(data / "cp.log", 0o644)  # not a secret: not checked
    refuse_exposed_secrets(Config(data_dir=str(data)))


@pytest.mark.parametrize("name", ["zonemesh.db", "zonemesh.db-wal", "zonemesh.db-shm", "xds.key", "kds-tls.key"])
def test_each_secret_file_is_checked(tmp_path: Path, name: str) -> None:
    data = made(tmp_path / "data", 0o700, directory=True)
    loose = made(data / name, 0o644)
    assert refusal(Config(data_dir=str(data))) == exposed(loose)


def test_every_problem_is_named(tmp_path: Path) -> None:
    data = made(tmp_path / "data", 0o755, directory=True)
    db = made(data / "zonemesh.db", 0o644)
    assert refusal(Config(data_dir=str(data))) == f"{exposed(data)}; {exposed(db)}"


def test_store_path_outside_the_data_dir(tmp_path: Path) -> None:
    data = made(tmp_path / "data", 0o700, directory=True)
    elsewhere = made(tmp_path / "elsewhere", 0o755, directory=True)
    config = Config(data_dir=str(data), store_path=str(elsewhere / "zm.db"))
    # Perhaps a directory other programs use as well: chmod is not the only way out.
    assert refusal(config) == (
        f"{elsewhere} is accessible by group or others (mode 0755) and holds the control plane's secrets: "
        f"chmod 700 {elsewhere} if only zonemesh uses it, else give store_path a directory of its own"
    )
    elsewhere.chmod(0o700)
    db = made(elsewhere / "zm.db", 0o640)
    assert refusal(config) == exposed(db)
    db.chmod(0o600)
    refuse_exposed_secrets(config)


def test_other_stores_check_the_data_dir_only(tmp_path: Path) -> None:
    data = made(tmp_path / "data", 0o700, directory=True)
    made(data / "zonemesh.db", 0o644)  # a file left by an earlier run on SQLite: not in use
    refuse_exposed_secrets(Config(data_dir=str(data), store="memory"))
    data.chmod(0o755)
    assert refusal(Config(data_dir=str(data), store="memory")) == exposed(data)
