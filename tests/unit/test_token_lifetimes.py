"""Every kind of token lives exactly as long as it was issued for: exp = iat + validFor, nbf = iat.
The clock-skew leeway (LEEWAY_SECONDS) belongs to verification alone, not to the token."""

from __future__ import annotations

import base64
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from zonemesh.global_cp.api import global_routes
from zonemesh.global_cp.kds_server import GlobalKds
from zonemesh.shared.api.app import build_api_app
from zonemesh.shared.api.auth import ADMIN_TOKEN_VALIDITY_SECONDS, ensure_admin_token
from zonemesh.shared.config import Config
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.tokens import dataplane as dptokens
from zonemesh.shared.tokens import user
from zonemesh.shared.tokens.keys import generate_private_key_pem
from zonemesh.shared.tokens.tokens import ADMIN_TOKEN_SECRET
from zonemesh.shared.tokens.zone import ZoneTokenIssuer, issue_offline
from zonemesh.zone_cp import admission


def lifetime(token: str) -> tuple[int, int]:
    """(exp - iat, nbf - iat) of a token, read without verifying it."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims["exp"] - claims["iat"], claims["nbf"] - claims["iat"]


async def store_with_mesh() -> MemoryStore:
    store = MemoryStore()
    await store.create(Resource(type="Mesh", name="default"))
    return store


@pytest.mark.parametrize(("valid_for", "seconds"), [("90m", 5400), ("3s", 3), ("24h", 86400)])
async def test_dataplane_tokens_from_the_api(valid_for: str, seconds: int) -> None:
    store = await store_with_mesh()
    app = build_api_app(ResourceManager(store), {}, {}, dptokens.routes())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.post("/tokens/dataplane", json={"mesh": "default", "name": "web", "validFor": valid_for})
        assert resp.status == 200, await resp.text()
        assert lifetime(await resp.text()) == (seconds, 0)


async def test_dataplane_tokens_issued_directly() -> None:
    store = await store_with_mesh()
    token = await dptokens.issue(store, dptokens.DataplaneClaims(mesh="default"), 7)
    assert lifetime(token) == (7, 0)


async def test_zone_tokens_from_global_and_from_a_standalone_zone() -> None:
    store = MemoryStore()
    routes = global_routes(GlobalKds(Config(mode="global")))
    app = build_api_app(ResourceManager(store), {}, {}, routes)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.post("/tokens/zone", json={"zone": "zone-1", "validFor": "720h"})
        assert resp.status == 200, await resp.text()
        assert lifetime(await resp.text()) == (720 * 3600, 0)
        resp = await client.post("/tokens/zone", json={"zone": "zone-1"})  # the default: a year
        assert lifetime(await resp.text()) == (8760 * 3600, 0)

    app = build_api_app(ResourceManager(MemoryStore()), {}, {}, admission.token_routes("zone-1"))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.post("/tokens/zone", json={"zone": "zone-1", "scope": ["ingress"], "validFor": "4s"})
        assert resp.status == 200, await resp.text()
        assert lifetime(await resp.text()) == (4, 0)

    assert lifetime(await ZoneTokenIssuer(MemoryStore()).issue("zone-1", None, 60)) == (60, 0)


def test_zone_tokens_signed_offline() -> None:
    token = issue_offline("zone-1", ["cp"], 3600, generate_private_key_pem(), kid=2)
    assert lifetime(token) == (3600, 0)


async def test_the_admin_user_token() -> None:
    store = MemoryStore()
    assert await ensure_admin_token(store)
    secret = await store.find("GlobalSecret", ADMIN_TOKEN_SECRET)
    assert secret is not None
    token = base64.b64decode(secret.spec["data"]).decode()
    assert lifetime(token) == (ADMIN_TOKEN_VALIDITY_SECONDS, 0)


async def test_user_tokens() -> None:
    assert lifetime(await user.issue(MemoryStore(), "ci", ["team-a"], 2 * 3600)) == (2 * 3600, 0)
