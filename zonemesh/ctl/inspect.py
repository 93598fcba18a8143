"""`zmctl inspect ...` as kumactl has it: zones, zone ingresses and egresses, services, the proxies a
MeshGateway or a policy selects, one zone proxy's config. Tables keep kumactl's columns and
cells (``Ago``, ``Number``, ``Online``/``Offline``) so that scripts reading them keep working.

    zmctl inspect zones                              # on global
    zmctl inspect zoneingresses | zoneegresses
    zmctl inspect services -m default
    zmctl inspect meshgateway edge-gateway -m default
    zmctl inspect meshtimeout timeout-1 -m default [--new-api]
    zmctl inspect zoneingress ingress-1 [--type config-dump]

The meshes, dataplanes and dataplane commands are in commands.py.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from zonemesh.ctl import output
from zonemesh.ctl.client import ApiClient, ApiError, quote_name
from zonemesh.ctl.commands import ADMIN_ONLY_TYPES, DEFAULT_MESH, ON_THE_PROXY_HOST, failing_as
from zonemesh.ctl.errors import CtlError, name_type
from zonemesh.shared.resources import REGISTRY, ResourceType
from zonemesh.shared.resources.schema import MESH_NAME

if TYPE_CHECKING:
    from zonemesh.ctl.commands import Env
    from zonemesh.ctl.main import Builder, Subparsers

Doc = Mapping[str, Any]
OUTPUTS = ("table", "yaml", "json")
SERVICE_TAG = "kuma.io/service"
# -- kumactl's cells ---------------------------------------------------------------------------


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        then = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return then if then.tzinfo is not None else then.replace(tzinfo=UTC)


def duration(seconds: float) -> str:
    """kumactl's ``table.Duration``: 42s, 5m, 3h, 12d, 2y; "never" for a time in the future."""
    whole = int(seconds)
    if whole < -1:
        return "never"
    if whole < 0:
        return "0s"
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m"
    hours = whole // 3600
    if hours < 24:
        return f"{hours}h"
    if hours < 24 * 365:
        return f"{hours // 24}d"
    return f"{hours // (24 * 365)}y"


def ago(text: Any, now: datetime) -> str:
    """kumactl's ``table.Ago``: how long ago, "never" without a time."""
    then = parse_time(text)
    return "never" if then is None else duration((now - then).total_seconds())


def number(value: Any) -> str:
    """A counter as Kuma's JSON gives it (uint64 fields are strings there): "0" when absent."""
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return "0"


# -- insights (Kuma's DiscoverySubscription / KDSSubscription) -------------------------------------


def subscriptions(insight: Doc | None) -> list[Doc]:
    return [s for s in (insight or {}).get("subscriptions") or [] if isinstance(s, Mapping)]


def is_online(insight: Doc | None) -> bool:
    """Kuma's ``IsOnline``: some stream is connected and not disconnected."""
    return any(s.get("connectTime") and not s.get("disconnectTime") for s in subscriptions(insight))


def total(insight: Doc | None, counter: str) -> int:
    return sum(int(number(((s.get("status") or {}).get("total") or {}).get(counter))) for s in subscriptions(insight))


def component_version(subscription: Doc, *names: str) -> str:
    """``version.<name>.version`` under Kuma's name (kumaDp, kumaCp) or zonemesh's (zonemeshDp, zonemeshCp)."""
    versions = subscription.get("version") or {}
    for name in names:
        found = (versions.get(name) or {}).get("version") if isinstance(versions.get(name), Mapping) else None
        if found:
            return str(found)
    return ""


def store_backend(subscription: Doc) -> str:
    """The zone control plane's store, from the config its KDS stream reported (a JSON string in Kuma)."""
    config = subscription.get("config")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError:
            return ""
    store = config.get("store") if isinstance(config, Mapping) else None
    if isinstance(store, Mapping):
        return str(store.get("type") or "")
    return str(store or "")


def proxy_row(name: str, insight: Doc | None, now: datetime) -> list[str]:
    """NAME STATUS LAST CONNECTED AGO LAST UPDATED AGO TOTAL UPDATES TOTAL ERRORS KUMA-DP VERSION ENVOY VERSION."""
    last = (subscriptions(insight) or [{}])[-1]
    return [
        name,
        "Online" if is_online(insight) else "Offline",
        ago(last.get("connectTime"), now),
        ago((last.get("status") or {}).get("lastUpdateTime"), now),
        str(total(insight, "responsesSent")),
        str(total(insight, "responsesRejected")),
        component_version(last, "kumaDp", "zonemeshDp"),
        component_version(last, "envoy"),
    ]


PROXY_HEADERS = [
    "NAME",
    "STATUS",
    "LAST CONNECTED AGO",
    "LAST UPDATED AGO",
    "TOTAL UPDATES",
    "TOTAL ERRORS",
    "KUMA-DP VERSION",
    "ENVOY VERSION",
]
ZONE_HEADERS = [*PROXY_HEADERS[:6], "ZONE-CP VERSION", "BACKEND"]


def zone_row(item: Doc, now: datetime) -> list[str]:
    insight = item.get("zoneInsight") if isinstance(item.get("zoneInsight"), Mapping) else {}
    last = (subscriptions(insight) or [{}])[-1]
    # Global's verdict (heartbeats) beats reading the subscriptions; a disabled zone is offline.
    online = item["state"] == "Online" if item.get("state") else is_online(insight)
    enabled = (item.get("zone") or {}).get("enabled", True) is not False
    return [
        str(item.get("name")),
        "Online" if online and enabled else "Offline",
        ago(last.get("connectTime"), now),
        ago((last.get("status") or {}).get("lastUpdateTime"), now),
        str(total(insight, "responsesSent")),
        str(total(insight, "responsesRejected")),
        component_version(last, "kumaCp", "zonemeshCp"),
        store_backend(last),
    ]


def dataplane_status(dataplane: Doc, insight: Doc | None) -> str:
    """Kuma's DataplaneOverview status: Online, Offline, or "Partially degraded" when some inbound
    is not ready (``health.ready: false``)."""
    online = is_online(insight)
    networking = dataplane.get("networking") or {}
    if networking.get("gateway"):
        return "Online" if online else "Offline"
    inbound = [i for i in networking.get("inbound") or [] if isinstance(i, Mapping)]
    ready = sum(1 for i in inbound if (i.get("health") or {}).get("ready", True) is not False)
    if not online or ready == 0:
        return "Offline"
    return "Partially degraded" if ready < len(inbound) else "Online"


DATAPLANE_HEADERS = [
    "MESH",
    "NAME",
    "TAGS",
    "STATUS",
    "LAST CONNECTED AGO",
    "LAST UPDATED AGO",
    "TOTAL UPDATES",
    "TOTAL ERRORS",
    "CERT REGENERATED AGO",
    "CERT EXPIRATION",
    "CERT REGENERATIONS",
    "CERT BACKEND",
    "SUPPORTED CERT BACKENDS",
    "KUMA-DP VERSION",
    "ENVOY VERSION",
    "DEPENDENCIES VERSIONS",
    "NOTES",
]


def date(text: Any) -> str:
    """kumactl's ``table.Date``: ``2006-01-02 15:04:05`` (UTC here), "-" without a time."""
    then = parse_time(text)
    return "-" if then is None else then.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def not_ready(dataplane: Doc) -> list[str]:
    """kumactl's NOTES: the inbounds that are not ready."""
    inbound = [i for i in (dataplane.get("networking") or {}).get("inbound") or [] if isinstance(i, Mapping)]
    return [
        f"inbound[port={i.get('port')}] is not ready"
        for i in inbound
        if (i.get("health") or {}).get("ready", True) is False
    ]


def dataplane_row(item: Doc, now: datetime) -> list[str]:
    """One proxy of ``dataplanes+insights`` in kumactl's ``inspect dataplanes`` columns."""
    dataplane, insight = output.dataplane_overview(item)
    last = (subscriptions(insight) or [{}])[-1]
    mtls = (insight or {}).get("mTLS") if isinstance((insight or {}).get("mTLS"), Mapping) else None
    dependencies = (last.get("version") or {}).get("dependencies") or {}
    # No insight at all: this control plane reported none (a plain list), so unknown, not offline.
    status = "-" if insight is None else dataplane_status(dataplane, insight)
    return [
        str(dataplane.get("mesh") or ""),
        str(dataplane.get("name") or ""),
        output.dataplane_tags(dataplane),
        status,
        ago(last.get("connectTime"), now),
        ago((last.get("status") or {}).get("lastUpdateTime"), now),
        str(total(insight, "responsesSent")),
        str(total(insight, "responsesRejected")),
        ago((mtls or {}).get("lastCertificateRegeneration"), now),
        date((mtls or {}).get("certificateExpirationTime")),
        number((mtls or {}).get("certificateRegenerations")),
        str(mtls.get("issuedBackend") or "") if mtls is not None else "-",
        ",".join(map(str, (mtls or {}).get("supportedBackends") or [])),
        component_version(last, "kumaDp", "zonemeshDp"),
        component_version(last, "envoy"),
        ", ".join(f"{k}: {v}" for k, v in sorted(dependencies.items())) or "-",
        ";".join(not_ready(dataplane)) if status not in ("Online", "-") else "",
    ]


def dataplane_selected(item: Doc, tags: Mapping[str, str], gateway: bool) -> bool:
    """kumactl's ``inspect dataplanes --tag K=V --gateway`` filters."""
    dataplane, _ = output.dataplane_overview(item)
    networking = dataplane.get("networking") or {}
    if gateway and not networking.get("gateway"):
        return False
    groups = [i.get("tags") or {} for i in networking.get("inbound") or [] if isinstance(i, Mapping)]
    if isinstance(networking.get("gateway"), Mapping):
        groups.append(networking["gateway"].get("tags") or {})
    return all(any(g.get(k) == v for g in groups) for k, v in tags.items())


def service_overviews(overviews: Iterable[Doc], external: Iterable[Doc], mesh: str) -> list[dict[str, Any]]:
    """Kuma's ServiceInsight services from the mesh's dataplanes+insights and ExternalServices: per
    kuma.io/service, how many of its proxies are online; a partially degraded proxy counts offline."""
    services: dict[str, dict[str, Any]] = {}

    def add(name: Any, kind: str, status: str | None) -> None:
        if not name:
            return
        entry = services.setdefault(
            str(name),
            {
                "type": "ServiceOverview",
                "mesh": mesh,
                "name": str(name),
                "serviceType": kind,
                "dataplanes": {"online": 0, "offline": 0, "total": 0},
            },
        )
        if status is not None:
            entry["dataplanes"]["online" if status == "Online" else "offline"] += 1
            entry["dataplanes"]["total"] += 1

    for item in overviews:
        dataplane, insight = output.dataplane_overview(item)
        status = dataplane_status(dataplane, insight)
        networking = dataplane.get("networking") or {}
        gateway = networking.get("gateway")
        if isinstance(gateway, Mapping):
            kind = "gateway_builtin" if str(gateway.get("type", "")).upper() == "BUILTIN" else "gateway_delegated"
            add((gateway.get("tags") or {}).get(SERVICE_TAG), kind, status)
            continue
        for inbound in networking.get("inbound") or []:
            add((inbound.get("tags") or {}).get(SERVICE_TAG), "internal", status)
    for es in external:
        add((es.get("tags") or {}).get(SERVICE_TAG), "external", None)

    for entry in services.values():
        online, offline = entry["dataplanes"]["online"], entry["dataplanes"]["offline"]
        if entry["serviceType"] == "external":
            entry["status"] = "not_available"
        elif online == 0:
            entry["status"] = "offline"
        else:
            entry["status"] = "online" if offline == 0 else "partially_degraded"
    return [services[name] for name in sorted(services)]


def service_status_cell(status: str) -> str:
    """kumactl prints a service's status as its ServiceOverview's: not_available shows as Offline."""
    return {"online": "Online", "partially_degraded": "Partially degraded"}.get(status, "Offline")


# -- commands ----------------------------------------------------------------------------------------


def _print(args: argparse.Namespace, body: Any, headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    if args.output == "json":
        print(output.to_json(body))
    elif args.output == "yaml":
        print(output.to_yaml([body]))
    else:
        print(output.render_table(headers, rows))


def _now() -> datetime:
    return datetime.now(UTC)


def _mode(client: ApiClient) -> str:
    try:
        index = client.get("/")
    except ApiError:
        return "unknown"
    return str(index.get("mode")) if isinstance(index, Mapping) else "unknown"


def cmd_inspect_zones(args: argparse.Namespace, env: Env) -> None:
    client = env.client()
    try:
        items = list(client.list_all("/zones+insights"))
    except ApiError as exc:
        if exc.status != 404:
            raise CtlError(f"cannot inspect zones: {exc.message}", exc.details) from None
        raise CtlError(
            f"the control plane at {client.address} has no zones (it runs in {_mode(client)} mode): "
            "zones are inspected on the global control plane"
        ) from None
    now = _now()
    _print(args, {"total": len(items), "items": items}, ZONE_HEADERS, (zone_row(i, now) for i in items))


def zone_proxy_overviews(client: ApiClient, type_name: str) -> list[dict[str, Any]]:
    """ZoneIngress/ZoneEgress with their insights, in Kuma's overview shape (``zoneIngress``,
    ``zoneIngressInsight``): the type's collection joined with its insight type's, both from the registry."""
    rtype, insight_type = REGISTRY.get(type_name), REGISTRY.get(f"{type_name}Insight")
    insights = {str(i.get("name")): i for i in client.list_all(insight_type.collection_path())}
    key = type_name[:1].lower() + type_name[1:]
    overviews = []
    for doc in client.list_all(rtype.collection_path()):
        name = str(doc.get("name"))
        insight = insights.get(name) or {}
        overviews.append(
            {
                "type": f"{type_name}Overview",
                "name": name,
                key: {k: v for k, v in doc.items() if k not in ("type", "name")},
                f"{key}Insight": {k: v for k, v in insight.items() if k not in ("type", "name")},
            }
        )
    return overviews


def cmd_inspect_zone_proxies(type_name: str) -> Any:
    def handler(args: argparse.Namespace, env: Env) -> None:
        client = env.client()
        with failing_as(f"cannot inspect {REGISTRY.get(type_name).plural}"):
            items = zone_proxy_overviews(client, type_name)
        now = _now()
        key = type_name[:1].lower() + type_name[1:] + "Insight"
        rows = (proxy_row(str(i["name"]), i.get(key), now) for i in items)
        _print(args, {"total": len(items), "items": items}, PROXY_HEADERS, rows)

    return handler


def cmd_inspect_services(args: argparse.Namespace, env: Env) -> None:
    client = env.client()
    mesh = args.mesh or DEFAULT_MESH
    dataplanes = REGISTRY.get("Dataplane").collection_path(mesh)
    with failing_as(f'cannot inspect services in mesh "{mesh}"'):
        overviews = list(client.list_all(f"{dataplanes}+insights"))
        external = list(client.list_all(REGISTRY.get("ExternalService").collection_path(mesh)))
    services = service_overviews(overviews, external, mesh)
    rows = (
        [s["name"], service_status_cell(s["status"]), f"{s['dataplanes']['online']}/{s['dataplanes']['total']}"]
        for s in services
    )
    _print(args, {"total": len(services), "items": services}, ["SERVICE", "STATUS", "DATAPLANES"], rows)


def cmd_inspect_meshgateway(args: argparse.Namespace, env: Env) -> None:
    client = env.client()
    mesh = args.mesh or DEFAULT_MESH
    path = REGISTRY.get("MeshGateway").item_path(quote_name(args.name), mesh) + "/dataplanes"
    with failing_as(f'cannot inspect MeshGateway "{args.name}" in mesh "{mesh}"'):
        body = client.get(path)
    # kumactl's template: the name of each Dataplane the gateway configures, one per line.
    for item in body.get("items") or []:
        print((item.get("dataplane") or {}).get("name"))


def cmd_inspect_policy(rtype: ResourceType) -> Any:
    def handler(args: argparse.Namespace, env: Env) -> None:
        client = env.client()
        mesh = args.mesh or DEFAULT_MESH
        path = rtype.item_path(quote_name(args.name), mesh) + "/_resources/dataplanes"
        query = {"offset": str(args.offset)} if args.offset else {}
        with failing_as(f"cannot inspect {output.describe(rtype.name, args.name, mesh)}"):
            if args.new_api:
                body = client.get(path, query)
            else:
                items = list(client.list_all(path))
                body = {"total": len(items), "items": items}
        items = body.get("items") or []
        if not args.new_api:
            # kumactl's default template, with the proxies by name (for targetRef policies Kuma lists
            # no attachments either).
            print("Affected data plane proxies:\n")
            for item in items:
                print(f"  {item.get('name')}")
            return
        if args.output != "table":
            _print(args, body, [], [])
            return
        rows = [[str(i.get("type")), str(i.get("mesh")), str(i.get("name"))] for i in items]
        print(output.render_table(["Type", "Mesh", "Name"], rows))
        print(f"Total: {body.get('total', len(items))}")

    return handler


def cmd_inspect_zone_proxy(type_name: str) -> Any:
    def handler(args: argparse.Namespace, env: Env) -> None:
        if args.type == "policies":
            raise CtlError(
                f"Policies are not applied on {type_name}, please use '--config-dump' flag to get envoy config "
                f"dump of the {type_name}"
            )
        if args.type in ADMIN_ONLY_TYPES:
            raise CtlError(
                f'cannot get the {args.type} of {type_name} "{args.name}"',
                [ON_THE_PROXY_HOST.format(what=ADMIN_ONLY_TYPES[args.type])],
            )
        client = env.client()
        path = REGISTRY.get(type_name).item_path(quote_name(args.name)) + "/_config"
        with failing_as(f'cannot get the config of {type_name} "{args.name}"'):
            body = client.get(path)
        print(body if isinstance(body, str) else output.to_json(body))

    return handler


def add_commands(b: Builder, inspect: Subparsers) -> None:
    """The kumactl inspect commands beyond meshes/dataplanes/dataplane (commands.py)."""

    def with_output(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("-o", "--output", choices=OUTPUTS, default="table", help="output format (default table)")
        return parser

    def with_mesh(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("-m", "--mesh", type=name_type(MESH_NAME), help=f"the mesh (default {DEFAULT_MESH!r})")
        return parser

    with_output(b.leaf(inspect, "zones", "zones with their status (on global)", cmd_inspect_zones))
    zone_proxies = (
        ("ZoneIngress", "zoneingresses", "zoneingress", ("zone-ingresses",)),
        ("ZoneEgress", "zoneegresses", "zoneegress", ()),
    )
    for type_name, plural, singular, aliases in zone_proxies:
        with_output(
            b.leaf(
                inspect,
                plural,
                f"{REGISTRY.get(type_name).plural} with their status",
                cmd_inspect_zone_proxies(type_name),
                aliases=aliases,
            )
        )
        single = b.leaf(
            inspect,
            singular,
            f"one {type_name}'s Envoy config, as its zone control plane generates it",
            cmd_inspect_zone_proxy(type_name),
        )
        single.add_argument("name", type=name_type(), help=f"{type_name} name")
        single.add_argument(
            "--type",
            choices=("config-dump", "stats", "clusters", "policies"),
            default="config-dump",
            help="config-dump (default; admin); stats and clusters are read on the proxy's host",
        )
    with_output(with_mesh(b.leaf(inspect, "services", "services with their proxies online", cmd_inspect_services)))
    gateway = with_mesh(
        b.leaf(
            inspect, "meshgateway", "the builtin gateway Dataplanes a MeshGateway configures", cmd_inspect_meshgateway
        )
    )
    gateway.add_argument("name", type=name_type(), help="MeshGateway name")
    for rtype in REGISTRY.policies():
        policy = with_output(
            with_mesh(
                b.leaf(
                    inspect,
                    rtype.name.lower(),
                    f"the data plane proxies a {rtype.name} selects",
                    cmd_inspect_policy(rtype),
                )
            )
        )
        policy.add_argument("name", type=name_type(), help=f"{rtype.name} name")
        policy.add_argument("--new-api", action="store_true", help="kumactl's newer table: Type, Mesh, Name, Total")
        policy.add_argument("--offset", type=int, default=0, help="start of the page (with --new-api)")
