"""Dataplane tokens: issue, validate, refuse (forged, expired, revoked, other mesh/name/type/tags), API."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from zonemesh.shared.api.app import build_api_app
from zonemesh.shared.api.auth import ensure_admin_token
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.tokens import dataplane as dptokens
from zonemesh.shared.tokens.keys import generate_private_key_pem
from zonemesh.shared.tokens.tokens import InvalidToken, sign


async def store_with_meshes() -> MemoryStore:
    store = MemoryStore()
    await store.create(Resource(type="Mesh", name="default"))
    await store.create(Resource(type="Mesh", name="other"))
    return store


async def test_issue_and_validate() -> None:
    store = await store_with_meshes()
    claims = dptokens.DataplaneClaims(mesh="default", name="web-1", tags={"kuma.io/service": ["web"]})
    token = await dptokens.issue(store, claims, 3600)
    assert jwt.get_unverified_header(token)["kid"] == "1"
    got = await dptokens.validate(store, token, mesh="default", name="web-1", tags=[{"kuma.io/service": "web"}])
    assert (got.mesh, got.name, got.proxy_type) == ("default", "web-1", "dataplane")
    assert got.jti
    secret = await store.find("Secret", "dataplane-token-signing-key-default-1", "default")
    assert secret is not None


async def test_token_without_name_admits_any_name_in_the_mesh() -> None:
    store = await store_with_meshes()
    token = await dptokens.issue(store, dptokens.DataplaneClaims(mesh="default"), 3600)
    assert (await dptokens.validate(store, token, mesh="default", name="anything")).name == ""


@pytest.mark.parametrize(
    ("mesh", "name", "proxy_type", "tags", "reason"),
    [
        ("other", "web-1", "dataplane", [], "issued for mesh 'default'"),
        ("default", "web-2", "dataplane", [], "issued for dataplane 'web-1'"),
        ("default", "web-1", "ingress", [], "issued for proxy type 'dataplane'"),
        ("default", "web-1", "dataplane", [{"kuma.io/service": "db"}], "tag kuma.io/service='db' is not allowed"),
    ],
)
async def test_mismatches_are_refused(
    mesh: str, name: str, proxy_type: str, tags: list[dict[str, str]], reason: str
) -> None:
    store = await store_with_meshes()
    claims = dptokens.DataplaneClaims(mesh="default", name="web-1", tags={"kuma.io/service": ["web"]})
    token = await dptokens.issue(store, claims, 3600)
    with pytest.raises(InvalidToken, match=reason):
        await dptokens.validate(store, token, mesh=mesh, name=name, proxy_type=proxy_type, tags=tags)


async def test_forged_expired_revoked_missing() -> None:
    store = await store_with_meshes()
    claims = dptokens.DataplaneClaims(mesh="default", name="web-1")
    await dptokens.issue(store, claims, 3600)  # creates key 1
    forged = sign(claims.as_jwt_claims(), generate_private_key_pem(), 1, 3600)
    with pytest.raises(InvalidToken, match="signature verification failed"):
        await dptokens.validate(store, forged, mesh="default", name="web-1")

    serial, pem = await dptokens.signing_keys(store, "default").ensure()
    expired = jwt.encode(
        {**claims.as_jwt_claims(), "jti": "x", "iat": int(time.time()) - 100, "exp": int(time.time()) - 60},
        pem,
        algorithm="RS256",
        headers={"kid": str(serial)},
    )
    with pytest.raises(InvalidToken, match="expired"):
        await dptokens.validate(store, expired, mesh="default", name="web-1")

    token = await dptokens.issue(store, claims, 3600)
    jti = (await dptokens.validate(store, token, mesh="default", name="web-1")).jti
    await store.create(
        Resource(
            type="Secret",
            name=dptokens.revocations_secret("default"),
            mesh="default",
            spec={"data": base64.b64encode(f"other-id,{jti}\n".encode()).decode()},
        )
    )
    with pytest.raises(InvalidToken, match="revoked"):
        await dptokens.validate(store, token, mesh="default", name="web-1")

    with pytest.raises(InvalidToken, match="no dataplane token"):
        await dptokens.validate(store, "", mesh="default", name="web-1")


async def test_rotation_new_key_signs_old_tokens_still_valid() -> None:
    store = await store_with_meshes()
    claims = dptokens.DataplaneClaims(mesh="default", name="web-1")
    old = await dptokens.issue(store, claims, 3600)
    assert await dptokens.signing_keys(store, "default").add() == 2
    new = await dptokens.issue(store, claims, 3600)
    assert jwt.get_unverified_header(new)["kid"] == "2"
    for token in (old, new):
        await dptokens.validate(store, token, mesh="default", name="web-1")
    await store.delete("Secret", "dataplane-token-signing-key-default-1", "default")
    with pytest.raises(InvalidToken, match="signing key 1 not found"):
        await dptokens.validate(store, old, mesh="default", name="web-1")


async def test_keys_are_per_mesh() -> None:
    store = await store_with_meshes()
    await dptokens.issue(store, dptokens.DataplaneClaims(mesh="default"), 3600)
    other = await dptokens.issue(store, dptokens.DataplaneClaims(mesh="other"), 3600)
    # A token whose Mesh claim is rewritten to "default" fails default's signature check.
    header, _payload, signature = other.split(".")
    claims = jwt.decode(other, options={"verify_signature": False})
    claims["Mesh"] = "default"
    rewritten = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    with pytest.raises(InvalidToken, match="signature verification failed"):
        await dptokens.validate(store, f"{header}.{rewritten}.{signature}", mesh="default", name="x")


async def test_api_issues_token_and_validates_request() -> None:
    store = await store_with_meshes()
    await ensure_admin_token(store)
    app = build_api_app(ResourceManager(store), {}, {}, dptokens.routes())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.post(
            "/tokens/dataplane",
            json={"mesh": "default", "name": "web-1", "tags": {"kuma.io/service": ["web"]}, "validFor": "24h"},
        )
        assert resp.status == 200, await resp.text()
        token = await resp.text()
        claims = await dptokens.validate(store, token, mesh="default", name="web-1")
        assert claims.tags == {"kuma.io/service": ["web"]}
        payload = jwt.decode(token, options={"verify_signature": False})
        assert 24 * 3600 <= payload["exp"] - payload["iat"] <= 24 * 3600 + 15

        resp = await client.post("/tokens/dataplane", json={"mesh": "nope", "type": "gateway", "validFor": "x"})
        assert resp.status == 400
        fields = {p["field"] for p in (await resp.json())["invalid_parameters"]}
        assert fields == {"type", "validFor"}
        resp = await client.post("/tokens/dataplane", json={"mesh": "nope", "validFor": "1h"})
        assert resp.status == 400
        assert "does not exist" in (await resp.json())["detail"]
