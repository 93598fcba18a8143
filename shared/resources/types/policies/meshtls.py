"""MeshTLS: how the selected sidecars' inbounds speak mesh mTLS (`mode`: Strict or Permissive),
and the TLS versions and ciphers of mesh mTLS on both ends (`from` entries, or `rules`).

Kuma 2.14's shape: an optional top-level targetRef (Mesh, MeshSubset, Dataplane), then either
``from`` entries (targetRef kind Mesh only) or ``rules`` (no targetRef: every inbound of the
selected proxies), each with a ``default``. Versions and ciphers only with a top-level ``Mesh``
(Kuma: both ends of every mesh connection must agree). How it applies:
``zone_cp/xds/policies/meshtls.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import GATEWAY, SIDECAR, PolicySupport, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import Enum, Errors, FieldError, List, Obj, at_least_one
from zonemesh.shared.resources.types.policies.common import not_empty, policy_semantic
from zonemesh.shared.resources.types.targetref import (
    DATAPLANE,
    MESH,
    MESH_SUBSET,
    selectable_proxy_types,
    target_ref,
    top_level,
)

STRICT, PERMISSIVE = "Strict", "Permissive"
TLS_AUTO = "TLSAuto"
# Kuma's versions, oldest first (TLSAuto: Envoy's default for that end).
VERSIONS = ("TLS10", "TLS11", "TLS12", "TLS13")
CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305",
)


def _min_not_above_max(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    low, high = value.get("min"), value.get("max")
    if low in VERSIONS and high in VERSIONS and VERSIONS.index(low) > VERSIONS.index(high):
        errors.add(f"{path}.min", "min version must be lower than max")


VERSION = Obj(
    {"min": Enum(TLS_AUTO, *VERSIONS), "max": Enum(TLS_AUTO, *VERSIONS)},
    checks=(_min_not_above_max,),
)

CONF = Obj(
    {
        "mode": Enum(STRICT, PERMISSIVE),
        "tlsVersion": VERSION,
        "tlsCiphers": List(Enum(*CIPHERS)),
    }
)

TOP = (MESH, MESH_SUBSET, DATAPLANE)

SPEC = Obj(
    {
        "targetRef": target_ref(TOP, top_level=True),
        "from": List(Obj({"targetRef": target_ref((MESH,)), "default": CONF}, required=("targetRef",))),
        # Kuma: "currently limited to selecting all inbound traffic" (no targetRef, no matches).
        "rules": List(Obj({"default": CONF})),
    },
    checks=(at_least_one("from", "rules"),),
)


def _entries(spec: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """(path of its default, default) of every `from` entry and rule."""
    for section in ("from", "rules"):
        for i, entry in enumerate(spec.get(section) or []):
            yield f"spec.{section}[{i}].default", entry.get("default") or {}


def _from_or_rules(spec: Mapping[str, Any]) -> list[FieldError]:
    if spec.get("from") and spec.get("rules"):
        return [FieldError("spec", "field 'from' must be empty when 'rules' is defined")]
    return []


def _versions_and_ciphers_mesh_wide(spec: Mapping[str, Any]) -> list[FieldError]:
    """Kuma: the client end of a mesh connection takes the same versions and ciphers as the
    server end, so they must be the same on every proxy: only with a top-level `Mesh`."""
    if top_level(spec).get("kind") == MESH:
        return []
    errors = []
    for path, conf in _entries(spec):
        for field in ("tlsCiphers", "tlsVersion"):
            if conf.get(field):
                errors.append(
                    FieldError(f"{path}.{field}", f"{field} can only be defined with top level targetRef kind: Mesh")
                )
    return errors


def _usable_with_zonemesh_certificates(spec: Mapping[str, Any]) -> list[FieldError]:
    """Settings valid in Kuma that would make mesh handshakes fail in zonemesh, whose workload
    certificates are ECDSA (P-256) and whose proxies need TLS 1.2 or 1.3 between them: refused
    here instead of breaking traffic."""
    errors = []
    sidecars_only = selectable_proxy_types(top_level(spec)) == {SIDECAR}
    for path, conf in _entries(spec):
        version = conf.get("tlsVersion") or {}
        ciphers = conf.get("tlsCiphers") or []
        if sidecars_only and version.get("min") == "TLS13":
            errors.append(
                FieldError(
                    f"{path}.tlsVersion.min",
                    "TLS13 with proxyTypes [Sidecar] would cut builtin gateways off the sidecars: their "
                    "clusters keep Envoy's client default (at most TLS 1.2); select every proxy type",
                )
            )
        if version.get("max") in ("TLS10", "TLS11"):
            errors.append(
                FieldError(
                    f"{path}.tlsVersion.max",
                    "must be TLS12 or above: mesh proxies negotiate TLS 1.2 or 1.3 with each other "
                    "(their cipher suites are TLS 1.2 ones), so a lower maximum would fail every mesh connection",
                )
            )
        if not ciphers:
            continue
        if version.get("min") == "TLS13":
            errors.append(
                FieldError(
                    f"{path}.tlsCiphers",
                    "would have no effect with tlsVersion.min TLS13: cipher suites apply to TLS 1.2 and "
                    "below (Envoy does not configure TLS 1.3 suites); remove tlsCiphers or lower the minimum",
                )
            )
        elif not any(c.startswith("ECDHE-ECDSA-") for c in ciphers):
            errors.append(
                FieldError(
                    f"{path}.tlsCiphers",
                    "must include an ECDHE-ECDSA-* cipher: zonemesh's workload certificates are ECDSA, so "
                    "with only ECDHE-RSA-* ciphers no TLS 1.2 handshake between mesh proxies could succeed",
                )
            )
    return errors


def not_yet(res: Resource) -> list[FieldError]:
    """`mode` says how sidecar inbounds accept traffic; builtin gateways have no mesh inbound
    (their listeners speak what their MeshGateway says): a `mode` that reaches only builtin
    gateways would do nothing."""
    if selectable_proxy_types(top_level(res.spec)) != {GATEWAY}:
        return []
    return [
        FieldError(
            f"{path}.mode",
            "has no effect on builtin gateways (their listeners are not mesh mTLS inbounds: "
            "see MeshGateway tls); select sidecars, or set only tlsVersion / tlsCiphers",
        )
        for path, conf in _entries(res.spec)
        if conf.get("mode") is not None
    ]


MESH_TLS = register(
    ResourceType(
        name="MeshTLS",
        plural="meshtlses",
        short_name="mtls",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES | Sync.ZONE_TO_GLOBAL,
        wrapped=True,
        policy=True,
        from_as_rules=True,  # Kuma's IsFromAsRules
        # Sidecars: inbound listeners (mode, versions, ciphers) and the client end of their
        # mesh clusters; builtin gateways: the client end of their mesh clusters. `rules` apply
        # where `from` does.
        support=PolicySupport(plugin="meshtls", sidecar=("from", "rules"), gateway=("from", "rules"), not_yet=not_yet),
        spec=SPEC,
        semantic=policy_semantic(
            not_empty("from", "rules"),
            _from_or_rules,
            _versions_and_ciphers_mesh_wide,
            _usable_with_zonemesh_certificates,
        ),
    )
)
