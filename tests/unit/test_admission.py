"""Admission over real gRPC + TLS on 127.0.0.1: registration and ADS streams need a valid dataplane token."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import structlog
from envoy.service.discovery.v3 import discovery_pb2
from zonemesh.proto import dataplane_pb2, dataplane_pb2_grpc
from zonemesh.shared.config import Config
from zonemesh.shared.resources.codec import from_universal
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.tls import ensure_self_signed
from zonemesh.shared.tokens import dataplane as dptokens
from zonemesh.zone_cp.admission import DataplaneAuthenticator, RegistrationServicer
from zonemesh.zone_cp.insights import InsightRecorder
from zonemesh.zone_cp.license import ZoneLicense
from zonemesh.zone_cp.xds.cache import SnapshotCache
from zonemesh.zone_cp.xds.resources import CLUSTER
from zonemesh.zone_cp.xds.server import Callbacks, TlsFiles, XdsServer

DATAPLANE = {
    "type": "Dataplane",
    "mesh": "default",
    "name": "web-1",
    "networking": {"address": "127.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]},
}


@dataclass
class Zone:
    store: MemoryStore
    channel: grpc.aio.Channel
    recorder: InsightRecorder
    authenticator: DataplaneAuthenticator

    async def token(self, **claims: object) -> str:
        fields = {"mesh": "default", "name": "web-1", **claims}
        return await dptokens.issue(self.store, dptokens.DataplaneClaims(**fields), 3600)  # type: ignore[arg-type]

    async def register(self, token: str, **overrides: str) -> dataplane_pb2.RegisterResponse:
        stub = dataplane_pb2_grpc.DataplaneRegistrationStub(self.channel)
        request = dataplane_pb2.RegisterRequest(
            mesh="default", name="web-1", proxy_type="dataplane", dataplane_json=json.dumps(DATAPLANE)
        )
        for key, value in overrides.items():
            setattr(request, key, value)
        response: dataplane_pb2.RegisterResponse = await stub.Register(
            request, metadata=(("authorization", f"Bearer {token}"),), timeout=5
        )
        return response

    async def ads(self, token: str | None, node_id: str = "default.web-1") -> discovery_pb2.DiscoveryRequest:
        """Open an ADS stream, send one request, wait briefly; returns nothing useful but raises on refusal."""
        call = self.channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )(metadata=(("authorization", f"Bearer {token}"),) if token else ())
        request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
        request.node.id = node_id
        await call.write(request)
        try:
            await asyncio.wait_for(call.read(), timeout=0.5)
        except TimeoutError:
            pass  # admitted: no snapshot, so nothing to read
        finally:
            call.cancel()
        return request


@pytest.fixture
async def zone(tmp_path: Path) -> AsyncIterator[Zone]:
    store = MemoryStore()
    manager = ResourceManager(store)
    await manager.ensure_default_mesh()
    cert, key = ensure_self_signed(tmp_path, "xds", ["127.0.0.1"])
    recorder = InsightRecorder(manager, "cp-test", flush_interval=0.05)
    callbacks = Callbacks()
    recorder.install(callbacks)
    authenticator = DataplaneAuthenticator(store)
    registration = RegistrationServicer(manager, authenticator, recorder, "cp-test")
    config = Config(xds_address="127.0.0.1", xds_port=0)
    server = XdsServer(config, SnapshotCache(), authenticator, TlsFiles(cert, key), [registration.add_to], callbacks)
    async with recorder.running(), server:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", creds) as channel:
            yield Zone(store, channel, recorder, authenticator)


async def test_register_creates_the_dataplane_and_unregister_deletes_it(zone: Zone) -> None:
    token = await zone.token()
    response = await zone.register(token)
    assert response.created and response.control_plane_instance_id == "cp-test"
    stored = await zone.store.get("Dataplane", "web-1", "default")
    assert stored.spec["networking"]["inbound"][0]["tags"] == {"kuma.io/service": "web"}
    assert not (await zone.register(token)).created  # re-registering updates

    stub = dataplane_pb2_grpc.DataplaneRegistrationStub(zone.channel)
    result = await stub.Unregister(
        dataplane_pb2.UnregisterRequest(mesh="default", name="web-1"), metadata=(("authorization", f"Bearer {token}"),)
    )
    assert result.deleted
    assert await zone.store.find("Dataplane", "web-1", "default") is None


async def test_replicas_registered_alike_share_their_documents_strings(zone: Zone) -> None:
    """The zone keeps every registered Dataplane in memory: two replicas' documents share their
    keys and the strings they have alike (service, protocol, address), not a copy per proxy."""
    for name in ("web-1", "web-2"):
        doc = {**DATAPLANE, "name": name}
        await zone.register(await zone.token(name=name), name=name, dataplane_json=json.dumps(doc))
    first, second = [(await zone.store.get("Dataplane", name, "default")).spec for name in ("web-1", "web-2")]
    assert first == second
    for one, other in ((first, second), (first["networking"], second["networking"])):
        assert [id(k) for k in one] == [id(k) for k in other]
    tags = [spec["networking"]["inbound"][0]["tags"] for spec in (first, second)]
    assert tags[0]["kuma.io/service"] is tags[1]["kuma.io/service"]
    assert first["networking"]["address"] is second["networking"]["address"]


async def test_register_by_name_runs_the_stored_dataplane_and_leaves_it_stored(zone: Zone) -> None:
    """kuma-dp's --name/--mesh form (seed 002): no document; the Dataplane was created beforehand,
    the CP sends it back, and it stays when the proxy goes (its insight goes offline)."""
    res, _ = from_universal(DATAPLANE)
    await zone.store.create(res)
    token = await zone.token()
    response = await zone.register(token, dataplane_json="")
    assert not response.created
    sent = json.loads(response.dataplane_json)
    assert (sent["name"], sent["networking"]["inbound"]) == ("web-1", DATAPLANE["networking"]["inbound"])

    stub = dataplane_pb2_grpc.DataplaneRegistrationStub(zone.channel)
    result = await stub.Unregister(
        dataplane_pb2.UnregisterRequest(mesh="default", name="web-1", keep_dataplane=True),
        metadata=(("authorization", f"Bearer {token}"),),
    )
    assert not result.deleted
    assert await zone.store.find("Dataplane", "web-1", "default") is not None


async def test_register_by_name_refuses_a_token_before_telling_whether_the_dataplane_exists(zone: Zone) -> None:
    other = await zone.token(name="web-2")
    answers = []
    for stored in (False, True):
        if stored:
            await zone.store.create(from_universal(DATAPLANE)[0])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await zone.register(other, dataplane_json="")
        answers.append((err.value.code(), err.value.details()))
    assert answers[0] == answers[1]  # the same refusal, stored or not
    assert answers[0][0] == grpc.StatusCode.UNAUTHENTICATED


async def test_register_by_name_of_a_dataplane_that_does_not_exist_says_so(zone: Zone) -> None:
    token = await zone.token()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await zone.register(token, dataplane_json="")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no Dataplane 'web-1' in mesh 'default' on this control plane: create it first" in (
        err.value.details() or ""
    )


async def test_register_by_name_checks_the_token_tags_against_the_stored_dataplane(zone: Zone) -> None:
    await zone.store.create(from_universal(DATAPLANE)[0])
    token = await zone.token(tags={"kuma.io/service": ["db"]})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await zone.register(token, dataplane_json="")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "tag kuma.io/service='web' is not allowed" in (err.value.details() or "")


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"name": "other"}, "issued for dataplane 'other'"),
        ({"mesh": "nomesh"}, "issued for mesh 'nomesh'"),
        ({"tags": {"kuma.io/service": ["db"]}}, "tag kuma.io/service='web' is not allowed"),
    ],
)
async def test_register_refuses_tokens_for_someone_else(zone: Zone, claims: dict[str, object], reason: str) -> None:
    if claims.get("mesh") == "nomesh":
        await zone.store.create(Resource(type="Mesh", name="nomesh"))
    token = await zone.token(**claims)
    with structlog.testing.capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as err:
        await zone.register(token)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason in (err.value.details() or "")
    refused = [e for e in logs if e["event"] == "dataplane_auth_refused"]
    assert refused and reason in refused[0]["reason"]
    assert token not in json.dumps(logs, default=str)  # the token is never logged
    assert await zone.store.find("Dataplane", "web-1", "default") is None


async def test_register_refuses_an_invalid_dataplane(zone: Zone) -> None:
    token = await zone.token()
    bad = {**DATAPLANE, "networking": {"address": "127.0.0.1"}}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await zone.register(token, dataplane_json=json.dumps(bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at least one inbound" in (err.value.details() or "")


async def test_ads_stream_without_or_with_forged_token_is_unauthenticated(zone: Zone) -> None:
    for token in (None, "not-a-jwt"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await zone.ads(token)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_admitted_stream_is_recorded_in_the_insight(zone: Zone) -> None:
    token = await zone.token()
    await zone.register(token)
    await zone.ads(token)

    async def insight_offline() -> Resource:
        while True:
            insight = await zone.store.find("DataplaneInsight", "web-1", "default")
            if insight is not None and insight.spec["subscriptions"][-1].get("disconnectTime"):
                return insight
            await asyncio.sleep(0.05)

    insight = await asyncio.wait_for(insight_offline(), timeout=5)
    sub = insight.spec["subscriptions"][-1]
    assert sub["controlPlaneInstanceId"] == "cp-test"
    assert sub["connectTime"] <= sub["disconnectTime"]


@dataclass
class _LicenseCP:
    store: MemoryStore


async def test_ads_stream_refused_for_the_license_is_resource_exhausted(zone: Zone) -> None:
    """Strict license, the zone's one slot held: a Dataplane created through the API (so without a
    slot) opening its ADS stream is refused with RESOURCE_EXHAUSTED, as registration is."""
    await zone.store.create(
        Resource(type="License", name="default", spec={"enforcement": "strict", "allowedDataplaneProxies": 1})
    )
    await zone.store.create(Resource(type="LicenseQuota", name="zone-a", spec={"slots": 1, "answered": 1}))
    spec = {k: v for k, v in DATAPLANE.items() if k not in ("type", "mesh", "name")}
    await zone.store.create(Resource(type="Dataplane", mesh="default", name="old-1", spec=spec))
    await asyncio.sleep(0.01)  # the older one holds the slot
    await zone.store.create(Resource(type="Dataplane", mesh="default", name="web-1", spec=spec))
    gate = ZoneLicense(Config(mode="zone", zone="zone-a", license_quota_wait="0.1s"))
    zone.authenticator.license = gate  # as zone_cp/app.py passes the zone's gate to its authenticator
    async with gate.run(_LicenseCP(zone.store)):
        assert ("default", "web-1") in gate.unadmitted
        with structlog.testing.capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as err:
            await zone.ads(await zone.token())
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "license limit reached" in (err.value.details() or "")
        assert any(e["event"] == "xds_refused" and e["code"] == "RESOURCE_EXHAUSTED" for e in logs)
        # a token problem is still UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await zone.ads("not-a-jwt")
        assert bad.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- issue 15: names and input that used to crash Register -----------------------------------------


@pytest.mark.parametrize(
    ("mesh", "name", "field"),
    [
        ("default", "Evil/Name \u00fc", "name"),  # used to be registered: the token admits any name
        ("default", "..", "name"),
        ("Bad Mesh", "web-1", "mesh"),
        ("", "web-1", "mesh"),
    ],
)
async def test_register_and_unregister_check_names_like_the_api(zone: Zone, mesh: str, name: str, field: str) -> None:
    token = await zone.token(name="")  # valid for any dataplane of mesh "default"
    doc = {**DATAPLANE, "mesh": mesh, "name": name}
    with structlog.testing.capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as err:
        await zone.register(token, mesh=mesh, name=name, dataplane_json=json.dumps(doc))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"Invalid resource name: {field}: ")
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["registration_name_invalid"]
    assert (await zone.store.list("Dataplane")).items == []

    stub = dataplane_pb2_grpc.DataplaneRegistrationStub(zone.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Unregister(
            dataplane_pb2.UnregisterRequest(mesh=mesh, name=name), metadata=(("authorization", f"Bearer {token}"),)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("dataplane_json", "reason"),
    [
        ('{"type": "Dataplane", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested more than 64 levels"),
        ('{"type": "Dataplane", "x": ' + "1" * 5000 + "}", "4300 digits"),
        ('{"type": "Dataplane", "x": NaN}', "finite"),
    ],
)
async def test_register_refuses_documents_that_used_to_crash_it(zone: Zone, dataplane_json: str, reason: str) -> None:
    """json.loads raised RecursionError (or ValueError) past the handler: the caller saw UNKNOWN."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await zone.register(await zone.token(), dataplane_json=dataplane_json)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (err.value.details() or "")


async def test_register_with_a_unicode_digit_kid_is_unauthenticated(zone: Zone) -> None:
    """int('²') in the token validator: Register answered UNKNOWN."""
    real = await zone.token()
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT","kid":"\xc2\xb2"}').rstrip(b"=").decode()
    forged = ".".join([header, *real.split(".")[1:]])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await zone.register(forged)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no valid kid" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await zone.ads(forged)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("node_id", ["default.Evil/Name", "default.web 1", "Bad Mesh.web-1", "default..x"])
async def test_an_ads_node_id_follows_the_name_rule(zone: Zone, node_id: str) -> None:
    """The node id names the proxy as Register does: "mesh/name" keys must not be forgeable with a '/'."""
    with structlog.testing.capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as err:
        await zone.ads(await zone.token(name=""), node_id=node_id)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not <mesh>.<dataplane name>" in (err.value.details() or "")
    assert any(e["event"] == "xds_refused" and e["code"] == "INVALID_ARGUMENT" for e in logs)
