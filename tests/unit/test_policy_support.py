"""No silent acceptance, by construction: a targetRef policy type has a plugin or is marked not
supported yet; what its plugin does not apply is refused where documents enter; the zone's
plugin table is built from the registry and checked against it. Fresh registries and plugin
tables here: the global ones are never changed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import yaml
from zonemesh.shared.resources import REGISTRY
from zonemesh.shared.resources.codec import from_universal, parse_universal
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.registry import (
    NOT_SUPPORTED_YET,
    PolicySupport,
    Registry,
    ResourceType,
    Scope,
    Sync,
)
from zonemesh.shared.resources.schema import Obj, ValidationError
from zonemesh.shared.resources.support import unsupported
from zonemesh.shared.resources.types.targetref import MESH, policy_spec
from zonemesh.zone_cp.xds.policies import PLUGINS, Plugin, PluginError, plugin_table

# -- the registry insists on a plugin or an explicit mark ---------------------------------------


def policy_type(name: str = "MeshExample", support: PolicySupport | None = None) -> ResourceType:
    return ResourceType(
        name=name,
        plural=f"{name.lower()}s",
        scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES,
        spec=policy_spec(top=(MESH,), to=(MESH,), from_=(MESH,), conf=Obj({})),
        wrapped=True,
        policy=True,
        support=support,
    )


def test_a_policy_type_without_plugin_or_mark_cannot_be_registered() -> None:
    with pytest.raises(ValueError, match="MeshExample is a targetRef policy without support"):
        Registry().register(policy_type())


def test_a_policy_type_marked_not_supported_yet_registers_and_needs_no_plugin() -> None:
    registry = Registry()
    registry.register(policy_type(support=NOT_SUPPORTED_YET))
    assert plugin_table(registry) == ()


def test_support_names_known_sections_only() -> None:
    with pytest.raises(ValueError, match="unknown policy sections"):
        PolicySupport(plugin="x", sidecar=("inbound",))


def test_a_supported_type_needs_its_plugin_module() -> None:
    registry = Registry()
    registry.register(policy_type(support=PolicySupport(plugin="meshexample")))
    with pytest.raises(
        PluginError, match=r"plugin module zonemesh\.zone_cp\.xds\.policies\.meshexample does not exist"
    ):
        plugin_table(registry)


def _ignore(pieces: Any, arg: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("support", "plugin", "problem"),
    [
        # declares sidecar `from` (inbound) but the plugin has no inbound hook
        (PolicySupport(plugin="m"), Plugin("MeshExample", 1, outbound=_ignore), "need the inbound hook"),
        # declares gateway `from` (listeners) but no gateway hook
        (
            PolicySupport(plugin="m", sidecar=(), gateway=("from",)),
            Plugin("MeshExample", 1),
            "need the gateway hook",
        ),
        # the plugin applies sidecar `from` the type refuses: the support must be widened with it
        (
            PolicySupport(plugin="m", sidecar=(), gateway=("to",)),
            Plugin("MeshExample", 1, inbound=_ignore, gateway=_ignore),
            "inbound hook but the type does not declare sidecar `from` or `rules`",
        ),
        (
            PolicySupport(plugin="m"),
            Plugin("MeshOther", 1, outbound=_ignore, inbound=_ignore),
            "which applies MeshOther",
        ),
    ],
)
def test_a_plugin_applies_what_its_type_declares(support: PolicySupport, plugin: Plugin, problem: str) -> None:
    registry = Registry()
    registry.register(policy_type(support=support))
    with pytest.raises(PluginError, match=problem):
        plugin_table(registry, load=lambda module: plugin)


def test_the_table_is_in_plugin_order_and_orders_are_unique() -> None:
    registry = Registry()
    registry.register(policy_type("MeshB", PolicySupport(plugin="b", sidecar=("to",), gateway=("to",))))
    registry.register(policy_type("MeshA", PolicySupport(plugin="a", sidecar=("to",), gateway=("to",))))
    plugins = {"a": Plugin("MeshA", 2, outbound=_ignore), "b": Plugin("MeshB", 1, outbound=_ignore)}
    assert [p.type for p in plugin_table(registry, load=plugins.__getitem__)] == ["MeshB", "MeshA"]
    plugins["a"] = Plugin("MeshA", 1, outbound=_ignore)
    with pytest.raises(PluginError, match="share an order"):
        plugin_table(registry, load=plugins.__getitem__)


def test_the_zone_applies_exactly_the_supported_types() -> None:
    supported = {t.name for t in REGISTRY.policies() if t.support is not None and t.support.supported}
    assert {p.type for p in PLUGINS} == supported
    not_yet = {t.name for t in REGISTRY.policies() if t.support is not None and not t.support.supported}
    assert not_yet == {"MeshAccessLog", "MeshPassthrough"}


def test_an_upstream_tls_hook_needs_a_from_section_and_stands_for_gateway_from() -> None:
    """The client end of mesh mTLS comes from `from` confs (MeshTLS): on gateways it is what
    `from` configures, without a listener (gateway) hook; a type without `from` cannot have one."""
    registry = Registry()
    registry.register(policy_type(support=PolicySupport(plugin="m", sidecar=("from",), gateway=("from",))))
    tls_only = Plugin("MeshExample", 1, inbound=_ignore, upstream_tls=_ignore)
    assert plugin_table(registry, load=lambda module: tls_only) == (tls_only,)
    registry = Registry()
    registry.register(policy_type(support=PolicySupport(plugin="m", sidecar=("to",), gateway=("to",))))
    with pytest.raises(PluginError, match="upstream_tls hook but the type declares no `from`"):
        plugin_table(registry, load=lambda module: Plugin("MeshExample", 1, outbound=_ignore, upstream_tls=_ignore))


def test_only_a_type_not_supported_yet_has_a_reason() -> None:
    with pytest.raises(ValueError, match="only a type that is not supported yet has a reason"):
        PolicySupport(plugin="m", reason="why")
    registry = Registry()
    registry.register(policy_type(support=PolicySupport(plugin=None, reason="it needs a thing zonemesh lacks")))
    assert plugin_table(registry) == ()


# -- refusals where documents enter ------------------------------------------------------------


def doc(text: str) -> dict[str, Any]:
    value = yaml.safe_load(text)
    assert isinstance(value, dict)
    return value


def refused(document: Mapping[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as exc:
        from_universal(dict(document))
    return {e.field: e.reason for e in exc.value.errors}


ACCESS_LOG = doc("""
type: MeshAccessLog
mesh: default
name: log
spec:
  targetRef: {kind: Mesh}
  from: [{targetRef: {kind: Mesh}, default: {backends: [{file: {path: /dev/stdout}}]}}]
""")


def test_a_type_not_supported_yet_is_refused_whatever_it_says() -> None:
    assert refused(ACCESS_LOG) == {
        "type": "MeshAccessLog is not supported yet by zonemesh: it would be stored but never applied to a proxy"
    }
    # Also when the rest is wrong: nothing else is worth reporting.
    assert set(refused({**ACCESS_LOG, "spec": {"nonsense": 1}})) == {"type"}
    # Its schema is still Kuma's (for the plugin to come): valid without the support check.
    assert parse_universal(ACCESS_LOG)[0].type == "MeshAccessLog"


FAULT_CONF = {"http": [{"abort": {"httpStatus": 503, "percentage": 50}}]}


def fault(target: Mapping[str, Any], section: str) -> dict[str, Any]:
    spec = {"targetRef": dict(target), section: [{"targetRef": {"kind": "Mesh"}, "default": FAULT_CONF}]}
    return {"type": "MeshFaultInjection", "mesh": "default", "name": "f", "spec": spec}


@pytest.mark.parametrize(
    "target",
    [
        {"kind": "Mesh", "proxyTypes": ["Sidecar"]},
        {"kind": "MeshService", "name": "backend"},
        {"kind": "MeshSubset", "tags": {"version": "v1"}, "proxyTypes": ["Sidecar"]},
        {"kind": "Dataplane", "labels": {"team": "payments"}},
    ],
)
@pytest.mark.parametrize("policy", ["MeshFaultInjection", "MeshRateLimit"])
def test_inbound_side_policies_on_sidecars_are_accepted(policy: str, target: dict[str, Any]) -> None:
    """Once refused as not supported yet on sidecars; their `from` and rules apply there now."""
    document = fault(target, "from")
    if policy == "MeshRateLimit":
        document["type"] = policy
        document["spec"]["from"][0]["default"] = {"local": {"http": {"requestRate": {"num": 1, "interval": "1s"}}}}
    res, _ = from_universal(document)
    assert unsupported(res) == []
    rules = {**document, "spec": {"targetRef": target, "rules": [{"default": document["spec"]["from"][0]["default"]}]}}
    res, _ = from_universal(rules)
    assert unsupported(res) == []


@pytest.mark.parametrize(
    "target",
    [
        {"kind": "MeshGateway", "name": "edge"},
        {"kind": "Mesh"},  # Kuma: `to` on a scope including gateways configures every gateway
        {"kind": "Mesh", "proxyTypes": ["Gateway"]},
    ],
)
def test_inbound_side_policies_on_gateways_are_accepted(target: dict[str, Any]) -> None:
    res, _ = from_universal(fault(target, "to"))
    assert unsupported(res) == []


def test_a_section_reaching_no_proxy_that_applies_it_is_refused() -> None:
    # MeshTrafficPermission is applied on sidecar inbounds: a scope of gateways only reaches none.
    reason = refused(
        doc("""
type: MeshTrafficPermission
mesh: default
name: p
spec:
  targetRef: {kind: Mesh, proxyTypes: [Gateway]}
  from: [{targetRef: {kind: Mesh}, default: {action: Allow}}]
""")
    )["spec.from"]
    assert reason.startswith("MeshTrafficPermission `from` is not supported yet on builtin gateways by zonemesh")


def test_support_is_checked_on_stored_resources_too() -> None:
    """What KDS and the reconciler call for documents that did not come through the API."""
    stored = Resource(
        type="MeshTrafficPermission",
        name="p",
        mesh="default",
        spec={
            "targetRef": {"kind": "Mesh", "proxyTypes": ["Gateway"]},
            "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}],
        },
    )
    assert [e.field for e in unsupported(stored)] == ["spec.from"]


# -- fields Kuma defines that a plugin does not apply yet are refused, not ignored -------------------


def conf_policy(type_name: str, section: str, conf: dict[str, Any]) -> dict[str, Any]:
    spec = {"targetRef": {"kind": "Mesh"}, section: [{"targetRef": {"kind": "Mesh"}, "default": conf}]}
    return {"type": type_name, "mesh": "default", "name": "p", "spec": spec}


def gateway_policy(type_name: str, section: str, conf: dict[str, Any]) -> dict[str, Any]:
    document = conf_policy(type_name, section, conf)
    document["spec"]["targetRef"] = {"kind": "MeshGateway", "name": "edge"}
    return document


SPIFFE_RULE = {"matches": [{"spiffeID": {"type": "Exact", "value": "spiffe://default/web"}}]}
SNI_MATCH = {"sni": {"type": "Exact", "value": "backend.default.svc"}}

NOT_YET_FIELDS = [
    (
        {
            **conf_policy("MeshTrafficPermission", "from", {"action": "Deny"}),
            "spec": {
                "from": [
                    {
                        "targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/zone": "east"}},
                        "default": {"action": "Deny"},
                    }
                ]
            },
        },
        "spec.from[0].targetRef.tags",
        "selecting MeshTrafficPermission clients by tags other than kuma.io/service is not supported yet by zonemesh",
    ),
    (
        {
            **fault({"kind": "Mesh", "proxyTypes": ["Sidecar"]}, "from"),
            "spec": {
                "targetRef": {"kind": "Mesh", "proxyTypes": ["Sidecar"]},
                "from": [
                    {
                        "targetRef": {"kind": "MeshServiceSubset", "name": "web", "tags": {"version": "v2"}},
                        "default": FAULT_CONF,
                    }
                ],
            },
        },
        "spec.from[0].targetRef.tags",
        "selecting MeshFaultInjection clients by tags other than kuma.io/service is not supported yet by zonemesh",
    ),
    (
        {
            **conf_policy("MeshTrafficPermission", "from", {}),
            "spec": {"rules": [{"default": {"allow": [SNI_MATCH]}}]},
        },
        "spec.rules[0].default.allow[0].sni",
        "MeshTrafficPermission rules matching the sni is not supported yet by zonemesh (mesh traffic carries",
    ),
    (
        {
            **conf_policy("MeshTimeout", "from", {}),
            "spec": {"rules": [{"matches": [SNI_MATCH], "default": {"http": {"requestTimeout": "1s"}}}]},
        },
        "spec.rules[0].matches[0].sni",
        "MeshTimeout rules matching the sni is not supported yet by zonemesh",
    ),
    (
        gateway_policy("MeshTimeout", "to", {"http": {"requestHeadersTimeout": "1s"}}),
        "spec.to[0].default.http.requestHeadersTimeout",
        "MeshTimeout to http.requestHeadersTimeout on builtin gateways is not supported yet by zonemesh",
    ),
    (
        gateway_policy("MeshTimeout", "from", {"connectionTimeout": "1s"}),
        "spec.from[0].default.connectionTimeout",
        "MeshTimeout from connectionTimeout on builtin gateways is not supported yet by zonemesh",
    ),
    (
        {
            **conf_policy("MeshTimeout", "from", {}),
            "spec": {
                "targetRef": {"kind": "Mesh", "proxyTypes": ["Gateway"]},
                "rules": [{**SPIFFE_RULE, "default": {"http": {"requestTimeout": "1s"}}}],
            },
        },
        "spec.rules[0].matches",
        "MeshTimeout rules with matches on builtin gateways is not supported yet by zonemesh",
    ),
]


@pytest.mark.parametrize(("document", "field", "reason"), NOT_YET_FIELDS, ids=[f for _, f, _ in NOT_YET_FIELDS])
def test_fields_a_plugin_does_not_apply_yet_are_refused(document: dict[str, Any], field: str, reason: str) -> None:
    assert refused(document)[field].startswith(reason)
    parse_universal(document)  # valid Kuma: the schema stays ready for the plugin that applies it


RESET_HEADERS = {"resetHeaders": [{"name": "retry-after", "format": "Seconds"}]}


@pytest.mark.parametrize(
    "conf",
    [
        # Each of these was refused as not supported yet: the MeshRetry plugin applies them now.
        {"http": {"rateLimitedBackOff": RESET_HEADERS}},
        {"grpc": {"rateLimitedBackOff": RESET_HEADERS}},
        {"http": {"retriableResponseHeaders": [{"name": "x-retry"}]}},
        {"http": {"retriableRequestHeaders": [{"name": "x-retry"}]}},
        {"http": {"hostSelection": [{"predicate": "OmitHostsWithTags", "tags": {"a": "b"}}]}},
        {"http": {"hostSelection": [{"predicate": "OmitPreviousPriorities", "updateFrequency": 3}]}},
    ],
)
def test_meshretry_fields_once_not_yet_are_accepted(conf: dict[str, Any]) -> None:
    res, _ = from_universal(conf_policy("MeshRetry", "to", conf))
    assert unsupported(res) == []


def test_what_plugins_apply_is_accepted() -> None:
    from_universal(conf_policy("MeshRetry", "to", {"http": {"hostSelection": [{"predicate": "OmitPreviousHosts"}]}}))
    from_universal(conf_policy("MeshHealthCheck", "to", {"tcp": {}}))
    from_universal(conf_policy("MeshHealthCheck", "to", {"eventLogPath": "/tmp/hc.log", "tcp": {}}))
    # On a scope of sidecars and gateways, gateway-less fields apply to the sidecars.
    from_universal(conf_policy("MeshTimeout", "to", {"http": {"requestHeadersTimeout": "1s"}}))
    # The seed's default for gateways stays valid.
    from_universal(gateway_policy("MeshTimeout", "to", {"idleTimeout": "1h", "http": {"streamIdleTimeout": "5s"}}))
    mtp = conf_policy("MeshTrafficPermission", "from", {"action": "Deny"})
    mtp["spec"]["from"][0]["targetRef"] = {"kind": "MeshSubset", "tags": {"kuma.io/service": "web"}}
    from_universal(mtp)
