"""Dataplane tokens issued on global and checked in a federated zone: global signs with a key
family of its own (kid ``global-<N>``), publishes only the public halves (DataplaneTokenTrust),
KDS carries them to the zone, and the zone keeps the keys it made itself, so the tokens it issued
stay valid. Real KDS server and client over TLS on 127.0.0.1, memory stores."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import jwt
import pytest
from kds_harness import FakeCP, eventually, running_global, running_zone
from zonemesh.global_cp import dataplane_tokens as global_dataplane_tokens
from zonemesh.global_cp.kds_server import select_downstream
from zonemesh.shared.config import Config
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store import Store
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.tokens import dataplane as dptokens
from zonemesh.shared.tokens.keys import generate_private_key_pem
from zonemesh.shared.tokens.tokens import InvalidToken, sign
from zonemesh.shared.tokens.zone import ZoneTokenIssuer

DAY = 24 * 3600
WEB = dptokens.DataplaneClaims(mesh="default", name="web-1")


async def with_meshes(*names: str) -> MemoryStore:
    store = MemoryStore()
    for name in names:
        await store.create(Resource(type="Mesh", name=name))
    return store


async def refusal(store: Store, token: str, mesh: str = "default", name: str = "web-1") -> str:
    with pytest.raises(InvalidToken) as info:
        await dptokens.validate(store, token, mesh=mesh, name=name)
    return info.value.reason


async def test_global_signs_with_its_own_family_and_publishes_public_halves_only() -> None:
    store = await with_meshes("default", "global-default")
    token = await dptokens.issue_at_global(store, WEB, 3600)
    assert jwt.get_unverified_header(token)["kid"] == "global-1"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 3600  # exact, as every token
    assert await store.find("Secret", "dataplane-token-global-signing-key-default-1", "default") is not None
    # not the zone family's key 1, of this mesh nor of a mesh whose name begins with "global-"
    assert await dptokens.signing_keys(store, "default").serials() == []
    assert await dptokens.signing_keys(store, "global-default").serials() == []
    trust = await store.get(dptokens.TRUST_TYPE, dptokens.TRUST_NAME, "default")
    assert [k["kid"] for k in trust.spec["publicKeys"]] == [1]
    assert trust.spec["publicKeys"][0]["key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in json.dumps(trust.spec)
    assert (await dptokens.validate(store, token, mesh="default", name="web-1")).name == "web-1"


async def test_the_private_keys_are_never_sent_to_zones() -> None:
    store = await with_meshes("default")
    await dptokens.issue_at_global(store, WEB, 3600)
    key = await store.get("Secret", "dataplane-token-global-signing-key-default-1", "default")
    assert select_downstream(key) is None
    trust = await store.get(dptokens.TRUST_TYPE, dptokens.TRUST_NAME, "default")
    assert select_downstream(trust) is not None
    zone_key = await dptokens.signing_keys(store, "default").add()  # a key of the zone family is a plain Secret
    assert select_downstream(await store.get("Secret", f"dataplane-token-signing-key-default-{zone_key}", "default"))


async def test_a_global_kid_is_checked_against_the_published_keys_only() -> None:
    store = await with_meshes("default")
    # The zone's own key 1 must not verify a token whose kid says global-1: signed with it, refused.
    _, zone_pem = await dptokens.signing_keys(store, "default").ensure()
    forged = sign(WEB.as_jwt_claims(), zone_pem, "global-1", 3600)
    assert "global signing key 1 not found" in await refusal(store, forged)  # no trust yet
    await dptokens.issue_at_global(store, WEB, 3600)
    assert "signature verification failed" in await refusal(store, forged)
    assert "no valid kid" in await refusal(store, sign(WEB.as_jwt_claims(), zone_pem, "global-x", 3600))
    assert "no valid kid" in await refusal(store, sign(WEB.as_jwt_claims(), zone_pem, "other-1", 3600))


async def test_publish_follows_key_changes_and_skips_meshes_without_keys() -> None:
    store = await with_meshes("default", "other")
    assert await dptokens.publish_trust(store, "other") is False
    assert await store.find(dptokens.TRUST_TYPE, dptokens.TRUST_NAME, "other") is None
    assert await dptokens.publish_trust(store, "missing") is False
    first = await dptokens.issue_at_global(store, WEB, 3600)
    assert await dptokens.global_signing_keys(store, "default").add() == 2
    assert await dptokens.publish_trust(store, "default") is True
    assert await dptokens.publish_trust(store, "default") is False  # unchanged: not rewritten
    second = await dptokens.issue_at_global(store, WEB, 3600)
    assert jwt.get_unverified_header(second)["kid"] == "global-2"
    await store.delete("Secret", "dataplane-token-global-signing-key-default-1", "default")
    assert await dptokens.publish_trust(store, "default") is True
    assert "global signing key 1 not found" in await refusal(store, first)
    await dptokens.validate(store, second, mesh="default", name="web-1")


async def test_the_leader_republishes_when_an_operator_changes_a_key() -> None:
    store = await with_meshes("default")
    await dptokens.global_signing_keys(store, "default").add()  # before the start: published by the first pass
    cp = FakeCP(Config(mode="global"), store, "global-test")
    async with global_dataplane_tokens.trust_publisher(cp):

        async def kids() -> list[int]:
            trust = await store.find(dptokens.TRUST_TYPE, dptokens.TRUST_NAME, "default")
            return [k["kid"] for k in trust.spec["publicKeys"]] if trust is not None else []

        await eventually(lambda: _equals(kids(), [1]), what="key 1 published")
        pem = generate_private_key_pem()
        data = base64.b64encode(pem).decode()
        await store.create(
            Resource(
                type="Secret", mesh="default", name="dataplane-token-global-signing-key-default-2", spec={"data": data}
            )
        )
        await eventually(lambda: _equals(kids(), [1, 2]), what="key 2 published")
        await store.delete("Secret", "dataplane-token-global-signing-key-default-1", "default")
        await eventually(lambda: _equals(kids(), [2]), what="key 1 withdrawn")


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


async def test_global_tokens_admit_in_a_zone_that_keeps_its_own(tmp_path: Path) -> None:
    async with running_global(tmp_path, store=await with_meshes("default", "other")) as (kds, global_store):
        cp_token = await ZoneTokenIssuer(global_store).issue("zone-1", ["cp"], DAY)
        zone_store = MemoryStore()
        # Before federation the zone issued a token of its own, with its key 1 (same serial as
        # global's first key): it must keep working once global's keys arrive.
        await zone_store.create(Resource(type="Mesh", name="default"))
        own = await dptokens.issue(zone_store, WEB, DAY)
        own_key = await zone_store.get("Secret", "dataplane-token-signing-key-default-1", "default")
        issued = await dptokens.issue_at_global(global_store, WEB, DAY)
        other_mesh = await dptokens.issue_at_global(
            global_store, dptokens.DataplaneClaims(mesh="other", name="web-1"), DAY
        )
        async with running_zone(tmp_path, "zone-1", kds.port, cp_token, store=zone_store) as zone:
            await eventually(lambda: zone.state.connected, what="zone-1 connected")

            async def accepted(token: str) -> bool:
                try:
                    await dptokens.validate(zone_store, token, mesh="default", name="web-1")
                except InvalidToken:
                    return False
                return True

            async def refused(token: str) -> bool:
                return not await accepted(token)

            await eventually(lambda: accepted(issued), what="global's public key in zone-1")
            assert await accepted(own)
            assert (await zone_store.get("Secret", own_key.name, "default")).spec == own_key.spec
            held = [s.name for s in (await zone_store.list("Secret", "default")).items]
            assert not [name for name in held if name.startswith("dataplane-token-global-signing-key")]
            assert "issued for mesh 'other'" in await refusal(zone_store, other_mesh)
            forged = sign(WEB.as_jwt_claims(), generate_private_key_pem(), "global-1", DAY)
            assert "signature verification failed" in await refusal(zone_store, forged)

            # revocation on global, in the mesh's one list: the zone refuses the token
            jti = jwt.decode(issued, options={"verify_signature": False})["jti"]
            await global_store.create(
                Resource(
                    type="Secret",
                    mesh="default",
                    name=dptokens.revocations_secret("default"),
                    spec={"data": base64.b64encode(jti.encode()).decode()},
                )
            )
            await eventually(lambda: refused(issued), what="revocation in zone-1")
            assert "has been revoked" in await refusal(zone_store, issued)
            assert await accepted(own)


@pytest.mark.parametrize(
    ("mesh", "name", "expected"),
    [
        ("default", "dataplane-token-global-signing-key-default-1", True),
        ("default", "dataplane-token-global-signing-key-default-12", True),
        ("default", "dataplane-token-global-signing-key-default-notes", False),  # an operator's Secret: synced
        ("default", "dataplane-token-signing-key-default-1", False),  # the zone family
        ("default-1", "dataplane-token-global-signing-key-default-1-2", True),
        ("default", "dataplane-token-global-signing-key-default-1-2", False),  # mesh default-1's name pattern
    ],
)
def test_which_secrets_are_global_private_keys(mesh: str, name: str, expected: bool) -> None:
    assert dptokens.is_global_signing_key(Resource(type="Secret", name=name, mesh=mesh, spec={"data": ""})) is expected
