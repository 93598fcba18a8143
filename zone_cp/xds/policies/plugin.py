"""The plugin interface every policy module implements (``PLUGIN = Plugin(...)``), and the
table of plugins built from the registry. See the package's docstring for the hooks."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import WHOLE, Registry
from zonemesh.zone_cp.xds.context import MeshContext
from zonemesh.zone_cp.xds.envoy import Destination, InboundPieces, OutboundPieces
from zonemesh.zone_cp.xds.resources import ResourceSet

Conf = Mapping[str, Any]
Policies = Sequence[Resource]
OutboundHook = Callable[[OutboundPieces, Conf], None]
InboundHook = Callable[[InboundPieces, Policies], None]
# The client end of mesh mTLS: a cluster's context towards a mesh service, with the policies
# selecting the proxy (sidecar or builtin gateway) that connects.
UpstreamTlsHook = Callable[[tls_pb2.UpstreamTlsContext, Policies], None]
# The whole config of one proxy (its own copy), after every generator and every other hook.
ProxyHook = Callable[[MeshContext, Resource, ResourceSet, Policies], None]
ConfHook = Callable[[Policies, str | None], Conf | None]
DestinationsHook = Callable[[Resource], Iterable[Destination]]


@dataclass(frozen=True)
class Plugin:
    """How one targetRef policy type configures proxies; every hook is optional."""

    type: str  # the ResourceType's name
    order: int  # hooks of all plugins run in this order (e.g. the HTTP filters they add)
    outbound: OutboundHook | None = None
    inbound: InboundHook | None = None
    gateway: InboundHook | None = None
    egress: InboundHook | None = None
    upstream_tls: UpstreamTlsHook | None = None
    proxy: ProxyHook | None = None  # a policy whose ``default`` configures the whole proxy
    # The proxy tags a policy's conf reads beyond its targetRef (e.g. affinity tags): proxies that
    # differ in them must not share a generated config (``policies.policy_selectors``).
    tag_keys: Callable[[Resource], Iterable[str]] | None = None
    # Its outbound hook's ``pieces.locality`` also lays out the zone egress's endpoints of other
    # zones (``policies.egress_locality``: the policies that select every sidecar of the mesh).
    egress_locality: bool = False
    # Fields of the whole-proxy ``default`` whose lists add up across the policies selecting a
    # proxy instead of replacing (Kuma's ``policyMerge:"append"``): ``matching.proxy_conf``.
    appends: tuple[str, ...] = ()
    # Kuma's IsFromAsRules: the type's `from` entries (kind Mesh) count as inbound rules without
    # matches (``callers.rules``), merged per caller class; without it a type reads `from` itself
    # when no policy selecting the inbound has `rules`, and its rules are not merged. Inspection
    # shows the inbound side accordingly (xds/inspection.py).
    from_as_rules: bool = False
    # Why the type's policies set nothing at all in this mesh (None: they apply), for inspection's
    # warnings (xds/inspection.py): e.g. MeshTrafficPermission without mTLS.
    inert: Callable[[MeshContext], str | None] | None = None
    # How the matched policies' `to` entries become the conf for one destination (default:
    # matching.to_conf, a deep merge of their `default`s); the route types merge their rules.
    to_conf: ConfHook | None = None
    # The destinations (a service, or a subset of it by tags) a policy sends traffic to: zone
    # ingresses and egresses route each by its SNI (generators/ingress.py, egress.py).
    destinations: DestinationsHook | None = None


class PluginError(Exception):
    """The registry and the plugins disagree (raised at import: a bug, not bad input)."""


PACKAGE = "zonemesh.zone_cp.xds.policies"


def _load(module: str) -> Plugin:
    try:
        found = getattr(importlib.import_module(f"{PACKAGE}.{module}"), "PLUGIN", None)
    except ModuleNotFoundError as exc:
        raise PluginError(f"plugin module {PACKAGE}.{module} does not exist ({exc})") from None
    if not isinstance(found, Plugin):
        raise PluginError(f"{PACKAGE}.{module} defines no PLUGIN = Plugin(...)")
    return found


def _check(plugin: Plugin, sidecar: tuple[str, ...], gateway: tuple[str, ...]) -> list[str]:
    """Problems between the sections a type declares applied and its plugin's hooks."""
    problems = []
    inbound_sections = ("from", "rules")  # both configure what a proxy receives
    needs = {
        "outbound": "to" in sidecar or ("to" in gateway and plugin.gateway is None),
        "inbound": any(s in sidecar for s in inbound_sections),
        # a gateway's `from` / `rules` configure its listeners, or the client end of its mesh mTLS
        "gateway": any(s in gateway for s in inbound_sections) and plugin.upstream_tls is None,
        "proxy": WHOLE in (*sidecar, *gateway),
    }
    for hook, needed in needs.items():
        if needed and getattr(plugin, hook) is None:
            problems.append(f"it declares sections that need the {hook} hook, which its plugin lacks")
    if plugin.inbound is not None and not any(s in sidecar for s in inbound_sections):
        problems.append("its plugin has an inbound hook but the type does not declare sidecar `from` or `rules`")
    if plugin.outbound is not None and "to" not in (*sidecar, *gateway):
        problems.append("its plugin has an outbound hook but the type declares no `to`")
    if plugin.gateway is not None and not gateway:
        problems.append("its plugin has a gateway hook but the type declares nothing on gateways")
    if plugin.upstream_tls is not None and "from" not in (*sidecar, *gateway):
        problems.append("its plugin has an upstream_tls hook but the type declares no `from`")
    if plugin.proxy is not None and WHOLE not in (*sidecar, *gateway):
        problems.append(f"its plugin has a proxy hook but the type declares no `{WHOLE}`")
    if plugin.egress_locality and plugin.outbound is None:
        problems.append("its plugin lays out the egress's endpoints (egress_locality) without an outbound hook")
    return problems


def plugin_table(registry: Registry, load: Callable[[str], Plugin] = _load) -> tuple[Plugin, ...]:
    """The plugins of every supported policy type of ``registry``, in order."""
    plugins = []
    for rtype in registry.policies():
        support = rtype.support
        if support is None or support.plugin is None:
            continue  # refused everywhere as not supported yet (the registry insists on the mark)
        plugin = load(support.plugin)
        if plugin.type != rtype.name:
            raise PluginError(f"{rtype.name} names plugin {support.plugin!r}, which applies {plugin.type}")
        problems = _check(plugin, support.sidecar, support.gateway)
        if plugin.from_as_rules != rtype.from_as_rules:
            problems.append(f"from_as_rules: {plugin.from_as_rules} here, {rtype.from_as_rules} in the registry")
        if problems:
            raise PluginError(f"{rtype.name}: " + "; ".join(problems))
        plugins.append(plugin)
    orders = [p.order for p in plugins]
    if len(set(orders)) != len(orders):
        raise PluginError(f"two plugins share an order: {sorted(orders)}")
    return tuple(sorted(plugins, key=lambda p: p.order))
