"""License format, signature, expiry, demo license, counting rules and the quota allocator."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from zonemesh.global_cp.license import QUOTA_HEADROOM, Grant, Request, allocate, quota_cap
from zonemesh.shared.config import ConfigError, load
from zonemesh.shared.license.counting import ActiveCount, counted, offline
from zonemesh.shared.license.format import (
    LicenseError,
    canonical_payload,
    check_expiry,
    demo_license,
    issue,
    parse,
)
from zonemesh.shared.license.keys import release_key, trusted_keys
from zonemesh.shared.resources.model import Resource

KEY = Ed25519PrivateKey.generate()
TRUSTED = [release_key(), KEY.public_key()]


def make(**overrides: object) -> str:
    fields: dict[str, object] = {
        "customer": "acme",
        "dataplanes": 3,
        "expires": "2099-11-09",
        "license_key": "k-1",
        "created": "2021-8-4",
    }
    fields.update(overrides)
    return issue(KEY, **fields)  # type: ignore[arg-type]


def test_issue_then_parse_round_trip_in_the_seed_format() -> None:
    text = make(enforcement="strict")
    doc = json.loads(text)
    assert set(doc) == {"license"} and doc["license"]["version"] == 1
    assert set(doc["license"]["payload"]) >= {
        "customer",
        "license_creation_date",
        "product_subscription",
        "dataplanes",
        "license_expiration_date",
        "license_key",
    }
    assert doc["license"]["payload"]["dataplanes"] == "3"  # a string, as in the seed
    lic = parse(text, TRUSTED, source="t")
    assert (lic.customer, lic.dataplanes, lic.strict, lic.demo) == ("acme", 3, True, False)
    assert lic.expires == datetime(2099, 11, 9, tzinfo=UTC)
    assert lic.created is not None and lic.created.isoformat() == "2021-08-04"
    assert not parse(make(), TRUSTED).strict  # an issued license warns by default


def test_reformatting_the_file_keeps_it_valid() -> None:
    doc = json.loads(make())
    assert parse(json.dumps(doc), TRUSTED).customer == "acme"
    assert parse(json.dumps(doc, indent=8, sort_keys=True), TRUSTED).customer == "acme"


@pytest.mark.parametrize("mask", [0x01, 0x20, 0x04])
def test_a_one_byte_change_anywhere_is_refused(mask: int) -> None:
    original = make().encode()
    for offset in range(len(original)):
        altered = bytearray(original)
        altered[offset] ^= mask
        with pytest.raises(LicenseError):
            parse(bytes(altered), TRUSTED)
            pytest.fail(f"byte {offset} ({chr(original[offset])!r}) ^ {mask:#x} was accepted")


def test_each_kind_of_change_gets_its_own_reason() -> None:
    text = make()
    doc = json.loads(text)

    def altered(edit: object) -> str:
        d = json.loads(text)
        edit(d)  # type: ignore[operator]
        return json.dumps(d)

    cases = {
        "signature does not match": altered(lambda d: d["license"]["payload"].update(dataplanes="300")),
        "signature does not match ": altered(lambda d: d["license"]["payload"].update(customer="acmf")),
        "not valid base64": altered(lambda d: d["license"].update(signature="!" + d["license"]["signature"][1:])),
        "canonical base64": altered(
            lambda d: d["license"].update(signature=d["license"]["signature"].rstrip("=")[:-1] + "B==")
        ),
        "version 2 is not supported": altered(lambda d: d["license"].update(version=2)),
        "unknown field(s) 'extra'": altered(lambda d: d["license"].update(extra=1)),
        "license.payload is missing": altered(lambda d: d["license"].pop("payload")),
        'no "license" object': "{}",
        "not valid JSON": text[:-3],
        "appears twice": text.replace('"version": 1,', '"version": 1, "version": 1,'),
    }
    assert doc["license"]["signature"].endswith("==")
    for reason, bad in cases.items():
        with pytest.raises(LicenseError) as err:
            parse(bad, TRUSTED)
        assert reason.strip() in str(err.value), (reason, str(err.value))


def test_an_untrusted_issuer_is_refused() -> None:
    with pytest.raises(LicenseError, match="not trusted"):
        parse(make(), [release_key()])


def test_expiry_is_checked_separately() -> None:
    lic = parse(make(expires="2020-01-01"), TRUSTED)
    with pytest.raises(LicenseError, match="expired at 2020-01-01T00:00:00Z"):
        check_expiry(lic, datetime.now(UTC))
    soon = parse(make(expires="2030-01-01T10:00:00Z"), TRUSTED)
    check_expiry(soon, datetime(2030, 1, 1, 9, 59, 59, tzinfo=UTC))
    with pytest.raises(LicenseError, match="expired"):
        check_expiry(soon, datetime(2030, 1, 1, 10, 0, 0, tzinfo=UTC))


def test_demo_license_is_five_proxies_for_thirty_days_strict() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    demo = demo_license(start)
    assert (demo.dataplanes, demo.demo, demo.strict) == (5, True, True)
    assert demo.expires - start == timedelta(days=30)
    with pytest.raises(LicenseError, match="demo license expired"):
        check_expiry(demo, start + timedelta(days=30))


def test_canonical_payload_is_key_order_and_whitespace_free() -> None:
    assert canonical_payload({"b": "1", "a": "é"}) == '{"a":"é","b":"1"}'.encode()


def test_trusted_keys_from_config_files(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    from cryptography.hazmat.primitives import serialization

    pem = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "k.pem").write_bytes(pem)
    (tmp_path / "bad.pem").write_text("not a key")
    assert len(trusted_keys(f"{tmp_path / 'k.pem'}, ")) == 2
    with pytest.raises(LicenseError, match="not a PEM public key"):
        trusted_keys(str(tmp_path / "bad.pem"))
    with pytest.raises(LicenseError, match="cannot read trusted license key"):
        trusted_keys(str(tmp_path / "missing.pem"))


def test_config_accepts_the_seed_environment_names() -> None:
    assert load(env={"KMESH_LICENSE_PATH": "/l.json"}).license_path == "/l.json"
    assert load(env={"KMESH_LICENSE_INLINE": "{}"}).license_inline == "{}"
    ours = load(env={"KMESH_LICENSE_PATH": "/a", "ZONEMESH_LICENSE_PATH": "/b"})
    assert ours.license_path == "/b"  # ours win over the aliases
    with pytest.raises(ConfigError, match="not both"):
        load(env={"ZONEMESH_LICENSE_PATH": "/a", "ZONEMESH_LICENSE_INLINE": "{}"})


# -- what counts ------------------------------------------------------------------------------


def dp(name: str, gateway: str | None = None) -> Resource:
    networking: dict[str, object] = {"address": "10.0.0.1"}
    if gateway:
        networking["gateway"] = {"type": gateway, "tags": {"kuma.io/service": "gw"}}
    else:
        networking["inbound"] = [{"port": 8080, "tags": {"kuma.io/service": "web"}}]
    return Resource(type="Dataplane", mesh="default", name=name, spec={"networking": networking})


def test_gateways_are_not_counted_and_offline_proxies_are_not_active() -> None:
    assert counted(dp("a")) and not counted(dp("g", "BUILTIN")) and not counted(dp("d", "DELEGATED"))
    assert not offline(None) and not offline({"subscriptions": []})
    assert not offline({"subscriptions": [{"disconnectTime": "x"}, {"connectTime": "y"}]})
    assert offline({"subscriptions": [{"disconnectTime": "x"}]})
    count = ActiveCount()
    for res in (dp("a"), dp("b"), dp("g", "BUILTIN"), dp("d", "DELEGATED")):
        count.upsert(res)
    assert count.active == 2
    count.upsert(
        Resource(type="DataplaneInsight", mesh="default", name="b", spec={"subscriptions": [{"disconnectTime": "t"}]})
    )
    assert count.active == 1
    count.delete(dp("a"))
    assert count.active == 0


# -- quota allocation -------------------------------------------------------------------------


def test_allocate_never_grants_more_than_allowed() -> None:
    grants: dict[str, Grant] = {}
    requests = {"z1": Request(want=10, seq=1), "z2": Request(want=10, seq=2)}
    allocate(3, grants, requests)
    assert grants == {"z1": Grant(3, 1)} or grants == {"z1": Grant(3, 1), "z2": Grant(0, 2)}
    assert sum(g.slots for g in grants.values()) == 3
    # z1 releases two: z2's open request is served from what was freed
    requests["z1"] = Request(want=1, seq=3)
    changed = allocate(3, grants, requests)
    assert grants["z1"] == Grant(1, 3) and grants["z2"].slots == 2 and set(changed) == {"z1", "z2"}
    # nothing changes when nothing is asked
    assert allocate(3, grants, requests) == {}


def test_allocate_with_a_smaller_license_only_shrinks_by_release() -> None:
    grants = {"z1": Grant(4, 1)}
    requests = {"z1": Request(want=5, seq=2), "z2": Request(want=1, seq=3)}
    allocate(2, grants, requests)
    assert grants["z1"].slots == 4 and grants.get("z2", Grant()).slots == 0
    requests["z1"] = Request(want=1, seq=4)
    allocate(2, grants, requests)
    assert grants["z1"].slots == 1 and grants["z2"].slots == 1


def test_allocate_caps_what_a_zone_asks_beyond_what_it_can_use() -> None:
    # z1 asks for every slot there is with nothing uploaded: it gets the headroom only
    grants: dict[str, Grant] = {}
    requests = {"z1": Request(want=10**9, seq=1), "z2": Request(want=3, seq=2)}
    caps = {"z1": quota_cap(0), "z2": quota_cap(3)}
    allocate(5, grants, requests, caps)
    assert grants == {"z1": Grant(QUOTA_HEADROOM, 1), "z2": Grant(3, 2)}
    # z1 uploads proxies: its open request is served further, up to what is free
    caps["z1"] = quota_cap(2)
    assert allocate(5, grants, requests, caps) == {}  # nothing free yet
    requests["z2"] = Request(want=1, seq=3)  # z2 releases two
    allocate(5, grants, requests, caps)
    assert grants == {"z1": Grant(4, 1), "z2": Grant(1, 3)}


def test_a_cap_never_takes_back_slots_a_zone_did_not_release() -> None:
    # z1 holds 6 (granted before its proxies left); a cap below that is not a release
    grants = {"z1": Grant(6, 1)}
    requests = {"z1": Request(want=8, seq=2), "z2": Request(want=4, seq=3)}
    allocate(10, grants, requests, {"z1": quota_cap(1), "z2": quota_cap(4)})
    assert grants["z1"] == Grant(6, 2) and grants["z2"] == Grant(4, 3)
    requests["z1"] = Request(want=2, seq=4)  # a release the zone asked for is honoured as before
    allocate(10, grants, requests, {"z1": quota_cap(1), "z2": quota_cap(4)})
    assert grants["z1"] == Grant(2, 4)


def test_quota_cap_doubles_what_a_zone_uploaded() -> None:
    assert [quota_cap(n) for n in (0, 1, 2, 3, 10)] == [2, 3, 4, 6, 20]


def test_allocate_random_requests_keep_the_sum_within_the_limit() -> None:
    rng = random.Random(7)
    grants: dict[str, Grant] = {}
    requests: dict[str, Request] = {}
    for seq in range(1, 2000):
        zone = f"z{rng.randrange(4)}"
        requests[zone] = Request(want=rng.randrange(8), seq=seq)
        allocate(5, grants, requests)
        assert sum(g.slots for g in grants.values()) <= 5
        for z, g in grants.items():  # an answered request never gets more than it asked for
            if g.answered == requests[z].seq:
                assert g.slots <= requests[z].want


def test_active_count_matches_a_recount_after_any_sequence_of_events() -> None:
    """The incremental count equals counting from scratch, whatever the order of events."""
    import random

    rng = random.Random(7)
    count = ActiveCount()
    dataplanes: dict[str, Resource] = {}
    offline_names: set[str] = set()
    for _ in range(2000):
        name = f"p{rng.randrange(30)}"
        action = rng.randrange(5)
        if action == 0:
            res = dp(name, rng.choice([None, None, "BUILTIN"]))
            dataplanes[name] = res
            count.upsert(res)
        elif action == 1 and name in dataplanes:
            count.delete(dataplanes.pop(name))
        elif action == 2:
            disconnected = rng.random() < 0.5
            spec = {"subscriptions": [{"disconnectTime": "t"} if disconnected else {"connectTime": "t"}]}
            (offline_names.add if disconnected else offline_names.discard)(name)
            count.upsert(Resource(type="DataplaneInsight", mesh="default", name=name, spec=spec))
        elif action == 3:
            offline_names.discard(name)
            count.delete(Resource(type="DataplaneInsight", mesh="default", name=name))
        expected = sum(1 for n, r in dataplanes.items() if counted(r) and n not in offline_names)
        assert count.active == expected
