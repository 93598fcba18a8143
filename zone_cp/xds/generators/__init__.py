"""Pure Envoy config generation: ``generate(ctx, proxy) -> ResourceSet``.

One ordered list of generators, each a pure function of (context, proxy, matched policies)
adding to the ResourceSet; policies are applied by the generators to the pieces they build
(see ``policies/``). An error names the generator that failed. Zone ingress/egress and
builtin gateway generators join this list in later issues.
"""

from __future__ import annotations

from collections.abc import Callable

from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.context import MeshContext
from zonemesh.zone_cp.xds.generators import crossmesh, gateway, inbound, outbound, secrets
from zonemesh.zone_cp.xds.policies import MatchedPolicies, match_all
from zonemesh.zone_cp.xds.resources import ResourceSet

Generator = Callable[[MeshContext, Resource, MatchedPolicies, ResourceSet], None]

GENERATORS: tuple[tuple[str, Generator], ...] = (
    ("inbound", inbound.generate),
    ("outbound", outbound.generate),
    ("gateway", gateway.generate),
    ("crossmesh", crossmesh.generate),
    ("secrets", secrets.generate),
)


class GenerationError(Exception):
    """Config for a proxy could not be generated; the message says which generator failed and why."""


def generate(ctx: MeshContext, proxy: Resource) -> ResourceSet:
    resources = ResourceSet()
    policies = match_all(ctx, proxy)
    for name, generator in GENERATORS:
        try:
            generator(ctx, proxy, policies, resources)
        except Exception as exc:
            raise GenerationError(f"generator {name!r} failed for {proxy.mesh}/{proxy.name}: {exc}") from exc
    missing = resources.missing()
    if missing:
        raise GenerationError(f"inconsistent config for {proxy.mesh}/{proxy.name}: missing {', '.join(missing)}")
    return resources
