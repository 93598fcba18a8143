"""The one place that declares every resource type.

Each type is a frozen `ResourceType`: its scope, its KDS sync direction, the schema of its
spec, and its REST path. The HTTP API, zmctl, the stores and KDS all read this registry;
nothing else keeps a list of types.

A targetRef policy type also says how far zonemesh applies it (``PolicySupport``): which
module of ``zone_cp/xds/policies/`` holds its plugin, and on which proxies each of its sections
takes effect. What a type's support does not cover is refused ("not supported yet") wherever a
document enters (API, zmctl, KDS), never stored and ignored: see ``support.py``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from enum import Flag, StrEnum, auto
from typing import TYPE_CHECKING, Any

from zonemesh.shared.resources.schema import MESH_NAME, RESOURCE_NAME, FieldError, NameRule, Node, check_name

if TYPE_CHECKING:
    from zonemesh.shared.resources.model import Resource
    from zonemesh.shared.store import Store


class Scope(StrEnum):
    GLOBAL = "global"  # one per control plane: Mesh, Zone, ZoneIngress, GlobalSecret, ...
    MESH = "mesh"  # lives inside a mesh: Dataplane, policies, Secret, ...


class Sync(Flag):
    """Which way KDS carries a type between global and zones."""

    LOCAL = 0
    GLOBAL_TO_ZONES = auto()  # created on global, pushed to every zone; read-only on federated zones
    ZONE_TO_GLOBAL = auto()  # created in a zone, uploaded to global; read-only on global
    ACROSS_ZONES = auto()  # uploaded by a zone, then pushed by global to every *other* zone
    # Both of the first two (Kuma 2.x's policies and MeshGateway): created on global, applied in
    # every zone; or created on a zone, applied in that zone only and uploaded to global, where it
    # is shown read-only. Each copy is read-only where it was not created.


# A semantic check beyond the schema: gets the whole resource, returns field errors.
SemanticCheck = Callable[["Resource"], list[FieldError]]
# The fields of a resource that name a zone, as (field path, zone named there). A zone may upload
# only resources whose every such field names itself (global checks on upload, zones on download).
ZoneRefs = Callable[["Resource"], list[tuple[str, str]]]
# A check that needs the resource's Mesh (None when missing), run by the resource manager on
# API writes: e.g. a cross-mesh MeshGateway needs mTLS on its mesh.
MeshCheck = Callable[["Resource", "Resource | None"], list[FieldError]]
# A check that reads other resources (e.g. the Secrets a Mesh's CA backend names), run by the
# resource manager on API writes only: (the resource written, the version stored before it
# or None, a store to read) -> field errors. Reads only: the write happens after it passes.
StoreCheck = Callable[["Resource", "Resource | None", "Store"], Awaitable[list[FieldError]]]
# The same for a delete through the API: (the stored resource, a store to read) -> field errors
# (e.g. a Secret a Mesh's CA backend still reads).
DeleteCheck = Callable[["Resource", "Store"], Awaitable[list[FieldError]]]


SIDECAR, GATEWAY = "Sidecar", "Gateway"  # Kuma's proxyTypes
# The sections of a targetRef policy that configure proxies: `to` (outbound, per destination),
# `from` (inbound, per caller) and `rules` (Kuma 2.x's inbound section: every caller, or the
# callers its `matches` select).
SECTIONS = ("to", "from", "rules")
# A policy without to/from whose one ``default`` conf applies to the whole proxy (MeshProxyPatch).
WHOLE = "default"
ALL_SECTIONS = (*SECTIONS, WHOLE)


@dataclass(frozen=True)
class PolicySupport:
    """How far zonemesh applies a targetRef policy type.

    ``plugin`` names the module of ``zonemesh.zone_cp.xds.policies`` that applies it (its
    ``PLUGIN``); None marks the type *not supported yet*: every document of it is refused.
    ``sidecar`` / ``gateway`` list the sections (``to``, ``from``, ``rules``; ``default`` for a
    policy that configures the whole proxy, MeshProxyPatch) that take effect on sidecars
    (and delegated gateways) / on builtin gateways. A document whose section reaches none of the
    proxies that section takes effect on (e.g. MeshFaultInjection ``from``, which only sidecars
    read, while zonemesh applies it on gateways only) is refused as not supported yet.
    """

    plugin: str | None
    sidecar: tuple[str, ...] = SECTIONS
    gateway: tuple[str, ...] = SECTIONS
    # Fields of the type's schema (Kuma's) that its plugin does not apply yet: each error says
    # "not supported yet". A plugin that starts applying one removes it from here.
    not_yet: SemanticCheck | None = None
    # A type not supported yet: why, when there is more to say than that its plugin does not
    # exist yet (it ends the refusal, e.g. what zonemesh lacks for the type to take effect).
    reason: str = ""
    # With a top-level targetRef of kind MeshHTTPRoute the policy configures the routes that
    # MeshHTTPRoute generates: the dotted ``to[].default`` fields (or whole blocks) its plugin
    # applies to one route. None: such a targetRef is refused as not supported yet (support.py).
    per_route: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        unknown = {*self.sidecar, *self.gateway} - set(ALL_SECTIONS)
        if unknown:
            raise ValueError(f"unknown policy sections {sorted(unknown)}; known: {', '.join(ALL_SECTIONS)}")
        narrowed = (
            self.sidecar != SECTIONS
            or self.gateway != SECTIONS
            or self.not_yet is not None
            or self.per_route is not None
        )
        if self.plugin is None and narrowed:
            raise ValueError("a type that is not supported yet has nothing to narrow")
        if self.plugin is not None and self.reason:
            raise ValueError("only a type that is not supported yet has a reason")

    @property
    def supported(self) -> bool:
        return self.plugin is not None


# Explicitly: zonemesh validates and refuses this type (its plugin does not exist yet).
NOT_SUPPORTED_YET = PolicySupport(plugin=None)


@dataclass(frozen=True)
class ResourceType:
    name: str  # "MeshTimeout": the `type` field of the document
    plural: str  # "meshtimeouts": REST path segment and zmctl name
    scope: Scope
    sync: Sync
    spec: Node  # schema of the spec (see schema.py)
    wrapped: bool = False  # True: spec lives under a `spec:` key (targetRef policies); False: flat fields
    policy: bool = False  # a targetRef policy (listed under /policies, applied to proxies)
    system: bool = False  # written only by control planes (insights): read-only through the API
    sensitive: bool = False  # reads need the admin token from non-loopback clients (secrets)
    short_name: str | None = None
    aliases: tuple[str, ...] = ()  # more names zmctl accepts (e.g. "zone-ingresses")
    semantic: SemanticCheck | None = None
    zone_refs: ZoneRefs | None = None  # zone-provided types whose content names a zone
    rest_path: str | None = None  # overrides the path segment when Kuma's differs from `plural`
    # More REST path segments served like `path`: Kuma's AlternativeWsPath, and a path an earlier
    # zonemesh served (so users' scripts keep working). zmctl accepts them as names too.
    path_aliases: tuple[str, ...] = ()
    # The type that holds what the control planes record about each resource of this one (its
    # subscriptions), under the same mesh and name: Kuma's HasInsights. The API serves the pair as
    # Kuma's overview (``<path>/_overview``, ``<path>/{name}/_overview``: shared/api/overview.py).
    insight: str | None = None
    # Kuma's IsFromAsRules (targetRef policies): a policy's `from` entries count as inbound rules
    # without matches. The type's plugin must read them so (zone_cp/xds/policies/plugin.py checks).
    from_as_rules: bool = False
    mesh_check: MeshCheck | None = None
    # Run on API writes only, never on what is stored or synced: refusals of a value an earlier
    # zonemesh accepted and ignored, so that what it stored keeps working after an upgrade.
    write_check: SemanticCheck | None = None
    store_check: StoreCheck | None = None  # API writes only, after the others passed: see StoreCheck
    delete_check: DeleteCheck | None = None  # API deletes only: see DeleteCheck
    support: PolicySupport | None = None  # targetRef policies only: see PolicySupport
    name_rule: NameRule = RESOURCE_NAME  # what its names may look like (Mesh and Zone: stricter)

    @property
    def path(self) -> str:
        return self.rest_path or self.plural

    @property
    def display_name(self) -> str:
        """Kuma's singular display name: the words of the name (``MeshHTTPRoute`` -> ``Mesh HTTP Route``)."""
        return " ".join(re.findall(r"[A-Z]+(?=[A-Z][a-z])|[A-Z][a-z]+|[A-Z]+|[a-z]+|[0-9]+", self.name))

    @property
    def plural_display_name(self) -> str:
        """Kuma's plural display name: the display name with the plural's ending
        (``Mesh Retry`` and ``meshretries`` -> ``Mesh Retries``; ``Mesh TLS`` -> ``Mesh TLSes``)."""
        singular, plural = self.name.lower(), self.plural
        common = 0
        while common < min(len(singular), len(plural)) and singular[common] == plural[common]:
            common += 1
        return self.display_name[: len(self.display_name) - (len(singular) - common)] + plural[common:]

    def has_section(self, section: str) -> bool:
        """Whether the spec of this targetRef policy type has a top-level ``to``, ``from`` or ``rules``."""
        fields = getattr(self.spec, "fields", {})
        return section in fields

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path segment the API serves this type under: ``path`` first, then its aliases."""
        return (self.path, *self.path_aliases)

    def collection_path(self, mesh: str = "") -> str:
        return f"/meshes/{mesh}/{self.path}" if self.scope is Scope.MESH else f"/{self.path}"

    def item_path(self, name: str, mesh: str = "") -> str:
        return f"{self.collection_path(mesh)}/{name}"

    def name_errors(self, name: Any, mesh: Any = "") -> list[FieldError]:
        """The name rule for this type's resources (and their mesh, when mesh-scoped): every
        problem with ``name`` and ``mesh``, as fields "name" and "mesh"; none when both are fine."""
        errors = check_name(name, "name", self.name_rule)
        if self.scope is Scope.MESH:
            errors += check_name(mesh, "mesh", MESH_NAME)
        return errors

    @property
    def synced_down(self) -> bool:
        return bool(self.sync & Sync.GLOBAL_TO_ZONES)

    @property
    def synced_up(self) -> bool:
        return bool(self.sync & (Sync.ZONE_TO_GLOBAL | Sync.ACROSS_ZONES))

    @property
    def provided_by_both(self) -> bool:
        """Created on global *and* on zones (GLOBAL_TO_ZONES | ZONE_TO_GLOBAL). A copy KDS stores
        of such a resource is renamed with Kuma's hash suffix (shared/kds/naming.py): a zone's
        ``foo`` and global's ``foo`` then never share a name where both are stored."""
        return bool(self.sync & Sync.GLOBAL_TO_ZONES) and bool(self.sync & Sync.ZONE_TO_GLOBAL)


class UnknownType(KeyError):
    pass


class Registry:
    def __init__(self) -> None:
        self._by_name: dict[str, ResourceType] = {}
        self._by_cli: dict[str, ResourceType] = {}

    def register(self, rtype: ResourceType) -> ResourceType:
        if rtype.name in self._by_name:
            raise ValueError(f"resource type {rtype.name} registered twice")
        if rtype.sync & Sync.ACROSS_ZONES and not rtype.sync & Sync.ZONE_TO_GLOBAL:
            raise ValueError(f"{rtype.name}: a type synced across zones must be provided by a zone")
        if rtype.policy and rtype.support is None:
            # No silent acceptance: a policy type either has a plugin applying it or is refused.
            raise ValueError(
                f"{rtype.name} is a targetRef policy without support: give it "
                "support=PolicySupport(plugin=<module of zone_cp/xds/policies>) or support=NOT_SUPPORTED_YET"
            )
        if not rtype.policy and rtype.support is not None:
            raise ValueError(f"{rtype.name}: only targetRef policies have a PolicySupport")
        names = {rtype.name.lower(), rtype.plural, *rtype.paths, *rtype.aliases}
        if rtype.short_name:
            names.add(rtype.short_name)
        for cli_name in names:
            other = self._by_cli.get(cli_name)
            if other is not None and other is not rtype:
                raise ValueError(f"name {cli_name!r} of {rtype.name} is already used by {other.name}")
        self._by_name[rtype.name] = rtype
        for cli_name in names:
            self._by_cli[cli_name] = rtype
        return rtype

    def get(self, name: str) -> ResourceType:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownType(f"unknown resource type {name!r}") from None

    def resolve(self, cli_name: str) -> ResourceType:
        """Find a type by any name a user may type: MeshTimeout, meshtimeout, meshtimeouts, short name."""
        rtype = self._by_name.get(cli_name) or self._by_cli.get(cli_name.lower())
        if rtype is None:
            raise UnknownType(f"unknown resource type {cli_name!r}; known: {', '.join(sorted(self._by_name))}")
        return rtype

    def by_path(self, segment: str, scope: Scope) -> ResourceType | None:
        for rtype in self._by_name.values():
            if segment in rtype.paths and rtype.scope is scope:
                return rtype
        return None

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(self._by_name.values())

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def filter(self, predicate: Callable[[ResourceType], bool]) -> list[ResourceType]:
        return [t for t in self._by_name.values() if predicate(t)]

    def policies(self) -> list[ResourceType]:
        return self.filter(lambda t: t.policy)

    def mesh_scoped(self) -> list[ResourceType]:
        return self.filter(lambda t: t.scope is Scope.MESH)

    def downstream(self) -> list[ResourceType]:
        """Types global sends to zones: global→zones types, plus zone types synced across zones."""
        return self.filter(lambda t: t.synced_down or bool(t.sync & Sync.ACROSS_ZONES))

    def upstream(self) -> list[ResourceType]:
        """Types zones upload to global."""
        return self.filter(lambda t: t.synced_up)


REGISTRY = Registry()


def register(rtype: ResourceType) -> ResourceType:
    return REGISTRY.register(rtype)


def downstream_types() -> list[str]:
    """What KDS carries from global to zones (both sides read this)."""
    return [t.name for t in REGISTRY.downstream()]


def upstream_types() -> list[str]:
    """What KDS carries from zones to global (both sides read this)."""
    return [t.name for t in REGISTRY.upstream()]
