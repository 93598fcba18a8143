"""Pure Envoy config generation: ``generate(ctx, proxy) -> ResourceSet``.

One ordered list of generators, each a pure function of (context, proxy, matched policies)
adding to the ResourceSet; policies are applied by the generators to the pieces they build
(see ``policies/``). An error names the generator that failed.

Replicas of a service differ only in where they listen: a sidecar's config but its inbound
listeners is a function of its *shape* (``context.shape``: the Dataplane without its
addresses). Within a round (one MeshContext) each shape is generated once; each proxy then
gets its own copy of the shape's ResourceSet plus its inbound listeners placed at its
addresses. A mesh-wide change thus costs a generation per service shape, not per proxy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from envoy.config.listener.v3 import listener_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.context import MeshContext, shape
from zonemesh.zone_cp.xds.generators import crossmesh, gateway, inbound, outbound, secrets
from zonemesh.zone_cp.xds.policies import MatchedPolicies, match_all, policy_selectors
from zonemesh.zone_cp.xds.resources import ResourceSet

T = TypeVar("T")
Generator = Callable[[MeshContext, Resource, MatchedPolicies, ResourceSet], None]

# After the inbounds (inbound.templates): everything else, in order.
GENERATORS: tuple[tuple[str, Generator], ...] = (
    ("outbound", outbound.generate),
    ("gateway", gateway.generate),
    ("crossmesh", crossmesh.generate),
    ("secrets", secrets.generate),
)


class GenerationError(Exception):
    """Config for a proxy could not be generated; the message says which generator failed and why."""


@dataclass(frozen=True)
class _Shaped:
    """A shape's config: everything but the inbound listeners, and their templates."""

    resources: ResourceSet
    inbound_listeners: list[tuple[int, listener_pb2.Listener]]


def _step(name: str, proxy: Resource, run: Callable[[], T]) -> T:
    try:
        return run()
    except Exception as exc:
        raise GenerationError(f"generator {name!r} failed for {proxy.mesh}/{proxy.name}: {exc}") from exc


def _generate_shape(ctx: MeshContext, proxy: Resource) -> _Shaped:
    resources = ResourceSet()
    policies = match_all(ctx, proxy)
    templates = _step("inbound", proxy, lambda: inbound.templates(ctx, proxy, policies, resources))
    for name, generator in GENERATORS:
        _step(name, proxy, lambda: generator(ctx, proxy, policies, resources))  # noqa: B023 (called at once)
    missing = resources.missing()  # inbound listeners refer to nothing their templates do not
    if missing:
        raise GenerationError(f"inconsistent config for {proxy.mesh}/{proxy.name}: missing {', '.join(missing)}")
    return _Shaped(resources, templates)


def generate(ctx: MeshContext, proxy: Resource) -> ResourceSet:
    found = policy_selectors(ctx)
    key = ("shape", shape(proxy, found.tag_keys, found.label_keys, found.names))
    shaped = ctx.memo.get(key)
    if shaped is None:
        shaped = ctx.memo[key] = _generate_shape(ctx, proxy)
    assert isinstance(shaped, _Shaped)
    resources = shaped.resources.copy()
    _step("inbound", proxy, lambda: inbound.place(proxy, shaped.inbound_listeners, resources))
    return resources
