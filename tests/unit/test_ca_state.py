"""MeshCAState: which CA issues and which CAs proxies trust, stepped by what proxies ACKed."""

from __future__ import annotations

import datetime as dt
import time

from zonemesh.shared.ca import MeshCA
from zonemesh.shared.ca.keeper import MeshCaKeeper
from zonemesh.shared.ca.material import load_signing_ca
from zonemesh.shared.ca.state import REISSUING, STABLE, TRUSTING, CaEntry, ProxyView, advance, issuing_of, trusted_of
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.store.memory import MemoryStore

from zonemesh.testing import make_ca_cert

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def entry(name: str) -> CaEntry:
    ca = make_ca_cert(name)
    return CaEntry.of(load_signing_ca(name, ca.cert_pem, ca.key_pem, time.time()))


def proxy(name: str, trusts: list[CaEntry], issued: list[CaEntry], online: bool = True) -> ProxyView:
    roots = frozenset(f for e in trusts for f in e.anchor_fingerprints())
    return ProxyView(name, online, roots, tuple(e.fingerprint for e in issued))


def test_a_rotation_waits_for_every_online_proxy_at_each_step() -> None:
    old, new = entry("old"), entry("new")
    state = advance(None, old, [], NOW)
    assert state["phase"] == STABLE and [e.backend for e in trusted_of(state)] == ["old"]

    # The target changes: the new CA is trusted, the old one keeps issuing until every proxy trusts both.
    behind = proxy("a", [old], [old])
    offline = proxy("gone", [old], [old], online=False)
    state = advance(state, new, [behind, offline], NOW)
    assert state["phase"] == TRUSTING
    assert issuing_of(state).backend == "old"  # type: ignore[union-attr]
    assert {e.backend for e in trusted_of(state)} == {"old", "new"}
    assert state["waiting"] == {"count": 1, "proxies": ["a"]}  # the offline proxy does not hold it back

    # Every proxy trusts the new root: the new CA issues; both stay trusted.
    state = advance(state, new, [proxy("a", [old, new], [old])], NOW)
    assert state["phase"] == REISSUING and issuing_of(state).backend == "new"  # type: ignore[union-attr]
    assert {e.backend for e in trusted_of(state)} == {"old", "new"}

    # Only once every proxy holds a certificate of the new CA does the old one leave the trust.
    state = advance(state, new, [proxy("a", [old, new], [new]), proxy("b", [old, new], [old])], NOW)
    assert state["phase"] == REISSUING and state["waiting"]["proxies"] == ["b"]
    state = advance(state, new, [proxy("a", [old, new], [new]), proxy("b", [old, new], [new])], NOW)
    assert state["phase"] == STABLE and [e.backend for e in trusted_of(state)] == ["new"]


async def test_the_keeper_starts_stable_and_holds_issuance_until_proxies_trust_the_new_ca() -> None:
    store = MemoryStore()
    mesh = Resource(
        type="Mesh",
        name="default",
        spec={
            "mtls": {
                "enabledBackend": "ca-1",
                "backends": [{"name": "ca-1", "type": "builtin"}, {"name": "ca-2", "type": "builtin"}],
            }
        },
    )
    await store.create(mesh)
    keeper = MeshCaKeeper(store)
    await keeper.keep("default")
    ca = MeshCA(store)
    first = await ca.issue("default", "web")
    assert first.backend == "ca-1"
    await store.create(
        Resource(
            type="DataplaneInsight",
            name="web-1",
            mesh="default",
            spec={
                "subscriptions": [{"id": "1", "controlPlaneInstanceId": "cp"}],
                "mTLS": {"issuedCAFingerprint": first.ca_fingerprint, "supportedCAFingerprints": []},
            },
        )
    )
    mesh = await store.get("Mesh", "default")
    mesh.spec["mtls"]["enabledBackend"] = "ca-2"
    await store.update(mesh)
    await keeper.keep("default")
    state = await store.get("MeshCAState", "default", "default")
    assert state.spec["phase"] == TRUSTING and state.spec["waiting"]["proxies"] == ["web-1"]
    assert (await ca.issue("default", "web")).backend == "ca-1"  # web-1 does not trust ca-2 yet
    trust = await ca.trust("default")
    assert {e.backend for e in trust.entries} == {"ca-1", "ca-2"}
