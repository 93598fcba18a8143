"""The compose lab's etcd certificates: what the one-shot ``certs`` role (container.py) writes.

At first start it makes a CA, signs etcd's server certificate and global's client certificate
with it, and writes them into two directories, each the volume of one service only:

- etcd's: ``ca.crt`` (to verify clients), ``server.crt``, ``server.key``;
- global's: ``ca.crt`` (to verify etcd), ``client.crt``, ``client.key``.

With several members (the HA compose file, docs/compose.md) etcd's directory also gets
``peer.crt`` and ``peer.key``: the certificate the members present to each other on their peer
port (server and client use, common name ``etcd-peer``, which the members require with
``--peer-cert-allowed-cn``: global's client certificate, signed by the same CA, is refused there).

With etcd auth (the HA file runs global and zone-1 on one etcd) further client certificates go
into further directories, each in the same layout as global's (``ca.crt``, ``client.crt``,
``client.key``): one per etcd user, whose name is the certificate's common name (etcd, run with
``--client-cert-auth`` and auth enabled, takes a client certificate's common name as its user):
``zonemesh-zone-1`` for zone-1's replicas, ``root`` for the one-shot ``etcd-auth`` service that
sets up the users and roles and enables auth (container.py, docs/deployment.md).

The CA's key is never written anywhere: once the two certificates are signed nobody can issue
another one, so no container holds anything that lets it talk to etcd except global's key.
Later starts keep what is there while it is complete and consistent; anything else (a volume
removed, the server names changed) makes a new CA and both certificates. Keys are 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from zonemesh.lab.container import write_private
from zonemesh.shared.certs import key_usage, private_key_pem, self_signed_ca

VALIDITY = dt.timedelta(days=10 * 365)  # a lab: `down -v` makes new ones
CA_FILE = "ca.crt"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
CLIENT_CERT, CLIENT_KEY = "client.crt", "client.key"
CLIENT_NAME = "zonemesh-global"
ROOT_NAME = "root"  # etcd's root user: with auth enabled, the only one that may change users and roles
PEER_CERT, PEER_KEY = "peer.crt", "peer.key"
PEER_NAME = "etcd-peer"  # the only common name etcd members accept on their peer port


class PkiError(Exception):
    pass


@dataclass(frozen=True)
class EtcdPki:
    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes
    peer_cert: bytes = b""  # only with peer names (several members)
    peer_key: bytes = b""
    # etcd user (the certificate's common name) -> (certificate, key): further clients
    clients: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "zonemesh lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    common_name: str,
    purposes: Sequence[x509.ObjectIdentifier],
    names: Sequence[str],
    now: dt.datetime,
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True, key_agreement=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(purposes)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key)


def zone_client_name(zone: str) -> str:
    """The etcd user (client certificate common name) of a zone's control plane."""
    return f"zonemesh-{zone}"


def generate(server_names: Sequence[str], peer_names: Sequence[str] = (), clients: Sequence[str] = ()) -> EtcdPki:
    """A new CA, etcd's server certificate for ``server_names`` and global's client certificate;
    with ``peer_names``, the members' peer certificate for those names too; a client certificate
    for each of ``clients`` (common names: etcd users). The CA's key lives only in this function."""
    if not server_names:
        raise PkiError("etcd's server certificate needs at least one name (the host clients dial)")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    usage = key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True)
    ca = self_signed_ca(ca_key, _name("zonemesh lab etcd CA"), now - dt.timedelta(minutes=5), now + VALIDITY, usage)
    server = _leaf(ca_key, ca, "etcd", [ExtendedKeyUsageOID.SERVER_AUTH], server_names, now)
    client = _leaf(ca_key, ca, CLIENT_NAME, [ExtendedKeyUsageOID.CLIENT_AUTH], (), now)
    peer = (b"", b"")
    if peer_names:  # a member dials its peers and is dialled by them: both uses
        both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        peer = _leaf(ca_key, ca, PEER_NAME, both, peer_names, now)
    more = {cn: _leaf(ca_key, ca, cn, [ExtendedKeyUsageOID.CLIENT_AUTH], (), now) for cn in clients}
    return EtcdPki(ca.public_bytes(serialization.Encoding.PEM), *server, *client, *peer, clients=more)


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _holds_key(cert: x509.Certificate, key_file: Path) -> bool:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    return key.public_key() == cert.public_key()


def _common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _client_consistent(directory: Path, ca: x509.Certificate, ca_pem: bytes, common_name: str) -> bool:
    if (directory / CA_FILE).read_bytes() != ca_pem:
        return False
    cert = x509.load_pem_x509_certificate((directory / CLIENT_CERT).read_bytes())
    return _common_name(cert) == common_name and _signed_by(cert, ca) and _holds_key(cert, directory / CLIENT_KEY)


def consistent(
    etcd_dir: Path,
    client_dir: Path,
    server_names: Sequence[str],
    peer_names: Sequence[str] = (),
    clients: Mapping[str, Path] | None = None,
) -> bool:
    """Every file is there, both directories hold the same CA, it signed both certificates, each
    key is its certificate's, and the server certificate names every one of ``server_names``;
    with ``peer_names``, the same of the peer certificate; with ``clients`` (etcd user -> its
    directory), the same of each further client certificate, issued to that user."""
    clients = clients or {}
    files = [etcd_dir / CA_FILE, etcd_dir / SERVER_CERT, etcd_dir / SERVER_KEY]
    files += [client_dir / CA_FILE, client_dir / CLIENT_CERT, client_dir / CLIENT_KEY]
    files += [d / f for d in clients.values() for f in (CA_FILE, CLIENT_CERT, CLIENT_KEY)]
    if peer_names:
        files += [etcd_dir / PEER_CERT, etcd_dir / PEER_KEY]
    if not all(f.is_file() for f in files):
        return False
    try:
        ca_pem = (etcd_dir / CA_FILE).read_bytes()
        if (client_dir / CA_FILE).read_bytes() != ca_pem:
            return False
        ca = x509.load_pem_x509_certificate(ca_pem)
        server = x509.load_pem_x509_certificate((etcd_dir / SERVER_CERT).read_bytes())
        client = x509.load_pem_x509_certificate((client_dir / CLIENT_CERT).read_bytes())
        san = set(server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        keys = _holds_key(server, etcd_dir / SERVER_KEY) and _holds_key(client, client_dir / CLIENT_KEY)
        keys = keys and all(_client_consistent(d, ca, ca_pem, cn) for cn, d in clients.items())
        peer_ok = True
        if peer_names:
            peer = x509.load_pem_x509_certificate((etcd_dir / PEER_CERT).read_bytes())
            peer_san = set(peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
            peer_ok = (
                _holds_key(peer, etcd_dir / PEER_KEY)
                and _signed_by(peer, ca)
                and {_general_name(n) for n in peer_names} <= peer_san
            )
    except (ValueError, TypeError, x509.ExtensionNotFound):
        return False
    names = {_general_name(n) for n in server_names}
    return keys and peer_ok and _signed_by(server, ca) and _signed_by(client, ca) and names <= san


def ensure(
    etcd_dir: Path,
    client_dir: Path,
    server_names: Sequence[str],
    peer_names: Sequence[str] = (),
    clients: Mapping[str, Path] | None = None,
) -> bool:
    """Write a new set unless a consistent one is there. True when it wrote one. ``clients``:
    etcd user -> the directory its client certificate goes to.

    The directories must exist (they are the services' volumes): writing into a directory this
    created would put the files where neither etcd nor global looks."""
    clients = dict(clients or {})
    if CLIENT_NAME in clients:
        raise PkiError(f"{CLIENT_NAME} is global's client certificate (--client-dir): give another name")
    for directory in (etcd_dir, client_dir, *clients.values()):
        if not directory.is_dir():
            raise PkiError(f"{directory} does not exist: mount the volume it stands for there")
    if consistent(etcd_dir, client_dir, server_names, peer_names, clients):
        return False
    pki = generate(server_names, peer_names, list(clients))
    # A set interrupted half way is not consistent (a key that is not its certificate's, a CA
    # that did not sign it): the next start makes a new one.
    write_private(etcd_dir / SERVER_KEY, pki.server_key)
    write_private(client_dir / CLIENT_KEY, pki.client_key)
    for cn, directory in clients.items():
        write_private(directory / CLIENT_KEY, pki.clients[cn][1])
        write_private(directory / CLIENT_CERT, pki.clients[cn][0], 0o644)
        write_private(directory / CA_FILE, pki.ca, 0o644)
    if peer_names:
        write_private(etcd_dir / PEER_KEY, pki.peer_key)
        write_private(etcd_dir / PEER_CERT, pki.peer_cert, 0o644)
    for path, pem in (
        (etcd_dir / SERVER_CERT, pki.server_cert),
        (client_dir / CLIENT_CERT, pki.client_cert),
        (etcd_dir / CA_FILE, pki.ca),
        (client_dir / CA_FILE, pki.ca),
    ):
        write_private(path, pem, 0o644)
    return True
