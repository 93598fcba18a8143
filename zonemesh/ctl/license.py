"""`zmctl license ...`: make, check and install licenses (docs/license.md).

    zmctl license keygen --private-key issuer.key --public-key issuer.pub
    zmctl license issue --private-key issuer.key --customer acme --dataplanes 20 --expires 2027-11-09 > license.json
    zmctl license verify -f license.json --trusted-key issuer.pub
    zmctl license show -f license.json --trusted-key issuer.pub     # a file
    zmctl license show                                               # the license in force (GET /license)
    zmctl license install -f license.json                            # PUT /license on global

``keygen``, ``issue`` and ``verify`` work offline; ``verify`` and ``show -f`` trust the embedded release
key plus every ``--trusted-key``.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zonemesh.ctl.errors import CtlError, UsageError
from zonemesh.shared.license.format import (
    ENFORCEMENTS,
    License,
    LicenseError,
    check_expiry,
    format_expiry,
    issue,
    parse,
)
from zonemesh.shared.license.keys import generate_keypair, load_private_key, trusted_keys

if TYPE_CHECKING:
    from zonemesh.ctl.commands import Env
    from zonemesh.ctl.main import Builder, Subparsers


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise CtlError(f"cannot read {what} {path}: {exc.strerror}") from None


def _verified(args: argparse.Namespace) -> License:
    try:
        keys = trusted_keys(",".join(args.trusted_key or []))
        return parse(_read(args.file, "license file"), keys, source=args.file)
    except LicenseError as exc:
        raise CtlError(f"{args.file}: invalid license: {exc}") from None


def summary(lic: License) -> dict[str, Any]:
    return {
        "customer": lic.customer,
        "product": lic.product,
        "allowedDataplaneProxies": lic.dataplanes,
        "expirationDate": format_expiry(lic.expires),
        "creationDate": lic.created.isoformat() if lic.created else None,
        "licenseKey": lic.license_key,
        "enforcement": "strict" if lic.strict else "warn",
        "expired": lic.expired(datetime.now(UTC)),
    }


def cmd_keygen(args: argparse.Namespace, env: Env) -> None:
    private_path, public_path = Path(args.private_key), Path(args.public_key)
    if private_path.exists() and not args.force:
        raise CtlError(f"{private_path} exists: refusing to overwrite an issuer key (use --force)")
    private_pem, public_pem = generate_keypair()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    public_path.write_bytes(public_pem)
    print(f"private key: {private_path} (keep it secret)\npublic key:  {public_path} (add it to license_trusted_keys)")


def cmd_issue(args: argparse.Namespace, env: Env) -> None:
    if args.dataplanes < 0:
        raise UsageError("--dataplanes must be 0 or more")
    try:
        key = load_private_key(_read(args.private_key, "issuer key"), args.private_key)
        text = issue(
            key,
            customer=args.customer,
            dataplanes=args.dataplanes,
            expires=args.expires,
            license_key=args.license_key or uuid.uuid4().hex,
            created=args.created,
            product=args.product,
            enforcement=args.enforcement,
        )
    except LicenseError as exc:
        raise CtlError(f"cannot issue the license: {exc}") from None
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text, end="")


def cmd_verify(args: argparse.Namespace, env: Env) -> None:
    lic = _verified(args)
    try:
        check_expiry(lic, datetime.now(UTC))
    except LicenseError as exc:
        raise CtlError(f"{args.file}: {exc}") from None
    print(
        f"{args.file}: valid license for {lic.customer!r}: {lic.dataplanes} data plane proxies, "
        f"expires {format_expiry(lic.expires)}, enforcement {'strict' if lic.strict else 'warn'}"
    )


def cmd_show(args: argparse.Namespace, env: Env) -> None:
    if args.file:
        doc = summary(_verified(args))
    else:
        _, doc = env.client().request("GET", "/license")
    print(json.dumps(doc, indent=2))


def cmd_install(args: argparse.Namespace, env: Env) -> None:
    try:
        doc = json.loads(_read(args.file, "license file"))
    except ValueError as exc:
        raise CtlError(f"{args.file}: not JSON: {exc}") from None
    _, body = env.client().request("PUT", "/license", body=doc)
    print(json.dumps(body, indent=2))


def add_commands(b: Builder, sub: Subparsers) -> None:
    group = b.group(sub, "license", "make, verify, show and install licenses")
    keygen = b.leaf(group, "keygen", "create an Ed25519 license issuer key pair", cmd_keygen)
    keygen.add_argument("--private-key", required=True, help="where to write the private key (PEM, mode 600)")
    keygen.add_argument("--public-key", required=True, help="where to write the public key (PEM)")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing private key")

    make = b.leaf(
        group,
        "issue",
        "sign a license with an issuer private key",
        cmd_issue,
        epilog="  zmctl license issue --private-key issuer.key --customer acme --dataplanes 20 \\\n"
        "      --expires 2027-11-09 > license.json",
    )
    make.add_argument("--private-key", required=True, help="issuer private key (PEM)")
    make.add_argument("--customer", required=True)
    make.add_argument("--dataplanes", type=int, required=True, help="data plane proxies allowed across all zones")
    make.add_argument("--expires", required=True, help="YYYY-MM-DD (00:00 UTC) or an RFC 3339 time, e.g. ...T12:00:00Z")
    make.add_argument("--created", help="creation date (default: today)")
    make.add_argument("--license-key", help="license identifier (default: random)")
    make.add_argument("--product", default="zonemesh", help="product_subscription (default zonemesh)")
    make.add_argument(
        "--enforcement",
        choices=ENFORCEMENTS,
        default="warn",
        help="warn: proxies over the limit join with a warning (default); strict: they are refused",
    )
    make.add_argument("-o", "--output", help="write the license here instead of stdout")

    for name, help_text, handler in (
        ("verify", "check a license file's signature and expiry (offline)", cmd_verify),
        ("show", "show a license file (-f) or the license in force on the control plane", cmd_show),
    ):
        leaf = b.leaf(group, name, help_text, handler)
        leaf.add_argument("-f", "--file", required=name == "verify", help="license file")
        leaf.add_argument(
            "--trusted-key", action="append", help="extra issuer public key (PEM); repeatable", metavar="PEM"
        )

    install = b.leaf(group, "install", "replace the license on the global control plane (PUT /license)", cmd_install)
    install.add_argument("-f", "--file", required=True, help="license file")
