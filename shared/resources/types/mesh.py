"""Mesh: the tenant every other mesh-scoped resource belongs to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import (
    MESH_NAME,
    AnyValue,
    Bool,
    Duration,
    Enum,
    FieldError,
    Int,
    List,
    Map,
    Name,
    Obj,
    Str,
    parse_duration,
)
from zonemesh.shared.resources.types.datasource import DATA_SOURCE, KEY_SOURCE

if TYPE_CHECKING:
    from zonemesh.shared.store import Store

_TAG_SELECTOR = Obj({"tags": Map(Str(), key=Str(min_len=1))})

MTLS_BACKEND = Obj(
    {
        "name": Name,
        "type": Enum("builtin", "provided"),
        "mode": Enum("STRICT", "PERMISSIVE"),
        "dpCert": Obj(
            {
                "rotation": Obj({"expiration": Duration(positive=True, cert=True)}),
                "requestTimeout": Duration(),
            }
        ),
        # builtin: caCert {RSAbits, expiration}; provided: cert/key data sources.
        "conf": Obj(
            {
                "caCert": Obj({"RSAbits": Int(min=2048, max=8192), "expiration": Duration(positive=True, cert=True)}),
                "cert": DATA_SOURCE,
                "key": KEY_SOURCE,
            }
        ),
        "rootChain": Obj({"requestTimeout": Duration()}),
    },
    required=("name", "type"),
)

MESH_SPEC = Obj(
    {
        "mtls": Obj(
            {
                "enabledBackend": Str(),
                "backends": List(MTLS_BACKEND),
                "skipValidation": Bool(),
            }
        ),
        "networking": Obj({"outbound": Obj({"passthrough": Bool()})}),
        "routing": Obj(
            {
                "localityAwareLoadBalancing": Bool(),
                "zoneEgress": Bool(),
                "defaultForbidMeshExternalServiceAccess": Bool(),
            }
        ),
        "constraints": Obj(
            {"dataplaneProxy": Obj({"requirements": List(_TAG_SELECTOR), "restrictions": List(_TAG_SELECTOR)})}
        ),
        "skipCreatingInitialPolicies": List(Str(min_len=1)),
        "meshServices": Obj({"mode": Enum("Disabled", "Everywhere", "ReachableBackends", "Exclusive")}),
        # Kuma's legacy observability backends: refused when set (_refuse_observability).
        "logging": AnyValue(),
        "tracing": AnyValue(),
        "metrics": AnyValue(),
    }
)


def _check_mesh(res: Resource) -> list[FieldError]:
    errors: list[FieldError] = []
    mtls = res.spec.get("mtls") or {}
    backends = mtls.get("backends") or []
    names = [b.get("name") for b in backends]
    for i, name in enumerate(names):
        if name in names[:i]:
            errors.append(FieldError(f"mtls.backends[{i}].name", f"backend {name!r} is defined twice"))
    enabled = mtls.get("enabledBackend")
    if enabled and enabled not in names:
        errors.append(
            FieldError("mtls.enabledBackend", f"has to be set to one of the backends in the mesh ({enabled!r} is not)")
        )
    return errors


def _refuse_ignored(res: Resource) -> list[FieldError]:
    return (
        _refuse_passthrough_false(res)
        + _refuse_zero_timeouts(res)
        + _refuse_observability(res)
        + _refuse_mesh_services(res)
    )


def _refuse_observability(res: Resource) -> list[FieldError]:
    # Access logs, traces and metrics are not generated for any proxy yet: a backend set here would
    # be stored and do nothing. An empty section asks for nothing, so it is taken.
    return [
        FieldError(
            section,
            "is not supported yet by zonemesh: its proxies produce no access logs, traces or metrics "
            "backends yet (nor do MeshAccessLog, MeshTrace and MeshMetric); leave it out",
        )
        for section in ("logging", "tracing", "metrics")
        if res.spec.get(section)
    ]


def _refuse_mesh_services(res: Resource) -> list[FieldError]:
    # Kuma's MeshService resources do not exist in zonemesh: services are the kuma.io/service tag.
    mode = (res.spec.get("meshServices") or {}).get("mode")
    if mode not in (None, "Disabled"):
        return [
            FieldError(
                "meshServices.mode",
                "is not supported yet by zonemesh other than Disabled: it has no MeshService resources "
                "(services are named by the kuma.io/service tag); leave it out or set Disabled",
            )
        ]
    return []


def _refuse_zero_timeouts(res: Resource) -> list[FieldError]:
    # A request timeout of 0 would fail every certificate request (issuance and the CA's root chain).
    errors = []
    for i, backend in enumerate((res.spec.get("mtls") or {}).get("backends") or []):
        for path, value in (
            ("dpCert.requestTimeout", (backend.get("dpCert") or {}).get("requestTimeout")),
            ("rootChain.requestTimeout", (backend.get("rootChain") or {}).get("requestTimeout")),
        ):
            if isinstance(value, str) and value and parse_duration(value) <= 0:
                errors.append(FieldError(f"mtls.backends[{i}].{path}", "must be greater than 0"))
    return errors


async def _check_ca(res: Resource, stored: Resource | None, store: Store) -> list[FieldError]:
    """The mTLS backends against the Secrets they read and the CA the proxies use (shared/ca/checks.py)."""
    from zonemesh.shared.ca.checks import check_mesh  # the CA code reads this module's types

    return await check_mesh(res, stored, store)


def _refuse_passthrough_false(res: Resource) -> list[FieldError]:
    # Kuma's passthrough shapes what a transparent proxy lets through; zonemesh has no transparent
    # proxying, so apps reach non-mesh destinations directly and `false` could not be enforced.
    outbound = (res.spec.get("networking") or {}).get("outbound") or {}
    if outbound.get("passthrough") is False:
        return [
            FieldError(
                "networking.outbound.passthrough",
                "false is not supported yet by zonemesh: without transparent proxying, applications reach "
                "non-mesh destinations directly, and zonemesh cannot stop them (restrict egress at the network)",
            )
        ]
    return []


MESH = register(
    ResourceType(
        name="Mesh",
        plural="meshes",
        short_name="m",
        scope=Scope.GLOBAL,
        sync=Sync.GLOBAL_TO_ZONES,
        spec=MESH_SPEC,
        semantic=_check_mesh,
        write_check=_refuse_ignored,
        store_check=_check_ca,
        name_rule=MESH_NAME,
    )
)

_CA_REF = Obj({"backend": Str(), "fingerprint": Str()})

# Which CA issues a mesh's certificates and which its proxies trust: written by the control plane
# that drives CA rotations (global, or a standalone control plane), carried to zones by KDS, one
# per mesh with mTLS, named after the mesh (shared/ca/state.py). Only certificates: no key.
MESH_CA_STATE = register(
    ResourceType(
        name="MeshCAState",
        plural="meshcastates",
        rest_path="mesh-ca-states",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES,
        system=True,
        spec=Obj(
            {
                "phase": Enum("Stable", "Trusting", "Reissuing"),
                "target": _CA_REF,
                "issuing": _CA_REF,
                "trusted": List(
                    Obj({"backend": Str(), "fingerprint": Str(), "anchors": List(Str()), "notAfter": Str()})
                ),
                "waiting": Obj({"count": Int(min=0), "proxies": List(Str())}),
                "since": Str(),
            }
        ),
    )
)


# --- constraints.dataplaneProxy: which proxies may join the mesh ---------------------------------


def _selects(selector: Mapping[str, Any], tags: Mapping[str, str]) -> bool:
    """Kuma's tag selector: every tag it names is present with that value (``*``: any value)."""
    wanted = selector.get("tags") or {}
    return all(key in tags and (value == "*" or tags[key] == value) for key, value in wanted.items())


def _shown(selector: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((selector.get("tags") or {}).items())) or "(no tags)"


def constraint_violation(mesh: Resource, tag_sets: Sequence[Mapping[str, str]]) -> str | None:
    """Why a proxy serving ``tag_sets`` (one per inbound, or the gateway's) may not be part of
    ``mesh``, or None. Each tag set must match at least one of ``requirements`` (when there are
    any) and none of ``restrictions`` (Kuma's constraints.dataplaneProxy)."""
    proxy = (mesh.spec.get("constraints") or {}).get("dataplaneProxy") or {}
    requirements = proxy.get("requirements") or []
    restrictions = proxy.get("restrictions") or []
    for i, tags in enumerate(tag_sets):
        shown = ", ".join(f"{k}={v}" for k, v in sorted(tags.items()))
        where = f"inbound[{i}] tags ({shown})" if len(tag_sets) > 1 else f"its tags ({shown})"
        if requirements and not any(_selects(r, tags) for r in requirements):
            wanted = "; ".join(_shown(r) for r in requirements)
            return (
                f"mesh {mesh.name!r} requires proxies to match one of constraints.dataplaneProxy.requirements "
                f"[{wanted}], and {where} match none"
            )
        for j, restriction in enumerate(restrictions):
            if _selects(restriction, tags):
                return (
                    f"mesh {mesh.name!r} refuses proxies that match constraints.dataplaneProxy.restrictions[{j}] "
                    f"({_shown(restriction)}), and {where} match it"
                )
    return None
