"""`zmctl`: command-line parsing, dispatch to ``commands``, and exit codes.

Exit codes: 0 success; 1 the control plane refused, a document is invalid or the CP cannot
be reached; 2 the command line is wrong. Expected failures print ``Error: ...`` on stderr,
never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import TypeAlias

from zonemesh import __version__
from zonemesh.ctl import commands, export, generate, inspect, license, shell
from zonemesh.ctl import config as cfg
from zonemesh.ctl.config import CONFIG_ENV, DEFAULT_ADDRESS
from zonemesh.ctl.errors import EXIT_USAGE, CtlError, UsageError, name_type
from zonemesh.shared.resources import REGISTRY
from zonemesh.shared.resources.schema import EARLIER_NAME, MESH_NAME, NameRule

Handler = Callable[[argparse.Namespace, commands.Env], None]
# The type argparse gives no public name; a string because it is only generic for type checkers.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
OUTPUTS = ("table", "yaml", "json")


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0 (got {text})")
        return value

    return parse


def _type_list() -> str:
    names = [f"{t.plural} ({t.short_name})" if t.short_name else t.plural for t in REGISTRY]
    return "resource types (singular, plural and short names all work):\n" + textwrap.fill(
        ", ".join(names), width=88, initial_indent="  ", subsequent_indent="  "
    )


class Builder:
    """Adds subcommands that all accept the global options, wherever they appear on the line."""

    def __init__(self) -> None:
        # SUPPRESS defaults: a subcommand's parser must not reset a value given before the
        # subcommand. Readers use getattr(args, name, None).
        self.common = argparse.ArgumentParser(add_help=False)
        self.common.add_argument(
            "--cp-address",
            metavar="URL",
            default=argparse.SUPPRESS,
            help=f"control plane API for this call only, e.g. {DEFAULT_ADDRESS} (configured headers are not sent)",
        )
        self.common.add_argument(
            "--timeout",
            metavar="SECONDS",
            type=_positive(float),
            default=argparse.SUPPRESS,
            help="HTTP timeout of each request (default 30)",
        )

    def group(self, parent: Subparsers, name: str, help: str) -> Subparsers:
        parser: argparse.ArgumentParser = parent.add_parser(name, parents=[self.common], help=help, description=help)
        return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")

    def leaf(
        self,
        parent: Subparsers,
        name: str,
        help: str,
        handler: Handler,
        *,
        epilog: str | None = None,
        aliases: Sequence[str] = (),
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(
            name,
            aliases=list(aliases),
            parents=[self.common],
            help=help,
            description=help,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # `prog` lets an error point at this subcommand's --help ("zmctl config control-planes add").
        parser.set_defaults(handler=handler, prog=parser.prog)
        return parser


def _add_mesh(parser: argparse.ArgumentParser, what: str = "the mesh", rule: NameRule = MESH_NAME) -> None:
    parser.add_argument("-m", "--mesh", type=name_type(rule), help=f"{what} (default {commands.DEFAULT_MESH!r})")


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="table", help="output format (default table)")


def build_parser() -> argparse.ArgumentParser:
    b = Builder()
    parser = argparse.ArgumentParser(
        prog="zmctl",
        parents=[b.common],
        description="Manage a zonemesh control plane through its HTTP API.",
        epilog=f"Known control planes are kept in ${CONFIG_ENV}, else ~/.zmctl/config.yaml (see 'zmctl config'); "
        f"without one zmctl talks to {DEFAULT_ADDRESS}.",
    )
    parser.add_argument("--version", action="version", version=f"zmctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    apply = b.leaf(
        sub,
        "apply",
        "create or update resources from YAML/JSON",
        commands.cmd_apply,
        epilog="Every document is validated locally first; if any is invalid nothing is sent.\n"
        "A document carrying 'version' (as 'zmctl get -o yaml' prints) is only applied if the\n"
        "resource is still at that version.\n\n"
        "  zmctl apply -f timeout.yaml\n"
        "  zmctl get meshtimeouts -o yaml | zmctl apply -f -\n"
        "  zmctl apply -f policy.yaml --var SERVICE=backend   # fills {{ SERVICE }}",
    )
    apply.add_argument("-f", "--file", required=True, help="file to apply; '-' reads stdin")
    apply.add_argument("--dry-run", action="store_true", help="validate and print what would be applied; send nothing")
    apply.add_argument(
        "-v", "--var", action="append", metavar="KEY=VALUE", help="replace {{ KEY }} in the input (repeatable)"
    )

    get = b.leaf(sub, "get", "show resources", commands.cmd_get, epilog=_type_list())
    get.add_argument("type", help="resource type, e.g. meshes, meshtimeouts, dataplanes, zones")
    get.add_argument("name", nargs="?", type=name_type(), help="one resource by name (default: list them)")
    _add_mesh(get, "mesh of a mesh-scoped type; ignored for global types")
    _add_output(get)
    get.add_argument("--size", type=_positive(int), help="page size of a list")
    get.add_argument("--offset", help="start of a list page (as printed by a previous call)")
    get.add_argument("--tag", action="append", metavar="KEY:VALUE", help="only resources with this tag (repeatable)")
    get.add_argument("--label", action="append", metavar="KEY=VALUE", help="only resources with this label")

    delete = b.leaf(sub, "delete", "delete a resource", commands.cmd_delete, epilog=_type_list())
    delete.add_argument("type", help="resource type, e.g. meshtimeouts")
    # as the API's DELETE: names of zonemesh's earlier rule too, so that such a resource can go
    delete.add_argument("name", type=name_type(EARLIER_NAME), help="resource name")
    _add_mesh(delete, "mesh of a mesh-scoped type; ignored for global types", EARLIER_NAME)

    inspect_group = b.group(sub, "inspect", "inspect meshes, zones, services and data plane proxies")
    meshes = b.leaf(
        inspect_group, "meshes", "per mesh: mTLS backend, dataplane and policy counts", commands.cmd_inspect_meshes
    )
    _add_output(meshes)
    dataplanes = b.leaf(
        inspect_group, "dataplanes", "dataplanes with their connection status", commands.cmd_inspect_dataplanes
    )
    _add_mesh(dataplanes)
    _add_output(dataplanes)
    dataplanes.add_argument("--tag", action="append", metavar="KEY=VALUE", help="only proxies with this tag")
    dataplanes.add_argument("--gateway", action="store_true", help="only gateway proxies")
    dataplanes.add_argument("--ingress", action="store_true", help=argparse.SUPPRESS)
    dataplane = b.leaf(
        inspect_group, "dataplane", "one dataplane's data from its control plane", commands.cmd_inspect_dataplane
    )
    dataplane.add_argument("name", type=name_type(), help="dataplane name")
    _add_mesh(dataplane)
    dataplane.add_argument(
        "--type",
        choices=sorted([*commands.DATAPLANE_INSPECT_TYPES, *commands.ADMIN_ONLY_TYPES]),
        default="config-dump",
        help="what to show (default config-dump); stats and clusters are Envoy's own, read on the proxy's host",
    )
    dataplane.add_argument(
        "--include-eds",
        action="store_true",
        help="kumactl's: include endpoints in config-dump (zonemesh's always includes them)",
    )
    inspect.add_commands(b, inspect_group)

    config = b.group(sub, "config", "manage the control planes zmctl talks to")
    b.leaf(config, "view", "show the zmctl config (tokens and header values redacted)", commands.cmd_config_view)
    planes = b.group(config, "control-planes", "add, list, switch or remove control planes")
    add = b.leaf(
        planes,
        "add",
        "add a control plane and make it the active one",
        commands.cmd_cp_add,
        epilog="  zmctl config control-planes add --name prod --address http://cp.example:5681 \\\n"
        "      --auth-type tokens --auth-conf token-file=admin.token\n\n"
        "The file (mode 0600) keeps the token; zmctl never prints it.",
    )
    add.add_argument("--name", required=True, help="a name for it")
    add.add_argument("--address", required=True, help=f"its API address, e.g. {DEFAULT_ADDRESS}")
    add.add_argument(
        "--headers",
        action="append",
        metavar="NAME=VALUE",
        help="HTTP header sent with every request, e.g. 'authorization=Bearer TOKEN' (repeatable)",
    )
    add.add_argument(
        "--auth-type", choices=cfg.AUTH_TYPES, help="how zmctl authenticates: tokens (a user token, with --auth-conf)"
    )
    add.add_argument(
        "--auth-conf",
        action="append",
        metavar="KEY=VALUE",
        help="with --auth-type tokens: token=TOKEN, or token-file=PATH (read now, and kept out of the process list)",
    )
    add.add_argument("--overwrite", action="store_true", help="replace a control plane of the same name")
    b.leaf(planes, "list", "list the control planes", commands.cmd_cp_list)
    switch = b.leaf(planes, "switch", "make another control plane the active one", commands.cmd_cp_switch)
    switch.add_argument("--name", required=True)
    remove = b.leaf(planes, "remove", "forget a control plane", commands.cmd_cp_remove)
    remove.add_argument("--name", required=True)

    export.add_commands(b, sub)
    generate.add_commands(b, sub)
    license.add_commands(b, sub)
    shell.add_commands(b, sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, and usage errors (argparse already printed them)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    handler: Handler = args.handler
    try:
        handler(args, commands.Env(args))
    except CtlError as exc:
        print(f"Error: {exc.render()}", file=sys.stderr)
        if isinstance(exc, UsageError):
            print(f"Run '{args.prog} --help' for usage.", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `zmctl get ... | head`: the reader went away; stop quietly instead of a traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
