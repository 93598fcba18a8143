"""`zmctl generate zone-token|dataplane-token` without a control plane: argument checks, the
request it would send, and offline zone tokens verified by global's real validator.
(Online issuance against real processes: tests/integration/test_kds_tokens.py.)"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import jwt
import pytest
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.tokens.keys import generate_private_key_pem
from zonemesh.shared.tokens.tokens import InvalidToken
from zonemesh.shared.tokens.zone import ZoneTokenValidator, zone_token_keys

from zonemesh.ctl import config as cfg
from zonemesh.ctl.errors import UsageError
from zonemesh.ctl.generate import dataplane_token_request, parse_tags, user_token_request
from zonemesh.ctl.main import build_parser, main


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(cfg.CONFIG_ENV, str(tmp_path / "zmctl" / "config.yaml"))


@pytest.fixture
def nowhere() -> list[str]:
    """A closed port: a command that must send nothing would fail with 'connection refused'."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return ["--cp-address", f"http://127.0.0.1:{port}"]


def test_parse_tags() -> None:
    assert parse_tags(["kuma.io/service=web", "kuma.io/service=api", "v=1"]) == {
        "kuma.io/service": ["web", "api"],
        "v": ["1"],
    }
    assert parse_tags(None) == {}
    for bad in ("novalue=", "=x", "plain"):
        with pytest.raises(UsageError, match="expected KEY=VALUE"):
            parse_tags([bad])


def test_dataplane_token_request() -> None:
    args = build_parser().parse_args(
        ["generate", "dataplane-token", "--mesh", "m1", "--name", "web-1", "--tag", "kuma.io/service=web",
         "--proxy-type", "ingress", "--valid-for", "24h"]
    )  # fmt: skip
    assert dataplane_token_request(args) == {
        "mesh": "m1",
        "name": "web-1",
        "tags": {"kuma.io/service": ["web"]},
        "type": "ingress",
        "validFor": "24h",
    }
    for bad in ("0s", "soon", "-1h"):
        with pytest.raises(UsageError, match="--valid-for"):
            dataplane_token_request(argparse.Namespace(valid_for=bad))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--zone", "z", "--valid-for", "0s"], "--valid-for '0s': expected a positive duration"),
        (["--zone", "z", "--valid-for", "forever"], "--valid-for 'forever'"),
        (["--zone", "z", "--valid-for", "1h", "--kid", "2"], "needs both --signing-key-path and --kid"),
        (["--zone", "z", "--valid-for", "1h", "--signing-key-path", "k.pem"], "needs both --signing-key-path"),
        (["--zone", "z", "--valid-for", "1h", "--signing-key-path", "/nonexistent/k.pem", "--kid", "1"],
         "cannot read /nonexistent/k.pem"),
    ],
)  # fmt: skip
def test_zone_token_usage_errors(
    argv: list[str], message: str, nowhere: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "zone-token", *argv, *nowhere]) == 2
    err = capsys.readouterr().err
    assert message in err and "zmctl generate zone-token --help" in err
    assert "connection refused" not in err.lower()


def test_zone_token_refuses_unknown_scope(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "zone-token", "--zone", "z", "--valid-for", "1h", "--scope", "admin"]) == 2
    assert "invalid choice: 'admin'" in capsys.readouterr().err


def test_zone_token_refuses_a_file_that_is_not_a_key(
    tmp_path: Path, nowhere: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "key.pem"
    junk.write_text("not a key")
    argv = ["generate", "zone-token", "--zone", "z", "--valid-for", "1h", "--signing-key-path", str(junk)]
    assert main([*argv, "--kid", "1", *nowhere]) == 2
    assert "not a PEM RSA private key" in capsys.readouterr().err


async def test_offline_zone_token_is_accepted_by_global(
    tmp_path: Path, nowhere: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Signed with a key global holds as serial 2; global's validator accepts it for that zone only."""
    store = MemoryStore()
    keys = zone_token_keys(store)
    await keys.ensure()
    pem = generate_private_key_pem()
    assert await keys.add(pem) == 2
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(pem)

    argv = ["generate", "zone-token", "--zone", "zone-1", "--valid-for", "720h", "--scope", "cp"]
    assert main([*argv, "--signing-key-path", str(key_file), "--kid", "2", *nowhere]) == 0
    token = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(token)["kid"] == "2"
    claims = await ZoneTokenValidator(store).validate(token, "zone-1")
    assert claims["Scope"] == ["cp"]
    assert 720 * 3600 <= claims["exp"] - claims["iat"] <= 720 * 3600 + 20

    # the same key under a kid global does not hold, or used by another zone: refused
    assert main([*argv, "--signing-key-path", str(key_file), "--kid", "1", *nowhere]) == 0
    wrong_kid = capsys.readouterr().out.strip()
    with pytest.raises(InvalidToken, match="signature verification failed"):
        await ZoneTokenValidator(store).validate(wrong_kid, "zone-1")
    with pytest.raises(InvalidToken, match="issued for zone 'zone-1', not for zone 'zone-2'"):
        await ZoneTokenValidator(store).validate(token, "zone-2")


def test_user_token_request() -> None:
    args = build_parser().parse_args(
        ["generate", "user-token", "--name", "alice", "--group", "mesh-system:admin", "--group", "team-a",
         "--group", "team-a", "--valid-for", "24h"]
    )  # fmt: skip
    assert user_token_request(args) == {
        "name": "alice",
        "groups": ["mesh-system:admin", "team-a"],
        "validFor": "24h",
    }
    no_group = build_parser().parse_args(["generate", "user-token", "--name", "ci", "--valid-for", "1h"])
    assert user_token_request(no_group)["groups"] == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--name", "a", "--valid-for", "0s"], "--valid-for '0s': expected a positive duration"),
        (["--name", "a", "--valid-for", "forever"], "--valid-for 'forever'"),
        (["--name", " ", "--valid-for", "1h"], "--name must not be empty"),
        (["--name", "a", "--group", "", "--valid-for", "1h"], "--group must not be empty"),
    ],
)
def test_user_token_usage_errors(
    argv: list[str], message: str, nowhere: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "user-token", *argv, *nowhere]) == 2
    err = capsys.readouterr().err
    assert message in err and "connection refused" not in err.lower()
