"""MeshProxyPatch: validation of its values as Envoy messages, its match conditions, that it
applies per proxy without leaking into the config other proxies of the same shape share, and
the attribution of a NACK to the policies responsible (zone_cp/xds/nacks.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from zonemesh.shared.resources.codec import from_universal, load_documents
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.schema import ValidationError
from zonemesh.zone_cp.xds.cache import SnapshotBuilder, SnapshotCache
from zonemesh.zone_cp.xds.context import MeshContext
from zonemesh.zone_cp.xds.generators import GenerationError, generate
from zonemesh.zone_cp.xds.nacks import NackAttribution
from zonemesh.zone_cp.xds.policies.meshproxypatch import listener_tags, merge, tags_match
from zonemesh.zone_cp.xds.proxy import ProxyIdentity, node_key
from zonemesh.zone_cp.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, ResourceSet
from zonemesh.zone_cp.xds.server import StreamInfo
from zonemesh.zone_cp.xds.testing import mesh_context

BASE = Path(__file__).parent / "testdata" / "policies" / "_base.yaml"
# web-2: a replica of web-1 (same shape), at another address.
WEB_2 = {
    "type": "Dataplane",
    "mesh": "default",
    "name": "web-2",
    "networking": {
        "address": "10.0.0.9",
        "inbound": [
            {
                "port": 8080,
                "servicePort": 80,
                "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http", "version": "v1"},
            }
        ],
        "outbound": [
            {"port": 10001, "tags": {"kuma.io/service": "backend"}},
            {"port": 10002, "tags": {"kuma.io/service": "api"}},
        ],
    },
}


def patch(name: str, *modifications: dict[str, Any], target: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"default": {"appendModifications": list(modifications)}}
    if target is not None:
        spec["targetRef"] = target
    return {"type": "MeshProxyPatch", "mesh": "default", "name": name, "spec": spec}


def accepted(doc: dict[str, Any]) -> Resource:
    return from_universal(doc)[0]  # the API's validation (codec.check_resource)


def refused(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as exc:
        from_universal(doc)
    return {e.field: e.reason for e in exc.value.errors}


async def context(*docs: dict[str, Any]) -> MeshContext:
    resources = [from_universal(d)[0] for d in load_documents(BASE.read_text())]
    resources += [accepted(WEB_2), *(accepted(d) for d in docs)]
    return await mesh_context(resources)


MOD = "spec.default.appendModifications[0]"


# --- validation: every value is the Envoy message of its kind ---------------------------------


@pytest.mark.parametrize(
    ("modification", "field", "reason"),
    [
        (
            {"cluster": {"operation": "Patch", "match": {"name": "api"}, "value": "connectTimeout: soon"}},
            f"{MOD}.cluster.value",
            "not a valid envoy.config.cluster.v3.Cluster: Failed to parse connectTimeout field",
        ),
        (
            {"listener": {"operation": "Patch", "value": "notAField: 1"}},
            f"{MOD}.listener.value",
            'has no field named "notAField"',
        ),
        (
            {
                "httpFilter": {
                    "operation": "AddFirst",
                    "value": "name: f\ntypedConfig: {'@type': type.googleapis.com/envoy.NoSuchFilter}",
                }
            },
            f"{MOD}.httpFilter.value",
            "Can not find message descriptor by type_url",
        ),
        (
            {"virtualHost": {"operation": "Add", "match": {}, "value": "- a list"}},
            f"{MOD}.virtualHost.value",
            "must be an object (an Envoy VirtualHost)",
        ),
        (
            {"networkFilter": {"operation": "AddLast", "value": "name: [unclosed"}},
            f"{MOD}.networkFilter.value",
            "is not valid YAML or JSON",
        ),
        (
            {"cluster": {"operation": "Add", "value": "connectTimeout: 1s"}},
            f"{MOD}.cluster.value",
            "must set the name of the cluster it adds",
        ),
        (
            {
                "listener": {
                    "operation": "Patch",
                    "value": (
                        "filterChains: [{transportSocket: {name: tls, typedConfig: {'@type': type.googleapis.com/"
                        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, commonTlsContext: "
                        "{tlsCertificates: [{privateKey: {inlineString: secret}}]}}}}]"
                    ),
                }
            },
            f"{MOD}.listener.value",
            "must not hold private key material inline",
        ),
    ],
)
def test_a_value_that_is_not_its_envoy_message_is_refused_naming_the_field(
    modification: dict[str, Any], field: str, reason: str
) -> None:
    errors = refused(patch("bad", modification))
    assert field in errors, errors
    assert reason in errors[field], errors[field]


@pytest.mark.parametrize(
    ("modification", "field", "reason"),
    [
        ({}, MOD, "exactly one modification"),
        (
            {"cluster": {"operation": "Remove"}, "listener": {"operation": "Remove"}},
            MOD,
            "exactly one modification",
        ),
        ({"cluster": {"operation": "Patch", "match": {"name": "a"}}}, f"{MOD}.cluster", "exactly one of value"),
        (
            {"cluster": {"operation": "Patch", "value": "name: a", "jsonPatches": [{"op": "remove", "path": "/a"}]}},
            f"{MOD}.cluster",
            "only one of value, jsonPatches",
        ),
        ({"cluster": {"operation": "Remove", "value": "name: a"}}, f"{MOD}.cluster.value", "must not be defined"),
        (
            {"cluster": {"operation": "Add", "match": {"name": "a"}, "value": "name: a"}},
            f"{MOD}.cluster.match",
            "must not be defined with operation Add",
        ),
        (
            {"cluster": {"operation": "Remove", "jsonPatches": [{"op": "remove", "path": "/a"}]}},
            f"{MOD}.cluster.jsonPatches",
            "only with operation Patch",
        ),
        ({"cluster": {"operation": "AddFirst", "value": "name: a"}}, f"{MOD}.cluster.operation", "must be one of"),
        ({"httpFilter": {"operation": "AddBefore", "value": "name: f"}}, f"{MOD}.httpFilter.match.name", "before"),
        (
            {"httpFilter": {"operation": "AddFirst", "match": {"name": "x"}, "value": "name: f"}},
            f"{MOD}.httpFilter.match.name",
            "is not used by AddFirst",
        ),
        ({"virtualHost": {"operation": "Remove"}}, f"{MOD}.virtualHost.match", "must be defined"),
        (
            {"cluster": {"operation": "Patch", "match": {"name": "a"}, "jsonPatches": [{"op": "move", "path": "/a"}]}},
            f"{MOD}.cluster.jsonPatches[0].from",
            "must be defined with op move",
        ),
        (
            {"cluster": {"operation": "Patch", "match": {"name": "a"}, "jsonPatches": [{"op": "test", "path": "/a"}]}},
            f"{MOD}.cluster.jsonPatches[0].op",
            "must be one of",
        ),
        (
            {"cluster": {"operation": "Patch", "match": {"name": "a"}, "jsonPatches": [{"op": "remove", "path": "/"}]}},
            f"{MOD}.cluster.jsonPatches[0].path",
            "root cannot be removed",
        ),
    ],
)
def test_kuma_rules_per_kind_and_operation(modification: dict[str, Any], field: str, reason: str) -> None:
    errors = refused(patch("bad", modification))
    assert field in errors, errors
    assert reason in errors[field], errors[field]


def test_needs_modifications_and_a_top_level_kind_kuma_allows() -> None:
    assert "spec.default.appendModifications" in refused(patch("empty"))
    errors = refused(
        patch("route", {"cluster": {"operation": "Remove"}}, target={"kind": "MeshHTTPRoute", "name": "r"})
    )
    assert "spec.targetRef.kind" in errors


# --- match conditions ---------------------------------------------------------------------------


def test_tags_match_is_kumas_tag_selector() -> None:
    tags = {"kuma.io/service": "web", "version": "v1"}
    assert tags_match({}, tags)
    assert tags_match({"kuma.io/service": "web"}, tags)
    assert tags_match({"version": "*"}, tags)
    assert not tags_match({"version": "v2"}, tags)
    assert not tags_match({"zone": "*"}, tags)


async def test_listener_tags_are_those_of_the_inbound_or_outbound_a_listener_serves() -> None:
    ctx = await context()
    web = ctx.dataplanes["web-1"]
    assert listener_tags(web, "inbound:10.0.0.1:8080", "inbound") == {
        "kuma.io/service": "web",
        "kuma.io/protocol": "http",
        "version": "v1",
    }
    assert listener_tags(web, "outbound:127.0.0.1:10002", "outbound") == {"kuma.io/service": "api"}
    assert listener_tags(web, "outbound:127.0.0.1:10002", "inbound") == {}
    assert listener_tags(ctx.dataplanes["gateway-1"], "edge-gateway:HTTP:8080", "gateway") == {}


async def test_resources_carry_the_origin_of_their_generator() -> None:
    ctx = await context()
    web, gateway = generate(ctx, ctx.dataplanes["web-1"]), generate(ctx, ctx.dataplanes["gateway-1"])
    assert web.origin_of(LISTENER, "inbound:10.0.0.1:8080") == "inbound"
    assert web.origin_of(CLUSTER, "localhost:80") == "inbound"
    assert web.origin_of(LISTENER, "outbound:127.0.0.1:10002") == "outbound"
    assert web.origin_of(CLUSTER, "api") == web.origin_of(ROUTE, "outbound:api") == "outbound"
    assert gateway.origin_of(LISTENER, "edge-gateway:HTTP:8080") == gateway.origin_of(CLUSTER, "api") == "gateway"


def _connect_timeout(resources: ResourceSet, name: str) -> float:
    cluster = resources.by_type[CLUSTER][name]
    assert isinstance(cluster, cluster_pb2.Cluster)
    return cluster.connect_timeout.ToTimedelta().total_seconds()


async def test_match_by_name_and_origin_selects_only_those_resources() -> None:
    ctx = await context(
        patch(
            "mixed",
            {"cluster": {"operation": "Patch", "match": {"origin": "inbound"}, "value": "connectTimeout: 2s"}},
            {
                "cluster": {
                    "operation": "Patch",
                    "match": {"name": "api", "origin": "inbound"},
                    "value": "connectTimeout: 9s",
                }
            },
            {"listener": {"operation": "Remove", "match": {"name": "outbound:127.0.0.1:10001", "origin": "outbound"}}},
            {"listener": {"operation": "Remove", "match": {"tags": {"kuma.io/service": "nobody"}}}},
        )
    )
    web = generate(ctx, ctx.dataplanes["web-1"])
    assert _connect_timeout(web, "localhost:80") == 2  # the inbound's local cluster only
    assert _connect_timeout(web, "api") == 0  # name api, but origin outbound: not selected
    assert set(web.by_type[LISTENER]) == {"inbound:10.0.0.1:8080", "outbound:127.0.0.1:10002"}


def _http_filters(resources: ResourceSet, listener: str) -> list[str]:
    message = resources.by_type[LISTENER][listener]
    assert isinstance(message, listener_pb2.Listener)
    hcm = hcm_pb2.HttpConnectionManager()
    message.filter_chains[0].filters[-1].typed_config.Unpack(hcm)
    return [f.name for f in hcm.http_filters]


async def test_filter_matches_by_listener_name_and_tags_and_place() -> None:
    buffer = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
    value = "name: {name}\ntypedConfig: {{'@type': " + buffer + ", maxRequestBytes: 1}}"
    ctx = await context(
        patch(
            "filters",
            {
                "httpFilter": {
                    "operation": "AddLast",
                    "match": {"listenerName": "inbound:10.0.0.1:8080"},
                    "value": value.format(name="last"),
                }
            },
            {
                "httpFilter": {
                    "operation": "AddBefore",
                    "match": {"name": "envoy.filters.http.router", "listenerTags": {"kuma.io/service": "api"}},
                    "value": value.format(name="before-router"),
                }
            },
            # Kuma: nothing is added when the filter to place it by is not there.
            {"httpFilter": {"operation": "AddAfter", "match": {"name": "absent"}, "value": value.format(name="x")}},
        )
    )
    web = generate(ctx, ctx.dataplanes["web-1"])
    assert _http_filters(web, "inbound:10.0.0.1:8080") == ["envoy.filters.http.router", "last"]
    assert _http_filters(web, "outbound:127.0.0.1:10002") == ["before-router", "envoy.filters.http.router"]


def test_merge_is_kumas_durations_replace_lists_append() -> None:
    dst = cluster_pb2.Cluster(name="a")
    dst.connect_timeout.FromSeconds(1)
    dst.connect_timeout.nanos = 500_000_000
    dst.circuit_breakers.thresholds.add().max_connections.value = 1
    src = cluster_pb2.Cluster()
    src.connect_timeout.FromSeconds(5)
    src.circuit_breakers.thresholds.add().max_connections.value = 2
    src.eds_cluster_config.eds_config.ads.SetInParent()  # an empty message is still set
    merge(dst, src)
    assert dst.connect_timeout.seconds == 5 and dst.connect_timeout.nanos == 0  # not 5.5 s
    assert [t.max_connections.value for t in dst.circuit_breakers.thresholds] == [1, 2]
    assert dst.eds_cluster_config.eds_config.HasField("ads")
    assert dst.name == "a"


# --- per proxy, without leaking into shared config ----------------------------------------------


async def test_a_patch_of_one_proxy_does_not_leak_to_another_of_its_shape() -> None:
    ctx = await context(
        patch(
            "only-web-1-inbound",
            {
                "listener": {
                    "operation": "Patch",
                    "match": {"name": "inbound:10.0.0.1:8080"},
                    "value": "perConnectionBufferLimitBytes: 1024",
                }
            },
        ),
        patch(
            "only-web-1",
            {"cluster": {"operation": "Patch", "match": {"name": "api"}, "value": "connectTimeout: 4s"}},
            target={"kind": "Dataplane", "name": "web-1"},
        ),
    )
    one = generate(ctx, ctx.dataplanes["web-1"])
    two = generate(ctx, ctx.dataplanes["web-2"])
    assert one.by_type[LISTENER]["inbound:10.0.0.1:8080"].per_connection_buffer_limit_bytes.value == 1024  # type: ignore[attr-defined]
    assert not two.by_type[LISTENER]["inbound:10.0.0.9:8080"].HasField("per_connection_buffer_limit_bytes")
    assert _connect_timeout(one, "api") == 4 and _connect_timeout(two, "api") == 0
    # Generated again (another round of the same proxies): the same, nothing accumulated.
    again = generate(ctx, ctx.dataplanes["web-2"])
    assert _connect_timeout(again, "api") == 0
    assert _connect_timeout(generate(ctx, ctx.dataplanes["web-1"]), "api") == 4


async def test_what_a_patch_leaves_alone_stays_shared_and_one_change_is_shared_by_all_it_selects() -> None:
    ctx = await context(
        patch(
            "api-timeout", {"cluster": {"operation": "Patch", "match": {"name": "api"}, "value": "connectTimeout: 4s"}}
        )
    )
    one, two = generate(ctx, ctx.dataplanes["web-1"]), generate(ctx, ctx.dataplanes["web-2"])
    assert one.by_type[CLUSTER]["api"] is two.by_type[CLUSTER]["api"]  # patched once for both
    assert one.by_type[CLUSTER]["backend"] is two.by_type[CLUSTER]["backend"]
    assert one.by_type[ENDPOINT] is two.by_type[ENDPOINT]  # untouched types: the shape's very dict
    builder = SnapshotBuilder()
    assert builder.build(one).types[CLUSTER] is builder.build(two).types[CLUSTER]
    assert one.changed_by == {CLUSTER: {"api": ("MeshProxyPatch/api-timeout",)}}


async def test_a_patch_that_cannot_apply_fails_that_proxy_naming_the_policy() -> None:
    ctx = await context(
        patch(
            "broken",
            {
                "cluster": {
                    "operation": "Patch",
                    "match": {"name": "api"},
                    "jsonPatches": [{"op": "add", "path": "/noSuchField", "value": 1}],
                }
            },
        )
    )
    with pytest.raises(
        GenerationError, match=r"MeshProxyPatch 'broken': appendModifications\[0\]: jsonPatches: .*noSuchField"
    ):
        generate(ctx, ctx.dataplanes["web-1"])


# --- NACK attribution ---------------------------------------------------------------------------


def _info(name: str) -> StreamInfo:
    return StreamInfo(1, ProxyIdentity("default", name), base_pb2.Node(id=name), "ipv4:127.0.0.1:1")


async def test_a_nack_is_attributed_to_the_patch_that_changed_that_type_else_to_what_changed() -> None:
    timeout = {
        "type": "MeshTimeout",
        "mesh": "default",
        "name": "short",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "1s"}}],
        },
    }
    listener_patch = patch(
        "bad-listener",
        {
            "listener": {
                "operation": "Patch",
                "match": {"origin": "inbound"},
                "value": "perConnectionBufferLimitBytes: 1",
            }
        },
    )
    cache, node, info = SnapshotCache(), node_key("default", "web-1"), _info("web-1")
    nacks = NackAttribution(cache)

    first_ctx = await context()
    first = SnapshotBuilder().build(generate(first_ctx, first_ctx.dataplanes["web-1"]))
    cache.set_snapshot(node, first)
    for type_url in (CLUSTER, LISTENER):
        await nacks.ack(info, type_url, first.version(type_url))

    ctx = await context(timeout, listener_patch)
    second = SnapshotBuilder().build(generate(ctx, ctx.dataplanes["web-1"]))
    cache.set_snapshot(node, second)
    # The listener type was changed by the patch: it is responsible.
    assert nacks.responsible(node, LISTENER, second.version(LISTENER)) == ["MeshProxyPatch/bad-listener"]
    # Clusters: no patch changed them; what changed since the accepted config are the new policies.
    assert nacks.responsible(node, CLUSTER, second.version(CLUSTER)) == [
        "MeshProxyPatch/bad-listener",
        "MeshTimeout/short",
    ]
    # A version the snapshot has moved past is not attributed.
    assert nacks.responsible(node, CLUSTER, first.version(CLUSTER)) == []
    # Its stream closed: what it accepted is forgotten (its next stream starts from its first
    # config: every policy selecting it), and only its own.
    other, other_info = node_key("default", "web-2"), _info("web-2")
    cache.set_snapshot(other, first)
    await nacks.ack(other_info, CLUSTER, first.version(CLUSTER))
    cache.set_snapshot(other, second)
    await nacks.stream_close(info)
    everything = sorted({f"{kind}/{name}" for kind, name, _ in second.applied})
    assert nacks.responsible(node, CLUSTER, second.version(CLUSTER)) == everything
    assert nacks.responsible(other, CLUSTER, second.version(CLUSTER)) == [
        "MeshProxyPatch/bad-listener",
        "MeshTimeout/short",
    ]
    assert list(nacks._accepted) == [other]  # one entry per proxy, by its key
