"""Which policies an Envoy NACK is due to.

A proxy's snapshot says where its config came from (``Snapshot.applied``: every policy selecting
the proxy, with its store version; ``Snapshot.patched_by``: per type URL the policies that changed
its resources after generation, MeshProxyPatch). When Envoy refuses version V of a type:

- the policies that patched resources of that type in V are responsible (exact);
- else, those selecting the proxy in V that are new or changed since the config of that type the
  proxy last accepted (the change that produced V); on a proxy's first config, all of them.

The xDS server logs them with the NACK (``xds_nack``, ``policies=``) and the DataplaneInsight
shows them (``lastErrorPolicies``). A NACK of a version the proxy's snapshot has moved past
already (a newer config is on its way) is not attributed: nothing says what V held.
"""

from __future__ import annotations

from typing import Any

from zonemesh.zone_cp.xds.cache import SnapshotCache

Applied = frozenset[tuple[str, str, int]]


class NackAttribution:
    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        # node key -> type URL -> the policies of the config of that type the proxy last accepted.
        # By node first: one small dict per proxy rather than a (node, type) key per type, and a
        # stream's close drops its proxy's entries without going over every proxy's.
        self._accepted: dict[str, dict[str, Applied]] = {}

    async def ack(self, info: Any, type_url: str, version: str) -> None:
        node = info.identity.key
        snapshot = self.cache.snapshot(node)
        typed = snapshot.types.get(type_url) if snapshot is not None else None
        if snapshot is not None and typed is not None and typed.version == version:
            accepted = self._accepted.get(node)
            if accepted is None:
                accepted = self._accepted[node] = {}
            accepted[type_url] = snapshot.applied

    async def stream_close(self, info: Any) -> None:
        self._accepted.pop(info.identity.key, None)

    def install(self, callbacks: Any) -> None:
        """Register on the xDS server's ``Callbacks`` (its ACK hook, and ``attribute``)."""
        callbacks.ack.append(self.ack)
        callbacks.stream_close.append(self.stream_close)
        callbacks.attribute = self.responsible

    def responsible(self, node: str, type_url: str, version: str) -> list[str]:
        """The policies (``Type/name``) Envoy's refusal of ``version`` of ``type_url`` is due to."""
        snapshot = self.cache.snapshot(node)
        typed = snapshot.types.get(type_url) if snapshot is not None else None
        if snapshot is None or typed is None or typed.version != version:
            return []
        patched = snapshot.patched_by.get(type_url)
        if patched:
            return list(patched)
        before = self._accepted.get(node, {}).get(type_url, frozenset())
        return sorted({f"{kind}/{name}" for kind, name, _ in snapshot.applied - before})
