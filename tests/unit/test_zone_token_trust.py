"""Zone-proxy tokens issued by global, checked in a zone: global publishes the public halves of its
zone-token keys and its revocations (ZoneTokenTrust), KDS carries them to the zone, and the zone's
validator uses them. Real KDS server and client over TLS on 127.0.0.1, memory stores."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from kds_harness import eventually, running_global, running_zone
from zonemesh.shared.api.app import build_api_app
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.tokens.tokens import InvalidToken
from zonemesh.shared.tokens.zone import (
    TRUST_NAME,
    TRUST_TYPE,
    ZONE_TOKEN_REVOCATIONS,
    ZoneTokenIssuer,
    ZoneTokenValidator,
    issue_offline,
    publish_trust,
    zone_token_keys,
)
from zonemesh.zone_cp import admission

DAY = 24 * 3600


async def _refusal(validator: ZoneTokenValidator, token: str, zone: str = "zone-1", scope: str = "ingress") -> str:
    with pytest.raises(InvalidToken) as info:
        await validator.validate(token, zone, scope)
    return info.value.reason


async def test_published_trust_holds_public_keys_and_revocations_only() -> None:
    store = MemoryStore()
    assert await publish_trust(store) is True  # no key yet: an empty trust
    assert await publish_trust(store) is False  # unchanged: not rewritten
    await zone_token_keys(store).ensure()
    await zone_token_keys(store).add()
    await store.create(
        Resource(type="GlobalSecret", name=ZONE_TOKEN_REVOCATIONS, spec={"data": base64.b64encode(b"a,b\n").decode()})
    )
    assert await publish_trust(store) is True
    trust = await store.get(TRUST_TYPE, TRUST_NAME)
    assert [k["kid"] for k in trust.spec["publicKeys"]] == [1, 2]
    assert all(k["key"].startswith("-----BEGIN PUBLIC KEY-----") for k in trust.spec["publicKeys"])
    assert "PRIVATE" not in json.dumps(trust.spec)
    assert trust.spec["revoked"] == ["a", "b"]


async def test_a_zone_without_published_keys_refuses_with_a_reason() -> None:
    global_store, zone_store = MemoryStore(), MemoryStore()
    token = await ZoneTokenIssuer(global_store).issue("zone-1", ["ingress"], DAY)
    reason = await _refusal(ZoneTokenValidator(zone_store, published=True), token)
    assert "signing key 1 not found" in reason


async def test_global_issued_zone_proxy_tokens_are_checked_in_the_zone(tmp_path: Path) -> None:
    async with running_global(tmp_path) as (kds, global_store):
        # The zone's own KDS token is signed by key 2, so deleting key 1 later leaves its stream up.
        _, key_1 = await zone_token_keys(global_store).ensure()
        await zone_token_keys(global_store).add()
        cp_token = await ZoneTokenIssuer(global_store).issue("zone-1", ["cp"], DAY)
        zone_store = MemoryStore()
        async with running_zone(tmp_path, "zone-1", kds.port, cp_token, store=zone_store) as zone:
            await eventually(lambda: zone.state.connected, what="zone-1 connected")
            validator = ZoneTokenValidator(zone_store, published=True)
            ingress = issue_offline("zone-1", ["ingress"], DAY, key_1, kid=1)

            async def accepted(token: str, scope: str = "ingress") -> bool:
                try:
                    await validator.validate(token, "zone-1", scope)
                except InvalidToken:
                    return False
                return True

            async def refused(token: str) -> bool:
                return not await accepted(token)

            await eventually(lambda: accepted(ingress), what="global's keys in zone-1")
            trust = await zone_store.get(TRUST_TYPE, TRUST_NAME)
            assert "PRIVATE" not in json.dumps(trust.spec)
            assert await zone_store.find("GlobalSecret", "zone-token-signing-key-1") is None  # never the key itself

            # claims: the zone and the proxy type must match
            other_zone = await ZoneTokenIssuer(global_store).issue("zone-2", ["ingress"], DAY)
            assert "not for zone 'zone-1'" in await _refusal(validator, other_zone)
            assert "does not include 'egress'" in await _refusal(validator, ingress, scope="egress")

            # rotation: a new key on global reaches the zone; tokens it signs are accepted
            assert await zone_token_keys(global_store).add() == 3
            rotated = await ZoneTokenIssuer(global_store).issue("zone-1", ["ingress", "egress"], DAY)
            assert jwt.get_unverified_header(rotated)["kid"] == "3"
            await eventually(lambda: accepted(rotated, "egress"), what="global's key 3 in zone-1")
            # key 1 deleted on global: its tokens stop working in the zone
            await global_store.delete("GlobalSecret", "zone-token-signing-key-1")
            await eventually(lambda: refused(ingress), what="key 1 gone from zone-1")
            assert "signing key 1 not found" in await _refusal(validator, ingress)

            # revocation on global: the jti is refused in the zone
            jti = jwt.decode(rotated, options={"verify_signature": False})["jti"]
            await global_store.create(
                Resource(
                    type="GlobalSecret",
                    name=ZONE_TOKEN_REVOCATIONS,
                    spec={"data": base64.b64encode(f"{jti}\n".encode()).decode()},
                )
            )
            await eventually(lambda: refused(rotated), what="revocation in zone-1")
            assert "has been revoked" in await _refusal(validator, rotated)


async def _post_zone_token(store: MemoryStore, federated: bool, body: dict[str, object]) -> tuple[int, str]:
    app = build_api_app(ResourceManager(store), {}, {}, admission.token_routes("zone-1", federated=federated))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.post("/tokens/zone", json=body)
        return resp.status, await resp.text()


async def test_a_standalone_cp_issues_zone_proxy_tokens_for_itself_and_a_federated_zone_refuses() -> None:
    store = MemoryStore()
    status, token = await _post_zone_token(store, False, {"scope": ["ingress"], "validFor": "1h"})
    assert status == 200
    claims = await ZoneTokenValidator(store).validate(token, "zone-1", "ingress")  # its own keys
    assert claims["Scope"] == ["ingress"]
    status, body = await _post_zone_token(store, False, {"zone": "zone-2", "scope": ["ingress"]})
    assert status == 400 and "for zone 'zone-1' only" in body
    status, body = await _post_zone_token(store, False, {"scope": ["cp"]})
    assert status == 400 and "only the scopes ingress and egress" in body

    federated = MemoryStore()
    status, body = await _post_zone_token(federated, True, {"scope": ["ingress"], "validFor": "1h"})
    assert status == 400 and "issued by the global control plane" in body
    assert "generate zone-token --zone zone-1 --scope ingress" in body
    assert not (await federated.list("GlobalSecret")).items  # no signing key was created on the zone


async def test_a_bad_zone_token_request_names_every_field_and_issues_nothing() -> None:
    store = MemoryStore()
    status, body = await _post_zone_token(store, False, {"zone": "zone-2", "scope": ["cp"], "validFor": "-1h"})
    assert status == 400
    for field in ('"zone"', '"scope"', '"validFor"'):  # all three reported at once
        assert field in body, body
    status, body = await _post_zone_token(store, False, {"validFor": "soon"})
    assert status == 400 and '"validFor"' in body
    assert not (await store.list("GlobalSecret")).items  # no signing key was created for a refused request
