"""MeshContext: everything generation may read about one mesh, gathered once per round.

Generation is pure: ``generate(ctx, proxy)`` reads only the context and the Dataplane. The
reconciler builds one context per mesh per round (from its mirror of the store, plus the
workload certificates it fetched), then generates every affected proxy of the mesh from it;
``memo`` lets generators share identical pieces (per destination service) between those proxies.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Hashable, Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from google.protobuf.message import Message
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.kept import Kept

if TYPE_CHECKING:
    from zonemesh.zone_cp.xds.crosszone import CrossZone

SERVICE_TAG = "kuma.io/service"
PROTOCOL_TAG = "kuma.io/protocol"
READ_TAGS = frozenset({SERVICE_TAG, PROTOCOL_TAG})  # the inbound tags generators read themselves
HTTP_PROTOCOLS = frozenset({"http", "http2", "grpc"})
LOCALHOST = "127.0.0.1"

MESH = "Mesh"
DATAPLANE = "Dataplane"
EXTERNAL_SERVICE = "ExternalService"
SECRET = "Secret"

M = TypeVar("M", bound=Message)


class WorkloadCert(NamedTuple):
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    not_after: dt.datetime


class CertProvider(Protocol):
    """Issues (and caches, and rotates) workload certificates: ``spiffe://<mesh>/<service>``."""

    async def workload_cert(self, mesh: str, service: str) -> tuple[bytes, bytes, bytes, dt.datetime]: ...

    async def workload_certs(
        self, mesh: str, services: Iterable[str]
    ) -> dict[str, tuple[bytes, bytes, bytes, dt.datetime] | Exception]:
        """``workload_cert`` of each service (a failed one: its exception), in one call: a round asks
        for all of a mesh's services at once. Raises when none can be issued (the mesh's CA)."""
        ...


class PlacedListener(NamedTuple):
    """An inbound listener as placed in an earlier round (inbound.place): what it was placed from
    (its template's content, its app's and its own address and port), its encoded ``Any`` and
    version; and the same of the local cluster placed with it (at its app's address and port)."""

    key: tuple[object, ...]
    data: bytes
    version: str
    offset: int  # where the Listener's own bytes start in ``data``
    cluster_data: bytes
    cluster_version: str
    cluster_offset: int  # where the Cluster's own bytes start in ``cluster_data``


@dataclass(frozen=True)
class Endpoint:
    """One place traffic for a service can go. Local dataplanes give their inbound
    address:port; other zones' ingresses give their advertised address (with ``zone``, and
    the number of instances behind them as ``weight``), see crosszone.py."""

    address: str
    port: int
    tags: Mapping[str, str]
    zone: str | None = None
    weight: int = 1


# --- reading a Dataplane spec -----------------------------------------------------------------


def networking(dp: Resource) -> Mapping[str, Any]:
    value = dp.spec.get("networking")
    return value if isinstance(value, Mapping) else {}


def inbounds(dp: Resource) -> list[Mapping[str, Any]]:
    return list(networking(dp).get("inbound") or [])


def declared_outbounds(dp: Resource) -> list[Mapping[str, Any]]:
    """``networking.outbound`` as written, before ``reachable_services`` trims it."""
    return list(networking(dp).get("outbound") or [])


def reachable_services(dp: Resource) -> frozenset[str] | None:
    """The services a proxy may reach (``networking.transparentProxying``), None: all it declares.

    ``reachableServices`` names services by their ``kuma.io/service`` tag; ``reachableBackends``
    refs of kind MeshService name them too (zonemesh has no MeshService resources: the name is
    the service tag, as in targetRefs; other kinds, labels and ports are refused by validation).
    As in Kuma, an empty ``reachableServices`` restricts nothing, and ``reachableBackends``
    present without refs reaches nothing. Kuma applies both to the outbounds transparent
    proxying generates for every service of the mesh; zonemesh has no transparent proxying, so
    they trim the outbounds the Dataplane declares."""
    tp = networking(dp).get("transparentProxying")
    if not isinstance(tp, Mapping):
        return None
    names = [str(s) for s in tp.get("reachableServices") or []]
    backends = tp.get("reachableBackends")
    if isinstance(backends, Mapping):
        names += [str(ref.get("name")) for ref in backends.get("refs") or [] if ref.get("kind") == "MeshService"]
    elif not names:
        return None
    return frozenset(names)


def outbounds(dp: Resource) -> list[Mapping[str, Any]]:
    """The outbounds generation builds: those declared, to the reachable services only. Every
    reader of a proxy's outbounds (the generators, the reconciler's index of who calls whom)
    goes through here, so a service a proxy cannot reach changes nothing in its config."""
    declared = declared_outbounds(dp)
    reachable = reachable_services(dp)
    if reachable is None:
        return declared
    return [o for o in declared if (o.get("tags") or {}).get(SERVICE_TAG) in reachable]


def is_gateway(dp: Resource) -> bool:
    return networking(dp).get("gateway") is not None


def tag_sets(dp: Resource) -> list[Mapping[str, str]]:
    """The tag sets the proxy serves (one per inbound, or the gateway's); policies match on them."""
    gateway = networking(dp).get("gateway")
    if isinstance(gateway, Mapping):
        return [gateway.get("tags") or {}]
    return [inbound.get("tags") or {} for inbound in inbounds(dp)]


def services(dp: Resource) -> list[str]:
    """The services a proxy serves, in inbound order, without duplicates."""
    seen: dict[str, None] = {}
    for tags in tag_sets(dp):
        if tags.get(SERVICE_TAG):
            seen[tags[SERVICE_TAG]] = None
    return list(seen)


def section_name(inbound: Mapping[str, Any]) -> str:
    """How a targetRef's ``sectionName`` names an inbound: its ``name``, else its port."""
    return str(inbound.get("name") or inbound.get("port"))


# Where a sidecar listens: read by the inbound listeners only (inbound.place).
ADDRESS_FIELDS = ("address", "advertisedAddress")
# Where an inbound listens and where its app is: read by inbound.place only (the inbound's local
# cluster and listener), and by matching as the section name of an unnamed inbound (``sections``).
INBOUND_PLACE_FIELDS = ("address", "port", "serviceAddress", "servicePort")


def shape(
    dp: Resource,
    tag_keys: Set[str] = frozenset(),
    label_keys: Set[str] = frozenset(),
    names: Set[str] = frozenset(),
    sections: Set[str] = frozenset(),
) -> str:
    """What a sidecar's config depends on but for where it listens (generators/__init__.py):
    the Dataplane without its addresses, of its inbounds neither their addresses nor their ports
    (``INBOUND_PLACE_FIELDS``), and of its inbound tags only those generation reads:
    kuma.io/service and kuma.io/protocol, and ``tag_keys`` (those policies match on, see
    ``policies.policy_selectors``); of its labels those in ``label_keys``, its name if in
    ``names`` and an inbound's section name (its name, else its port) if in ``sections``
    (Dataplane targetRefs select on them). Replicas of a service share it, whatever their
    addresses and ports. A gateway's listeners carry its address: each gateway is a shape of
    its own."""
    if is_gateway(dp):
        return f"gateway/{dp.name}"
    net = {k: v for k, v in networking(dp).items() if k not in ADDRESS_FIELDS}
    net["inbound"] = [
        {
            **{k: v for k, v in inbound.items() if k not in INBOUND_PLACE_FIELDS and k != "tags"},
            "tags": {k: v for k, v in (inbound.get("tags") or {}).items() if k in READ_TAGS or k in tag_keys},
            "section": section_name(inbound) if section_name(inbound) in sections else None,
        }
        for inbound in inbounds(dp)
    ]
    selected = {
        "name": dp.name if dp.name in names else "",
        "labels": {k: v for k, v in dp.labels.items() if k in label_keys},
    }
    # Interned: the reconciler keeps every proxy's shape between rounds, and replicas have the same.
    return sys.intern(
        json.dumps(
            {**dp.spec, "networking": net, "selected": selected}, sort_keys=True, separators=(",", ":"), default=str
        )
    )


def outbound_services(dp: Resource) -> set[str]:
    return {str(o["tags"][SERVICE_TAG]) for o in outbounds(dp) if (o.get("tags") or {}).get(SERVICE_TAG)}


def inbound_address(dp: Resource, inbound: Mapping[str, Any]) -> str:
    return str(inbound.get("address") or networking(dp).get("address") or LOCALHOST)


def local_endpoints(dataplanes: Iterable[Resource]) -> dict[str, list[Endpoint]]:
    """service -> endpoints of this zone's dataplanes (ready inbounds only), in a stable order."""
    result: dict[str, list[Endpoint]] = {}
    for dp in sorted(dataplanes, key=lambda d: d.name):
        net = networking(dp)
        for inbound in inbounds(dp):
            tags = inbound.get("tags") or {}
            service = tags.get(SERVICE_TAG)
            if not service or inbound.get("state") in ("NotReady", "Ignored"):
                continue
            if (inbound.get("health") or {}).get("ready") is False:
                continue
            address = str(inbound.get("address") or net.get("advertisedAddress") or net.get("address"))
            result.setdefault(service, []).append(Endpoint(address, int(inbound["port"]), tags))
    return result


@dataclass(frozen=True)
class Mtls:
    backend: str
    mode: str  # STRICT | PERMISSIVE


@dataclass
class MeshContext:
    mesh: Resource
    dataplanes: Mapping[str, Resource]  # this zone's dataplanes of the mesh, by name
    policies: Mapping[str, list[Resource]]  # by type name, each list sorted by name
    external_services: Mapping[str, Resource] = field(default_factory=dict)  # by kuma.io/service
    certs: Mapping[str, WorkloadCert] = field(default_factory=dict)  # by service
    endpoints: Mapping[str, list[Endpoint]] = field(default_factory=dict)  # by service
    memo: dict[Any, Any] = field(default_factory=dict)  # shared pieces within one round
    cross: CrossZone | None = None  # other zones' ingresses, this zone's egress (crosszone.py)
    # Dataplane name -> (the Dataplane, what policies selected on, its shape): kept by the
    # reconciler across rounds (its Dataplanes are replaced on change, never changed in place),
    # so an unchanged proxy's shape is not serialized again each round (generators.generate).
    shapes: dict[str, tuple[Resource, Any, str]] = field(default_factory=dict)
    # Dataplane name -> inbound index -> its listener as placed in an earlier round (inbound.place):
    # kept by the reconciler across rounds, so that an inbound placed from a template of the same
    # content at the same addresses and ports is not built and serialized again.
    placed: dict[str, dict[int, PlacedListener]] = field(default_factory=dict)
    # What an inbound's template is built from -> the template (inbound._template): kept by the
    # reconciler across rounds; and the keys this round used (the reconciler drops the others
    # once there are many).
    templates: dict[Any, Any] = field(default_factory=dict)
    templates_used: set[Any] = field(default_factory=set)
    # This round's: listeners (with their local clusters) placed anew, recorded in ``placed``
    # once serialized (inbound.keep_placed); and messages whose encoding is known already
    # (SnapshotBuilder).
    placing: list[tuple[str, int, tuple[object, ...], Any, Any]] = field(default_factory=list)
    encoded: dict[int, tuple[Any, bytes, str]] = field(default_factory=dict)
    # Messages kept across rounds by what they are built from (kept.py; the reconciler keeps one
    # per mesh): endpoints, outbound clusters and listeners, secrets.
    kept: Kept = field(default_factory=Kept)

    @classmethod
    def build(
        cls,
        mesh: Resource,
        dataplanes: Iterable[Resource],
        policies: Iterable[Resource] = (),
        external_services: Iterable[Resource] = (),
        certs: Mapping[str, WorkloadCert] | None = None,
        cross: CrossZone | None = None,
        endpoints: Mapping[str, list[Endpoint]] | None = None,
        shapes: dict[str, tuple[Resource, Any, str]] | None = None,
        placed: dict[str, dict[int, PlacedListener]] | None = None,
        templates: dict[Any, Any] | None = None,
        kept: Kept | None = None,
    ) -> MeshContext:
        """``endpoints``: ``local_endpoints(dataplanes)`` when the caller keeps it between rounds;
        ``shapes``, ``placed``, ``templates`` and ``kept``: the proxies' shapes, placed inbound
        listeners, inbound templates and kept messages, when the caller keeps them between rounds."""
        dps = {dp.name: dp for dp in dataplanes}
        by_type: dict[str, list[Resource]] = {}
        for policy in sorted(policies, key=lambda p: p.name):
            by_type.setdefault(policy.type, []).append(policy)
        externals: dict[str, Resource] = {}
        for es in sorted(external_services, key=lambda e: e.name):
            service = (es.spec.get("tags") or {}).get(SERVICE_TAG)
            if service:
                externals.setdefault(service, es)
        local = local_endpoints(dps.values()) if endpoints is None else endpoints
        return cls(
            mesh,
            dps,
            by_type,
            externals,
            dict(certs or {}),
            local,
            cross=cross,
            shapes={} if shapes is None else shapes,
            placed={} if placed is None else placed,
            templates={} if templates is None else templates,
            kept=Kept() if kept is None else kept,
        )

    @property
    def name(self) -> str:
        return self.mesh.name

    def keep(self, key: Hashable, type_url: str, build: Callable[[], M], inputs: Any = None) -> M:
        """The message ``build`` makes, kept across rounds under ``key`` and ``inputs`` (``Kept.message``):
        they must name everything ``build`` reads."""
        return self.kept.message(key, type_url, build, self.encoded, inputs)

    @property
    def mtls(self) -> Mtls | None:
        """The enabled mTLS backend, or None when mTLS is off."""
        mtls = self.mesh.spec.get("mtls") or {}
        enabled = mtls.get("enabledBackend")
        if not enabled:
            return None
        for backend in mtls.get("backends") or []:
            if backend.get("name") == enabled:
                return Mtls(enabled, str(backend.get("mode") or "STRICT"))
        return None

    def secret(self, name: str) -> Resource | None:
        """The mesh's Secret ``name`` (DataSources' ``secret:`` references), None when absent."""
        by_name = self.memo.get("secrets")
        if by_name is None:
            by_name = self.memo["secrets"] = {s.name: s for s in self.policies.get(SECRET, ())}
        found = by_name.get(name)
        return found if isinstance(found, Resource) else None

    def protocol(self, service: str) -> str:
        """A service's protocol, from the kuma.io/protocol tag of its endpoints (tcp when unknown)."""
        external = self.external_services.get(service)
        if external is not None:
            return str((external.spec.get("tags") or {}).get(PROTOCOL_TAG) or "tcp")
        remote = self.cross.remote.get(service, []) if self.cross is not None else []
        for endpoint in [*self.endpoints.get(service, ()), *remote]:
            protocol = endpoint.tags.get(PROTOCOL_TAG)
            if protocol:
                return str(protocol)
        return "tcp"

    @property
    def via_egress(self) -> bool:
        """Cross-zone and external traffic leaves through this zone's egress: the Mesh asks for
        it (``routing.zoneEgress``), mTLS is on (the egress routes by SNI) and an egress exists."""
        routing = self.mesh.spec.get("routing") or {}
        return bool(routing.get("zoneEgress")) and self.mtls is not None and bool(self.cross and self.cross.egress)
