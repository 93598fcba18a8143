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


async def test_kds_with_the_operators_certificate(tmp_path: Path) -> None:
    """Global serves the given cert/key; a zone with that CA connects, one skipping verification
    connects, one with another CA is refused with a message naming the certificate and the fix."""
    from kds_harness import eventually, running_global, running_zone
    from zonemesh.shared.tokens.zone import ZoneTokenIssuer

    cert, key = generate_self_signed("global-kds", ["127.0.0.1", "global.example"])
    (tmp_path / "kds.crt").write_bytes(cert)
    (tmp_path / "kds.key").write_bytes(key)
    other, _ = generate_self_signed("someone-else", ["127.0.0.1"])
    (tmp_path / "other.crt").write_bytes(other)
    options = {"kds_tls_cert_file": str(tmp_path / "kds.crt"), "kds_tls_key_file": str(tmp_path / "kds.key")}
    async with running_global(tmp_path, **options) as (kds, store):
        assert not (tmp_path / "global" / "kds-tls.crt").exists()  # nothing self-signed was made
        token = await ZoneTokenIssuer(store).issue("zone-1", None, 3600)
        async with running_zone(tmp_path, "zone-1", kds.port, token, ca_file=str(tmp_path / "kds.crt")) as zone:
            await eventually(lambda: zone.state.connected, what="zone-1 connected with the CA file")
        async with running_zone(tmp_path, "zone-1", kds.port, token, ca_file="", skip_verify=True) as zone:
            await eventually(lambda: zone.state.connected, what="zone-1 connected without verifying")
        async with running_zone(tmp_path, "zone-1", kds.port, token, ca_file=str(tmp_path / "other.crt")) as zone:
            await eventually(lambda: zone.state.last_error, what="zone-1 refused by TLS")
            assert not zone.state.connected
            assert zone.state.last_error == (
                f"global's KDS certificate at 127.0.0.1:{kds.port} did not verify against --global-ca-file "
                f"{tmp_path / 'other.crt'}: self signed certificate; give the CA that signed it with "
                "--global-ca-file (global's own self-signed certificate is kds-tls.crt in global's data dir)"
            )


async def test_kds_without_a_ca_file_verifies_against_the_system_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --global-ca-file: global's certificate must chain to the system CA bundle (SSL_CERT_FILE
    names it here); global's self-signed certificate does not, so the zone does not connect."""
    from kds_harness import eventually, running_global, running_zone
    from zonemesh.shared.tokens.zone import ZoneTokenIssuer

    unrelated, _ = generate_self_signed("some public CA", ["ca.example"])
    (tmp_path / "system.pem").write_bytes(unrelated)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "system.pem"))
    async with running_global(tmp_path) as (kds, store):
        token = await ZoneTokenIssuer(store).issue("zone-1", None, 3600)
        async with running_zone(tmp_path, "zone-1", kds.port, token, ca_file="") as zone:
            await eventually(lambda: zone.state.attempts >= 2, what="zone-1 refused twice")
            assert not zone.state.connected
            assert zone.state.last_error.startswith(
                f"global's KDS certificate at 127.0.0.1:{kds.port} did not verify against the system CA "
                f"bundle {tmp_path / 'system.pem'}: self signed certificate; give the CA that signed it with "
                "--global-ca-file"
            ), zone.state.last_error
        # The operator's trust store holding global's CA is enough.
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "global" / "kds-tls.crt"))
        async with running_zone(tmp_path, "zone-1", kds.port, token, ca_file="") as zone:
            await eventually(lambda: zone.state.connected, what="zone-1 connected, verified by the system bundle")
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "nothing-here.pem"))
        async with running_zone(tmp_path, "zone-1", kds.port, token, ca_file="") as zone:
            await eventually(lambda: zone.state.last_error, what="zone-1 without any CA")
            assert zone.state.last_error.startswith(
                "no CA to verify global's KDS certificate with: give --global-ca-file"
            ), zone.state.last_error


async def test_kds_names_a_host_name_mismatch(tmp_path: Path) -> None:
    """Host name verification stays on: a certificate for other names is refused, and said so."""
    from kds_harness import eventually, running_global, running_zone
    from zonemesh.shared.tokens.zone import ZoneTokenIssuer

    cert, key = generate_self_signed("global-kds", ["global.example"])
    (tmp_path / "kds.crt").write_bytes(cert)
    (tmp_path / "kds.key").write_bytes(key)
    options = {"kds_tls_cert_file": str(tmp_path / "kds.crt"), "kds_tls_key_file": str(tmp_path / "kds.key")}
    async with running_global(tmp_path, **options) as (kds, store):
        token = await ZoneTokenIssuer(store).issue("zone-1", None, 3600)
        async with running_zone(tmp_path, "zone-1", kds.port, token, ca_file=str(tmp_path / "kds.crt")) as zone:
            await eventually(lambda: zone.state.last_error, what="zone-1 refused by TLS")
            assert not zone.state.connected
            assert "the certificate does not name the host dialled (host name verification failed); dial " in (
                zone.state.last_error
            ), zone.state.last_error
