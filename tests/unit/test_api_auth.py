"""Who may do what on the HTTP API (shared/api/auth.py, shared/tokens/user.py), over a real aiohttp
server on 127.0.0.1: the full decision matrix, direct-loopback hardening, user token issuance,
and `zonemesh-cp admin-token`. (Real control plane processes: tests/integration/test_user_tokens.py.)"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from zonemesh.shared import config as cfg
from zonemesh.shared.api.app import build_api_app
from zonemesh.shared.api.auth import ADMIN_GROUP, ensure_admin_token
from zonemesh.shared.resources.manager import Mode, ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store import Store
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.store.sqlite import SqliteStore
from zonemesh.shared.tokens import dataplane, user
from zonemesh.shared.tokens.keys import generate_private_key_pem, load_private_key
from zonemesh.shared.tokens.tokens import USER_TOKEN_REVOCATIONS, user_token_keys

from zonemesh.cp import admin_token

Client = TestClient[web.Request, web.Application]

TIMEOUT = {
    "type": "MeshTimeout",
    "mesh": "default",
    "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "3s"}}],
    },
}

# Set by a test to make the server see the client on another address: loopback sockets cannot
# produce a non-loopback peer, so this one fault is injected (as tests/unit/test_api.py does).
REMOTE = web.AppKey("remote_override", list[str])


@web.middleware
async def _fake_remote(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.app[REMOTE]:
        request = request.clone(remote=request.app[REMOTE][0])
    response: web.StreamResponse = await handler(request)
    return response


async def serve(store: Store, localhost_is_admin: bool, remote: str | None = None) -> Client:
    manager = ResourceManager(store, mode=Mode.STANDALONE)
    if await store.find("Mesh", "default") is None:
        await manager.ensure_default_mesh()
    app = build_api_app(manager, {"tagline": "zonemesh"}, {}, localhost_is_admin=localhost_is_admin)
    app[REMOTE] = [remote] if remote else []
    app.middlewares.insert(0, _fake_remote)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def sign_with(pem: bytes, kid: str, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, load_private_key(pem), algorithm="RS256", headers={"kid": kid})  # type: ignore[arg-type]


async def revoke(store: Store, *tokens: str) -> None:
    data = base64.b64encode(",".join(jti_of(t) for t in tokens).encode()).decode()
    existing = await store.find("GlobalSecret", USER_TOKEN_REVOCATIONS)
    if existing is None:
        await store.create(Resource(type="GlobalSecret", name=USER_TOKEN_REVOCATIONS, spec={"data": data}))
    else:
        existing.spec = {"data": data}
        await store.update(existing)


@dataclass
class Tokens:
    """One token of each kind; every invalid one is in the admin group, so only its flaw refuses it."""

    by_kind: dict[str, str | None]


async def make_tokens(store: Store) -> Tokens:
    await ensure_admin_token(store)  # creates user-token-signing-key-1
    keys = user_token_keys(store)
    rotated_out = await user.issue(store, "old-admin", [ADMIN_GROUP], 3600)  # signed with key 1
    await keys.add()  # key 2 signs from now on
    await store.delete("GlobalSecret", keys.secret_name(1))  # key 1 rotated out
    key2 = await keys.private_key(2)
    assert key2 is not None
    now = int(time.time())
    revoked = await user.issue(store, "carol", [ADMIN_GROUP], 3600)
    await revoke(store, revoked)
    admin_claims = {"Name": "mallory", "Groups": [ADMIN_GROUP], "jti": str(uuid.uuid4())}
    return Tokens(
        {
            "none": None,
            "admin": await user.issue(store, "alice", [ADMIN_GROUP], 3600),
            "non-admin": await user.issue(store, "bob", ["team-a"], 3600),
            "expired": sign_with(key2, "2", {**admin_claims, "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}),
            "revoked": revoked,
            "rotated-out": rotated_out,
            "forged": sign_with(
                generate_private_key_pem(), "2", {**admin_claims, "iat": now, "nbf": now, "exp": now + 3600}
            ),
        }
    )


INVALID_REASONS = {
    "expired": "token expired",
    "revoked": "has been revoked",
    "rotated-out": "signing key 1 not found",
    "forged": "signature verification failed",
}
OK = {"read": 200, "sensitive read": 200, "write": 201}


def expected(loopback: bool, localhost_is_admin: bool, token: str, access: str) -> int:
    """The rule, as docs/api.md states it."""
    if token in INVALID_REASONS:
        return 401  # a bad token is refused everywhere, reads and loopback included
    if token == "admin" or access == "read":
        return OK[access]
    if token == "non-admin":
        return 403
    return OK[access] if loopback and localhost_is_admin else 401


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    store = MemoryStore()
    yield store
    await store.close()


@pytest.mark.parametrize("localhost_is_admin", [True, False], ids=["localhost-is-admin", "localhost-not-admin"])
async def test_decision_matrix(store: Store, localhost_is_admin: bool) -> None:
    tokens = await make_tokens(store)
    wrong: list[str] = []
    writes = 0
    for loopback in (True, False):
        client = await serve(store, localhost_is_admin, remote=None if loopback else "192.0.2.10")
        try:
            for kind, token in tokens.by_kind.items():
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                for access in OK:
                    if access == "read":
                        resp = await client.get("/meshes/default/meshtimeouts", headers=headers)
                    elif access == "sensitive read":
                        resp = await client.get("/global-secrets", headers=headers)
                    else:
                        writes += 1
                        resp = await client.put(
                            f"/meshes/default/meshtimeouts/t{writes}", json=TIMEOUT, headers=headers
                        )
                    want = expected(loopback, localhost_is_admin, kind, access)
                    body = await resp.json()
                    where = f"{'loopback' if loopback else 'remote'} {kind} {access}"
                    if resp.status != want:
                        wrong.append(f"{where}: {resp.status} (want {want}): {body.get('detail')}")
                    elif kind in INVALID_REASONS and INVALID_REASONS[kind] not in body["detail"]:
                        wrong.append(f"{where}: 401 without the reason {INVALID_REASONS[kind]!r}: {body['detail']}")
                    elif want == 403 and not ("'bob'" in body["detail"] and ADMIN_GROUP in body["detail"]):
                        wrong.append(f"{where}: 403 does not say who and what is missing: {body['detail']}")
        finally:
            await client.close()
    assert not wrong, "\n".join(wrong)


async def test_the_401_says_why_a_loopback_client_is_not_admin(store: Store) -> None:
    await ensure_admin_token(store)
    client = await serve(store, localhost_is_admin=False)
    try:
        resp = await client.put("/meshes/default/meshtimeouts/t1", json=TIMEOUT)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert "api_localhost_is_admin is off" in (await resp.json())["detail"]
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"X-Forwarded-For": "203.0.113.9"}, "proxy header X-Forwarded-For"),
        ({"Forwarded": "for=203.0.113.9"}, "proxy header Forwarded"),
        ({"X-Real-IP": "203.0.113.9"}, "proxy header X-Real-IP"),
        ({"Host": "rebound.example:5681"}, "Host header 'rebound.example:5681' is not a loopback"),
        ({"Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site: cross-site"),
        ({"Origin": "http://attacker.example"}, "another origin ('http://attacker.example')"),
        ({"Origin": "http://127.0.0.1:1"}, "another origin"),
        ({"Origin": "null"}, "another origin"),
    ],
)
async def test_only_a_direct_loopback_request_is_admin(store: Store, headers: dict[str, str], why: str) -> None:
    """A local reverse proxy's clients, a DNS-rebound name or a web page in the operator's browser
    reach the API over loopback too; none of them is the local operator."""
    await ensure_admin_token(store)
    client = await serve(store, localhost_is_admin=True)
    try:
        resp = await client.put("/meshes/default/meshtimeouts/t1", json=TIMEOUT, headers=headers)
        assert resp.status == 401
        assert why in (await resp.json())["detail"]
        # Reads of ordinary resources stay open to them, as to anyone.
        assert (await client.get("/meshes/default/meshtimeouts", headers=headers)).status == 200
    finally:
        await client.close()


async def test_same_origin_and_localhost_names_are_direct(store: Store) -> None:
    await ensure_admin_token(store)
    client = await serve(store, localhost_is_admin=True)
    try:
        port = client.port
        for i, headers in enumerate(
            [{"Origin": f"http://127.0.0.1:{port}"}, {"Host": f"localhost:{port}"}, {"Sec-Fetch-Site": "same-origin"}]
        ):
            resp = await client.put(f"/meshes/default/meshtimeouts/t{i}", json=TIMEOUT, headers=headers)
            assert resp.status == 201, (headers, await resp.text())
    finally:
        await client.close()


@pytest.mark.parametrize("header", ["Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer not-a-jwt", "", "token abc"])
async def test_a_bad_authorization_header_is_never_ignored(store: Store, header: str) -> None:
    """Even where no token at all would pass (a read, from loopback admin): 401, not anonymous."""
    await ensure_admin_token(store)
    client = await serve(store, localhost_is_admin=True)
    try:
        for path in ("/", "/meshes/default/meshtimeouts"):
            resp = await client.get(path, headers={"Authorization": header})
            assert resp.status == 401, (path, header)
            assert (await resp.json())["title"] == "Unauthorized"
    finally:
        await client.close()


async def test_tokens_of_other_kinds_are_not_user_tokens(store: Store) -> None:
    await ensure_admin_token(store)
    client = await serve(store, localhost_is_admin=True)
    try:
        dp_token = await dataplane.issue(store, dataplane.DataplaneClaims(mesh="default", name="web-1"), 3600)
        resp = await client.get("/meshes", headers={"Authorization": f"Bearer {dp_token}"})
        assert resp.status == 401
        assert "invalid token" in (await resp.json())["detail"]
    finally:
        await client.close()


# --- POST /tokens/user ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"groups": ["a"], "validFor": "1h"}, ["name"]),
        ({"name": " ", "validFor": "1h"}, ["name"]),
        ({"name": "x"}, ["validFor"]),
        ({"name": "x", "validFor": "soon"}, ["validFor"]),
        ({"name": "x", "validFor": "0s"}, ["validFor"]),
        ({"name": "x", "groups": "mesh-system:admin", "validFor": "1h"}, ["groups"]),
        ({"name": "x", "groups": [""], "validFor": "1h"}, ["groups"]),
        ({"name": "x", "group": "a", "validFor": "1h"}, ["group"]),
        ({"validFor": -1, "name": 3}, ["name", "validFor"]),
        (["name"], ["<body>"]),
    ],
)
async def test_user_token_requests_are_validated(store: Store, body: Any, fields: list[str]) -> None:
    await ensure_admin_token(store)
    client = await serve(store, localhost_is_admin=True)
    try:
        resp = await client.post("/tokens/user", json=body)
        assert resp.status == 400
        assert sorted(p["field"] for p in (await resp.json())["invalid_parameters"]) == sorted(fields)
    finally:
        await client.close()


async def test_user_tokens_are_signed_by_the_newest_key_and_need_an_admin(store: Store) -> None:
    await ensure_admin_token(store)
    client = await serve(store, localhost_is_admin=False, remote="192.0.2.10")
    try:
        assert (await client.post("/tokens/user", json={"name": "a", "validFor": "1h"})).status == 401
        admin = await user.issue(store, "root", [ADMIN_GROUP], 600)
        auth = {"Authorization": f"Bearer {admin}"}
        resp = await client.post("/tokens/user", json={"name": "ci", "groups": ["team-a", "team-a"], "validFor": "2h"})
        assert resp.status == 401
        resp = await client.post(
            "/tokens/user", json={"name": "ci", "groups": ["team-a", "team-a"], "validFor": "2h"}, headers=auth
        )
        assert resp.status == 200 and resp.content_type == "text/plain"
        token = await resp.text()
        claims = jwt.decode(token, options={"verify_signature": False})
        assert (claims["Name"], claims["Groups"]) == ("ci", ["team-a"])
        assert jwt.get_unverified_header(token)["kid"] == "1"
        assert abs((claims["exp"] - claims["iat"]) - 2 * 3600) <= 10

        # A non-admin user may not issue tokens (nor give itself the admin group).
        ci = {"Authorization": f"Bearer {token}"}
        body = {"name": "ci", "groups": [ADMIN_GROUP], "validFor": "1h"}
        resp = await client.post("/tokens/user", json=body, headers=ci)
        assert resp.status == 403

        await user_token_keys(store).add()  # rotation: key 2 signs new tokens
        newer = await (await client.post("/tokens/user", json={"name": "ci", "validFor": "1h"}, headers=auth)).text()
        assert jwt.get_unverified_header(newer)["kid"] == "2"
        assert (await client.get("/meshes", headers={"Authorization": f"Bearer {newer}"})).status == 200
    finally:
        await client.close()


# --- the setting --------------------------------------------------------------------------------


def test_localhost_is_admin_setting() -> None:
    assert cfg.load(None, env={}).api_localhost_is_admin is True  # Kuma's default
    assert cfg.load(None, env={"ZONEMESH_API_LOCALHOST_IS_ADMIN": "false"}).api_localhost_is_admin is False
    assert cfg.load(None, env={"KUMA_API_SERVER_AUTHN_LOCALHOST_IS_ADMIN": "false"}).api_localhost_is_admin is False
    assert settings("--no-api-localhost-is-admin").api_localhost_is_admin is False
    with pytest.raises(cfg.ConfigError, match="expected true or false"):
        cfg.load(None, env={"ZONEMESH_API_LOCALHOST_IS_ADMIN": "maybe"})


# --- zonemesh-cp admin-token ------------------------------------------------------------------


def settings(*args: str) -> cfg.Config:
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser)
    return cfg.load(parser.parse_args(args), env={})


async def _store_with_admin_token(db: Path) -> str:
    store = await SqliteStore.open(db)
    try:
        await ensure_admin_token(store)
        stored = await store.get("GlobalSecret", "admin-user-token")
        return base64.b64decode(stored.spec["data"]).decode()
    finally:
        await store.close()


async def _rotate_out_key_1(db: Path) -> None:
    store = await SqliteStore.open(db)
    try:
        await user_token_keys(store).add()
        await store.delete("GlobalSecret", user_token_keys(store).secret_name(1))
    finally:
        await store.close()


def test_admin_token_command_reads_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "zonemesh.db"
    config = settings("--data-dir", str(tmp_path))
    assert admin_token(config) == 1
    assert "no store at" in capsys.readouterr().err
    assert not db.exists()  # looking did not create one

    token = asyncio.run(_store_with_admin_token(db))
    capsys.readouterr()  # the test's own setup logs
    assert admin_token(config) == 0
    assert capsys.readouterr().out.strip() == token

    assert admin_token(settings("--store", "memory")) == 1
    assert "memory store" in capsys.readouterr().err

    asyncio.run(_rotate_out_key_1(db))
    assert admin_token(config) == 1
    err = capsys.readouterr().err
    assert "would be refused (signing key 1 not found" in err and token not in err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another uid")
def test_admin_token_command_refuses_another_users_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "zonemesh.db"
    asyncio.run(_store_with_admin_token(db))
    os.chown(db, 4242, 4242)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert admin_token(settings("--data-dir", str(tmp_path))) == 1
    assert "belongs to uid 4242: run this as that user" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
