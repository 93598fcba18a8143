"""What the license counts: standard data plane proxies (sidecars), not gateways, ingresses or egresses.

Zone ingresses and egresses are their own resource types (ZoneIngress / ZoneEgress) and are never
looked at; a Dataplane with ``networking.gateway`` (builtin or delegated) is not counted.
A counted proxy is *active* unless its DataplaneInsight says every stream it had is closed:
a proxy that has just registered (no stream yet) is active.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.types.dataplane import is_gateway


def counted(dataplane: Resource) -> bool:
    return dataplane.type == "Dataplane" and not is_gateway(dataplane)


def offline(insight_spec: Mapping[str, Any] | None) -> bool:
    subs = (insight_spec or {}).get("subscriptions") or []
    return bool(subs) and all(isinstance(s, Mapping) and s.get("disconnectTime") for s in subs)


class ActiveCount:
    """Incremental count of active proxies from Dataplane and DataplaneInsight events.

    ``active`` is kept as a number, adjusted per event: reading it is O(1), so a zone uploading
    10,000 Dataplanes costs 10,000 small updates, not 10,000 recounts.
    """

    def __init__(self) -> None:
        self._counted: set[tuple[str, str]] = set()
        self._offline: set[tuple[str, str]] = set()
        self._active = 0

    def _is_active(self, key: tuple[str, str]) -> bool:
        return key in self._counted and key not in self._offline

    def _apply(self, key: tuple[str, str], members: set[tuple[str, str]], present: bool) -> None:
        before = self._is_active(key)
        (members.add if present else members.discard)(key)
        self._active += int(self._is_active(key)) - int(before)

    def upsert(self, res: Resource) -> None:
        key = (res.mesh, res.name)
        if res.type == "Dataplane":
            self._apply(key, self._counted, counted(res))
        elif res.type == "DataplaneInsight":
            self._apply(key, self._offline, offline(res.spec))

    def delete(self, res: Resource) -> None:
        key = (res.mesh, res.name)
        if res.type == "Dataplane":
            self._apply(key, self._counted, False)
        elif res.type == "DataplaneInsight":
            self._apply(key, self._offline, False)

    @property
    def active(self) -> int:
        return self._active
