"""MeshTrafficPermission: which clients (`from`, or Kuma 2.x's `rules`) may reach the selected
proxies."""

from collections.abc import Mapping
from typing import Any

from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import PolicySupport, ResourceType, Scope, Sync, register
from zonemesh.shared.resources.schema import Enum, Errors, FieldError, List, Obj
from zonemesh.shared.resources.types.policies.common import (
    MATCH,
    SNI_NOT_YET,
    all_not_yet,
    callers_by_service_only,
    inbound_rule,
    not_empty,
    policy_semantic,
    rules_alone,
)
from zonemesh.shared.resources.types.targetref import (
    DATAPLANE,
    MESH,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
    not_supported,
    policy_spec,
)

# An empty `default` would silently grant nothing and deny nothing: the action is required.
CONF = Obj({"action": Enum("Allow", "Deny", "AllowWithShadowDeny")}, required=("action",))

# A rule lists the callers (matches) it denies, allows, or allows while recording a shadow denial.
RULE_ACTIONS = ("deny", "allow", "allowWithShadowDeny")


def _some_action(value: Mapping[str, Any], path: str, errors: Errors) -> None:
    if not any(value.get(action) for action in RULE_ACTIONS):
        errors.add(path, "at least one of 'allow', 'allowWithShadowDeny', 'deny' has to be defined")


RULE_CONF = Obj({action: List(MATCH) for action in RULE_ACTIONS}, checks=(_some_action,))


def _sni_not_yet(res: Resource) -> list[FieldError]:
    errors = []
    for i, rule in enumerate(res.spec.get("rules") or []):
        for action in RULE_ACTIONS:
            for j, match in enumerate(rule["default"].get(action) or []):
                if match.get("sni") is not None:
                    errors.append(
                        FieldError(
                            f"spec.rules[{i}].default.{action}[{j}].sni",
                            not_supported("MeshTrafficPermission rules matching the sni") + SNI_NOT_YET,
                        )
                    )
    return errors


MESH_TRAFFIC_PERMISSION = register(
    ResourceType(
        name="MeshTrafficPermission",
        plural="meshtrafficpermissions",
        short_name="mtp",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES | Sync.ZONE_TO_GLOBAL,
        wrapped=True,
        policy=True,
        # Builtin gateways receive no mesh traffic to permit (the services behind them check
        # the gateway's identity), as in Kuma.
        support=PolicySupport(
            plugin="meshtrafficpermission",
            sidecar=("from", "rules"),
            gateway=(),
            not_yet=all_not_yet(callers_by_service_only("MeshTrafficPermission"), _sni_not_yet),
        ),
        spec=policy_spec(
            top=(MESH, DATAPLANE, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET),
            from_=(MESH, MESH_SUBSET, MESH_SERVICE, MESH_SERVICE_SUBSET),
            conf=CONF,
            rule=inbound_rule(RULE_CONF, matches=False),
        ),
        semantic=policy_semantic(not_empty("from", "rules"), rules_alone("from")),
    )
)
