"""The SNI that names a mesh destination: how cross-zone traffic is routed without decrypting it.

A proxy calling ``backend`` in mesh ``default`` opens its mTLS connection with the SNI

    backend{mesh=default}

and, when it wants a subset of the service's instances (tags besides ``kuma.io/service``),

    backend{mesh=default,version=v2,zone=eu}

Format (Kuma's, ``pkg/xds/envoy/tls/sni.go``): the ``kuma.io/service`` value, then in braces
the remaining tags plus ``mesh=<mesh>``, as ``key=value`` pairs sorted by key and joined by
``,``. Zone ingresses and egresses read only this name (TLS passthrough: they never see the
certificate or the bytes), so the SNI alone must say mesh, service and tags. Tag names and
values may contain letters, digits and ``. - _ : /`` (names) or ``. - _ :`` (values), never
``{ } , =``, which is what makes the name parse back unambiguously. A tag named ``mesh`` would
collide with the mesh marker and is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

SERVICE_TAG = "kuma.io/service"
MESH_KEY = "mesh"
_RESERVED = frozenset("{},=")


class SniError(ValueError):
    """A service, mesh or tag cannot be written into an SNI, or a string is not one of ours."""


class Destination(NamedTuple):
    service: str
    mesh: str
    tags: Mapping[str, str]  # besides kuma.io/service; empty for the whole service


def _check(what: str, text: str) -> None:
    if not text:
        raise SniError(f"{what} must not be empty")
    bad = sorted(set(text) & _RESERVED)
    if bad:
        raise SniError(f"{what} {text!r} contains {' '.join(bad)}, which an SNI name cannot carry")


def encode(service: str, mesh: str, tags: Mapping[str, str] | None = None) -> str:
    """``service{k1=v1,...,mesh=<mesh>}``; a ``kuma.io/service`` entry in ``tags`` is ignored."""
    _check("service", service)
    _check("mesh", mesh)
    pairs = {MESH_KEY: mesh}
    for key, value in (tags or {}).items():
        if key == SERVICE_TAG:
            continue
        if key == MESH_KEY:
            raise SniError(f"tag {MESH_KEY!r} collides with the mesh marker of the SNI")
        _check("tag name", key)
        _check(f"value of tag {key!r}", value)
        pairs[key] = value
    return f"{service}{{{','.join(f'{k}={pairs[k]}' for k in sorted(pairs))}}}"


def parse(sni: str) -> Destination:
    """The inverse of :func:`encode`; raises SniError for anything else."""
    service, brace, rest = sni.partition("{")
    if not brace or not rest.endswith("}") or not service:
        raise SniError(f"{sni!r} is not a mesh SNI: expected service{{mesh=<mesh>,...}}")
    tags: dict[str, str] = {}
    for pair in rest[:-1].split(","):
        key, eq, value = pair.partition("=")
        if not eq or not key or not value or _RESERVED & set(key + value):
            raise SniError(f"{sni!r} is not a mesh SNI: bad pair {pair!r}")
        if key in tags:
            raise SniError(f"{sni!r} is not a mesh SNI: {key!r} appears twice")
        tags[key] = value
    mesh = tags.pop(MESH_KEY, None)
    if mesh is None:
        raise SniError(f"{sni!r} is not a mesh SNI: it names no mesh")
    return Destination(service, mesh, tags)
