"""Pure Envoy config generation: ``generate(ctx, proxy) -> ResourceSet``.

One ordered list of generators, each a pure function of (context, proxy, matched policies)
adding to the ResourceSet; policies are applied by the generators to the pieces they build
(see ``policies/``). An error names the generator that failed.

Replicas of a service differ only in where they listen: a sidecar's config but its inbounds'
listeners and local clusters is a function of its *shape* (``context.shape``: the Dataplane
without its addresses and its inbounds' ports). Within a round (one MeshContext) each shape is
generated once, with a template per inbound (``inbound.templates``: policies applied, no address
or port); each proxy then gets its own copy of the shape's ResourceSet plus its inbounds placed
from those templates (``inbound.place``): the local cluster at its app's address and port, the
listener at its own address and port. A mesh-wide change thus costs a generation per service
shape, not per proxy, whether replicas differ in their addresses or in their ports.

Last, per proxy, the policies that configure a whole proxy (``Plugin.proxy``: MeshProxyPatch)
change its own copy: they may match what only that proxy has (its inbound listeners' names carry
its address), so they never run on the shared shape; what they change is copied first, what they
do not change stays shared. Each resource carries the origin of the generator that made it
(``ResourceSet.origins``: Kuma's inbound, outbound, gateway, secrets), which MeshProxyPatch
matches on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import Message
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.context import MeshContext, inbounds, shape
from zonemesh.zone_cp.xds.generators import crossmesh, gateway, inbound, outbound, secrets
from zonemesh.zone_cp.xds.policies import (
    PLUGINS,
    MatchedPolicies,
    configure_proxy,
    match_all,
    match_inbound,
    policy_selectors,
)
from zonemesh.zone_cp.xds.resources import CLUSTER, LISTENER, ResourceSet

T = TypeVar("T")
Generator = Callable[[MeshContext, Resource, MatchedPolicies, ResourceSet], None]

# After the inbounds (inbound.templates): everything else, in order.
GENERATORS: tuple[tuple[str, Generator], ...] = (
    ("outbound", outbound.generate),
    ("gateway", gateway.generate),
    ("crossmesh", crossmesh.generate),
    ("secrets", secrets.generate),
)
# The origin (Kuma's name for what made a resource) of each generator's resources, when it is not
# the generator's name: a sidecar's cross-mesh outbounds are outbounds.
ORIGINS = {"crossmesh": "outbound"}
INBOUND = "inbound"


class GenerationError(Exception):
    """Config for a proxy could not be generated; the message says which generator failed and why."""


@dataclass(frozen=True)
class _Shaped:
    """A shape's config: everything but the inbounds' local clusters and listeners, and their templates."""

    resources: ResourceSet
    inbound_templates: list[tuple[int, inbound.Template]]  # placed per proxy (inbound.place)
    policies: MatchedPolicies  # those configuring the whole proxy (a builtin gateway's: with MeshGateway ones)
    applied: frozenset[tuple[str, str, int]]  # every policy selecting the proxy or one of its inbounds
    # A proxy of this shape adds nothing of its own but its inbounds placed from templates: no
    # policy changes its whole config (MeshProxyPatch), it is no builtin gateway, and no inbound is
    # built for its app directly. Its config is then its shape's plus what ``MadeFrom`` says.
    placed_only: bool


def _step(name: str, proxy: Resource, run: Callable[[], T]) -> T:
    try:
        return run()
    except Exception as exc:
        raise GenerationError(f"generator {name!r} failed for {proxy.mesh}/{proxy.name}: {exc}") from exc


def _applied(ctx: MeshContext, proxy: Resource, policies: MatchedPolicies) -> frozenset[tuple[str, str, int]]:
    found = {(p.type, p.name, p.version) for matched in policies.values() for p in matched}
    for index in range(len(inbounds(proxy))):
        found.update((p.type, p.name, p.version) for ps in match_inbound(ctx, proxy, index).values() for p in ps)
    return frozenset(found)


def _generate_shape(ctx: MeshContext, proxy: Resource) -> _Shaped:
    resources = ResourceSet(origin=INBOUND)
    policies = match_all(ctx, proxy)
    templates = _step("inbound", proxy, lambda: inbound.templates(ctx, proxy, policies, resources))
    for name, generator in GENERATORS:
        resources.origin = ORIGINS.get(name, name)
        _step(name, proxy, lambda: generator(ctx, proxy, policies, resources))  # noqa: B023 (called at once)
    missing = resources.missing()  # placed inbounds refer to nothing their templates do not
    if missing:
        raise GenerationError(f"inconsistent config for {proxy.mesh}/{proxy.name}: missing {', '.join(missing)}")
    builtin = gateway.is_builtin(proxy)
    if builtin:
        policies = gateway.gateway_policies(ctx, proxy, policies)
    placed_only = not builtin and not any(t.direct for _, t in templates) and not _whole_proxy(policies)
    return _Shaped(resources, templates, policies, _applied(ctx, proxy, policies), placed_only)


def _whole_proxy(policies: MatchedPolicies) -> bool:
    """Whether a matched policy configures the whole proxy (``Plugin.proxy``: MeshProxyPatch)."""
    return any(plugin.proxy is not None and policies.get(plugin.type) for plugin in PLUGINS)


def _shape(ctx: MeshContext, proxy: Resource) -> str:
    """The proxy's shape, from ``ctx.shapes`` when neither it nor what policies select on changed."""
    found = policy_selectors(ctx)
    known = ctx.shapes.get(proxy.name)
    if known is not None and known[0] is proxy and known[1] == found:
        return known[2]
    key = shape(proxy, found.tag_keys, found.label_keys, found.names, found.sections)
    ctx.shapes[proxy.name] = (proxy, found, key)
    return key


def generate(ctx: MeshContext, proxy: Resource) -> ResourceSet:
    key = ("shape", _shape(ctx, proxy))
    shaped = ctx.memo.get(key)
    if shaped is None:
        shaped = ctx.memo[key] = _generate_shape(ctx, proxy)
    assert isinstance(shaped, _Shaped)
    resources = shaped.resources.copy()
    resources.origin = INBOUND
    _step("inbound", proxy, lambda: inbound.place(ctx, proxy, shaped.inbound_templates, resources))
    resources.applied = shaped.applied
    _step("proxy policies", proxy, lambda: configure_proxy(ctx, proxy, resources, shaped.policies))
    return resources


# The types a proxy's inbounds are placed in; the others are its shape's alone.
OWN_TYPES = (CLUSTER, LISTENER)


@dataclass(frozen=True, slots=True)
class MadeFrom:
    """What a proxy's config was made from, for a proxy whose own config is only its placed
    inbounds (``_Shaped.placed_only``): the Dataplane (the very object), its shape, the templates
    its inbounds are placed from (kept across rounds by content, so the very objects while alike)
    and what its shape holds of ``OWN_TYPES`` (names and versions). While all of it is the same,
    so are the proxy's clusters and listeners, and its other types are its shape's."""

    proxy: Resource
    shape: str
    templates: tuple[tuple[int, inbound.Template], ...]
    shape_part: tuple[tuple[str, str, str], ...]  # (type URL, name, version) of the shape's OWN_TYPES


@dataclass(frozen=True, slots=True)
class ShapeMade:
    """What a shape generated this round makes its proxies from (``made_from``), and gives them."""

    shape: str
    templates: tuple[tuple[int, inbound.Template], ...]
    shape_part: tuple[tuple[str, str, str], ...]
    resources: ResourceSet  # the shape's (this round's: never kept)
    applied: frozenset[tuple[str, str, int]]

    def made(self, proxy: Resource) -> MadeFrom:
        return MadeFrom(proxy, self.shape, self.templates, self.shape_part)

    def makes(self, before: MadeFrom, proxy: Resource) -> bool:
        """Whether ``proxy``, whose current config was made from ``before``, would be made from
        the same now. (Tuples compare their items by identity first: the templates, kept across
        rounds, are the very objects while alike, so this compares no message.)"""
        return (
            before.proxy is proxy
            and before.shape == self.shape
            and before.shape_part == self.shape_part
            and before.templates == self.templates
        )


def made_from(
    ctx: MeshContext, proxy: Resource, encoded: Callable[[str, Message], tuple[bytes, str]]
) -> ShapeMade | None:
    """Once ``proxy``'s shape is generated this round: what its proxies are made from (once per
    shape per round); None when its shape is not generated yet this round or a proxy of it has
    config of its own beyond its placed inbounds. ``encoded``: the round's SnapshotBuilder's (a
    resource's version), so the shape's part costs no serialization of its own."""
    key = _shape(ctx, proxy)
    found = ctx.memo.get(("made-from", key))
    if found is None:
        shaped = ctx.memo.get(("shape", key))
        if not isinstance(shaped, _Shaped):
            return None  # not generated yet this round: not remembered either
        found = False
        if shaped.placed_only:
            by_type = shaped.resources.by_type
            part = tuple((t, name, encoded(t, msg)[1]) for t in OWN_TYPES for name, msg in by_type[t].items())
            templates = tuple(shaped.inbound_templates)
            found = ShapeMade(key, templates, part, shaped.resources, shaped.applied)
        ctx.memo[("made-from", key)] = found
    return found if isinstance(found, ShapeMade) else None
