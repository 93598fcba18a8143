"""The settings of a protected etcd (shared/config.py): how they are given, checked and shown."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from zonemesh.shared import config as cfg
from zonemesh.shared.config import Config, ConfigError
from zonemesh.shared.runtime import etcd_access

SECRET = "s3cret-Pa55"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser)
    return parser.parse_args(argv)


def test_every_setting_from_flags_env_and_yaml(tmp_path: Path) -> None:
    config_file = tmp_path / "cp.yaml"
    config_file.write_text(f"store: etcd\netcd_username: zonemesh\netcd_password: {SECRET}\n")
    args = parse(
        "--config", str(config_file),
        "--etcd-ca-file", "/etc/zonemesh/etcd/ca.crt",
        "--etcd-cert-file", "/etc/zonemesh/etcd/client.crt",
        "--etcd-key-file", "/etc/zonemesh/etcd/client.key",
    )  # fmt: skip
    config = cfg.load(args, env={})
    assert etcd_access(config).__dict__ == {
        "ca_file": "/etc/zonemesh/etcd/ca.crt",
        "cert_file": "/etc/zonemesh/etcd/client.crt",
        "key_file": "/etc/zonemesh/etcd/client.key",
        "username": "zonemesh",
        "password": SECRET,
        "password_file": "",
    }
    env = {"ZONEMESH_STORE": "etcd", "ZONEMESH_ETCD_USERNAME": "u", "ZONEMESH_ETCD_PASSWORD": SECRET}
    assert cfg.load(None, env=env).etcd_password == SECRET
    env = {"ZONEMESH_STORE": "etcd", "ZONEMESH_ETCD_USERNAME": "u", "ZONEMESH_ETCD_PASSWORD_FILE": "/run/pw"}
    assert cfg.load(None, env=env).etcd_password_file == "/run/pw"


@pytest.mark.parametrize("flag", ["--etcd-password", "--etcd-password=" + SECRET])
def test_password_flag_is_refused(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [flag, SECRET] if "=" not in flag else [flag]
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--etcd-password: a secret is never taken from the command line (every local user can read it); " in err
    assert "set ZONEMESH_ETCD_PASSWORD or etcd_password in the --config file" in err
    assert SECRET not in err


def test_view_never_shows_the_password() -> None:
    config = Config(store="etcd", etcd_username="zonemesh", etcd_password=SECRET)
    view = config.view()
    assert view["etcd_password"] == "<redacted>"
    assert view["etcd_username"] == "zonemesh"
    assert SECRET not in json.dumps(view)
    assert Config().view()["etcd_password"] == ""  # nothing to hide: shown as unset


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"etcd_ca_file": "ca.crt"}, "etcd_ca_file: only with store etcd (store is sqlite)"),
        ({"store": "etcd", "etcd_cert_file": "c"}, "etcd_cert_file and etcd_key_file go together"),
        (
            {"store": "etcd", "etcd_cert_file": "c", "etcd_key_file": "k"},
            "etcd_cert_file needs etcd_ca_file: the CA of etcd's server certificate",
        ),
        ({"store": "etcd", "etcd_key_file": "k"}, "etcd_cert_file and etcd_key_file go together"),
        (
            {"store": "etcd", "etcd_ca_file": "ca", "etcd_endpoints": "10.0.0.5:2379,10.0.0.6:2379"},
            "etcd over TLS takes one endpoint: give one DNS name that resolves to every member",
        ),
        ({"store": "etcd", "etcd_username": "u"}, "etcd_username and a password"),
        ({"store": "etcd", "etcd_password": "p"}, "etcd_username and a password"),
        ({"store": "etcd", "etcd_password_file": "f"}, "etcd_username and a password"),
        (
            {"store": "etcd", "etcd_username": "u", "etcd_password": "p", "etcd_password_file": "f"},
            "give the etcd password inline or as a file, not both",
        ),
        ({"etcd_compaction_interval": "1m"}, "etcd_compaction_interval: only with store etcd (store is sqlite)"),
        (
            {"store": "etcd", "etcd_compaction_interval": "500ms"},
            "etcd_compaction_interval must be 0s (off) or at least 1s (got 500ms)",
        ),
        ({"store": "etcd", "etcd_compaction_interval": "soon"}, "etcd_compaction_interval: invalid duration 'soon'"),
    ],
)
def test_inconsistent_settings_are_refused(settings: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**settings).validate()
    assert problem in str(info.value)


def test_consistent_settings_pass() -> None:
    Config(store="etcd", etcd_ca_file="ca", etcd_cert_file="c", etcd_key_file="k").validate()
    Config(store="etcd", etcd_username="u", etcd_password_file="f").validate()
    Config(store="etcd", etcd_ca_file="ca", etcd_username="u", etcd_password="p").validate()
    Config(store="etcd", etcd_compaction_interval="0s").validate()  # off: etcd compacts itself
    Config(store="etcd", etcd_compaction_interval="1s").validate()
