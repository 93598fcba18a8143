"""kumactl's offline generators and shell helpers in zmctl, without a control plane: signing keys,
their public half, self-signed TLS certificates, dataplane tokens signed offline (checked by the
zone's real validator), `completion bash|zsh` run in the real shells, and `version`."""

from __future__ import annotations

import base64
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.tokens import dataplane
from zonemesh.shared.tokens.tokens import InvalidToken

from zonemesh.ctl import config as cfg
from zonemesh.ctl import shell
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


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_signing_key_formats(capsys: pytest.CaptureFixture[str], nowhere: list[str]) -> None:
    code, out, _ = run(capsys, *nowhere, "generate", "signing-key")
    assert code == 0
    pem = base64.b64decode(out, validate=True)  # kumactl's default: pem-base64, a Secret's data
    assert isinstance(serialization.load_pem_private_key(pem, password=None), rsa.RSAPrivateKey)
    code, out, _ = run(capsys, *nowhere, "generate", "signing-key", "--format", "pem")
    assert code == 0 and out.startswith("-----BEGIN PRIVATE KEY-----")
    assert out != pem.decode()  # a new key each time


def test_public_key_of_a_signing_key(capsys: pytest.CaptureFixture[str], tmp_path: Path, nowhere: list[str]) -> None:
    run(capsys, *nowhere, "generate", "signing-key", "--format", "pem")
    key_file = tmp_path / "key.pem"
    code, out, _ = run(capsys, *nowhere, "generate", "signing-key", "--format", "pem")
    key_file.write_text(out)
    code, out, _ = run(capsys, *nowhere, "generate", "public-key", "--signing-key-path", str(key_file))
    assert code == 0
    private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert serialization.load_pem_public_key(out.encode()).public_numbers() == private.public_key().public_numbers()
    (tmp_path / "b64").write_text(base64.b64encode(key_file.read_bytes()).decode())
    code, _, err = run(capsys, *nowhere, "generate", "public-key", "--signing-key-path", str(tmp_path / "b64"))
    assert code == 2 and "not a PEM private key (a base64 one?" in err


@pytest.mark.parametrize(
    ("kind", "usage"), [("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)]
)
def test_tls_certificate_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, nowhere: list[str], kind: str, usage: x509.ObjectIdentifier
) -> None:
    key_file, cert_file = tmp_path / "key.pem", tmp_path / "cert.pem"
    argv = [*nowhere, "generate", "tls-certificate", "--type", kind, "--hostname", "cp.example,127.0.0.1"]
    code, out, _ = run(capsys, *argv, "--key-file", str(key_file), "--cert-file", str(cert_file))
    assert code == 0
    assert out.splitlines() == [f"Private key saved in {key_file}", f"Certificate saved in {cert_file}"]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o400
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["cp.example"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert (
        isinstance(key, rsa.RSAPrivateKey) and key.public_key().public_numbers() == cert.public_key().public_numbers()
    )
    # Nothing is overwritten: the key stays the one in use.
    before = key_file.read_bytes()
    code, _, err = run(capsys, *argv, "--key-file", str(key_file), "--cert-file", str(tmp_path / "other.pem"))
    assert code == 1 and "exists" in err and key_file.read_bytes() == before


def test_tls_certificate_to_stdout_with_an_ecdsa_key(capsys: pytest.CaptureFixture[str], nowhere: list[str]) -> None:
    code, out, _ = run(
        capsys, *nowhere, "generate", "tls-certificate", "--type", "client", "--hostname", "zmctl",
        "--key-type", "ecdsa", "--key-file", "-", "--cert-file", "-",
    )  # fmt: skip
    assert code == 0
    key_pem, _, cert_rest = out.partition("-----END PRIVATE KEY-----\n")
    key = serialization.load_pem_private_key((key_pem + "-----END PRIVATE KEY-----\n").encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert x509.load_pem_x509_certificate(cert_rest.encode())
    code, _, _ = run(capsys, *nowhere, "generate", "tls-certificate", "--type", "peer", "--hostname", "x")
    assert code == 2


async def test_offline_dataplane_token_is_accepted_by_the_zones_validator(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, nowhere: list[str]
) -> None:
    code, out, _ = run(capsys, *nowhere, "generate", "signing-key", "--format", "pem")
    (tmp_path / "key.pem").write_text(out)
    store = MemoryStore()
    # The zone holds the same key as its mesh Secret with serial 2 (how an operator installs it).
    await store.create(Resource(type="Mesh", name="default"))
    secret = Resource(
        type="Secret", mesh="default", name="dataplane-token-signing-key-default-2",
        spec={"data": base64.b64encode(out.encode()).decode()},
    )  # fmt: skip
    await store.create(secret)
    code, token, _ = run(
        capsys, *nowhere, "generate", "dataplane-token", "-m", "default", "--name", "web-1",
        "--tag", "kuma.io/service=web,web-api", "--valid-for", "1h",
        "--signing-key-path", str(tmp_path / "key.pem"), "--kid", "2",
    )  # fmt: skip
    assert code == 0, token
    claims = await dataplane.validate(
        store, token.strip(), mesh="default", name="web-1", tags=[{"kuma.io/service": "web-api"}]
    )
    assert claims.tags == {"kuma.io/service": ["web", "web-api"]}
    with pytest.raises(InvalidToken):
        await dataplane.validate(store, token.strip(), mesh="default", name="web-2")
    code, _, err = run(capsys, *nowhere, "generate", "dataplane-token", "--valid-for", "1h", "--kid", "2")
    assert code == 2 and "needs both --signing-key-path and --kid" in err


def complete(shell_name: str, script: str, *words: str) -> list[str]:
    """Run the completion function as the shell's completion system would, for ``words`` (the last
    one being completed); the candidates it offers."""
    quoted = " ".join(f"'{w}'" for w in words)
    if shell_name == "bash":
        prog = f'source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _zmctl; echo "${{COMPREPLY[*]}}"'
        cmd = ["bash", "--norc", "-c", prog]
    else:
        # zsh's bashcompinit filters candidates by the typed prefix in compadd; here, as it does.
        prog = (
            f"autoload -U compinit && compinit -u -D; source {script}; "
            f"[[ $_comps[zmctl] == *_zmctl* ]] || exit 3; "
            f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _zmctl; "
            f'print -r -- "${{(M)COMPREPLY[@]:#{words[-1]}*}}"'
        )
        cmd = ["zsh", "-f", "-c", prog]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.parametrize("shell_name", shell.SHELLS)
def test_completion_scripts_complete_commands_flags_and_choices(
    shell_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], nowhere: list[str]
) -> None:
    if shutil.which(shell_name) is None:
        pytest.skip(f"{shell_name} is not installed")
    code, out, _ = run(capsys, *nowhere, "completion", shell_name)
    assert code == 0
    script = tmp_path / f"zmctl.{shell_name}"
    script.write_text(out)
    assert complete(shell_name, str(script), "zmctl", "insp") == ["inspect"]
    assert complete(shell_name, str(script), "zmctl", "inspect", "zone") == [
        "zone-ingresses", "zoneegress", "zoneegresses", "zoneingress", "zoneingresses", "zones",
    ]  # fmt: skip
    assert complete(shell_name, str(script), "zmctl", "inspect", "dataplane", "web-1", "--type", "c") == [
        "clusters", "config", "config-dump",
    ]  # fmt: skip
    assert complete(shell_name, str(script), "zmctl", "get", "meshtim") == ["meshtimeouts"]
    assert "--include-admin" in complete(shell_name, str(script), "zmctl", "export", "--")
    assert complete(shell_name, str(script), "zmctl", "export", "--profile", "fed") == [
        "federation", "federation-with-policies",
    ]  # fmt: skip


def test_every_command_is_in_the_completion() -> None:
    paths = {path for path, _, _ in shell.command_tree(build_parser())}
    assert {"export", "version", "completion", "generate signing-key", "generate tls-certificate"} <= paths
    assert {"inspect zones", "inspect meshgateway", "inspect meshtimeout"} <= paths


def test_version_without_a_control_plane_still_prints_the_clients(
    capsys: pytest.CaptureFixture[str], nowhere: list[str]
) -> None:
    from zonemesh import __version__

    code, out, err = run(capsys, *nowhere, "version")
    assert code == 0
    assert out == f"Client: zonemesh {__version__}\n"
    assert "Unable to connect to control plane" in err
