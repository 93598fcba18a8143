"""`zmctl generate zone-token`: the token a zone control plane presents to global.

    zmctl generate zone-token --zone zone-1 --valid-for 720h > zone-1.token
    zmctl generate zone-token --zone zone-1 --valid-for 720h --signing-key-path key.pem --kid 2   # offline

Online, global issues it (``POST /tokens/zone``, admin only) with its newest signing key.
Offline, the token is signed locally with a private key that global also holds as the global
secret ``zone-token-signing-key-<kid>``. The token goes to stdout only.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from zonemesh.ctl.errors import UsageError, name_type
from zonemesh.shared.duration import parse_duration
from zonemesh.shared.resources.schema import ZONE_NAME
from zonemesh.shared.tokens.zone import SCOPES, check_scope, issue_offline

if TYPE_CHECKING:
    from zonemesh.ctl.commands import Env
    from zonemesh.ctl.main import Builder, Subparsers


def _valid_for(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise UsageError(f"--valid-for {text!r}: expected a positive duration such as 24h or 720h")
    return seconds


def cmd_generate_zone_token(args: argparse.Namespace, env: Env) -> None:
    seconds = _valid_for(args.valid_for)
    try:
        scope = check_scope(args.scope or [])
    except ValueError as exc:
        raise UsageError(f"--scope: {exc}") from None
    if args.signing_key_path or args.kid is not None:
        if not (args.signing_key_path and args.kid is not None):
            raise UsageError("offline signing needs both --signing-key-path and --kid")
        try:
            pem = Path(args.signing_key_path).read_bytes()
        except OSError as exc:
            raise UsageError(f"--signing-key-path: cannot read {args.signing_key_path}: {exc.strerror}") from None
        try:
            print(issue_offline(args.zone, scope, seconds, pem, args.kid))
        except ValueError as exc:
            raise UsageError(f"--signing-key-path: not a PEM RSA private key ({exc})") from None
        return
    body = {"zone": args.zone, "scope": scope, "validFor": args.valid_for}
    _, token = env.client().request("POST", "/tokens/zone", body=body)
    print(str(token).strip())


def add_command(b: Builder, generate: Subparsers) -> None:
    """``zone-token`` under the ``generate`` group."""
    cmd = b.leaf(
        generate,
        "zone-token",
        "issue a zone token (admin only, on global): a zone control plane presents it to connect",
        cmd_generate_zone_token,
        epilog="  zmctl generate zone-token --zone zone-1 --valid-for 720h > zone-1.token\n"
        "  zmctl generate zone-token --zone zone-1 --valid-for 720h --signing-key-path key.pem --kid 2\n\n"
        "Revoke a token by adding its jti to the global secret zone-token-revocations\n"
        "(comma-separated); rotate keys as described in docs/kds.md.",
    )
    cmd.add_argument("--zone", required=True, type=name_type(ZONE_NAME), help="the zone the token is for")
    cmd.add_argument("--valid-for", required=True, metavar="DURATION", help="lifetime, e.g. 24h, 720h")
    cmd.add_argument(
        "--scope", action="append", choices=SCOPES, help="what the token may be used for (repeatable; default all)"
    )
    cmd.add_argument("--signing-key-path", help="sign offline with this PEM private key (with --kid)")
    cmd.add_argument("--kid", type=int, help="serial of that key at global (zone-token-signing-key-<kid>)")
