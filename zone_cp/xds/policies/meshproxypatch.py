"""MeshProxyPatch: the selected proxy's generated config, changed last (Kuma's
``pkg/plugins/policies/meshproxypatch/plugin/v1alpha1``).

The ``appendModifications`` of every policy selecting the proxy run in order, least specific
policy first (Kuma appends the lists of all matched policies), on the proxy's own ResourceSet
after every generator and every other policy:

- ``cluster`` / ``listener``: ``Add`` a resource (replacing one of the same name), ``Remove`` or
  ``Patch`` those the ``match`` selects (``name``, ``origin``; a listener also by ``tags``, the tags
  of the inbound or outbound it serves);
- ``networkFilter`` / ``httpFilter``: in every filter chain of the listeners the match selects
  (``listenerName``, ``listenerTags``, ``origin``), insert (``AddFirst``, ``AddLast``, ``AddBefore`` /
  ``AddAfter`` the filter named ``match.name``), ``Remove`` or ``Patch`` filters; HTTP filters are
  those of each HTTP connection manager;
- ``virtualHost``: ``Add``, ``Remove`` or ``Patch`` virtual hosts of the route configurations the
  match selects (``routeConfigurationName``, ``origin``): those embedded in listeners, as in Kuma,
  and also the RouteConfiguration resources zonemesh serves over RDS (sidecar outbounds, builtin
  gateways), which Kuma embeds in its listeners.

``Patch`` with ``value`` is Kuma's protobuf merge: set scalars replace, messages merge field by
field, lists append, a Duration is replaced whole; a filter's ``typedConfig`` merges with the
one in place (same ``@type``). ``Patch`` with ``jsonPatches`` edits the JSON form of the resource
(a filter's: of its typed config), which must then read back as the same Envoy message.

Messages are never changed in place: a changed resource is a new message in this proxy's own
ResourceSet, so nothing leaks into the config shared with other proxies of its shape, and proxies
whose same resource gets the same modification share the result (``ctx.memo``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message
from zonemesh.shared import jsonpatch, protojson
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.types.policies.meshproxypatch import (
    ADD,
    ADD_AFTER,
    ADD_BEFORE,
    ADD_FIRST,
    ADD_LAST,
    CLUSTER,
    HTTP_FILTER,
    KINDS,
    LISTENER,
    NETWORK_FILTER,
    REMOVE,
    VIRTUAL_HOST,
    load_value,
)
from zonemesh.zone_cp.xds import resources as xds
from zonemesh.zone_cp.xds.context import LOCALHOST, MeshContext, inbound_address, inbounds, outbounds
from zonemesh.zone_cp.xds.envoy import pack
from zonemesh.zone_cp.xds.policies.plugin import Plugin, Policies
from zonemesh.zone_cp.xds.resources import ResourceSet

TYPE = "MeshProxyPatch"
ORIGIN = "mesh-proxy-patch"  # of the resources a patch adds (Kuma's)
HCM = "envoy.filters.network.http_connection_manager"
MESH_TAG = "kuma.io/mesh"
DURATION = "google.protobuf.Duration"

Mod = Mapping[str, Any]


class PatchError(ValueError):
    """A modification could not be applied to this proxy's config."""


# --- Kuma's merge (pkg/util/proto: proto.Merge, but a Duration is replaced whole) ------------


def merge(dst: Message, src: Message) -> None:
    for field, value in src.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = getattr(dst, field.name)
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            sub = getattr(dst, field.name)
            if field.message_type.full_name == DURATION:
                sub.CopyFrom(value)
            else:
                sub.SetInParent()  # an empty message still counts as set (``ads: {}``), and picks its oneof
                merge(sub, value)
        else:
            setattr(dst, field.name, value)


def merge_any(dst: any_pb2.Any, src: any_pb2.Any) -> any_pb2.Any:
    """Kuma's MergeAnys: both unpacked, merged, packed again; they must be of the same type."""
    if dst.type_url != src.type_url:
        raise PatchError(f"typedConfig is a {dst.type_url}, the patch's a {src.type_url}")
    merged = protojson.unpack(dst)
    merge(merged, protojson.unpack(src))
    return pack(merged)


def json_patched(message: Message, operations: Sequence[Mod]) -> Message:
    """``message`` with JSON patch ``operations`` applied to its JSON form, read back as its type."""
    try:
        doc = jsonpatch.apply(protojson.to_json(message), operations)
        return protojson.parse(type(message), doc)
    except (jsonpatch.JsonPatchError, protojson.ProtoJsonError) as exc:
        raise PatchError(f"jsonPatches: {exc}") from None


def json_patched_any(config: any_pb2.Any, operations: Sequence[Mod]) -> any_pb2.Any:
    return pack(json_patched(protojson.unpack(config), operations))


def patched(message: Message, mod: Mod, value: Message | None) -> Message:
    """A copy of ``message`` with a Patch modification's value merged in, or its jsonPatches applied."""
    if mod.get("jsonPatches"):
        return json_patched(message, mod["jsonPatches"])
    assert value is not None  # validation: a Patch has a value or jsonPatches
    result = type(message)()
    result.CopyFrom(message)
    merge(result, value)
    return result


# --- matching --------------------------------------------------------------------------------


def tags_match(wanted: Mapping[str, str], tags: Mapping[str, str]) -> bool:
    """Kuma's TagSelector: every wanted tag is there with that value (``*``: any value)."""
    return all(key in tags and (value == "*" or tags[key] == value) for key, value in wanted.items())


def listener_tags(proxy: Resource, name: str, origin: str) -> dict[str, str]:
    """The tags Kuma puts on a listener (``io.kuma.tags`` metadata): an inbound listener's are its
    inbound's tags, an outbound listener's its outbound's tags but ``kuma.io/mesh``; other
    listeners (builtin gateway ones) have none."""
    if origin == "inbound":
        for inbound in inbounds(proxy):
            if name == f"inbound:{inbound_address(proxy, inbound)}:{inbound.get('port')}":
                return {str(k): str(v) for k, v in (inbound.get("tags") or {}).items()}
    if origin == "outbound":
        for outbound in outbounds(proxy):
            if name == f"outbound:{outbound.get('address') or LOCALHOST}:{outbound.get('port')}":
                return {str(k): str(v) for k, v in (outbound.get("tags") or {}).items() if k != MESH_TAG}
    return {}


def _listener_selected(match: Mod, proxy: Resource, resources: ResourceSet, name: str, *, prefix: str) -> bool:
    """Does ``match`` select listener ``name``: its name, origin and tags (``prefix``: the match
    fields of filter modifications are ``listenerName`` / ``listenerTags``)."""
    wanted_name = match.get("listenerName" if prefix else "name")
    if wanted_name is not None and wanted_name != name:
        return False
    origin = resources.origin_of(xds.LISTENER, name)
    if match.get("origin") is not None and match["origin"] != origin:
        return False
    wanted_tags = match.get("listenerTags" if prefix else "tags")
    return not wanted_tags or tags_match(wanted_tags, listener_tags(proxy, name, origin))


# --- one modification ------------------------------------------------------------------------


class _Run:
    """Applies the modifications of one policy to one proxy's ResourceSet."""

    def __init__(self, ctx: MeshContext, proxy: Resource, resources: ResourceSet, policy: Resource) -> None:
        self.ctx = ctx
        self.proxy = proxy
        self.resources = resources
        self.policy = policy
        self.changed: set[tuple[str, str]] = set()  # (type URL, name) this policy changed

    def memo(self, index: int, old: Message, change: Callable[[Message], Message | None]) -> Message | None:
        """``change(old)`` (a new message, or None: nothing to change), shared within the round by
        every proxy whose resource is this very message (it depends on nothing else)."""
        key = ("mesh-proxy-patch", self.policy.name, self.policy.version, index, id(old))
        hit = self.ctx.memo.get(key)
        if hit is None:
            hit = self.ctx.memo[key] = (old, change(old))  # holds ``old``: its id stays unique
        result: Message | None = hit[1]
        return result

    def value(self, index: int, kind: str, mod: Mod) -> Message | None:
        """The modification's value as its Envoy message, parsed once per round (never changed:
        every change copies first)."""
        text = mod.get("value")
        if text is None:
            return None
        key = ("mesh-proxy-patch-value", self.policy.name, self.policy.version, index)
        found = self.ctx.memo.get(key)
        if found is None:
            found = self.ctx.memo[key] = load_value(kind, str(text))
        assert isinstance(found, Message)
        return found

    def put(self, type_url: str, name: str, message: Message, origin: str | None = None) -> None:
        self.resources.put(type_url, name, message, origin)
        self.changed.add((type_url, name))

    def remove(self, type_url: str, name: str) -> None:
        self.resources.remove(type_url, name)
        self.changed.add((type_url, name))

    # -- clusters and listeners --

    def resource(self, index: int, kind: str, mod: Mod) -> None:
        type_url = xds.CLUSTER if kind == CLUSTER else xds.LISTENER
        operation, match = mod["operation"], mod.get("match") or {}
        value = self.value(index, kind, mod)
        if operation == ADD:
            assert value is not None
            self.put(type_url, str(value.name), value, ORIGIN)
            return
        for name, message in list(self.resources.by_type[type_url].items()):
            if kind == CLUSTER:
                selected = match.get("name") in (None, name) and match.get("origin") in (
                    None,
                    self.resources.origin_of(type_url, name),
                )
            else:
                selected = _listener_selected(match, self.proxy, self.resources, name, prefix="")
            if not selected:
                continue
            if operation == REMOVE:
                self.remove(type_url, name)
            else:
                changed = self.memo(index, message, lambda old: patched(old, mod, value))
                if changed is not None:
                    self.put(type_url, name, changed)

    # -- filters --

    def listeners(self, index: int, match: Mod, change: Callable[[listener_pb2.Listener], bool]) -> None:
        """For every selected listener: a copy changed by ``change`` (True: it changed something)."""

        def changed_copy(old: Message) -> Message | None:
            listener = listener_pb2.Listener()
            listener.CopyFrom(old)
            return listener if change(listener) else None

        for name, message in list(self.resources.by_type[xds.LISTENER].items()):
            if _listener_selected(match, self.proxy, self.resources, name, prefix="listener"):
                changed = self.memo(index, message, changed_copy)
                if changed is not None:
                    self.put(xds.LISTENER, name, changed)

    def network_filter(self, index: int, mod: Mod) -> None:
        value = self.value(index, NETWORK_FILTER, mod)
        match = mod.get("match") or {}

        def change(listener: listener_pb2.Listener) -> bool:
            changed = False
            for chain in listener.filter_chains:  # every chain, as Kuma (no filter chain match)
                changed |= _filters(chain.filters, mod, match, value)
            return changed

        self.listeners(index, match, change)

    def http_filter(self, index: int, mod: Mod) -> None:
        value = self.value(index, HTTP_FILTER, mod)
        match = mod.get("match") or {}

        def change(listener: listener_pb2.Listener) -> bool:
            return _each_hcm(listener, lambda hcm: _filters(hcm.http_filters, mod, match, value))

        self.listeners(index, match, change)

    # -- virtual hosts --

    def virtual_host(self, index: int, mod: Mod) -> None:
        value = self.value(index, VIRTUAL_HOST, mod)
        match = mod.get("match") or {}

        def change_config(config: route_pb2.RouteConfiguration) -> bool:
            wanted = match.get("routeConfigurationName")
            return (wanted is None or wanted == config.name) and _virtual_hosts(config, mod, match, value)

        def change_listener(listener: listener_pb2.Listener) -> bool:
            return _each_hcm(listener, lambda hcm: hcm.HasField("route_config") and change_config(hcm.route_config))

        # Routes embedded in listeners (Kuma's only place), selected by the listener's origin...
        self.listeners(index, {"origin": match["origin"]} if "origin" in match else {}, change_listener)

        # ...and the RouteConfigurations served over RDS, selected by their own origin.
        def changed_config(old: Message) -> Message | None:
            config = route_pb2.RouteConfiguration()
            config.CopyFrom(old)
            return config if change_config(config) else None

        for name, message in list(self.resources.by_type[xds.ROUTE].items()):
            if match.get("origin") in (None, self.resources.origin_of(xds.ROUTE, name)):
                changed = self.memo(index, message, changed_config)
                if changed is not None:
                    self.put(xds.ROUTE, name, changed)

    def apply(self, index: int, modification: Mod) -> None:
        kind = next(k for k in KINDS if modification.get(k) is not None)
        mod = modification[kind]
        if kind in (CLUSTER, LISTENER):
            self.resource(index, kind, mod)
        elif kind == NETWORK_FILTER:
            self.network_filter(index, mod)
        elif kind == HTTP_FILTER:
            self.http_filter(index, mod)
        else:
            self.virtual_host(index, mod)


def _each_hcm(listener: listener_pb2.Listener, change: Callable[[hcm_pb2.HttpConnectionManager], bool]) -> bool:
    """Run ``change`` on every HTTP connection manager of the listener's chains, packing back those
    it changed."""
    changed = False
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            if network_filter.name != HCM or not network_filter.HasField("typed_config"):
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            if not network_filter.typed_config.Unpack(hcm):
                continue
            if change(hcm):
                network_filter.typed_config.CopyFrom(pack(hcm))
                changed = True
    return changed


def _filters(filters: Any, mod: Mod, match: Mod, value: Message | None) -> bool:
    """One filter modification on a list of network or HTTP filters (changed in place: the list
    belongs to a copy). True when it changed something."""
    operation = mod["operation"]
    wanted = match.get("name")
    names = [f.name for f in filters]
    if operation in (ADD_FIRST, ADD_LAST, ADD_BEFORE, ADD_AFTER):
        assert value is not None
        if operation == ADD_FIRST:
            position = 0
        elif operation == ADD_LAST:
            position = len(filters)
        elif wanted not in names:
            return False  # Kuma: nothing is added when the filter to place it by is not there
        else:
            position = names.index(wanted) + (1 if operation == ADD_AFTER else 0)
        filters.insert(position, value)
        return True
    selected = [i for i, name in enumerate(names) if wanted is None or name == wanted]
    if not selected:
        return False
    if operation == REMOVE:
        for i in reversed(selected):
            del filters[i]
        return True
    for i in selected:  # Patch
        current = filters[i]
        if mod.get("jsonPatches"):
            current.typed_config.CopyFrom(json_patched_any(current.typed_config, mod["jsonPatches"]))
            continue
        assert value is not None
        typed = value.typed_config if value.HasField("typed_config") else None
        rest = type(value)()
        rest.CopyFrom(value)
        rest.ClearField("typed_config")
        merge(current, rest)
        if typed is not None:
            if current.HasField("typed_config"):
                current.typed_config.CopyFrom(merge_any(current.typed_config, typed))
            else:
                current.typed_config.CopyFrom(typed)
    return True


def _virtual_hosts(config: route_pb2.RouteConfiguration, mod: Mod, match: Mod, value: Message | None) -> bool:
    operation, wanted = mod["operation"], match.get("name")
    if operation == ADD:
        assert value is not None
        config.virtual_hosts.append(value)
        return True
    selected = [i for i, host in enumerate(config.virtual_hosts) if wanted is None or host.name == wanted]
    if not selected:
        return False
    if operation == REMOVE:
        for i in reversed(selected):
            del config.virtual_hosts[i]
        return True
    for i in selected:
        host = patched(config.virtual_hosts[i], mod, value)
        assert isinstance(host, route_components_pb2.VirtualHost)
        config.virtual_hosts[i].CopyFrom(host)
    return True


def apply(ctx: MeshContext, proxy: Resource, resources: ResourceSet, policies: Policies) -> None:
    """Every modification of every policy selecting the proxy, least specific policy first."""
    for policy in policies:
        run = _Run(ctx, proxy, resources, policy)
        modifications = (policy.spec.get("default") or {}).get("appendModifications") or []
        for index, modification in enumerate(modifications):
            try:
                run.apply(index, modification)
            except (PatchError, protojson.ProtoJsonError) as exc:
                raise PatchError(f"{TYPE} {policy.name!r}: appendModifications[{index}]: {exc}") from None
        who = f"{TYPE}/{policy.name}"
        for type_url, name in sorted(run.changed):
            by_name = resources.changed_by.setdefault(type_url, {})
            by_name[name] = (*by_name.get(name, ()), who)


# The modifications of all the policies run in order: inspection shows them as one appended list.
PLUGIN = Plugin(type=TYPE, order=9999, proxy=apply, appends=("appendModifications",))
