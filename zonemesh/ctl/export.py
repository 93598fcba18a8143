"""`zmctl export`: a control plane's resources as YAML that `zmctl apply -f` restores, as kumactl's.

    zmctl export > resources.yaml                                # --profile federation (kumactl's default)
    zmctl export --profile all --include-admin > everything.yaml # with Secrets and GlobalSecrets
    zmctl --cp-address http://new-cp:5681 apply -f everything.yaml

Every type comes from the registry; types only control planes write (insights, licenses) are left
out, as apply could not write them. Meshes come first with ``skipCreatingInitialPolicies: ["*"]``
(as kumactl writes them), so that applying the Mesh creates no default policies of its own: the
export holds the source's. Secrets follow, GlobalSecrets come last and the user-token signing keys
at the very end (kumactl's order): once applied, the tokens the old keys signed hold and the new
control plane's own admin token stops working.

What is safe: private keys a resource holds inline are never served (the API shows a digest
marker, docs/api.md "Private keys are not served"), so no export carries them, and a marker does
not restore on another control plane. Export refuses such resources, naming them: move the key into
a Secret (a ``secret:`` reference) and export with ``--include-admin``. Secrets themselves are
exported only with ``--include-admin`` (or the federation profiles, which need them, as kumactl),
and reading them needs an admin: that file then holds private keys and tokens.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from zonemesh import __version__
from zonemesh.ctl import output
from zonemesh.ctl.client import ApiClient, ApiError
from zonemesh.ctl.commands import failing_as
from zonemesh.ctl.errors import CtlError, UsageError
from zonemesh.shared.resources import REGISTRY, ResourceType
from zonemesh.shared.resources.model import KUMA_ORIGIN_LABEL, ORIGIN_LABEL, ORIGIN_ZONE
from zonemesh.shared.resources.redaction import MARKER_PREFIX
from zonemesh.shared.resources.registry import Scope
from zonemesh.shared.tokens.tokens import USER_TOKEN_KEYS

if TYPE_CHECKING:
    from zonemesh.ctl.commands import Env
    from zonemesh.ctl.main import Builder, Subparsers

PROFILES = ("federation", "federation-with-policies", "all", "no-dataplanes")
MIGRATION_PROFILES = ("federation", "federation-with-policies")
# Written by the control plane at every write: a restore gets its own.
SERVER_FIELDS = ("version", "creationTime", "modificationTime")
# kumactl's order: Mesh first, then Secrets, then the rest, GlobalSecrets last.
ORDER = {"Mesh": 0, "Secret": 1, "GlobalSecret": 99}


def exported_types(profile: str, include_admin: bool) -> list[ResourceType]:
    """The registry's types a profile exports, in the order apply needs them."""
    chosen = []
    for rtype in REGISTRY:
        if rtype.system:
            continue  # written only by control planes: apply could not restore them
        if rtype.sensitive and profile not in MIGRATION_PROFILES and not include_admin:
            continue
        if profile in MIGRATION_PROFILES and not rtype.synced_down:
            continue  # kumactl's IncludeInFederation: what a global control plane holds
        if profile == "federation" and rtype.policy:
            continue  # kumactl's federation leaves the targetRef policies to federation-with-policies
        if profile == "no-dataplanes" and rtype.name == "Dataplane":
            continue
        chosen.append(rtype)
    return sorted(chosen, key=lambda t: ORDER.get(t.name, 50))


def inline_keys(value: Any, path: str = "") -> Iterator[str]:
    """The fields of a read document holding a redaction marker instead of a private key."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from inline_keys(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from inline_keys(item, f"{path}[{index}]")
    elif isinstance(value, str) and value.startswith(MARKER_PREFIX):
        yield path.removesuffix(".inlineString")


def cleaned(doc: Mapping[str, Any], profile: str) -> dict[str, Any]:
    """A document as apply takes it on another control plane."""
    out = {k: v for k, v in doc.items() if k not in SERVER_FIELDS}
    if out.get("type") == "Mesh":
        out["skipCreatingInitialPolicies"] = ["*"]
    if profile in MIGRATION_PROFILES and isinstance(out.get("labels"), Mapping):
        # As kumactl: federation imports into a global, where the resources are global's own.
        labels = {k: v for k, v in out["labels"].items() if k not in (ORIGIN_LABEL, KUMA_ORIGIN_LABEL)}
        if labels:
            out["labels"] = labels
        else:
            del out["labels"]
    return out


def from_a_zone(doc: Mapping[str, Any]) -> bool:
    """Stored at global because a zone synced it up: it belongs to that zone, a global refuses it
    on apply, and it comes back from its zone once that zone connects to the restored global."""
    labels = doc.get("labels")
    if not isinstance(labels, Mapping):
        return False
    return ORIGIN_ZONE in (labels.get(ORIGIN_LABEL), labels.get(KUMA_ORIGIN_LABEL))


def _user_token_key(doc: Mapping[str, Any]) -> bool:
    return doc.get("type") == "GlobalSecret" and str(doc.get("name", "")).startswith(USER_TOKEN_KEYS)


def _list(client: ApiClient, rtype: ResourceType, mesh: str = "") -> list[dict[str, Any]]:
    where = f' in mesh "{mesh}"' if mesh else ""
    try:
        return list(client.list_all(rtype.collection_path(mesh)))
    except ApiError as exc:
        if exc.status == 404 and rtype.scope is Scope.GLOBAL:
            return []  # a type this control plane's mode does not serve (zones on a standalone one)
        hints = []
        if rtype.sensitive and exc.status in (401, 403):
            hints.append(
                f"reading {rtype.plural} needs an admin user token; the federation profiles include them (a "
                "migration needs them): --profile all or no-dataplanes without --include-admin leaves them out"
            )
        raise CtlError(f"cannot export {rtype.plural}{where}: {exc.message}", [*exc.details, *hints]) from None


def collect(client: ApiClient, profile: str, include_admin: bool, mode: str = "") -> list[dict[str, Any]]:
    meshes_type = REGISTRY.get("Mesh")
    with failing_as("cannot list meshes"):
        meshes = [str(m.get("name")) for m in client.list_all(meshes_type.collection_path())]
    docs: list[dict[str, Any]] = []
    for rtype in exported_types(profile, include_admin):
        if rtype.scope is Scope.MESH:
            for mesh in meshes:
                docs += _list(client, rtype, mesh)
        else:
            docs += _list(client, rtype)
    if mode == "global":
        docs = [d for d in docs if not from_a_zone(d)]
    refused = [
        f"{output.describe(str(d.get('type')), str(d.get('name')), str(d.get('mesh') or ''))}: {field}"
        for d in docs
        for field in inline_keys(d)
    ]
    if refused:
        raise CtlError(
            "cannot export resources holding a private key inline: the API never serves it, so no "
            "export can restore it",
            [
                *refused,
                "move each key into a Secret and reference it ({secret: NAME}), then export with --include-admin; "
                "or back up the store itself (docs/operations.md)",
            ],
        )
    ordered = [d for d in docs if not _user_token_key(d)] + [d for d in docs if _user_token_key(d)]
    return [cleaned(d, profile) for d in ordered]


def cmd_export(args: argparse.Namespace, env: Env) -> None:
    if args.format != "universal":
        raise UsageError(f"--format {args.format}: zonemesh has no Kubernetes mode; its resources export as universal")
    if args.system_namespace is not None:
        raise UsageError("--system-namespace applies to --format kubernetes, which zonemesh has not")
    client = env.client()
    try:
        index = client.get("/")
    except ApiError:
        index = {}
    mode = str(index.get("mode", "")) if isinstance(index, Mapping) else ""
    docs = collect(client, args.profile, args.include_admin, mode)
    if isinstance(index, Mapping):
        print(
            f"# Product: {index.get('product', 'zonemesh')}, Version: {index.get('version', '')}, "
            f"Mode: {index.get('mode', '')}, exported by zmctl {__version__} (profile {args.profile})"
        )
    if docs:
        print("---")
        print(output.to_yaml(docs))
    if any(d.get("type") in ("Secret", "GlobalSecret") for d in docs):
        print("zmctl: this export holds Secrets (private keys, tokens): keep the file private", file=sys.stderr)


def add_commands(b: Builder, sub: Subparsers) -> None:
    export = b.leaf(
        sub,
        "export",
        "export the control plane's resources as YAML that 'zmctl apply -f' restores",
        cmd_export,
        epilog="  zmctl export --profile all --include-admin > everything.yaml\n"
        "  zmctl --cp-address http://new-cp:5681 apply -f everything.yaml\n\n"
        "Resources holding a private key inline are refused (the API never serves the key): keep keys in "
        "Secrets.",
    )
    export.add_argument(
        "-p",
        "--profile",
        choices=PROFILES,
        default="federation",
        help="federation (default: what a global holds, without targetRef policies), federation-with-policies, "
        "all, no-dataplanes (all but Dataplanes)",
    )
    export.add_argument("-f", "--format", default="universal", help="universal (the only format zonemesh has)")
    export.add_argument(
        "-a",
        "--include-admin",
        action="store_true",
        help="include Secrets and GlobalSecrets (needs an admin; implied by the federation profiles, as kumactl)",
    )
    export.add_argument("-n", "--system-namespace", help=argparse.SUPPRESS)
