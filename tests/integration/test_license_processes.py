"""The license with real processes: one global and two zones on 127.0.0.1, proxies joining through the
zones' real registration service (gRPC + TLS, dataplane tokens), as `zonemesh-dp` does.

Covers seed 000 and issue 6: strict quota across zones under concurrent joins (exactly the limit admitted,
the rest refused with a clear error), an issued license admitting everyone with a warning, gateways and
zone ingresses/egresses never counted, a zone cut off from global keeping only its quota, start refusals
(one-byte changes, expired), expiry while running, runtime replacement (file and API) synced to zones,
the durable demo license, and a zone ignoring a license given to it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from envoy.service.discovery.v3 import discovery_pb2
from zonemesh.proto import dataplane_pb2, dataplane_pb2_grpc
from zonemesh.shared.license.format import issue
from zonemesh.shared.license.keys import generate_keypair, load_private_key

from zonemesh.spawn import python_module
from zonemesh.testing import ControlPlaneProcess, ProcessExited, free_port, http, wait_until

pytestmark = pytest.mark.slow

WAIT = 30.0


@dataclass
class Issuer:
    key: Ed25519PrivateKey
    public_path: Path

    def license(self, path: Path, dataplanes: int, *, expires: str = "2099-01-01", strict: bool = False) -> Path:
        text = issue(
            self.key,
            customer="test-inc",
            dataplanes=dataplanes,
            expires=expires,
            license_key=f"test-{dataplanes}",
            enforcement="strict" if strict else "warn",
        )
        path.write_text(text)
        return path


def new_issuer(tmp_path: Path) -> Issuer:
    """A license issuer whose public key (in ``tmp_path``) the control planes are given."""
    private_pem, public_pem = generate_keypair()
    public_path = tmp_path / "issuer.pub"
    public_path.write_bytes(public_pem)
    return Issuer(load_private_key(private_pem, "test"), public_path)


def stop_all(processes: list[ControlPlaneProcess]) -> None:
    """Stop the processes still running, last started first (a test's clean-up)."""
    for cp in reversed(processes):
        if cp.process is not None and cp.process.poll() is None:
            cp.stop()


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return new_issuer(tmp_path)


def global_process(
    data_dir: Path, issuer: Issuer, *extra: str, kds_port: int | None = None, env: dict[str, str] | None = None
) -> ControlPlaneProcess:
    args = [
        "--mode", "global", "--store", "sqlite",
        "--kds-address", "127.0.0.1", "--kds-port", str(kds_port or free_port()),
        "--license-trusted-keys", str(issuer.public_path), *extra,
    ]  # fmt: skip
    return ControlPlaneProcess(data_dir, args=args, env=env or {})


@dataclass
class Zone:
    cp: ControlPlaneProcess
    name: str
    xds_port: int

    @property
    def ca(self) -> bytes:
        return (self.cp.data_dir / "xds.crt").read_bytes()

    def token(self) -> str:
        status, token = http("POST", self.cp.api + "/tokens/dataplane", {"mesh": "default", "validFor": "1h"})
        assert status == 200, token
        return str(token).strip()


def zone_process(root: Path, name: str, glob: ControlPlaneProcess, kds_port: int, *extra: str) -> Zone:
    data_dir = root / name
    data_dir.mkdir(parents=True, exist_ok=True)
    status, token = http("POST", glob.api + "/tokens/zone", {"zone": name, "validFor": "24h"})
    assert status == 200, token
    (data_dir / "zone.token").write_text(str(token))
    xds_port = free_port()
    args = [
        "--mode", "zone", "--zone", name, "--store", "sqlite",
        "--xds-address", "127.0.0.1", "--xds-port", str(xds_port),
        "--global-address", f"grpcs://127.0.0.1:{kds_port}",
        "--zone-token-file", str(data_dir / "zone.token"),
        "--global-ca-file", str(glob.data_dir / "kds-tls.crt"),
        "--license-quota-wait", "4s", *extra,
    ]  # fmt: skip
    return Zone(ControlPlaneProcess(data_dir, args=args), name, xds_port)


def dataplane(name: str, gateway: str | None = None) -> dict[str, Any]:
    networking: dict[str, Any] = {"address": "127.0.0.1"}
    if gateway:
        networking["gateway"] = {"type": gateway, "tags": {"kuma.io/service": f"gw-{name}"}}
    else:
        networking["inbound"] = [{"port": 8080, "tags": {"kuma.io/service": "web"}}]
    return {"type": "Dataplane", "mesh": "default", "name": name, "networking": networking}


async def register(zone: Zone, token: str, name: str, gateway: str | None = None) -> str:
    """Register like zonemesh-dp does; returns "" when admitted, else "CODE: details"."""
    credentials = grpc.ssl_channel_credentials(root_certificates=zone.ca)
    async with grpc.aio.secure_channel(f"127.0.0.1:{zone.xds_port}", credentials) as channel:
        stub = dataplane_pb2_grpc.DataplaneRegistrationStub(channel)
        request = dataplane_pb2.RegisterRequest(
            mesh="default", name=name, proxy_type="dataplane", dataplane_json=json.dumps(dataplane(name, gateway))
        )
        try:
            await stub.Register(request, metadata=(("authorization", f"Bearer {token}"),), timeout=30)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    return ""


async def ads_refusal(zone: Zone, token: str, name: str) -> str:
    """Open an ADS stream as Envoy would for ``default.<name>``; returns why it was closed ("" if it was not)."""
    credentials = grpc.ssl_channel_credentials(root_certificates=zone.ca)
    async with grpc.aio.secure_channel(f"127.0.0.1:{zone.xds_port}", credentials) as channel:
        call = channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )(metadata=(("authorization", f"Bearer {token}"),))
        request = discovery_pb2.DiscoveryRequest(type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster")
        request.node.id = f"default.{name}"
        try:
            await call.write(request)
            await asyncio.wait_for(call.read(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        except TimeoutError:
            pass
        finally:
            call.cancel()
    return ""


async def unregister(zone: Zone, token: str, name: str) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=zone.ca)
    async with grpc.aio.secure_channel(f"127.0.0.1:{zone.xds_port}", credentials) as channel:
        stub = dataplane_pb2_grpc.DataplaneRegistrationStub(channel)
        await stub.Unregister(
            dataplane_pb2.UnregisterRequest(mesh="default", name=name),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=30,
        )


def join_all(joins: list[tuple[Zone, str, str, str | None]]) -> dict[str, str]:
    """Every (zone, token, name, gateway) registers at the same moment; name -> "" or the refusal."""

    async def run() -> list[str]:
        return await asyncio.gather(*(register(z, t, n, g) for z, t, n, g in joins))

    return dict(zip([n for _, _, n, _ in joins], asyncio.run(run()), strict=True))


def license_of(cp: ControlPlaneProcess) -> dict[str, Any]:
    status, body = cp.get("/license")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def metric(cp: ControlPlaneProcess, name: str) -> float | None:
    status, text = http("GET", f"http://127.0.0.1:{cp.diagnostics_port}/metrics")
    assert status == 200
    for line in str(text).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@pytest.fixture
def processes() -> Iterator[list[ControlPlaneProcess]]:
    started: list[ControlPlaneProcess] = []
    yield started
    for cp in reversed(started):
        cp.stop()


def federation(
    tmp_path: Path,
    issuer: Issuer,
    processes: list[ControlPlaneProcess],
    *global_args: str,
    env: dict[str, str] | None = None,
) -> tuple[ControlPlaneProcess, Zone, Zone]:
    kds_port = free_port()
    glob = global_process(tmp_path / "global", issuer, *global_args, kds_port=kds_port, env=env)
    processes.append(glob.start())
    zones = [zone_process(tmp_path, name, glob, kds_port) for name in ("zone-1", "zone-2")]
    for zone in zones:
        processes.append(zone.cp.start())
    for zone in zones:
        wait_until(lambda z=zone: z.cp.get("/meshes/default")[0] == 200, WAIT, what=f"mesh default in {zone.name}")
        wait_until(
            lambda z=zone: license_of(z.cp)["allowedDataplaneProxies"] == license_of(glob)["allowedDataplaneProxies"],
            WAIT,
            what=f"license synced to {zone.name}",
        )
    return glob, zones[0], zones[1]


def zmctl(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(python_module("zonemesh.ctl", *args), cwd=cwd, capture_output=True, text=True, timeout=60)


def wait_exit(cp: ControlPlaneProcess, timeout: float = WAIT) -> int:
    assert cp.process is not None
    return cp.process.wait(timeout)


# -- strict quota -------------------------------------------------------------------------------


def test_strict_license_admits_exactly_the_limit_across_zones(
    tmp_path: Path, issuer: Issuer, processes: list[ControlPlaneProcess]
) -> None:
    lic = issuer.license(tmp_path / "license.json", 3, strict=True)
    glob, zone1, zone2 = federation(tmp_path, issuer, processes, "--license-path", str(lic))
    assert license_of(zone1.cp)["enforcement"] == "strict"
    tokens = {zone1.name: zone1.token(), zone2.name: zone2.token()}

    # ten sidecars at once, five per zone, plus a builtin and a delegated gateway in each zone
    joins: list[tuple[Zone, str, str, str | None]] = []
    for i in range(5):
        for zone in (zone1, zone2):
            joins.append((zone, tokens[zone.name], f"{zone.name}-dp-{i}", None))
    for zone in (zone1, zone2):
        joins.append((zone, tokens[zone.name], f"{zone.name}-gw-b", "BUILTIN"))
        joins.append((zone, tokens[zone.name], f"{zone.name}-gw-d", "DELEGATED"))
    results = join_all(joins)
    sidecars = {n: r for n, r in results.items() if "-dp-" in n}
    gateways = {n: r for n, r in results.items() if "-gw-" in n}
    admitted = sorted(n for n, r in sidecars.items() if r == "")
    refused = {n: r for n, r in sidecars.items() if r}
    assert len(admitted) == 3, results
    assert len(refused) == 7
    for reason in refused.values():
        assert reason.startswith("RESOURCE_EXHAUSTED: license limit reached"), reason
        assert "allows 3 data plane proxies across all zones" in reason
    assert all(r == "" for r in gateways.values()), gateways  # gateways never count

    # zone ingress / egress are not counted either
    ingress = {"type": "ZoneIngress", "name": "ingress-1", "networking": {"address": "127.0.0.1", "port": 10001}}
    assert zone1.cp.put("/zoneingresses/ingress-1", ingress)[0] == 201
    egress = {"type": "ZoneEgress", "name": "egress-1", "networking": {"address": "127.0.0.1", "port": 10002}}
    assert zone2.cp.put("/zoneegresses/egress-1", egress)[0] == 201
    wait_until(lambda: glob.get("/zoneingresses/zone-1.ingress-1")[0] == 200, WAIT, what="ingress at global")
    wait_until(lambda: glob.get("/zoneegresses/zone-2.egress-1")[0] == 200, WAIT, what="egress at global")
    wait_until(lambda: license_of(glob)["activeDataplaneProxies"] == 3, WAIT, what="3 active at global")
    status, dps = glob.get("/meshes/default/dataplanes")
    assert status == 200 and dps["total"] == 3 + 4  # the 3 sidecars and the 4 gateways, synced up
    for zone in (zone1, zone2):
        wait_until(lambda z=zone: license_of(z.cp)["activeDataplaneProxies"] == 3, WAIT, what="aggregate on zone")
    body = license_of(glob)
    assert (body["allowedDataplaneProxies"], body["demo"], body["enforcement"]) == (3, False, "strict")
    assert sum(q["grantedSlots"] for q in body["quota"].values()) <= 3
    assert metric(glob, "license_dataplanes_allowed") == 3
    assert metric(glob, "license_dataplanes_active") == 3
    expiry = metric(glob, "license_expiry_seconds")
    assert expiry is not None and expiry > 0
    assert metric(zone1.cp, "license_dataplanes_allowed") == 3
    assert "dataplane_license_refused" in zone1.cp.logs() + zone2.cp.logs()

    # a slot freed in one zone goes to the other (after the zone's release delay)
    holder = admitted[0]
    holder_zone = zone1 if holder.startswith("zone-1") else zone2
    other = zone2 if holder_zone is zone1 else zone1
    asyncio.run(unregister(holder_zone, tokens[holder_zone.name], holder))
    wait_until(
        lambda: asyncio.run(register(other, tokens[other.name], f"{other.name}-late")) == "",
        WAIT,
        interval=1.0,
        what="the freed slot admitted in the other zone",
    )
    wait_until(lambda: license_of(glob)["activeDataplaneProxies"] == 3, WAIT, what="still 3 active")
    assert asyncio.run(register(holder_zone, tokens[holder_zone.name], "one-too-many")).startswith("RESOURCE_EXHAUSTED")

    # a Dataplane created through the zone's API gets no slot: its proxy is refused when it connects
    assert holder_zone.cp.put("/meshes/default/dataplanes/api-dp", dataplane("api-dp"))[0] == 201
    wait_until(lambda: "dataplane_over_license_quota" in holder_zone.cp.logs(), WAIT, what="API dataplane seen")
    refusal = asyncio.run(ads_refusal(holder_zone, tokens[holder_zone.name], "api-dp"))
    assert "license limit reached" in refusal, refusal

    # global gone: each zone keeps what it holds and admits nothing beyond
    glob.stop(signal.SIGKILL)
    in_other = [n for n in [*admitted, f"{other.name}-late"] if n.startswith(other.name) and n != holder]
    asyncio.run(unregister(other, tokens[other.name], in_other[0]))
    # re-joining within the release delay takes the zone's own slot back, without global
    assert asyncio.run(register(other, tokens[other.name], f"{other.name}-rejoin")) == ""
    refusal = asyncio.run(register(other, tokens[other.name], f"{other.name}-beyond"))
    assert refusal.startswith("RESOURCE_EXHAUSTED: license limit reached"), refusal


# -- issued (warn) license ----------------------------------------------------------------------------


def test_issued_license_admits_everyone_and_warns(
    tmp_path: Path, issuer: Issuer, processes: list[ControlPlaneProcess]
) -> None:
    lic = issuer.license(tmp_path / "license.json", 3)
    # given as the seed's environment variable, with the file's contents
    glob, zone1, zone2 = federation(tmp_path, issuer, processes, env={"KMESH_LICENSE_INLINE": lic.read_text()})
    assert license_of(glob)["source"] == "inline"
    tokens = {zone1.name: zone1.token(), zone2.name: zone2.token()}
    joins: list[tuple[Zone, str, str, str | None]] = [
        (zone, tokens[zone.name], f"{zone.name}-dp-{i}", None) for i in range(5) for zone in (zone1, zone2)
    ]
    joins.append((zone1, tokens[zone1.name], "gw", "BUILTIN"))
    results = join_all(joins)
    assert all(r == "" for r in results.values()), results
    wait_until(lambda: license_of(glob)["activeDataplaneProxies"] == 10, WAIT, what="10 active at global")
    expected = "10 data plane proxies are active but the license allows 3: proxies over the limit still join"
    wait_until(lambda: expected in license_of(glob)["warnings"], WAIT, what="over-limit warning on global")
    wait_until(lambda: expected in license_of(zone2.cp)["warnings"], WAIT, what="over-limit warning on a zone")
    # a proxy whose xDS streams have all closed is not active any more (its DataplaneInsight says so)
    assert asyncio.run(ads_refusal(zone1, tokens[zone1.name], "zone-1-dp-0")) == ""
    wait_until(lambda: license_of(glob)["activeDataplaneProxies"] == 9, WAIT, what="disconnected proxy not counted")
    warned = [line for line in glob.logs().splitlines() if "license_warning" in line]
    # logged when the limit is first exceeded, not once per proxy
    assert len([w for w in warned if "proxies over the limit still join" in w]) == 1, warned


# -- refusing to start ----------------------------------------------------------------------------------


def test_global_refuses_to_start_with_an_altered_or_expired_license(tmp_path: Path, issuer: Issuer) -> None:
    good = issuer.license(tmp_path / "good.json", 3).read_bytes()
    text = good.decode()
    payload_at = text.index('"test-inc"') + 2  # inside the customer value
    signature_at = text.index('"signature": "') + len('"signature": "') + 10
    cases: dict[str, tuple[bytes, str]] = {}
    for where, offset in (("payload", payload_at), ("signature", signature_at)):
        altered = bytearray(good)
        altered[offset] ^= 0x01
        cases[where] = (bytes(altered), "signature")
    expired = tmp_path / "expired.json"
    issuer.license(expired, 3, expires="2020-01-01")
    cases["expired"] = (expired.read_bytes(), "the license expired at 2020-01-01T00:00:00Z")
    cases["untrusted"] = (good, "not trusted")
    for name, (content, reason) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_bytes(content)
        args = ["--license-path", str(path)]
        if name == "untrusted":
            args += ["--license-trusted-keys", ""]  # only the embedded release key
        cp = global_process(tmp_path / f"global-{name}", issuer, *args).start(wait=False)
        try:
            assert wait_exit(cp) == 1, name
        finally:
            cp.kill()
        logs = cp.logs()
        assert "zonemesh-cp: refusing to start: invalid license" in logs, (name, logs[-2000:])
        assert reason in logs, (name, logs[-2000:])
        assert "control_plane_started" not in logs
    # the same bytes, unaltered, start fine
    ok = global_process(tmp_path / "global-ok", issuer, "--license-path", str(tmp_path / "good.json")).start()
    try:
        assert license_of(ok)["allowedDataplaneProxies"] == 3
    finally:
        ok.stop()


def test_license_expiring_while_running_keeps_running_and_the_next_start_fails(tmp_path: Path, issuer: Issuer) -> None:
    expires = (datetime.now(UTC) + timedelta(seconds=12)).strftime("%Y-%m-%dT%H:%M:%SZ")
    lic = issuer.license(tmp_path / "license.json", 3, expires=expires)
    cp = global_process(tmp_path / "global", issuer, env={"KMESH_LICENSE_PATH": str(lic)}).start()
    try:
        assert any("expires in 0 days" in w for w in license_of(cp)["warnings"])  # fewer than 30 days left
        assert "license_warning" in cp.logs()
        wait_until(lambda: "license_expired" in cp.logs(), WAIT, what="license_expired logged")
        assert cp.process is not None and cp.process.poll() is None
        assert cp.get("/meshes/default")[0] == 200  # still serving
        assert any("expired at" in w for w in license_of(cp)["warnings"])
        expiry = metric(cp, "license_expiry_seconds")
        assert expiry is not None and expiry < 0
        assert '"level": "error"' in next(line for line in cp.logs().splitlines() if "license_expired" in line)
    finally:
        assert cp.stop() == 0
    again = global_process(tmp_path / "global", issuer, "--license-path", str(lic)).start(wait=False)
    try:
        assert wait_exit(again) == 1
    finally:
        again.kill()
    assert f"the license expired at {expires}" in again.logs()


# -- replacing the license, sync to zones, demo ----------------------------------------------------------


def test_replacing_the_license_reaches_zones_within_seconds(
    tmp_path: Path, issuer: Issuer, processes: list[ControlPlaneProcess]
) -> None:
    lic = issuer.license(tmp_path / "license.json", 3)
    glob, zone1, _ = federation(tmp_path, issuer, processes, "--license-path", str(lic))

    # the file changes
    issuer.license(tmp_path / "new.json", 7)
    (tmp_path / "new.json").replace(lic)
    started = time.monotonic()
    wait_until(lambda: license_of(zone1.cp)["allowedDataplaneProxies"] == 7, 10, what="file change on the zone")
    assert time.monotonic() - started < 10
    assert license_of(glob)["allowedDataplaneProxies"] == 7

    # the API (PUT /license, as `zmctl license install` sends it) — and the file follows, so a restart keeps it
    issuer.license(tmp_path / "api.json", 9)
    installed = zmctl(tmp_path, "license", "install", "-f", "api.json", "--cp-address", glob.api)
    assert installed.returncode == 0, installed.stderr
    assert json.loads(installed.stdout)["allowedDataplaneProxies"] == 9
    shown = zmctl(tmp_path, "license", "show", "--cp-address", zone1.cp.api)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["zone"]["name"] == "zone-1"
    wait_until(lambda: license_of(zone1.cp)["allowedDataplaneProxies"] == 9, 10, what="API change on the zone")
    assert json.loads(lic.read_text())["license"]["payload"]["dataplanes"] == "9"

    # a bad replacement is refused with its reason and changes nothing
    tampered = (tmp_path / "api.json").read_text().replace('"9"', '"90"')
    status, body = http("PUT", glob.api + "/license", json.loads(tampered))
    assert status == 400 and "signature does not match" in json.dumps(body), body
    lic.write_text(tampered)
    wait_until(lambda: "license_file_invalid" in glob.logs(), 10, what="invalid file logged")
    assert license_of(glob)["allowedDataplaneProxies"] == 9
    assert license_of(zone1.cp)["allowedDataplaneProxies"] == 9


def test_demo_license_without_configuration_is_durable(
    tmp_path: Path, issuer: Issuer, processes: list[ControlPlaneProcess]
) -> None:
    kds_port = free_port()
    glob = global_process(tmp_path / "global", issuer, kds_port=kds_port)
    processes.append(glob.start())
    body = license_of(glob)
    assert (body["demo"], body["allowedDataplaneProxies"], body["enforcement"]) == (True, 5, "strict")
    expires = datetime.fromisoformat(body["expirationDate"].replace("Z", "+00:00"))
    assert timedelta(days=29, hours=23) < expires - datetime.now(UTC) <= timedelta(days=30)
    assert any("demo license expires in 29 days" in w for w in body["warnings"])

    # a zone given a license ignores it, and shows global's
    zone = zone_process(tmp_path, "zone-1", glob, kds_port, "--license-path", str(tmp_path / "nowhere.json"))
    processes.append(zone.cp.start())
    wait_until(lambda: license_of(zone.cp)["demo"] is True, WAIT, what="demo license on the zone")
    assert license_of(zone.cp)["expirationDate"] == body["expirationDate"]
    assert "license_ignored" in zone.cp.logs()

    # the demo license refuses proxies over 5: seven join at once, five get in
    wait_until(lambda: zone.cp.get("/meshes/default")[0] == 200, WAIT, what="mesh default in the zone")
    token = zone.token()
    results = join_all([(zone, token, f"dp-{i}", None) for i in range(7)])
    assert sum(1 for r in results.values() if r == "") == 5, results
    for reason in (r for r in results.values() if r):
        assert "license limit reached: the demo license allows 5 data plane proxies" in reason, reason
    # and a real proxy agent is told why it cannot join
    (tmp_path / "dp.token").write_text(token)
    agent = subprocess.run(
        [
            *python_module("zonemesh.dp.main"), "run",
            "--cp-address", f"https://127.0.0.1:{zone.xds_port}", "--name", "dp-agent", "--mesh", "default",
            "--dataplane-inline", json.dumps(dataplane("dp-agent")),
            "--dataplane-token-file", str(tmp_path / "dp.token"),
            "--ca-cert-file", str(zone.cp.data_dir / "xds.crt"),
            "--admin-port", str(free_port()), "--readiness-port", "0", "--work-dir", str(tmp_path / "agent"),
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert agent.returncode != 0
    assert "license limit reached" in agent.stdout + agent.stderr, agent.stdout + agent.stderr

    # the first start is recorded: a restart keeps the same expiry
    glob.stop()
    try:
        glob.start()
    except ProcessExited:
        pytest.fail(glob.logs()[-2000:])
    assert license_of(glob)["expirationDate"] == body["expirationDate"]

    # a license installed through the API (no license file configured) is kept across restarts
    issuer.license(tmp_path / "installed.json", 8)
    installed = zmctl(tmp_path, "license", "install", "-f", "installed.json", "--cp-address", glob.api)
    assert installed.returncode == 0, installed.stderr
    wait_until(lambda: license_of(zone.cp)["allowedDataplaneProxies"] == 8, WAIT, what="installed license on zone")
    glob.stop()
    glob.start()
    after = license_of(glob)
    assert (after["allowedDataplaneProxies"], after["demo"], after["source"]) == (8, False, "api")
