"""The etcd store against a protected etcd (tests/conftest.py): TLS with client certificates, and
etcd auth. A wrong CA, certificate or password is a clear error when the store opens, never a hang.
The same through `zonemesh-cp`: tests/integration/test_cp_process.py."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import EtcdServer, etcdctl, run_etcd
from etcd_secure import AUTH_PREFIX, PASSWORD, USER, EtcdPki, make_pki
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.base import EventKind, StoreError
from zonemesh.shared.store.etcd import EtcdStore
from zonemesh.shared.store.factory import EtcdAccess, open_store

pytestmark = pytest.mark.etcd

# A store that cannot connect must say so well within this (it retries an unreachable etcd for
# RPC_TIMEOUT, and gives up at once on what retrying cannot fix).
OPEN_LIMIT = 30.0
RPC_TIMEOUT = 5.0


async def open_etcd(endpoint: str, access: EtcdAccess, prefix: str = "") -> EtcdStore:
    prefix = prefix or f"/test-{uuid.uuid4().hex}"
    opening = EtcdStore.open(endpoint, prefix=prefix, rpc_timeout=RPC_TIMEOUT, access=access)
    return await asyncio.wait_for(opening, OPEN_LIMIT)


async def refusal(endpoint: str, access: EtcdAccess, prefix: str = "") -> str:
    with pytest.raises(StoreError) as info:
        store = await open_etcd(endpoint, access, prefix)
        await store.close()
    return str(info.value)


async def works(store: EtcdStore) -> None:
    """Writes, reads, and the watch (the stream that carries every other replica's changes)."""
    watch = store.watch(["Mesh"])
    try:
        name = f"m-{uuid.uuid4().hex[:8]}"
        await store.create(Resource(type="Mesh", name=name, spec={}))
        event = await asyncio.wait_for(watch.queue.get(), 10)
        assert event is not None and (event.kind, event.resource.name) == (EventKind.CREATED, name)
        assert (await store.get("Mesh", name)).name == name
    finally:
        watch.close()


# --- TLS, client certificates ----------------------------------------------------------------


def tls(pki: EtcdPki, **changes: Any) -> EtcdAccess:
    files = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    return EtcdAccess(**{**files, **changes})


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])  # etcd's certificate holds both
async def test_tls_with_a_client_certificate(etcd_tls_server: tuple[EtcdServer, EtcdPki], host: str) -> None:
    server, pki = etcd_tls_server
    store = await open_etcd(f"{host}:{server.port}", tls(pki))
    try:
        await works(store)
    finally:
        await store.close()


async def test_wrong_ca(etcd_tls_server: tuple[EtcdServer, EtcdPki]) -> None:
    server, pki = etcd_tls_server
    message = await refusal(server.endpoint, tls(pki, ca_file=str(pki.other_ca)))
    assert message.startswith(
        f"etcd at {server.endpoint}: etcd's certificate is not signed by the CA of etcd_ca_file ("
    )
    assert "CERTIFICATE_VERIFY_FAILED" in message


async def test_client_certificate_without_the_ca(etcd_tls_server: tuple[EtcdServer, EtcdPki]) -> None:
    server, pki = etcd_tls_server
    message = await refusal(server.endpoint, tls(pki, ca_file=""))
    assert message == "an etcd client certificate needs etcd's CA file (etcd_ca_file) too"


async def test_certificate_for_another_name(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", server_names=("localhost",))
    member = [f"--cert-file={pki.server_cert}", f"--key-file={pki.server_key}", f"--trusted-ca-file={pki.ca}"]
    with run_etcd(tmp_path / "etcd", "--client-cert-auth", *member, scheme="https") as server:
        message = await refusal(server.endpoint, tls(pki))  # 127.0.0.1, which the certificate does not name
    assert message.startswith(f"etcd at {server.endpoint}: etcd's certificate does not name the host of etcd_endpoints")


async def test_no_client_certificate(etcd_tls_server: tuple[EtcdServer, EtcdPki]) -> None:
    server, pki = etcd_tls_server
    message = await refusal(server.endpoint, EtcdAccess(ca_file=str(pki.ca)))
    assert message.startswith(f"etcd at {server.endpoint}: etcd refused the client certificate (etcd_cert_file)")


async def test_client_certificate_of_another_ca(etcd_tls_server: tuple[EtcdServer, EtcdPki]) -> None:
    server, pki = etcd_tls_server
    message = await refusal(server.endpoint, tls(pki, cert_file=str(pki.stranger_cert), key_file=str(pki.stranger_key)))
    assert message.startswith(f"etcd at {server.endpoint}: etcd refused the client certificate (etcd_cert_file)")


async def test_plaintext_to_a_tls_only_etcd(etcd_tls_server: tuple[EtcdServer, EtcdPki]) -> None:
    server, _ = etcd_tls_server
    message = await refusal(server.endpoint, EtcdAccess())
    assert message.startswith(f"cannot reach etcd at {server.endpoint}: UNAVAILABLE")


async def test_unreadable_tls_file(etcd_tls_server: tuple[EtcdServer, EtcdPki], tmp_path: Path) -> None:
    server, pki = etcd_tls_server
    missing = tmp_path / "nope.crt"
    message = await refusal(server.endpoint, tls(pki, ca_file=str(missing)))
    assert message == f"cannot read the etcd CA file {missing}: No such file or directory"


async def test_tls_takes_one_endpoint(etcd_tls_server: tuple[EtcdServer, EtcdPki]) -> None:
    server, pki = etcd_tls_server
    message = await refusal(f"127.0.0.2:{server.port},{server.endpoint}", tls(pki))
    assert message.startswith(f"etcd over TLS takes one endpoint (got 127.0.0.2:{server.port},{server.endpoint})")


# --- etcd auth -------------------------------------------------------------------------------


def granted() -> str:
    return f"{AUTH_PREFIX}/{uuid.uuid4().hex}"


async def test_auth_with_the_password(etcd_auth_server: EtcdServer) -> None:
    store = await open_etcd(etcd_auth_server.endpoint, EtcdAccess(username=USER, password=PASSWORD), granted())
    try:
        await works(store)
    finally:
        await store.close()


async def test_expired_and_outdated_tokens_are_renewed(etcd_auth_server: EtcdServer) -> None:
    store = await open_etcd(etcd_auth_server.endpoint, EtcdAccess(username=USER, password=PASSWORD), granted())
    try:
        await works(store)
        # etcd drops a token after its TTL (here 1-2 s; simple tokens: 5 minutes unused by default).
        await asyncio.sleep(3)
        await works(store)
        # A change of users or roles outdates every JWT issued before it.
        etcdctl(etcd_auth_server, "user", "add", f"u-{uuid.uuid4().hex[:8]}", "--new-user-password=x")
        await works(store)
    finally:
        await store.close()


async def test_password_from_a_file(etcd_auth_server: EtcdServer, tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")  # as `echo` writes it
    access = EtcdAccess(username=USER, password_file=str(password_file))
    store = await open_etcd(etcd_auth_server.endpoint, access, granted())
    try:
        await works(store)
    finally:
        await store.close()


async def test_wrong_password(etcd_auth_server: EtcdServer) -> None:
    message = await refusal(etcd_auth_server.endpoint, EtcdAccess(username=USER, password="guessed"), granted())
    assert message == (
        f"etcd at {etcd_auth_server.endpoint}: etcd refused the user or password (etcd_username, etcd_password "
        "or etcd_password_file) (INVALID_ARGUMENT: etcdserver: authentication failed, invalid user ID or password)"
    )
    assert "guessed" not in message


async def test_no_credentials(etcd_auth_server: EtcdServer) -> None:
    message = await refusal(etcd_auth_server.endpoint, EtcdAccess(), granted())
    assert message.startswith(f"etcd at {etcd_auth_server.endpoint}: etcd has auth enabled: give etcd_username")


async def test_prefix_outside_the_users_permissions(etcd_auth_server: EtcdServer) -> None:
    message = await refusal(etcd_auth_server.endpoint, EtcdAccess(username=USER, password=PASSWORD), "/elsewhere")
    assert message.startswith(
        f"etcd at {etcd_auth_server.endpoint}: the etcd user may not read and write the key prefix (etcd_prefix)"
    )


async def test_unreadable_password_file(etcd_auth_server: EtcdServer, tmp_path: Path) -> None:
    missing = tmp_path / "password"
    access = EtcdAccess(username=USER, password_file=str(missing))
    message = await refusal(etcd_auth_server.endpoint, access, granted())
    assert message == f"cannot read the etcd password file {missing}: No such file or directory"


async def test_open_store_passes_the_access(etcd_auth_server: EtcdServer) -> None:
    url = f"etcd://{etcd_auth_server.endpoint}?prefix={granted()}"
    store = await open_store(url, EtcdAccess(username=USER, password=PASSWORD))
    try:
        assert isinstance(store, EtcdStore)
        await works(store)
    finally:
        await store.close()


def test_access_never_shows_the_password() -> None:
    assert PASSWORD not in repr(EtcdAccess(username=USER, password=PASSWORD))


async def test_a_role_on_its_own_prefix_alone_is_enough_for_everything_a_control_plane_does(
    etcd_auth_server: EtcdServer,
) -> None:
    """A control plane whose etcd role may read and write ``{prefix}/`` and nothing else (the
    compose HA file gives global and zone-1 one each on one etcd: docs/deployment.md): reads,
    writes, transactions and the watch; leader election (a lease granted, kept alive, revoked with
    the leader and member keys attached); the leader's compactor, which reads the current revision
    (it read the key ``{prefix}`` itself, outside such a role: permission denied) and compacts
    (etcd 3.5 asks no role of a compaction). The same user is refused any other prefix."""
    from zonemesh.shared.leadership import EtcdElector
    from zonemesh.shared.store.etcd_compaction import compact, current_revision

    prefix = f"/cp-{uuid.uuid4().hex[:8]}"
    user, password = f"cp-{uuid.uuid4().hex[:8]}", "cp-secret"
    for command in (
        ["role", "add", user],
        ["role", "grant-permission", user, "--prefix=true", "readwrite", f"{prefix}/"],
        ["user", "add", user, f"--new-user-password={password}"],
        ["user", "grant-role", user, user],
    ):
        etcdctl(etcd_auth_server, *command)
    access = EtcdAccess(username=user, password=password)
    store = await open_etcd(etcd_auth_server.endpoint, access, prefix)
    elector = EtcdElector(store, "replica-1", ttl=2)
    try:
        await works(store)
        await elector.start()
        term = await asyncio.wait_for(elector.next_term(), 10)
        assert elector.is_leader() and await elector.members() == {"replica-1"}
        await term.store.create(Resource(type="Mesh", name="fenced", spec={}))  # a write guarded by the term
        revision = await current_revision(store)
        assert await compact(store, revision - 1) is True
        term.released.set()  # as the component manager does once the leader components stopped
        await elector.stop()  # revokes the lease the leader and member keys are attached to
        assert not elector._stale_leases
    finally:
        await elector.stop()
        await store.close()
    for elsewhere in ("/zonemesh", f"{prefix}-other"):  # another's prefix; one that only starts like it
        message = await refusal(etcd_auth_server.endpoint, access, elsewhere)
        assert "may not read and write the key prefix" in message, elsewhere
