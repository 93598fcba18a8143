"""kumactl's offline generators: key material made on the operator's machine, no control plane.

    zmctl generate signing-key > key.b64                          # PEM, base64: a Secret's data
    zmctl generate signing-key --format pem > key.pem             # for --signing-key-path
    zmctl generate public-key --signing-key-path key.pem
    zmctl generate tls-certificate --type server --hostname cp.example --key-file key.pem --cert-file cert.pem
    zmctl generate dataplane-token --mesh default --name web-1 --valid-for 24h \\
        --signing-key-path key.pem --kid 2                        # offline (generate.py)

A signing key becomes a control plane's when stored as its secret, e.g. the mesh Secret
``dataplane-token-signing-key-<mesh>-<kid>`` (docs/dataplane.md), with the base64 form as
``data``. Private keys go to stdout or to files created owner-only; an existing file is never
overwritten.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from zonemesh.ctl.errors import CtlError, UsageError
from zonemesh.shared.tokens.keys import generate_private_key_pem

if TYPE_CHECKING:
    from zonemesh.ctl.commands import Env
    from zonemesh.ctl.main import Builder, Subparsers

SIGNING_KEY_FORMATS = ("pem-base64", "pem")
CERT_TYPES = ("server", "client")
KEY_TYPES = ("rsa", "ecdsa")
VALIDITY = dt.timedelta(days=10 * 365)  # kumactl's
RSA_BITS = 2048


def read_signing_key(path: str) -> bytes:
    """An RSA private key in PEM (``generate signing-key --format pem``): the tokens are RS256."""
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"--signing-key-path: cannot read {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UsageError(
            f"--signing-key-path {path}: not a PEM private key (a base64 one? decode it, or use "
            "'zmctl generate signing-key --format pem')"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UsageError(f"--signing-key-path {path}: not an RSA key (tokens are signed RS256)")
    return pem


def write_new(path: str, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` before any byte lands in it; refuse to replace a file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CtlError(f"{path} exists: remove it or choose another file; zmctl does not overwrite it") from None
    except OSError as exc:
        raise CtlError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def cmd_generate_signing_key(args: argparse.Namespace, env: Env) -> None:
    pem = generate_private_key_pem()
    out = pem if args.format == "pem" else base64.b64encode(pem)
    sys.stdout.write(out.decode())
    sys.stdout.flush()


def cmd_generate_public_key(args: argparse.Namespace, env: Env) -> None:
    pem = read_signing_key(args.signing_key_path)
    key = serialization.load_pem_private_key(pem, password=None)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    sys.stdout.write(public.decode())


def self_signed(cert_type: str, key_type: str, hosts: list[str]) -> tuple[bytes, bytes]:
    """kumactl's ``NewSelfSignedCert``: a CA:TRUE certificate for ``hosts`` (DNS names or IPs) with
    the server or client extended key usage, valid 10 years; (key PEM, certificate PEM)."""
    import ipaddress

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if key_type == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if cert_type == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=key_type == "rsa",
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def cmd_generate_tls_certificate(args: argparse.Namespace, env: Env) -> None:
    hosts = [h.strip() for value in args.hostname for h in value.split(",") if h.strip()]
    if not hosts:
        raise UsageError("at least one hostname must be given (--hostname)")
    key_pem, cert_pem = self_signed(args.type, args.key_type or "rsa", hosts)
    for path, data, mode in ((args.key_file, key_pem, 0o400), (args.cert_file, cert_pem, 0o600)):
        if path == "-":
            sys.stdout.write(data.decode())
        else:
            write_new(path, data, mode)
    if args.key_file != "-" and args.cert_file != "-":
        print(f"Private key saved in {args.key_file}")
        print(f"Certificate saved in {args.cert_file}")


def add_commands(b: Builder, generate: Subparsers) -> None:
    key = b.leaf(
        generate,
        "signing-key",
        "generate a private key for signing tokens (offline)",
        cmd_generate_signing_key,
        epilog="  zmctl generate signing-key --format pem > key.pem     # for --signing-key-path\n"
        "  echo 'type: Secret\n  mesh: default\n  name: dataplane-token-signing-key-default-2\n  data: {{ key }}' |\n"
        "    zmctl apply --var key=$(base64 -w0 key.pem) -f -",
    )
    key.add_argument(
        "--format",
        choices=SIGNING_KEY_FORMATS,
        default="pem-base64",
        help="pem-base64 (default: as a Secret's data) or pem",
    )
    public = b.leaf(generate, "public-key", "print the public key of a signing key (offline)", cmd_generate_public_key)
    public.add_argument("--signing-key-path", required=True, help="PEM private key, as 'signing-key --format pem'")
    cert = b.leaf(
        generate,
        "tls-certificate",
        "generate a self-signed TLS key and certificate (offline)",
        cmd_generate_tls_certificate,
        epilog="  zmctl generate tls-certificate --type server --hostname cp.example,10.0.0.1\n"
        "  zmctl generate tls-certificate --type client --hostname zmctl --key-file - --cert-file -\n\n"
        "Files are created owner-only (key 0400, certificate 0600); an existing file is not replaced.",
    )
    cert.add_argument("--type", required=True, choices=CERT_TYPES, help="server or client (extended key usage)")
    cert.add_argument(
        "--hostname", required=True, action="append", help="DNS name or IP it is for (comma-separated, repeatable)"
    )
    cert.add_argument("--key-type", choices=KEY_TYPES, help="rsa (default, 2048 bits) or ecdsa (P-256)")
    cert.add_argument("--key-file", default="key.pem", help="where the private key goes (default key.pem; '-': stdout)")
    cert.add_argument(
        "--cert-file", default="cert.pem", help="where the certificate goes (default cert.pem; '-': stdout)"
    )
