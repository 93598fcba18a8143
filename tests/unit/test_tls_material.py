"""shared/tls.py server_material: the operator's files win, half a pair is refused, else self-signed."""

from __future__ import annotations

from pathlib import Path

import pytest
from zonemesh.shared.tls import first_dns_name, generate_self_signed, server_material


def test_self_signed_is_made_once_and_reused(tmp_path: Path) -> None:
    cert, key, path = server_material(tmp_path, "kds-tls")
    assert path == tmp_path / "kds-tls.crt" and (tmp_path / "kds-tls.key").read_bytes() == key
    assert (tmp_path / "kds-tls.key").stat().st_mode & 0o077 == 0
    assert server_material(tmp_path, "kds-tls")[:2] == (cert, key)
    assert first_dns_name(cert) == "localhost"


def test_operator_files_win(tmp_path: Path) -> None:
    cert, key = generate_self_signed("global.example", ["global.example"])
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    got = server_material(tmp_path / "data", "kds-tls", str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    assert got == (cert, key, tmp_path / "c.pem")
    assert not (tmp_path / "data").exists()
    assert first_dns_name(cert) == "global.example"


def test_half_a_pair_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="give both the kds-tls certificate file and key file"):
        server_material(tmp_path, "kds-tls", cert_file=str(tmp_path / "c.pem"))
