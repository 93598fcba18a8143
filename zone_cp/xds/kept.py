"""Messages kept across rounds by what they are built from, as their encoding.

A mesh-wide change of one policy (the default MeshTimeout's ``to``) changes every proxy's routes
and nothing else, yet a round built every other piece anew and serialized it again: each
destination's ClusterLoadAssignment, each caller identity's mTLS cluster, each outbound listener,
each workload certificate's secret (an app's local cluster is kept with its inbound listener:
``MeshContext.placed``). ``Kept`` holds such a piece across
rounds under a key made of everything it is built from (content, never a name or a version
alone: a wrong reuse would give a proxy stale config), plus ``inputs`` compared by equality when
they are not hashable (the endpoints of a service). It holds the piece's encoded ``Any`` as the
round's SnapshotBuilder made it (the bytes the snapshots hold: no memory of its own; a message
object would cost kilobytes each), and a later round asking for the same key with equal inputs
gets a message parsed back from those bytes, with its encoding known to that round's
SnapshotBuilder (``MeshContext.encoded``): neither built nor serialized again. The reconciler
keeps one ``Kept`` per mesh; a context built without one gets a fresh one (nothing reused).

Entries not used by the latest round are dropped once there are more than twice as many as the
most one round used (and more than ``KEPT_MIN``): a Dataplane gone or a policy changed leaves its
old pieces behind only until then.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

KEPT_MIN = 1024  # entries kept whatever the rounds use (a small mesh never prunes)


@dataclass(slots=True)
class _Entry:
    kind: type[Message]
    type_url: str
    inputs: Any
    data: bytes = b""  # its encoded Any, once a round made it
    version: str = ""
    offset: int = 0  # where the message's own bytes start in ``data``
    last: int = -1  # the last round that used it


@dataclass
class Kept:
    """One mesh's pieces kept across rounds (module docstring)."""

    entries: dict[Hashable, _Entry] = field(default_factory=dict)
    round: int = 0
    used: int = 0  # entries this round used
    peak: int = 0  # the most entries one round used
    # This round's entries built anew, with their message: ``after_round`` records their encoding.
    _built: list[tuple[_Entry, Message]] = field(default_factory=list)
    # Not messages, also kept across rounds (policies/__init__.py): the digests of policies' content,
    # by the policy object (which an entry holds, so its id stays its own); and per policy type,
    # the policies of that type in a round and the matches found with them, by what matching
    # reads of a proxy: while a type's policies are the very same objects, so are its matches.
    digests: dict[Any, tuple[Any, bytes]] = field(default_factory=dict)
    matches: dict[str, tuple[tuple[Any, ...], dict[Any, Any]]] = field(default_factory=dict)

    def message(
        self,
        key: Hashable,
        type_url: str,
        build: Callable[[], M],
        encoded: dict[int, tuple[Any, bytes, str]],
        inputs: Any = None,
    ) -> M:
        """The message for ``key`` (and ``inputs``, compared by equality): parsed from the encoding
        kept from an earlier round, that encoding put in ``encoded`` (the round's
        ``MeshContext.encoded``); else ``build()``'s. ``key`` and ``inputs`` together must name
        everything ``build`` reads. Call it once per key per round (callers memoize in ``ctx.memo``)."""
        entry = self.entries.get(key)
        if entry is not None and entry.data and entry.type_url == type_url and entry.inputs == inputs:
            message = entry.kind.FromString(entry.data[entry.offset :])
            encoded[id(message)] = (message, entry.data, entry.version)
            entry.inputs = inputs  # equal: hold this round's objects, not an older round's copies
        else:
            message = build()
            entry = self.entries[key] = _Entry(type(message), type_url, inputs)
            self._built.append((entry, message))
        if entry.last != self.round:
            entry.last = self.round
            self.used += 1
        return message  # type: ignore[no-any-return]

    def after_round(self, encode: Callable[[str, Message], tuple[bytes, str]]) -> None:
        """Once the round's snapshots are built: record the encoding of the pieces it built
        (``encode``: its SnapshotBuilder's, which made them already), drop stale entries when
        they are many, and start the next round."""
        for entry, message in self._built:
            entry.data, entry.version = encode(entry.type_url, message)
            entry.offset = len(entry.data) - message.ByteSize()
        self._built.clear()
        self.peak = max(self.peak, self.used)
        if len(self.entries) > max(KEPT_MIN, 2 * self.peak):
            for key in [k for k, e in self.entries.items() if e.last != self.round]:
                del self.entries[key]
        self.round += 1
        self.used = 0

    def forget_unless(self, policies: int, proxies: int) -> None:
        """Drop the kept digests and matches once they are many more than a mesh of ``policies``
        policies and ``proxies`` proxies needs (policies replaced, proxies gone)."""
        if len(self.digests) > 2 * policies + 64:  # two per policy at most (with and without `to`)
            self.digests.clear()
        for _, found in self.matches.values():
            if len(found) > 4 * proxies + KEPT_MIN:
                found.clear()
