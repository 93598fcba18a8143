"""`zmctl generate ...`: credentials issued by the control plane.

    zmctl generate dataplane-token --mesh default --name web-1 --valid-for 24h > web-1.token
    zmctl generate zone-token --zone zone-1 --valid-for 720h > zone-1.token   (see zone_token.py)
    zmctl generate user-token --name alice --group mesh-system:admin --valid-for 24h > alice.token

The token is printed on stdout only (nothing is logged), so it can be redirected to a file.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from zonemesh.ctl import offline, zone_token
from zonemesh.ctl.errors import UsageError, name_type
from zonemesh.shared import duration
from zonemesh.shared.resources.schema import MESH_NAME, parse_duration
from zonemesh.shared.tokens.dataplane import DataplaneClaims
from zonemesh.shared.tokens.tokens import sign

if TYPE_CHECKING:
    from zonemesh.ctl.commands import Env
    from zonemesh.ctl.main import Builder, Subparsers

PROXY_TYPES = ("dataplane", "ingress", "egress")


def parse_tags(values: list[str] | None) -> dict[str, list[str]]:
    """``--tag kuma.io/service=web --tag kuma.io/service=api`` -> ``{"kuma.io/service": ["web", "api"]}``."""
    tags: dict[str, list[str]] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"--tag {item!r}: expected KEY=VALUE, e.g. kuma.io/service=web")
        # kumactl's form too: several values of one tag split by commas (kuma.io/service=web,web-api)
        tags.setdefault(key, []).extend(v for v in value.split(",") if v)
    return tags


def dataplane_token_request(args: argparse.Namespace) -> dict[str, Any]:
    try:
        if parse_duration(args.valid_for) <= 0:
            raise ValueError
    except ValueError:
        raise UsageError(f"--valid-for {args.valid_for!r}: expected a positive duration such as 24h or 30m") from None
    return {
        "mesh": args.mesh,
        "name": args.name or "",
        "tags": parse_tags(args.tag),
        "type": args.proxy_type,
        "validFor": args.valid_for,
    }


def cmd_generate_dataplane_token(args: argparse.Namespace, env: Env) -> None:
    body = dataplane_token_request(args)
    if args.signing_key_path or args.kid is not None:
        # kumactl's offline form: signed here with a key the zone also holds as its mesh Secret
        # dataplane-token-signing-key-<mesh>-<kid>; the control plane is not asked.
        if not (args.signing_key_path and args.kid is not None):
            raise UsageError("offline signing needs both --signing-key-path and --kid")
        pem = offline.read_signing_key(args.signing_key_path)
        claims = DataplaneClaims(mesh=body["mesh"], name=body["name"], tags=body["tags"], proxy_type=body["type"])
        print(sign(claims.as_jwt_claims(), pem, args.kid, parse_duration(args.valid_for)))
        return
    _, token = env.client().request("POST", "/tokens/dataplane", body=body)
    print(str(token).strip())


def _positive_duration(flag: str, text: str) -> None:
    """As the control plane checks a user token's validFor (shared.duration)."""
    try:
        if duration.parse_duration(text) <= 0:
            raise ValueError
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected a positive duration such as 24h or 30m") from None


def user_token_request(args: argparse.Namespace) -> dict[str, Any]:
    _positive_duration("--valid-for", args.valid_for)
    if not args.name.strip():
        raise UsageError("--name must not be empty")
    groups = list(dict.fromkeys(args.group or []))
    if any(not g.strip() for g in groups):
        raise UsageError("--group must not be empty")
    return {"name": args.name, "groups": groups, "validFor": args.valid_for}


def cmd_generate_user_token(args: argparse.Namespace, env: Env) -> None:
    _, token = env.client().request("POST", "/tokens/user", body=user_token_request(args))
    print(str(token).strip())


def add_commands(b: Builder, sub: Subparsers) -> None:
    """The ``generate`` group and its subcommands."""
    generate = b.group(sub, "generate", "generate tokens, signing keys and TLS certificates")
    zone_token.add_command(b, generate)
    offline.add_commands(b, generate)
    token = b.leaf(
        generate,
        "dataplane-token",
        "issue a dataplane token (admin only): a proxy presents it to join its mesh",
        cmd_generate_dataplane_token,
        epilog="  zmctl generate dataplane-token --mesh default --name web-1 --valid-for 24h > web-1.token\n"
        "  zmctl generate dataplane-token --mesh default --tag kuma.io/service=web --valid-for 720h\n\n"
        "Without --name the token admits any dataplane name in the mesh; --tag limits the\n"
        "services (inbound tags) it may register. Revoke a token by adding its jti to the mesh\n"
        "secret dataplane-token-revocations-MESH (comma-separated).",
    )
    token.add_argument(
        "-m", "--mesh", default="default", type=name_type(MESH_NAME), help="mesh the proxy joins (default 'default')"
    )
    token.add_argument(
        "--name", type=name_type(), help="the Dataplane name the token is for (default: any name in the mesh)"
    )
    token.add_argument("--tag", action="append", metavar="KEY=VALUE", help="allowed inbound tag value (repeatable)")
    token.add_argument("--proxy-type", choices=PROXY_TYPES, default="dataplane", help="default dataplane")
    token.add_argument("--valid-for", required=True, metavar="DURATION", help="lifetime, e.g. 24h, 720h")
    token.add_argument(
        "--signing-key-path", help="sign offline with this PEM private key (with --kid); the CP is not asked"
    )
    token.add_argument(
        "--kid", type=int, help="serial of that key on the zone (mesh Secret dataplane-token-signing-key-<mesh>-<kid>)"
    )

    user = b.leaf(
        generate,
        "user-token",
        "issue a user token (admin only): a person or a tool presents it to the API",
        cmd_generate_user_token,
        epilog="  zmctl generate user-token --name alice --group mesh-system:admin --valid-for 24h > alice.token\n"
        "  zmctl generate user-token --name ci --group team-a --valid-for 720h > ci.token\n\n"
        "The group mesh-system:admin is the admin (writes, tokens, secrets); other tokens may read\n"
        "ordinary resources. Use it with: zmctl config control-planes add --name NAME --address URL\n"
        "--auth-type tokens --auth-conf token-file=alice.token. Revoke a token by adding its jti to the\n"
        "global secret user-token-revocations (comma-separated); rotation and the rest: docs/api.md.",
    )
    user.add_argument("--name", required=True, help="the user's name (the token's Name claim)")
    user.add_argument("--group", action="append", metavar="GROUP", help="a group of the user (repeatable)")
    user.add_argument("--valid-for", required=True, metavar="DURATION", help="lifetime, e.g. 24h, 720h")
