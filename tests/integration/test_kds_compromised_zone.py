"""A compromised zone against real processes: a real global and a real zone-2, and an attacker that
holds a real zone token for zone-1 and speaks KDS itself over a real gRPC + TLS stream.

Covers issue 15, finding 2: what the attacker uploads is checked resource by resource like an API
write (schema, names, the mesh exists) and for ownership (a ZoneIngress naming another zone); each
refused resource is NACKed by key with its reason, logged and counted, and the rest of the batch is
applied. A quota request for every license slot gets only what the zone can use. And from the other
side: a bad ZoneIngress arriving at a zone (from a global that sends one, or already in its store)
does not stop that zone's later cross-zone changes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_kds import WAIT, start_global, zone_process, zone_token
from test_license_processes import Issuer, global_process, issuer, join_all, license_of, register  # noqa: F401
from test_license_processes import zone_process as licensed_zone
from zonemesh.proto import kds_pb2, kds_pb2_grpc
from zonemesh.shared.ca.backend import enabled_backend
from zonemesh.shared.ca.builtin import BuiltinCaManager
from zonemesh.shared.kds.codec import to_wire
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.store.sqlite import SqliteStore
from zonemesh.shared.tls import ensure_self_signed
from zonemesh.shared.tokens.keys import generate_private_key_pem, public_key_pem

from zonemesh.testing import ControlPlaneProcess, free_port, http, wait_until

pytestmark = pytest.mark.slow

MTLS_MESH = {
    "type": "Mesh",
    "name": "default",
    "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]},
}


# -- the attacker: a zone speaking KDS by hand ------------------------------------------------------


async def _upload(port: int, ca: bytes, zone: str, token: str, messages: list[kds_pb2.Changes]) -> list[kds_pb2.Ack]:
    """Open a KDS stream as ``zone``, send each Changes and return global's answer to each (in order)."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        call = kds_pb2_grpc.KDSStub(channel).Sync(metadata=(("client-id", zone), ("authorization", f"Bearer {token}")))
        try:
            await call.write(kds_pb2.Message(hello=kds_pb2.Hello(zone=zone, instance_id="attacker")))
            first = await asyncio.wait_for(call.read(), 10)
            assert first.WhichOneof("kind") == "welcome", first
            acks: dict[str, kds_pb2.Ack] = {}
            for changes in messages:
                await call.write(kds_pb2.Message(changes=changes))
            while len(acks) < len(messages):
                msg = await asyncio.wait_for(call.read(), 10)
                if msg.WhichOneof("kind") == "ack":
                    acks[msg.ack.nonce] = msg.ack
                elif msg.WhichOneof("kind") == "changes":  # what global pushes: taken, as a zone would
                    await call.write(kds_pb2.Message(ack=kds_pb2.Ack(nonce=msg.changes.nonce)))
            return [acks[c.nonce] for c in messages]
        finally:
            call.cancel()


def upload(glob: ControlPlaneProcess, port: int, zone: str, messages: list[kds_pb2.Changes]) -> list[kds_pb2.Ack]:
    ca = (glob.data_dir / "kds-tls.crt").read_bytes()
    return asyncio.run(_upload(port, ca, zone, zone_token(glob, zone), messages))


def changes(type: str, *upserts: Resource) -> kds_pb2.Changes:
    return kds_pb2.Changes(nonce=uuid.uuid4().hex, type=type, upserts=[to_wire(r) for r in upserts])


def refused(ack: kds_pb2.Ack) -> dict[str, str]:
    return {r.key.name: r.reason for r in ack.rejected}


def dataplane(name: str, mesh: str = "default", port: Any = 8080, outbound: str | None = None) -> Resource:
    networking: dict[str, Any] = {
        "address": "127.0.0.1",
        "inbound": [{"port": port, "tags": {"kuma.io/service": "app"}}],
    }
    if outbound:
        networking["outbound"] = [{"port": 20001, "tags": {"kuma.io/service": outbound}}]
    return Resource(type="Dataplane", name=name, mesh=mesh, spec={"networking": networking})


def ingress(name: str, zone: str, address: str, port: Any, service: str, instances: int = 1) -> Resource:
    return Resource(
        type="ZoneIngress",
        name=name,
        spec={
            "zone": zone,
            "networking": {"address": address, "port": 10001, "advertisedAddress": address, "advertisedPort": port},
            "availableServices": [{"tags": {"kuma.io/service": service}, "instances": instances, "mesh": "default"}],
        },
    )


def online_insight(name: str) -> Resource:
    sub = {"id": uuid.uuid4().hex, "controlPlaneInstanceId": "cp", "connectTime": "2026-01-01T00:00:00Z"}
    return Resource(type="ZoneIngressInsight", name=name, spec={"subscriptions": [sub]})


def metric(cp: ControlPlaneProcess, name: str, **labels: str) -> float:
    """A sample from the diagnostics port, 0 when absent."""
    status, text = http("GET", f"http://127.0.0.1:{cp.diagnostics_port}/metrics")
    assert status == 200
    for line in str(text).splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.split()[-1])
    return 0.0


def events(cp: ControlPlaneProcess, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``cp`` with this event."""
    found = []
    for line in cp.logs().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
    return found


def names(cp: ControlPlaneProcess, path: str) -> set[str]:
    status, body = cp.get(path)
    assert status == 200, body
    return {item["name"] for item in body["items"]}


def config_text(zone: ControlPlaneProcess, dataplane: str) -> str:
    status, body = zone.get(f"/meshes/default/dataplanes/{dataplane}/_config")
    return json.dumps(body) if status == 200 else ""


# -- global refuses what the attacker uploads, and applies the rest --------------------------------


def test_a_compromised_zone_cannot_poison_global_or_the_other_zones(tmp_path: Path) -> None:
    kds_port = free_port()
    glob = start_global(tmp_path / "global", kds_port)
    zone2: ControlPlaneProcess | None = None
    try:
        assert glob.put("/meshes/default", MTLS_MESH)[0] in (200, 201)
        ca = tmp_path / "global" / "kds-tls.crt"
        zone2 = zone_process(tmp_path / "zone-2", "zone-2", kds_port, zone_token(glob, "zone-2"), ca, "memory").start()
        wait_until(lambda: zone2.get("/meshes/default")[0] == 200, WAIT, what="the mesh in zone-2")
        assert zone2.put("/meshes/default/dataplanes/web", _doc(dataplane("web", outbound="backend")))[0] == 201
        wait_until(lambda: "zone-2.web" in names(glob, "/meshes/default/dataplanes"), WAIT, what="web at global")

        bad_spec = dataplane("bad-spec", port="x")
        acks = upload(
            glob,
            kds_port,
            "zone-1",
            [
                changes(
                    "Dataplane",
                    dataplane("dp-ok"),
                    dataplane("lost", mesh="nowhere"),
                    dataplane("Evil/Name ü"),
                    bad_spec,
                ),
                changes(
                    "ZoneIngress",
                    ingress("ingress", "zone-1", "127.0.0.2", 10002, "backend"),
                    ingress("impostor", "zone-3", "127.0.0.66", 10066, "backend", instances=1000),
                    ingress("broken", "zone-1", "127.0.0.67", "not-a-port", "backend"),
                ),
                changes(
                    "ZoneIngressInsight", *(online_insight(n) for n in ("ingress", "impostor", "broken"))
                ),
            ],
        )  # fmt: skip

        # each refused resource NACKed by key with its reason; the rest of each batch applied
        dataplanes, ingresses, insights = acks
        assert dataplanes.nack and refused(dataplanes).keys() == {"lost", "Evil/Name ü", "bad-spec"}, dataplanes
        assert refused(dataplanes)["lost"] == "mesh 'nowhere' does not exist on global"
        assert refused(dataplanes)["Evil/Name ü"].startswith("name: must consist of lower case alphanumeric")
        assert refused(dataplanes)["bad-spec"] == "networking.inbound[0].port: must be an integer"
        assert ingresses.nack and refused(ingresses).keys() == {"impostor", "broken"}, ingresses
        assert "zone names zone 'zone-3'" in refused(ingresses)["impostor"]
        assert refused(ingresses)["broken"] == "networking.advertisedPort: must be an integer"
        assert not insights.nack
        assert names(glob, "/meshes/default/dataplanes") == {"zone-1.dp-ok", "zone-2.web"}
        assert names(glob, "/zoneingresses") == {"zone-1.ingress"}
        assert glob.get("/meshes/nowhere/dataplanes/zone-1.lost")[0] == 404
        # the license counts what was stored, nothing refused
        wait_until(lambda: license_of(glob)["activeDataplaneProxies"] == 2, WAIT, what="2 counted")

        # logged and counted at global
        logged = {(e["zone"], e["type"], e["name"], e["kind"]): e["reason"] for e in events(glob, "kds_upload_refused")}
        assert logged.keys() == {
            ("zone-1", "Dataplane", "lost", "mesh"),
            ("zone-1", "Dataplane", "Evil/Name ü", "invalid"),
            ("zone-1", "Dataplane", "bad-spec", "invalid"),
            ("zone-1", "ZoneIngress", "impostor", "ownership"),
            ("zone-1", "ZoneIngress", "broken", "invalid"),
        }
        assert logged["zone-1", "ZoneIngress", "impostor", "ownership"] == refused(ingresses)["impostor"]
        z1 = {"zone_name": "zone-1"}
        assert metric(glob, "kds_upload_refused_total", **z1, resource_type="ZoneIngress", reason="ownership") == 1
        assert metric(glob, "kds_upload_refused_total", **z1, resource_type="ZoneIngress", reason="invalid") == 1
        assert metric(glob, "kds_upload_refused_total", **z1, resource_type="Dataplane", reason="mesh") == 1
        assert metric(glob, "kds_upload_refused_total", **z1, resource_type="Dataplane", reason="invalid") == 2

        # zone-2 gets zone-1's real ingress as an endpoint of backend, never the impostor's address
        wait_until(lambda: "127.0.0.2" in config_text(zone2, "web"), WAIT, what="zone-1's ingress in web's config")
        assert "127.0.0.66" not in config_text(zone2, "web") and "127.0.0.67" not in config_text(zone2, "web")
        assert names(zone2, "/zoneingresses") == {"zone-1.ingress"}
        assert "zone_proxy_reconcile_failed" not in zone2.logs()

        # a real zone's own upload refused: the zone sees which resource and why, and resends only it
        liar = dataplane("liar")
        liar.spec["networking"]["inbound"][0]["tags"]["kuma.io/zone"] = "zone-9"
        assert zone2.put("/meshes/default/dataplanes/liar", _doc(liar))[0] == 201
        assert zone2.put("/meshes/default/dataplanes/honest", _doc(dataplane("honest")))[0] == 201

        def dataplane_stat() -> dict[str, Any]:
            status, body = zone2.get("/status/kds")
            assert status == 200, body
            return dict(body["stat"].get("Dataplane") or {})

        wait_until(lambda: dataplane_stat().get("resourcesRejected"), WAIT, what="zone-2 sees its upload refused")
        assert dataplane_stat()["lastRejection"].startswith("Dataplane/default/liar: networking.inbound[0].tags")
        wait_until(lambda: "zone-2.honest" in names(glob, "/meshes/default/dataplanes"), WAIT, what="honest stored")
        assert "zone-2.liar" not in names(glob, "/meshes/default/dataplanes")
        refusals = events(zone2, "kds_resource_refused_by_peer")
        assert refusals and all(e["resource"] == "Dataplane/default/liar" for e in refusals), refusals
    finally:
        for cp in (zone2, glob):
            if cp is not None:
                cp.kill()


def _doc(res: Resource) -> dict[str, Any]:
    return {"type": res.type, "mesh": res.mesh, "name": res.name, **res.spec}


# -- the license: a quota request for every slot gets only what the zone can use ---------------------


def test_a_zone_asking_for_every_slot_does_not_starve_the_others(
    tmp_path: Path,
    issuer: Issuer,  # noqa: F811
) -> None:
    kds_port = free_port()
    lic = issuer.license(tmp_path / "license.json", 6, strict=True)
    glob = global_process(tmp_path / "global", issuer, "--license-path", str(lic), kds_port=kds_port).start()
    processes = [glob]
    try:
        zone2 = licensed_zone(tmp_path, "zone-2", glob, kds_port)
        processes.append(zone2.cp.start())
        wait_until(lambda: license_of(zone2.cp)["enforcement"] == "strict", WAIT, what="license at zone-2")

        request = Resource(type="LicenseQuotaRequest", name="request", spec={"zone": "zone-1", "want": 10**9, "seq": 1})
        (ack,) = upload(glob, kds_port, "zone-1", [changes("LicenseQuotaRequest", request)])
        assert not ack.nack  # a well-formed request: it is capped, not refused
        wait_until(lambda: "zone-1" in license_of(glob)["quota"], WAIT, what="zone-1's request answered")
        assert license_of(glob)["quota"]["zone-1"] == {"grantedSlots": 2, "wantedSlots": 10**9}

        # zone-2's proxies still join, four at once (more than the headroom: served in rounds)
        token = zone2.token()
        results = join_all([(zone2, token, f"dp-{i}", None) for i in range(4)])
        assert results == {f"dp-{i}": "" for i in range(4)}, results
        # and the limit still holds: 2 + 4 = 6
        refusal = asyncio.run(register(zone2, token, "dp-4"))
        assert refusal.startswith("RESOURCE_EXHAUSTED: license limit reached"), refusal
        quota = license_of(glob)["quota"]
        assert quota["zone-1"]["grantedSlots"] == 2 and quota["zone-2"]["grantedSlots"] == 4
        assert "Traceback" not in glob.logs()
    finally:
        for cp in reversed(processes):
            cp.kill()


# -- a zone: a bad ZoneIngress arriving does not stop its later changes ---------------------------


class FakeGlobal:
    """A KDS server on 127.0.0.1 that sends one zone what the test tells it to, as a global that was
    compromised (or is broken) would: real gRPC + TLS, its own event loop in a thread."""

    def __init__(self, directory: Path) -> None:
        cert, key = ensure_self_signed(directory, "fake-global", ["127.0.0.1"])
        self.ca_file = cert
        self._credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._outbox: asyncio.Queue[kds_pb2.Message] | None = None
        self._acks: dict[str, asyncio.Future[kds_pb2.Ack]] = {}
        self.connections = 0  # streams answered with Welcome so far

    async def Sync(self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        hello = await context.read()
        assert hello.WhichOneof("kind") == "hello"
        outbox: asyncio.Queue[kds_pb2.Message] = asyncio.Queue()
        await context.write(
            kds_pb2.Message(welcome=kds_pb2.Welcome(heartbeat_interval_ms=1000, heartbeat_timeout_ms=30_000))
        )
        self._outbox = outbox
        self.connections += 1
        reader = asyncio.ensure_future(self._read(context, outbox))
        try:
            while not reader.done():
                try:
                    await context.write(await asyncio.wait_for(outbox.get(), 1.0))
                except TimeoutError:
                    await context.write(kds_pb2.Message(heartbeat=kds_pb2.Heartbeat()))
        finally:
            reader.cancel()

    async def _read(self, context: grpc.aio.ServicerContext[Any, Any], outbox: asyncio.Queue[kds_pb2.Message]) -> None:
        while (msg := await context.read()) is not grpc.aio.EOF:
            kind = msg.WhichOneof("kind")
            if kind == "ack" and msg.ack.nonce in self._acks:
                self._acks.pop(msg.ack.nonce).set_result(msg.ack)
            elif kind == "changes":  # the zone's uploads: taken
                await outbox.put(kds_pb2.Message(ack=kds_pb2.Ack(nonce=msg.changes.nonce)))

    async def _start(self) -> None:
        self._server = grpc.aio.server()
        handler = grpc.stream_stream_rpc_method_handler(
            self.Sync,
            request_deserializer=kds_pb2.Message.FromString,
            response_serializer=kds_pb2.Message.SerializeToString,
        )
        self._server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("zonemesh.kds.v1.KDS", {"Sync": handler})]
        )
        self.port = self._server.add_secure_port("127.0.0.1:0", self._credentials)
        await self._server.start()

    async def _send(self, message: kds_pb2.Changes) -> kds_pb2.Ack:
        assert self._outbox is not None
        future: asyncio.Future[kds_pb2.Ack] = asyncio.get_running_loop().create_future()
        self._acks[message.nonce] = future
        await self._outbox.put(kds_pb2.Message(changes=message))
        return await asyncio.wait_for(future, 15)

    def send(self, message: kds_pb2.Changes) -> kds_pb2.Ack:
        """Push one Changes to the zone on the latest stream; its answer."""
        return asyncio.run_coroutine_threadsafe(self._send(message), self.loop).result(20)

    def wait_connections(self, count: int) -> None:
        wait_until(lambda: self.connections >= count, WAIT, what=f"{count} KDS stream(s) to the fake global")

    def __enter__(self) -> FakeGlobal:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def from_global(res: Resource) -> Resource:
    return Resource(type=res.type, name=res.name, mesh=res.mesh, spec=res.spec, labels={"zonemesh.io/origin": "global"})


def from_zone(res: Resource, zone: str) -> Resource:
    labels = {"zonemesh.io/origin": "zone", "zonemesh.io/zone": zone}
    return Resource(type=res.type, name=f"{zone}.{res.name}", mesh=res.mesh, spec=res.spec, labels=labels)


@pytest.fixture
def fake_global(tmp_path: Path) -> Iterator[FakeGlobal]:
    with FakeGlobal(tmp_path / "fake-global") as server:
        yield server


def test_a_bad_zone_ingress_does_not_stop_a_zones_later_changes(tmp_path: Path, fake_global: FakeGlobal) -> None:
    data_dir = tmp_path / "zone-2"
    zone2 = zone_process(data_dir, "zone-2", fake_global.port, "a token this global does not check",
                         fake_global.ca_file, "sqlite")  # fmt: skip
    try:
        zone2.start()
        fake_global.wait_connections(1)
        # global's part: the mesh (mTLS, so that other zones' ingresses are used) and its CA
        mesh = Resource(
            type="Mesh", name="default", spec={k: v for k, v in MTLS_MESH.items() if k not in ("type", "name")}
        )
        ca_store = MemoryStore()
        asyncio.run(_make_ca(ca_store, mesh))
        secrets = asyncio.run(ca_store.list("Secret")).items
        assert not fake_global.send(changes("Mesh", from_global(mesh))).nack
        assert not fake_global.send(changes("Secret", *map(from_global, secrets))).nack
        assert zone2.put("/meshes/default/dataplanes/web", _doc(dataplane("web", outbound="backend")))[0] == 201

        # a good ingress of zone-1 and a broken one of zone-3 in one message, then their insights
        first = fake_global.send(
            changes(
                "ZoneIngress",
                from_zone(ingress("ingress", "zone-1", "127.0.0.2", 10002, "backend"), "zone-1"),
                from_zone(ingress("ingress", "zone-3", "127.0.0.3", "not-a-port", "backend"), "zone-3"),
            )
        )
        insights = changes(
            "ZoneIngressInsight", *(from_zone(online_insight("ingress"), z) for z in ("zone-1", "zone-3", "zone-4"))
        )
        assert not fake_global.send(insights).nack
        # a later legitimate change: another zone's ingress
        later = fake_global.send(
            changes("ZoneIngress", from_zone(ingress("ingress", "zone-4", "127.0.0.4", 10004, "backend"), "zone-4"))
        )
        # both good ingresses reach web's config; the broken one never does
        wait_until(lambda: "127.0.0.2" in config_text(zone2, "web"), WAIT, what="zone-1's ingress in web's config")
        wait_until(lambda: "127.0.0.4" in config_text(zone2, "web"), WAIT, what="zone-4's ingress in web's config")
        assert "127.0.0.3" not in config_text(zone2, "web")
        # the broken one was refused by key (the rest of its message applied), logged and counted
        assert first.nack and refused(first) == {"zone-3.ingress": "networking.advertisedPort: must be an integer"}
        assert not later.nack
        assert [(e["type"], e["name"]) for e in events(zone2, "kds_download_refused")] == [
            ("ZoneIngress", "zone-3.ingress")
        ]
        labels = {"zone_name": "zone-2", "resource_type": "ZoneIngress", "reason": "invalid"}
        assert metric(zone2, "kds_download_refused_total", **labels) == 1
        status, kds = zone2.get("/status/kds")
        assert status == 200 and kds["stat"]["ZoneIngress"]["requestResourcesRejected"] == 1

        # the same broken ingress already in the zone's store (written by an older version, say):
        # it is skipped, and later changes still reach the config
        assert zone2.stop() == 0
        bad = from_zone(ingress("ingress", "zone-5", "127.0.0.5", "not-a-port", "backend"), "zone-5")
        asyncio.run(_write(data_dir, [bad, from_zone(online_insight("ingress"), "zone-5")]))
        zone2.start()
        fake_global.wait_connections(2)
        wait_until(lambda: "127.0.0.4" in config_text(zone2, "web"), WAIT, what="zone-4's ingress after the restart")
        ack = fake_global.send(
            changes("ZoneIngress", from_zone(ingress("ingress", "zone-6", "127.0.0.6", 10006, "backend"), "zone-6"))
        )
        assert not ack.nack
        assert not fake_global.send(changes("ZoneIngressInsight", from_zone(online_insight("ingress"), "zone-6"))).nack
        wait_until(lambda: "127.0.0.6" in config_text(zone2, "web"), WAIT, what="zone-6's ingress in web's config")
        assert "127.0.0.5" not in config_text(zone2, "web")
        assert [(e["type"], e["name"]) for e in events(zone2, "xds_resource_ignored")] == [
            ("ZoneIngress", "zone-5.ingress")
        ]
        assert "zone_proxy_reconcile_failed" not in zone2.logs()
    finally:
        zone2.kill()


async def _make_ca(store: MemoryStore, mesh: Resource) -> None:
    await store.create(mesh.copy())
    backend = enabled_backend(mesh)
    assert backend is not None
    await BuiltinCaManager().ensure(backend, store)


async def _write(data_dir: Path, resources: list[Resource]) -> None:
    store = await SqliteStore.open(data_dir / "zonemesh.db")
    try:
        await store.batch(upserts=resources)
    finally:
        await store.close()


# -- dataplane token keys: a zone cannot make the other zones trust a key of its own -----------------


def test_a_zone_cannot_publish_dataplane_token_keys_for_the_other_zones(tmp_path: Path) -> None:
    """Zones admit tokens global issued with the public keys in global's DataplaneTokenTrust: a zone
    that uploads a trust (or a global signing key) of its own is refused by type, and global keeps
    none, so no other zone would admit the tokens that zone signs."""
    kds_port = free_port()
    glob = start_global(tmp_path / "global", kds_port)
    try:
        pem = generate_private_key_pem()
        trust = Resource(
            type="DataplaneTokenTrust",
            name="dataplane-token",
            mesh="default",
            spec={"publicKeys": [{"kid": 1, "key": public_key_pem(pem).decode()}]},
        )
        key = Resource(
            type="Secret",
            name="dataplane-token-global-signing-key-default-1",
            mesh="default",
            spec={"data": base64.b64encode(pem).decode()},
        )
        acks = upload(glob, kds_port, "zone-1", [changes("DataplaneTokenTrust", trust), changes("Secret", key)])
        assert refused(acks[0]) == {
            "dataplane-token": "DataplaneTokenTrust is not accepted from zones: it is not synced zone→global"
        }
        assert refused(acks[1]) == {key.name: "Secret is not accepted from zones: it is not synced zone→global"}
        assert glob.get("/meshes/default/dataplane-token-trusts/dataplane-token")[0] == 404
        assert glob.get(f"/meshes/default/secrets/{key.name}")[0] == 404
    finally:
        glob.kill()
