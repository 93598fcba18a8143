"""MeshCAState: which CA issues a mesh's certificates and which CAs its proxies trust, and the
rotation rule that moves it (pure: ``advance``).

One per mesh with mTLS (named after the mesh), written by the control plane that drives
rotations (keeper.py: global, or a standalone control plane) and carried to zones by KDS::

    phase: Stable | Trusting | Reissuing
    target:  {backend, fingerprint}        # the CA of mtls.enabledBackend
    issuing: {backend, fingerprint}        # the CA workload certificates come from now
    trusted: [{backend, fingerprint, anchors: [PEM], notAfter}]   # what every proxy trusts
    waiting: {count, proxies: [...]}       # who the phase waits for (the first 20)
    since:   when the phase began

A rotation (the enabled backend's CA is not the target any more) runs in three steps, each
entered only when every online proxy, in every zone, confirmed the step before it (its
DataplaneInsight says what it ACKed: ``mTLS.supportedCAFingerprints`` and ``issuedCAFingerprint``):

1. ``Trusting``: the new CA joins ``trusted``; certificates still come from the old one;
2. ``Reissuing``: every proxy trusts the new root: the new CA issues;
3. ``Stable``: every proxy holds a certificate of the new CA: the others leave ``trusted``.

So no proxy ever presents a certificate a peer does not trust. A proxy that is offline (its
insight's last subscription has a disconnect time) does not hold a step back: it gets the
current state when it reconnects. CAs are told apart by the SHA-256 fingerprint of the signing
certificate, so a rotation between two backends under one root skips step 1's wait.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from zonemesh.shared.ca.material import SigningCA, fingerprint
from zonemesh.shared.resources.model import format_time

STATE_TYPE = "MeshCAState"
STABLE, TRUSTING, REISSUING = "Stable", "Trusting", "Reissuing"
MAX_WAITING_NAMES = 20


@functools.lru_cache(maxsize=256)
def anchor_fingerprint(anchor_pem: str) -> str:
    return fingerprint(x509.load_pem_x509_certificate(anchor_pem.encode()))


@dataclass(frozen=True)
class CaRef:
    backend: str
    fingerprint: str

    def as_dict(self) -> dict[str, str]:
        return {"backend": self.backend, "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class CaEntry:
    """A CA as the state keeps it: enough for zones to trust it without its Secrets."""

    backend: str
    fingerprint: str
    anchors: tuple[str, ...]  # PEM of the roots a proxy must trust for this CA
    not_after: str = ""  # when the CA (its first expiring certificate) expires

    @classmethod
    def of(cls, ca: SigningCA) -> CaEntry:
        return cls(
            backend=ca.backend,
            fingerprint=ca.fingerprint,
            anchors=tuple(a.decode() for a in ca.anchors),
            not_after=format_time(ca.not_after) or "",
        )

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CaEntry:
        return cls(
            backend=str(doc.get("backend") or ""),
            fingerprint=str(doc.get("fingerprint") or ""),
            anchors=tuple(str(a) for a in doc.get("anchors") or ()),
            not_after=str(doc.get("notAfter") or ""),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "fingerprint": self.fingerprint,
            "anchors": list(self.anchors),
            "notAfter": self.not_after,
        }

    @property
    def ref(self) -> CaRef:
        return CaRef(self.backend, self.fingerprint)

    def anchor_pems(self) -> dict[str, str]:
        """Anchor fingerprint -> PEM."""
        return {anchor_fingerprint(a): a for a in self.anchors}

    def anchor_fingerprints(self) -> frozenset[str]:
        return frozenset(anchor_fingerprint(a) for a in self.anchors)


def _ref(doc: Any) -> CaRef | None:
    if not isinstance(doc, Mapping) or not doc.get("fingerprint"):
        return None
    return CaRef(str(doc.get("backend") or ""), str(doc["fingerprint"]))


def issuing_of(spec: Mapping[str, Any]) -> CaRef | None:
    return _ref(spec.get("issuing"))


def target_of(spec: Mapping[str, Any]) -> CaRef | None:
    return _ref(spec.get("target"))


def trusted_of(spec: Mapping[str, Any]) -> list[CaEntry]:
    return [CaEntry.from_dict(e) for e in spec.get("trusted") or () if isinstance(e, Mapping)]


def backend_names(entries: Iterable[CaEntry], fingerprints: Iterable[str]) -> list[str]:
    """The backends whose every root is among ``fingerprints`` (a proxy's trusted roots)."""
    held = set(fingerprints)
    return sorted({e.backend for e in entries if e.anchor_fingerprints() and e.anchor_fingerprints() <= held})


@dataclass(frozen=True)
class ProxyView:
    """What a rotation needs to know of one proxy, from its DataplaneInsight."""

    name: str  # as listed in ``waiting`` (``<zone>.<name>`` on global)
    online: bool
    supported: frozenset[str]  # fingerprints of the roots it ACKed as trusted
    issued: tuple[str, ...]  # fingerprints of the CAs that issued the certificates it ACKed


def proxy_view(name: str, insight: Mapping[str, Any]) -> ProxyView:
    subs = insight.get("subscriptions") or []
    online = bool(subs) and isinstance(subs[-1], Mapping) and not subs[-1].get("disconnectTime")
    mtls = insight.get("mTLS") or {}
    issued = mtls.get("issuedCAFingerprints") or (
        [mtls["issuedCAFingerprint"]] if mtls.get("issuedCAFingerprint") else []
    )
    return ProxyView(
        name=name,
        online=online,
        supported=frozenset(str(f) for f in mtls.get("supportedCAFingerprints") or ()),
        issued=tuple(str(f) for f in issued),
    )


def stable(target: CaEntry, now: dt.datetime) -> dict[str, Any]:
    return {
        "phase": STABLE,
        "target": target.ref.as_dict(),
        "issuing": target.ref.as_dict(),
        "trusted": [target.as_dict()],
        "waiting": {"count": 0, "proxies": []},
        "since": format_time(now),
    }


def _waiting(proxies: Sequence[ProxyView]) -> dict[str, Any]:
    return {"count": len(proxies), "proxies": sorted(p.name for p in proxies)[:MAX_WAITING_NAMES]}


def advance(
    current: Mapping[str, Any] | None, target: CaEntry, proxies: Iterable[ProxyView], now: dt.datetime
) -> dict[str, Any]:
    """The next state of a mesh whose enabled backend's CA is ``target``, given its proxies.

    Pure: the same inputs give the same state (``since`` moves only when the phase changes)."""
    if current is None or target_of(current) is None or issuing_of(current) is None:
        return stable(target, now)
    online = [p for p in proxies if p.online]
    trusted = trusted_of(current)
    issuing = issuing_of(current)
    assert issuing is not None
    phase = str(current.get("phase") or STABLE)
    if target_of(current) != target.ref:
        # A new target (or a target changed in the middle of a rotation): it joins the trusted
        # CAs, and the CA that issues now keeps issuing until every proxy trusts the new one.
        trusted = [e for e in trusted if e.fingerprint != target.fingerprint] + [target]
        phase = TRUSTING
    else:
        trusted = [target if e.fingerprint == target.fingerprint else e for e in trusted]
    waiting: list[ProxyView] = []
    if phase == TRUSTING:
        if issuing.fingerprint == target.fingerprint:
            phase = REISSUING  # back to the CA that still issues: nothing new to trust
        else:
            waiting = [p for p in online if not target.anchor_fingerprints() <= p.supported]
            if not waiting:
                phase, issuing = REISSUING, target.ref
    if phase == REISSUING:
        waiting = [p for p in online if not p.issued or any(f != target.fingerprint for f in p.issued)]
        if not waiting:
            phase, trusted = STABLE, [target]
    changed = phase != current.get("phase")
    return {
        "phase": phase,
        "target": target.ref.as_dict(),
        "issuing": issuing.as_dict(),
        "trusted": [e.as_dict() for e in trusted],
        "waiting": _waiting(waiting),
        "since": format_time(now) if changed else current.get("since") or format_time(now),
    }


__all__ = [
    "REISSUING",
    "STABLE",
    "STATE_TYPE",
    "TRUSTING",
    "CaEntry",
    "CaRef",
    "ProxyView",
    "advance",
    "anchor_fingerprint",
    "backend_names",
    "issuing_of",
    "proxy_view",
    "stable",
    "target_of",
    "trusted_of",
]
