"""What a KDS receiver refuses, resource by resource (shared/kds/trust.py), and the two appliers that
use it: global's upload handler and a zone's download handler, over memory stores."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from kds_harness import running_global
from zonemesh.global_cp.kds_server import TURN_EVERY
from zonemesh.proto import kds_pb2
from zonemesh.shared.config import Config
from zonemesh.shared.kds.codec import to_wire
from zonemesh.shared.kds.trust import INVALID, OWNERSHIP, TYPE, Refused, check_received, check_removal, decode
from zonemesh.shared.resources.codec import check_resource, from_universal
from zonemesh.shared.resources.manager import Mode, ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.schema import Errors, ValidationError
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.zone_cp.kds_client import KdsClient

ZONE_LABELS = {"zonemesh.io/origin": "zone", "zonemesh.io/zone": "zone-1"}


def dataplane(name: str, mesh: str = "default", **tags: str) -> Resource:
    inbound = {"port": 8080, "tags": {"kuma.io/service": "web", **tags}}
    return Resource(
        type="Dataplane", name=name, mesh=mesh, spec={"networking": {"address": "10.0.0.1", "inbound": [inbound]}}
    )


def ingress(name: str, zone: str | None = "zone-1", port: Any = 10001, **tags: str) -> Resource:
    networking = {"address": "10.0.0.1", "port": 10001, "advertisedAddress": "203.0.113.9", "advertisedPort": port}
    services = [{"tags": {"kuma.io/service": "web", **tags}, "instances": 1000, "mesh": "default"}]
    spec: dict[str, Any] = {"networking": networking, "availableServices": services}
    if zone is not None:
        spec["zone"] = zone
    return Resource(type="ZoneIngress", name=name, spec=spec)


def refusal(res: Resource, zone: str | None = "zone-1") -> Refused:
    with pytest.raises(Refused) as caught:
        check_received(res, zone)
    return caught.value


# -- the checks --------------------------------------------------------------------------------------


def test_the_api_and_kds_run_the_same_validation() -> None:
    networking = {"inbound": [{"port": 0}]}
    with pytest.raises(ValidationError) as api:
        from_universal({"type": "Dataplane", "mesh": "default", "name": "dp", "networking": networking})
    res = Resource(type="Dataplane", name="dp", mesh="default", spec={"networking": networking})
    errors = Errors()
    check_resource(res, errors)
    assert errors and errors == api.value.errors  # one function: the same reasons, field by field
    why = refusal(res)
    assert why.kind == INVALID and "networking.address: must be defined" in why.reason


@pytest.mark.parametrize(
    ("res", "reason"),
    [
        (dataplane("Evil/Name ü"), "name: must consist of lower case alphanumeric"),
        (dataplane("dp", mesh="No Such/Mesh"), "mesh: must consist of lower case alphanumeric"),
        (ingress("zi", port="not-a-port"), "networking.advertisedPort: must be an integer"),
        (
            Resource(type="ZoneIngress", name="zi", mesh="default", spec=ingress("zi").spec),
            "mesh: ZoneIngress is not mesh-scoped",
        ),
        (
            Resource(type="Dataplane", name="dp", mesh="default", spec={}, labels={"": "x"}),
            "labels[]: must not be empty",
        ),
        (
            Resource(type="LicenseQuotaRequest", name="request", spec={"want": "all", "seq": 1}),
            "want: must be an integer",
        ),
        (
            Resource(type="ZoneIngressInsight", name="zi", spec={"subscriptions": ["x"]}),
            "subscriptions[0]: must be an object",
        ),
    ],
)
def test_what_an_api_write_would_be_refused_for_is_refused(res: Resource, reason: str) -> None:
    why = refusal(res)
    assert why.kind == INVALID and reason in why.reason, why.reason


@pytest.mark.parametrize(
    ("res", "field"),
    [
        (ingress("zi", zone="zone-2"), "zone names zone 'zone-2'"),
        (
            ingress("zi", **{"kuma.io/zone": "zone-2"}),
            "availableServices[0].tags[\"kuma.io/zone\"] names zone 'zone-2'",
        ),
        (
            dataplane("dp", **{"kuma.io/zone": "zone-2"}),
            "networking.inbound[0].tags[\"kuma.io/zone\"] names zone 'zone-2'",
        ),
        (
            Resource(type="ZoneEgress", name="ze", spec={"zone": "zone-2", "networking": {"port": 1}}),
            "zone names zone 'zone-2'",
        ),
        (
            Resource(type="LicenseQuotaRequest", name="request", spec={"zone": "zone-2", "want": 1, "seq": 1}),
            "zone names",
        ),
    ],
)
def test_a_resource_naming_another_zone_is_refused(res: Resource, field: str) -> None:
    why = refusal(res)
    assert why.kind == OWNERSHIP and field in why.reason, why.reason
    check_received(res, None)  # valid as such: only who sends it makes it wrong


def test_a_resource_naming_its_own_zone_or_none_passes() -> None:
    check_received(ingress("zi"), "zone-1")
    check_received(ingress("zi", zone=None), "zone-1")  # the zone label global sets says whose it is
    check_received(dataplane("dp", **{"kuma.io/zone": "zone-1"}), "zone-1")


def test_wire_level_refusals() -> None:
    wire = to_wire(dataplane("dp"))
    with pytest.raises(Refused) as caught:
        decode(wire, "ZoneIngress")
    assert caught.value.kind == TYPE
    wire.spec = b"{not json"
    with pytest.raises(Refused) as caught:
        decode(wire, "Dataplane")
    assert caught.value.kind == INVALID and "not valid JSON" in caught.value.reason
    wire.spec = b"[1]"
    with pytest.raises(Refused, match="spec must be a JSON object"):
        decode(wire, "Dataplane")
    check_removal(kds_pb2.ResourceKey(type="Dataplane", mesh="default", name="dp"), "Dataplane")
    for key, kind in [
        (kds_pb2.ResourceKey(type="Mesh", name="default"), TYPE),
        (kds_pb2.ResourceKey(type="Dataplane", name="dp"), INVALID),
        (kds_pb2.ResourceKey(type="ZoneIngress", mesh="default", name="zi"), INVALID),
    ]:
        with pytest.raises(Refused) as caught:
            check_removal(key, "ZoneIngress" if key.type == "ZoneIngress" else "Dataplane")
        assert caught.value.kind == kind


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (b'{"networking": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested more than 64 levels"),
        (b'{"networking": {"port": NaN}}', "must be a finite number"),
        (b'{"networking": {"port": ' + b"1" * 5000 + b"}}", "4300 digits"),
    ],
)
def test_a_spec_no_api_body_could_carry_is_refused_not_raised(spec: bytes, reason: str) -> None:
    """A spec nested ~1000 deep raised RecursionError out of the upload handler (issue 15, finding 9)."""
    wire = to_wire(dataplane("dp"))
    wire.spec = spec
    with pytest.raises(Refused) as caught:
        decode(wire, "Dataplane")
    assert caught.value.kind == INVALID and reason in caught.value.reason


# -- global: the upload handler ------------------------------------------------------------------


def changes(type: str, *upserts: Resource, removals: tuple[kds_pb2.ResourceKey, ...] = ()) -> kds_pb2.Changes:
    return kds_pb2.Changes(nonce="n", type=type, upserts=[to_wire(r) for r in upserts], removals=removals)


def metric(name: str, **labels: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_global_stores_the_valid_part_of_an_upload_and_names_the_rest(tmp_path: Path) -> None:
    store = MemoryStore()
    await ResourceManager(store, mode=Mode.GLOBAL).ensure_default_mesh()
    before = metric("kds_upload_refused_total", zone_name="zone-1", resource_type="Dataplane", reason="mesh")
    async with running_global(tmp_path, store) as (kds, _):
        assert kds.server is not None
        bad_spec = dataplane("bad-spec")
        bad_spec.spec["networking"]["inbound"][0]["port"] = "x"
        upload = changes(
            "Dataplane",
            dataplane("good"),
            dataplane("lost", mesh="nowhere"),
            dataplane("Bad Name"),
            bad_spec,
            dataplane("liar", **{"kuma.io/zone": "zone-2"}),
            dataplane("x" * 250),  # valid in the zone, too long once qualified with the zone
        )
        refused = await kds.server._apply_upload("zone-1", upload)
        assert {r.key.name: r.reason.split(":")[0] for r in refused} == {
            "lost": "mesh 'nowhere' does not exist on global",
            "Bad Name": "name",
            "bad-spec": "networking.inbound[0].port",
            "liar": "networking.inbound[0].tags[\"kuma.io/zone\"] names zone 'zone-2'",
            "x" * 250: "name",
        }
        assert all(r.key.type == "Dataplane" for r in refused)
        assert {r.name for r in (await store.list("Dataplane")).items} == {"zone-1.good"}
        after = metric("kds_upload_refused_total", zone_name="zone-1", resource_type="Dataplane", reason="mesh")
        assert after == before + 1

        # a type not taken from zones: every resource of the message refused, nothing stored
        refused = await kds.server._apply_upload(
            "zone-1", changes("ExternalService", Resource(type="ExternalService", name="r", mesh="default"))
        )
        assert [r.key.name for r in refused] == ["r"] and "not accepted from zones" in refused[0].reason

        # removals: only this zone's own name is ever deleted, whatever the key says
        await store.batch(upserts=[dataplane("zone-2.web", mesh="default")])
        refused = await kds.server._apply_upload(
            "zone-1",
            changes(
                "Dataplane",
                removals=(
                    kds_pb2.ResourceKey(type="Dataplane", mesh="default", name="good"),
                    kds_pb2.ResourceKey(type="Dataplane", mesh="default", name="zone-2.web"),
                    kds_pb2.ResourceKey(type="Mesh", name="default"),
                ),
            ),
        )
        assert [(r.key.type, r.key.name) for r in refused] == [("Mesh", "default")]
        assert {r.name for r in (await store.list("Dataplane")).items} == {"zone-2.web"}
        assert await store.find("Mesh", "default") is not None


async def test_a_zone_cannot_reach_another_zones_resources_by_name_or_label(tmp_path: Path) -> None:
    """Insights say whether another zone's ingress is online: one labelled as zone-2's (or as
    global's) is refused; one named like zone-2's, uploaded by zone-1, stays zone-1's and leaves
    zone-2's alone."""
    store = MemoryStore()
    theirs = Resource(type="ZoneIngressInsight", name="zone-2.ingress", spec={"subscriptions": [{"id": "s"}]})
    theirs.labels = {"zonemesh.io/origin": "zone", "zonemesh.io/zone": "zone-2", "zonemesh.io/display-name": "ingress"}
    await store.create(theirs)
    async with running_global(tmp_path, store) as (kds, _):
        assert kds.server is not None
        offline = {"subscriptions": [{"id": "s", "disconnectTime": "2026-01-01T00:00:00Z"}]}
        forged = [
            Resource(type="ZoneIngressInsight", name="zone-2.ingress", spec=offline, labels=labels)
            for labels in (
                {"zonemesh.io/origin": "global"},
                {"zonemesh.io/zone": "zone-2"},
                {"kuma.io/zone": "zone-2"},
                {"kuma.io/origin": "global", "zonemesh.io/origin": "zone"},
            )
        ]
        for lie in forged:
            [refused] = await kds.server._apply_upload("zone-1", changes("ZoneIngressInsight", lie))
            assert "a resource from zone 'zone-1'" in refused.reason, refused
        assert await store.find("ZoneIngressInsight", "zone-1.zone-2.ingress") is None
        named_like_theirs = Resource(type="ZoneIngressInsight", name="zone-2.ingress", spec=offline)
        assert await kds.server._apply_upload("zone-1", changes("ZoneIngressInsight", named_like_theirs)) == []
        stored = await store.get("ZoneIngressInsight", "zone-1.zone-2.ingress")
        assert stored.spec == offline and stored.labels == {
            "zonemesh.io/origin": "zone",
            "zonemesh.io/zone": "zone-1",
            "zonemesh.io/display-name": "zone-2.ingress",
            "kuma.io/origin": "zone",
            "kuma.io/zone": "zone-1",
            "kuma.io/display-name": "zone-2.ingress",
        }
        removal = kds_pb2.ResourceKey(type="ZoneIngressInsight", name="zone-2.ingress")
        assert await kds.server._apply_upload("zone-1", changes("ZoneIngressInsight", removals=(removal,))) == []
        assert await store.find("ZoneIngressInsight", "zone-1.zone-2.ingress") is None  # its own copy only
        untouched = await store.get("ZoneIngressInsight", "zone-2.ingress")
        assert untouched.spec == theirs.spec and untouched.labels == theirs.labels


# -- a zone: the download handler ------------------------------------------------------------------


async def test_a_zone_applies_the_valid_part_of_what_global_sends(tmp_path: Path) -> None:
    store = MemoryStore()
    token = tmp_path / "token"
    token.write_text("t")
    config = Config(mode="zone", zone="zone-2", global_address="grpcs://127.0.0.1:1", zone_token_file=str(token))
    client = KdsClient(config, store, "zone-2-test")
    remote = [
        Resource(type="ZoneIngress", name="zone-1.good", spec=ingress("x").spec, labels=ZONE_LABELS),
        Resource(type="ZoneIngress", name="zone-1.port", spec=ingress("x", port="not-a-port").spec, labels=ZONE_LABELS),
        Resource(type="ZoneIngress", name="zone-1.liar", spec=ingress("x", zone="zone-3").spec, labels=ZONE_LABELS),
        Resource(
            type="ZoneIngress",
            name="unlabelled",
            spec=ingress("x", zone=None).spec,
            labels={"zonemesh.io/origin": "zone"},
        ),
        Resource(
            type="ZoneIngress",
            name="zone-2.mine",
            spec=ingress("x", zone="zone-2").spec,
            labels={**ZONE_LABELS, "zonemesh.io/zone": "zone-2"},
        ),
    ]
    refused = await client._apply_download(changes("ZoneIngress", *remote))
    assert {r.key.name: r.reason for r in refused}.keys() == {"zone-1.port", "zone-1.liar", "unlabelled", "zone-2.mine"}
    assert {r.name for r in (await store.list("ZoneIngress")).items} == {"zone-1.good"}
    assert (
        metric("kds_download_refused_total", zone_name="zone-2", resource_type="ZoneIngress", reason="ownership") >= 3
    )
    policy = Resource(
        type="MeshRetry",
        name="bad",
        mesh="default",
        spec={"targetRef": {"kind": "Nope"}},
        labels={"zonemesh.io/origin": "global"},
    )
    refused = await client._apply_download(changes("MeshRetry", policy))
    assert [r.key.name for r in refused] == ["bad"] and "targetRef.kind" in refused[0].reason


# -- the wire stays readable by an older peer --------------------------------------------------------


def test_an_older_peer_reads_a_nack_naming_resources_as_a_nack() -> None:
    """An Ack as released before ``rejected`` existed (fields 1-3) parses today's NACK: it sees a
    NACK with its error, and so resends the whole message, which stays correct."""
    proto = descriptor_pb2.FileDescriptorProto(name="old_kds.proto", package="old", syntax="proto3")
    ack = proto.message_type.add(name="Ack")
    field = descriptor_pb2.FieldDescriptorProto
    for number, (name, kind) in enumerate(
        [("nonce", field.TYPE_STRING), ("nack", field.TYPE_BOOL), ("error", field.TYPE_STRING)], start=1
    ):
        ack.field.add(name=name, number=number, type=kind, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    OldAck = message_factory.GetMessageClass(pool.FindMessageTypeByName("old.Ack"))
    new = kds_pb2.Ack(
        nonce="n1",
        nack=True,
        error="1 of 2 resources refused",
        rejected=[kds_pb2.Rejected(key=kds_pb2.ResourceKey(type="Dataplane", mesh="default", name="dp"), reason="r")],
    )
    old = OldAck.FromString(new.SerializeToString())
    assert (old.nonce, old.nack, old.error) == ("n1", True, "1 of 2 resources refused")
    # and today's code reads an older peer's NACK (no rejected: nothing was applied) as such
    from_old = kds_pb2.Ack.FromString(OldAck(nonce="n2", nack=True, error="e").SerializeToString())
    assert (from_old.nonce, from_old.nack, list(from_old.rejected)) == ("n2", True, [])


class LoopTurns:
    """Counts the turns other tasks get on the event loop while it is entered: none means the
    loop was held from start to end (a zone's whole upload checked in one go)."""

    def __init__(self) -> None:
        self.turns = 0
        self._task: asyncio.Task[None] | None = None

    async def _count(self) -> None:
        while True:
            await asyncio.sleep(0)
            self.turns += 1

    async def __aenter__(self) -> LoopTurns:
        self._task = asyncio.create_task(self._count())
        await asyncio.sleep(0)  # started
        self.turns = 0
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def test_a_large_upload_and_its_welcome_let_the_event_loop_run(tmp_path: Path) -> None:
    """Global's loop also serves every other zone's stream and the leader's work: checking a zone's
    upload of 1,000 resources, and hashing what it holds from a zone for the Welcome, take turns."""
    store = MemoryStore()  # answers without a turn of the loop: only the handler's own turns count
    await ResourceManager(store, mode=Mode.GLOBAL).ensure_default_mesh()
    async with running_global(tmp_path, store) as (kds, _):
        assert kds.server is not None
        upload = changes("Dataplane", *(dataplane(f"dp-{i}") for i in range(1000)))
        async with LoopTurns() as applying:
            assert await kds.server._apply_upload("zone-1", upload) == []
        assert len((await store.list("Dataplane")).items) == 1000
        assert applying.turns >= 1000 // TURN_EVERY - 1

        removals = tuple(kds_pb2.ResourceKey(type="Dataplane", mesh="default", name=f"dp-{i}") for i in range(500))
        async with LoopTurns() as removing:
            assert await kds.server._apply_upload("zone-1", changes("Dataplane", removals=removals)) == []
        assert len((await store.list("Dataplane")).items) == 500
        assert removing.turns >= 500 // TURN_EVERY - 1

        async with LoopTurns() as welcoming:
            have = await kds.server._held_from("zone-1")
        assert len(have) == 500 and all(key.startswith("Dataplane") for key in have)
        assert welcoming.turns >= 500 // TURN_EVERY - 1
