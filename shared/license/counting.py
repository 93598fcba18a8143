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
    """Incremental count of active proxies from Dataplane and DataplaneInsight events."""

    def __init__(self) -> None:
        self._counted: set[tuple[str, str]] = set()
        self._offline: set[tuple[str, str]] = set()

    def upsert(self, res: Resource) -> None:
        key = (res.mesh, res.name)
        if res.type == "Dataplane":
            (self._counted.add if counted(res) else self._counted.discard)(key)
        elif res.type == "DataplaneInsight":
            (self._offline.add if offline(res.spec) else self._offline.discard)(key)

    def delete(self, res: Resource) -> None:
        key = (res.mesh, res.name)
        if res.type == "Dataplane":
            self._counted.discard(key)
        elif res.type == "DataplaneInsight":
            self._offline.discard(key)

    @property
    def active(self) -> int:
        return len(self._counted - self._offline)
