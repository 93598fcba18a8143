"""One function per zmctl command. Each reads its parsed arguments, talks to the control plane
through ``ApiClient`` and prints results to stdout; failures are raised as ``CtlError``.

Resource types are always resolved through the registry, so a type added there is usable
here (get, apply, delete) without touching zmctl.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from zonemesh.ctl import config as cfg
from zonemesh.ctl import output
from zonemesh.ctl.client import DEFAULT_TIMEOUT, ApiClient, ApiError, next_offset, quote_name
from zonemesh.ctl.errors import CtlError, UsageError
from zonemesh.shared.resources import REGISTRY, ResourceType, Scope
from zonemesh.shared.resources.codec import from_universal, load_documents
from zonemesh.shared.resources.registry import UnknownType
from zonemesh.shared.resources.schema import ValidationError

DEFAULT_MESH = "default"


@dataclass
class Env:
    """What every command may need besides its arguments: the config file and a client."""

    args: argparse.Namespace

    @property
    def config_path(self) -> Path:
        return cfg.config_path()

    def client(self) -> ApiClient:
        timeout: float = getattr(self.args, "timeout", None) or DEFAULT_TIMEOUT
        address: str | None = getattr(self.args, "cp_address", None)
        if address:
            # A one-off address gets no configured headers: a token must not leak to another host.
            return ApiClient(cfg.check_address(address), timeout=timeout)
        cp = cfg.load(self.config_path).active()
        return ApiClient(cp.address, cp.request_headers(), timeout=timeout)


def resolve_type(name: str) -> ResourceType:
    try:
        return REGISTRY.resolve(name)
    except UnknownType as exc:
        raise UsageError(str(exc.args[0])) from None


def _mesh_of(rtype: ResourceType, args: argparse.Namespace) -> str:
    return (getattr(args, "mesh", None) or DEFAULT_MESH) if rtype.scope is Scope.MESH else ""


def _hints(exc: ApiError) -> list[str]:
    if exc.status == 401:
        return [
            "writes and secret reads need an admin user token (from loopback too when the control plane "
            "runs with api_localhost_is_admin off): zmctl config control-planes add --name NAME --address URL "
            "--auth-type tokens --auth-conf token-file=PATH --overwrite"
        ]
    if exc.status == 403:
        return ["the configured user token is not in the mesh-system:admin group; ask an admin for one that is"]
    return []


@contextmanager
def failing_as(action: str) -> Iterator[None]:
    """Prefix an API error with what zmctl was doing, e.g. 'cannot delete MeshTimeout "x" ...: Not found (404)'."""
    try:
        yield
    except ApiError as exc:
        raise CtlError(f"{action}: {exc.message}", [*exc.details, *_hints(exc)]) from None


# -- apply ---------------------------------------------------------------------------------

_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")


def parse_vars(values: list[str] | None) -> dict[str, str]:
    variables: dict[str, str] = {}
    for value in values or []:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid --var {value!r}: use --var KEY=VALUE")
        variables[key] = val
    return variables


def substitute_vars(text: str, variables: Mapping[str, str]) -> str:
    """Replace ``{{ KEY }}`` like kumactl; a placeholder with no --var is an error, not an empty string."""
    missing = sorted({m.group(1) for m in _VAR.finditer(text) if m.group(1) not in variables})
    if missing:
        raise UsageError(
            f"the input uses variables that were not given: {', '.join(missing)}",
            [f"pass --var {name}=VALUE" for name in missing],
        )
    return _VAR.sub(lambda m: variables[m.group(1)], text)


def read_input(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None


def expand_documents(docs: list[Any]) -> list[Any]:
    """Accept what ``zmctl get -o json`` prints too: a list of documents, or ``{"items": [...]}``."""
    expanded: list[Any] = []
    for doc in docs:
        if isinstance(doc, list):
            expanded += doc
        elif isinstance(doc, dict) and "type" not in doc and isinstance(doc.get("items"), list):
            expanded += doc["items"]
        else:
            expanded.append(doc)
    return expanded


def _doc_label(index: int, doc: Any) -> str:
    if isinstance(doc, dict) and isinstance(doc.get("type"), str):
        return f"document {index} ({output.describe(doc['type'], doc.get('name'), doc.get('mesh'))})"
    return f"document {index}"


class Planned(NamedTuple):
    """A document that passed local validation, with the identity it will be applied under."""

    doc: dict[str, Any]
    rtype: ResourceType
    name: str
    mesh: str

    @property
    def what(self) -> str:
        return output.describe(self.rtype.name, self.name, self.mesh)


def validate_documents(docs: list[Any]) -> list[Planned]:
    """Check every document locally, collecting all field errors of all documents before failing."""
    valid: list[Planned] = []
    problems: list[str] = []
    invalid = 0
    for index, doc in enumerate(docs, start=1):
        try:
            res, _version = from_universal(doc)
        except ValidationError as exc:
            invalid += 1
            problems.append(f"{_doc_label(index, doc)}:")
            problems += [f"  {e.field}: {e.reason}" for e in exc.errors]
        else:
            valid.append(Planned(doc, REGISTRY.get(res.type), res.name, res.mesh))
    if invalid:
        raise CtlError(f"{invalid} of {len(docs)} document(s) not valid; nothing was applied", problems)
    return valid


def cmd_apply(args: argparse.Namespace, env: Env) -> None:
    text = substitute_vars(read_input(args.file), parse_vars(args.var))
    source = "stdin" if args.file == "-" else args.file
    try:
        docs = expand_documents(load_documents(text))
    except ValidationError as exc:
        raise CtlError(f"cannot parse {source}", [f"{e.field}: {e.reason}" for e in exc.errors]) from None
    if not docs:
        raise CtlError(f"{source} contains no documents")
    valid = validate_documents(docs)

    if args.dry_run:
        print(output.to_yaml([p.doc for p in valid]))
        for planned in valid:
            print(f"Would apply {planned.what} (dry run)", file=sys.stderr)
        return

    client = env.client()
    for index, planned in enumerate(valid, start=1):
        rtype, name, mesh = planned.rtype, planned.name, planned.mesh
        try:
            status = client.put(rtype.item_path(quote_name(name), mesh), planned.doc)
        except ApiError as exc:
            hints = _hints(exc)
            if exc.status == 409:
                again = f"zmctl get {rtype.plural} {name}" + (f" -m {mesh}" if mesh else "") + " -o yaml"
                hints.append(f"get the current version with '{again}' and reapply, or drop 'version' to overwrite")
            if index > 1:
                hints.append(f"documents 1-{index - 1} were applied")
            raise CtlError(
                f"cannot apply {planned.what} (document {index}): {exc.message}", [*exc.details, *hints]
            ) from None
        print(f"{'Created' if status == 201 else 'Updated'} {planned.what}")


# -- get / delete --------------------------------------------------------------------------


def list_query(args: argparse.Namespace) -> dict[str, str | list[str]]:
    query: dict[str, str | list[str]] = {}
    if args.size:
        query["size"] = str(args.size)
    if args.offset:
        query["offset"] = args.offset
    if args.tag:
        for tag in args.tag:
            if ":" not in tag:
                raise UsageError(f"invalid --tag {tag!r}: use --tag KEY:VALUE")
        query["tag"] = list(args.tag)
    for label in args.label or []:
        key, sep, value = label.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid --label {label!r}: use --label KEY=VALUE")
        query[f"filter[labels.{key}]"] = value
    return query


def _zone_insights(client: ApiClient) -> dict[str, Mapping[str, Any]] | None:
    """Zone insights by zone name, or None when this control plane has none to offer (a zone CP).

    Global's ``/zones+insights`` adds its online verdict (``state``: last heartbeat younger than the
    offline timeout), which stays right when a zone vanished without closing its stream."""
    try:
        overviews = client.list_all("/zones+insights")
        return {str(o.get("name")): {**(o.get("zoneInsight") or {}), "state": o.get("state")} for o in overviews}
    except ApiError:
        pass
    try:
        return {str(i.get("name")): i for i in client.list_all(REGISTRY.get("ZoneInsight").collection_path())}
    except ApiError:
        return None


def cmd_get(args: argparse.Namespace, env: Env) -> None:
    rtype = resolve_type(args.type)
    mesh = _mesh_of(rtype, args)
    query = None if args.name else list_query(args)
    client = env.client()
    page: dict[str, Any] | None = None
    if query is None:
        with failing_as(f"cannot get {output.describe(rtype.name, args.name, mesh)}"):
            docs = [client.get(rtype.item_path(quote_name(args.name), mesh))]
    else:
        with failing_as(f"cannot list {rtype.plural}" + (f' in mesh "{mesh}"' if mesh else "")):
            page = client.get(rtype.collection_path(mesh), query)
        docs = list(page.get("items") or [])

    if args.output == "json":
        print(output.to_json(docs[0] if page is None else page))
        return
    if args.output == "yaml":
        if docs:
            print(output.to_yaml(docs))
    else:
        ctx = output.TableContext(now=datetime.now(UTC))
        if rtype.name == "Zone":
            ctx.zone_insights = _zone_insights(client)
        print(output.resource_table(rtype, docs, ctx))
    # On stderr, so that the YAML or table on stdout stays clean for pipes.
    offset = next_offset(page.get("next")) if page else None
    if offset:
        print(f"Rerun the command with --offset={offset} to retrieve more resources", file=sys.stderr)


def cmd_delete(args: argparse.Namespace, env: Env) -> None:
    rtype = resolve_type(args.type)
    mesh = _mesh_of(rtype, args)
    what = output.describe(rtype.name, args.name, mesh)
    with failing_as(f"cannot delete {what}"):
        env.client().delete(rtype.item_path(quote_name(args.name), mesh))
    print(f"Deleted {what}")


# -- inspect -------------------------------------------------------------------------------


def _total(client: ApiClient, path: str) -> int:
    # size=1: only the total is wanted, not the items.
    return int(client.get(path, {"size": "1"}).get("total") or 0)


def cmd_inspect_meshes(args: argparse.Namespace, env: Env) -> None:
    client = env.client()
    dataplanes = REGISTRY.get("Dataplane")
    summaries = []
    with failing_as("cannot inspect meshes"):
        for mesh in client.list_all(REGISTRY.get("Mesh").collection_path()):
            name = str(mesh["name"])
            summaries.append(
                output.MeshSummary(
                    name=name,
                    mtls=output.mesh_mtls(mesh),
                    dataplanes=_total(client, dataplanes.collection_path(name)),
                    policies={p.name: _total(client, p.collection_path(name)) for p in REGISTRY.policies()},
                )
            )
    if args.output == "json":
        print(output.to_json([s.as_dict() for s in summaries]))
    elif args.output == "yaml":
        print(output.to_yaml([s.as_dict() for s in summaries]))
    else:
        print(output.mesh_summary_table(summaries))


def cmd_inspect_dataplanes(args: argparse.Namespace, env: Env) -> None:
    from zonemesh.ctl import inspect  # inspect imports this module

    if args.ingress:
        # kumactl's --ingress lists zone ingresses among the dataplanes of old Kuma versions;
        # zonemesh keeps them apart.
        raise UsageError("--ingress: zone ingresses are not Dataplanes here: zmctl inspect zoneingresses")
    tags = dict(parse_tag_filters(args.tag))
    client = env.client()
    mesh = args.mesh or DEFAULT_MESH
    path = REGISTRY.get("Dataplane").collection_path(mesh)
    with failing_as(f'cannot inspect dataplanes in mesh "{mesh}"'):
        try:
            items = list(client.list_all(f"{path}+insights"))
        except ApiError as exc:
            if exc.status != 404:
                raise
            # No overview endpoint on this CP: list the dataplanes alone (status then shows "-").
            items = list(client.list_all(path))
    items = [i for i in items if inspect.dataplane_selected(i, tags, args.gateway)]
    if args.output == "json":
        print(output.to_json({"total": len(items), "items": items}))
    elif args.output == "yaml":
        if items:
            print(output.to_yaml(items))
    else:
        now = datetime.now(UTC)
        print(output.render_table(inspect.DATAPLANE_HEADERS, (inspect.dataplane_row(i, now) for i in items)))


def parse_tag_filters(values: list[str] | None) -> list[tuple[str, str]]:
    """kumactl's ``--tag key=value`` (repeatable; ``a=1,b=2`` in one flag too)."""
    pairs = []
    for value in values or []:
        for item in value.split(","):
            key, sep, val = item.partition("=")
            if not sep or not key:
                raise UsageError(f"--tag {value!r}: use KEY=VALUE, e.g. --tag kuma.io/service=web")
            pairs.append((key, val))
    return pairs


# ``inspect dataplane NAME --type T``: T -> the sub-resource of the dataplane's item path that serves it.
# Adding a type is one entry here plus its endpoint on the CP.
DATAPLANE_INSPECT_TYPES: dict[str, str] = {
    "config": "_config",  # kumactl's: the xDS config the control plane generates for the proxy (admin)
    "config-dump": "_config",  # the same: zonemesh has no other (Envoy's own dump is on the proxy's host)
    "rules": "_rules",  # per policy type, the conf each policy sets and where it comes from
    "policies": "_policies",  # the proxy-level confs (policies without to/from)
}
# kumactl's types that only Envoy knows, which kuma-cp reads from Envoy's admin API: zonemesh-dp
# serves that API on a Unix socket only the proxy's user can open (docs/dataplane.md), so no
# control plane reaches it. The type -> Envoy's admin path to read on the proxy's host instead.
ADMIN_ONLY_TYPES = {"stats": "stats", "clusters": "clusters"}
ON_THE_PROXY_HOST = (
    "the control plane does not reach Envoy's admin API: zonemesh-dp serves it on a Unix socket only the "
    "proxy's user can open (docs/dataplane.md). On the proxy's host, as that user: curl --unix-socket "
    "<work-dir>/envoy-admin.sock http://localhost/{what}"
)


def cmd_inspect_dataplane(args: argparse.Namespace, env: Env) -> None:
    mesh = args.mesh or DEFAULT_MESH
    what = output.describe("Dataplane", args.name, mesh)
    if args.type in ADMIN_ONLY_TYPES:
        raise CtlError(
            f"cannot get the {args.type} of {what}", [ON_THE_PROXY_HOST.format(what=ADMIN_ONLY_TYPES[args.type])]
        )
    client = env.client()
    dataplanes = REGISTRY.get("Dataplane")
    item = dataplanes.item_path(quote_name(args.name), mesh)
    path = f"{item}/{DATAPLANE_INSPECT_TYPES[args.type]}"
    try:
        body = client.get(path)
    except ApiError as exc:
        if exc.status != 404:
            raise CtlError(f"cannot get the {args.type} of {what}: {exc.message}", exc.details) from None
        # 404 means either no such dataplane or no such endpoint here: say which.
        with failing_as(f"cannot get the {args.type} of {what}"):
            client.get(item)
        raise CtlError(
            f"the control plane at {client.address} does not serve the {args.type} of {what} (GET {path}: 404)",
            [f"the {args.type} of a dataplane is served by the zone control plane the proxy is connected to"],
        ) from None
    print(body if isinstance(body, str) else output.to_json(body))


# -- config --------------------------------------------------------------------------------


def cmd_cp_add(args: argparse.Namespace, env: Env) -> None:
    config = cfg.load(env.config_path)
    headers = cfg.parse_headers(args.headers or [])
    auth_conf = cfg.parse_auth(args.auth_type, args.auth_conf or [], headers)
    cp = cfg.ControlPlane(args.name, cfg.check_address(args.address), headers, args.auth_type or "", auth_conf)
    config.add(cp, overwrite=args.overwrite)
    cfg.save(config, env.config_path)
    print(f'added control plane "{cp.name}" ({cp.address}); switched the active control plane to "{cp.name}"')


def cmd_cp_list(args: argparse.Namespace, env: Env) -> None:
    config = cfg.load(env.config_path)
    rows = [
        [
            "*" if cp.name == config.current else "",
            cp.name,
            cp.address,
            cp.auth_type or output.NONE,  # the type only: never the token
            ",".join(sorted(cp.headers)) or output.NONE,  # header names only: values may be tokens
        ]
        for cp in config.control_planes.values()
    ]
    print(output.render_table(["ACTIVE", "NAME", "ADDRESS", "AUTH", "HEADERS"], rows))


def cmd_cp_switch(args: argparse.Namespace, env: Env) -> None:
    config = cfg.load(env.config_path)
    config.switch(args.name)
    cfg.save(config, env.config_path)
    print(f'switched the active control plane to "{args.name}" ({config.active().address})')


def cmd_cp_remove(args: argparse.Namespace, env: Env) -> None:
    config = cfg.load(env.config_path)
    config.remove(args.name)
    cfg.save(config, env.config_path)
    print(f'removed control plane "{args.name}"; active: "{config.current}"')


def cmd_config_view(args: argparse.Namespace, env: Env) -> None:
    config = cfg.load(env.config_path)
    print(f"# {env.config_path}" + ("" if env.config_path.exists() else " (not written yet: defaults)"))
    print(output.to_yaml([config.to_dict(redact=True)]))
