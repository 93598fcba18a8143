"""The names under which KDS stores what it receives, exactly as Kuma 2.x names them.

A type that both global and zones create (``ResourceType.provided_by_both``: the targetRef
policies and MeshGateway) is stored under Kuma's *hash-suffixed* name wherever a copy lands, so
that a resource and a copy of the same name from the other side never clash:

- global's ``foo`` is ``foo-<hash(mesh, foo)>`` on every zone;
- zone-1's ``foo`` is ``foo-<hash(mesh, foo, zone-1)>`` at global.

The hash is Kuma's (``pkg/kds/hash``: FNV-64a over mesh, name and the zone, hex, each hex digit
mapped onto Kubernetes' ``SafeEncodeString`` alphabet), so the names are the ones a Kuma control
plane shows (tests/unit/test_zone_policies.py checks them against Kuma's own golden files). The
original name stays in the display-name labels (``zonemesh.io/display-name`` and
``kuma.io/display-name``), which is what a targetRef naming such a resource matches.

The other zone→global types keep zonemesh's ``{zone}.{name}`` at global, and the other
global→zone types their own name on zones: only types created on both sides can clash.
"""

from __future__ import annotations

from zonemesh.shared.resources.registry import ResourceType

# Kubernetes' rand.SafeEncodeString alphabet (no vowels), which Kuma's hash suffix is written in.
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_FNV64_OFFSET = 0xCBF29CE484222325
_FNV64_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1
# A suffix is "-" and 16 characters; Kuma shortens the name so that the whole fits 253 characters.
_SUFFIX = 17
_NAME_LIMIT = 253


def _fnv64a(parts: tuple[str, ...]) -> int:
    value = _FNV64_OFFSET
    for part in parts:
        for byte in part.encode():
            value = ((value ^ byte) * _FNV64_PRIME) & _MASK64
    return value


def hashed_name(mesh: str, name: str, *values: str) -> str:
    """Kuma's ``hash.HashedName(mesh, name, values...)``: ``name-<16 characters>``."""
    digits = _fnv64a((mesh, name, *values)).to_bytes(8, "big").hex()
    return f"{name[: _NAME_LIMIT - _SUFFIX]}-{''.join(_ALPHABET[ord(d) % len(_ALPHABET)] for d in digits)}"


def name_at_global(rtype: ResourceType, zone: str, mesh: str, name: str) -> str:
    """The name at global of ``zone``'s resource ``name``."""
    return hashed_name(mesh, name, zone) if rtype.provided_by_both else f"{zone}.{name}"


def name_at_zone(rtype: ResourceType, mesh: str, name: str) -> str:
    """The name on a zone of global's resource ``name``."""
    return hashed_name(mesh, name) if rtype.provided_by_both else name
