"""Data plane latencies with real processes: one zone control plane, two apps, two zonemesh-dp
sidecars running real Envoys (the e2e test's set-up, tests/e2e/test_zone_envoy.py).

Measures, each over --rounds repetitions (p50 / max, seconds):
1. startup: from nothing (control plane process started, mesh and policy applied, three tokens
   issued through zmctl, apps and agents started) to A -> B answering 200;
2. deny: PUT of a MeshTrafficPermission denying A -> B -> the first 403 seen by a client polling
   every 5 ms; allow: its DELETE -> the first 200;
3. timeout: PUT of a MeshTimeout on A's cluster to B -> visible in A's Envoy config dump;
4. envoy restart: SIGKILL to A's Envoy -> the agent has started a new one and A -> B answers 200
   again (includes the agent's 0.5 s restart backoff).

    python bench/dataplane_e2e.py             # 5 rounds, writes bench/results/dataplane_e2e.json
    python bench/dataplane_e2e.py --rounds 2

Every wait is bounded; traffic stays on 127.0.0.1. Figures on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.test_zone_envoy import Zone, _events, get, running_zone  # noqa: E402
from zonemesh.testing import DENY_A_TO_B  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "dataplane_e2e.json"


def timed(condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.005) -> float:
    """Seconds until ``condition`` holds (polled); raises after ``timeout``."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            if condition():
                return time.perf_counter() - started
        except Exception:  # not yet: a refused connection, a half-written config dump
            pass
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(samples), 4),
        "max": round(max(samples), 4),
        "n": len(samples),
    }


def deny_then_allow(zone: Zone) -> tuple[float, float]:
    zone.put(DENY_A_TO_B)
    deny = timed(lambda: get(zone.url_a_to_b)[0] == 403)
    zone.delete(DENY_A_TO_B)
    allow = timed(lambda: get(zone.url_a_to_b)[0] == 200)
    return deny, allow


def timeout_change(zone: Zone, seconds: int) -> float:
    policy = {
        "type": "MeshTimeout",
        "mesh": "default",
        "name": "bench-timeout",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [
                {"targetRef": {"kind": "MeshService", "name": "app-b"}, "default": {"connectionTimeout": f"{seconds}s"}}
            ],
        },
    }
    zone.put(policy)
    return timed(lambda: zone.a.cluster("app-b").get("connect_timeout") == f"{seconds}s")


def envoy_restart(zone: Zone) -> float:
    started = _events(zone.a.log, "envoy_started")
    os.kill(started[-1]["pid"], signal.SIGKILL)
    began = time.perf_counter()
    timed(lambda: len(_events(zone.a.log, "envoy_started")) > len(started), interval=0.02)
    timed(lambda: get(zone.url_a_to_b)[0] == 200, interval=0.02)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, object] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        "rounds": args.rounds,
    }
    startup, deny, allow, timeout, restart = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-dataplane-") as tmp:
        for i in range(args.rounds):
            began = time.perf_counter()
            with running_zone(Path(tmp) / f"round-{i}") as zone:
                startup.append(time.perf_counter() - began)
                d, a = deny_then_allow(zone)
                deny.append(d)
                allow.append(a)
                timeout.append(timeout_change(zone, 7 + i))
                restart.append(envoy_restart(zone))
            print(json.dumps({"round": i, "startup": startup[-1], "deny": d, "allow": a}), flush=True)
    results["startup_including_cp_seconds"] = summary(startup)
    results["deny_to_first_403_seconds"] = summary(deny)
    results["allow_to_first_200_seconds"] = summary(allow)
    results["timeout_to_config_dump_seconds"] = summary(timeout)
    results["envoy_sigkill_to_200_seconds"] = summary(restart)
    print(json.dumps(results, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
