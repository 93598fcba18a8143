"""MeshProxyPatch on real Envoys: patches observed in real responses and in Envoy's config dump,
an HTTP filter removed, and an Envoy-invalid patch NACKed, named in the control plane's log and
the DataplaneInsight, the last good config serving meanwhile, and recovery once it is removed.

The set-up is test_zone_envoy's (``running_zone``): a standalone control plane, app-a and app-b
behind zonemesh-dp sidecars running the real Envoy binary, app-a -> app-b over mTLS.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from test_zone_envoy import Zone, get, running_zone

from zonemesh.testing import DENY_A_TO_B, log_excerpt, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zone]:
    with running_zone(tmp_path_factory.mktemp("meshproxypatch")) as zone:
        yield zone


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, zone: Zone) -> None:
    since = len(zone.cp.logs())
    request.node.failure_logs = lambda: log_excerpt("control plane", zone.cp.logs()[since:])


def patch(name: str, target: dict[str, Any], *modifications: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "MeshProxyPatch",
        "mesh": "default",
        "name": name,
        "spec": {"targetRef": target, "default": {"appendModifications": list(modifications)}},
    }


TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
APP_A = {"kind": "Dataplane", "name": "app-a"}
APP_B = {"kind": "Dataplane", "name": "app-b"}


def active_listeners(zone: Zone) -> list[str]:
    """The names of the dynamic listeners app-a's Envoy uses."""
    dump = zone.a.config_dump("?resource=dynamic_listeners")
    return [entry["active_state"]["listener"]["name"] for entry in dump["configs"] if "active_state" in entry]


def response_headers(url: str) -> tuple[int, dict[str, str]]:
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=3)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def test_headers_added_by_a_virtual_host_patch_and_an_http_filter_reach_the_client(zone: Zone) -> None:
    # On app-a's outbound (a route configuration served over RDS): response_headers_to_add.
    vhost = patch(
        "vhost-header",
        APP_A,
        {
            "virtualHost": {
                "operation": "Patch",
                "match": {"origin": "outbound", "routeConfigurationName": "outbound:app-b"},
                "value": "responseHeadersToAdd: [{header: {key: x-from-vhost, value: app-a}}]",
            }
        },
    )
    # On app-b's inbound: a header mutation filter before the router.
    mutation = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
    filter_patch = patch(
        "filter-header",
        APP_B,
        {
            "httpFilter": {
                "operation": "AddBefore",
                "match": {"name": "envoy.filters.http.router", "listenerTags": {"kuma.io/service": "app-b"}},
                "value": (
                    f"name: envoy.filters.http.header_mutation\ntypedConfig:\n  '@type': {mutation}\n"
                    "  mutations: {responseMutations: [{append: {header: {key: x-from-filter, value: app-b}}}]}\n"
                ),
            }
        },
    )
    zone.put(vhost)
    zone.put(filter_patch)
    try:

        def patched() -> dict[str, str] | None:
            status, headers = response_headers(zone.url_a_to_b)
            return headers if status == 200 and "x-from-vhost" in headers and "x-from-filter" in headers else None

        headers = wait_until(patched, timeout=20, what="both patched response headers on app-a -> app-b")
        assert (headers["x-from-vhost"], headers["x-from-filter"]) == ("app-a", "app-b")
    finally:
        zone.delete(vhost)
        zone.delete(filter_patch)
    wait_until(
        lambda: (r := response_headers(zone.url_a_to_b))[0] == 200 and "x-from-vhost" not in r[1],
        timeout=20,
        what="the header gone once the patch is deleted",
    )


def test_a_cluster_patch_shows_in_envoys_config_dump(zone: Zone) -> None:
    cluster = patch(
        "cluster-limits",
        APP_A,
        {
            "cluster": {
                "operation": "Patch",
                "match": {"name": "app-b", "origin": "outbound"},
                "value": "connectTimeout: 9s",
            }
        },
        # A merge appends to lists (the default MeshCircuitBreaker's thresholds are there): a JSON
        # patch replaces the value in place.
        {
            "cluster": {
                "operation": "Patch",
                "match": {"name": "app-b"},
                "jsonPatches": [{"op": "replace", "path": "/circuitBreakers/thresholds/0/maxConnections", "value": 77}],
            }
        },
    )
    zone.put(cluster)
    try:

        def patched() -> dict[str, Any] | None:
            found = zone.a.cluster("app-b")
            return found if found.get("connect_timeout") == "9s" else None

        found = wait_until(patched, timeout=20, what="connect_timeout 9s on app-a's cluster app-b")
        assert [t["max_connections"] for t in found["circuit_breakers"]["thresholds"]] == [77]
        assert get(zone.url_a_to_b) == (200, "app-b")
    finally:
        zone.delete(cluster)
    wait_until(lambda: zone.a.cluster("app-b").get("connect_timeout") == "5s", timeout=20, what="the default back")


def test_removing_the_rbac_http_filter_lets_denied_traffic_through(zone: Zone) -> None:
    remove_rbac = patch(
        "no-rbac",
        APP_B,
        {"httpFilter": {"operation": "Remove", "match": {"name": "envoy.filters.http.rbac", "origin": "inbound"}}},
    )
    zone.put(DENY_A_TO_B)
    try:
        wait_until(lambda: get(zone.url_a_to_b)[0] == 403, timeout=20, what="403 under the deny policy")
        zone.put(remove_rbac)
        wait_until(
            lambda: get(zone.url_a_to_b) == (200, "app-b"), timeout=20, what="200 once the RBAC filter is removed"
        )
        assert "envoy.filters.http.rbac" not in zone.b.admin("/config_dump?resource=dynamic_listeners")
        zone.delete(remove_rbac)
        wait_until(lambda: get(zone.url_a_to_b)[0] == 403, timeout=20, what="403 again with the filter back")
    finally:
        zone.delete(DENY_A_TO_B)
    wait_until(lambda: get(zone.url_a_to_b) == (200, "app-b"), timeout=20, what="200 after the deny policy went")


def test_an_envoy_invalid_patch_is_nacked_named_and_the_last_good_config_keeps_serving(zone: Zone) -> None:
    # Valid protobuf, refused by Envoy: a second listener on the address of app-a's outbound.
    assert zone.a.outbound is not None
    duplicate = patch(
        "duplicate-listener",
        APP_A,
        {
            "listener": {
                "operation": "Add",
                "value": json.dumps(
                    {
                        "name": "duplicate",
                        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": zone.a.outbound}},
                        "filterChains": [
                            {
                                "filters": [
                                    {
                                        "name": "envoy.filters.network.tcp_proxy",
                                        "typedConfig": {
                                            "@type": TCP_PROXY,
                                            "statPrefix": "duplicate",
                                            "cluster": "app-b",
                                        },
                                    }
                                ]
                            }
                        ],
                    }
                ),
            }
        },
    )

    def listeners_status() -> dict[str, Any] | None:
        found, insight = zone.cp.get("/meshes/default/dataplane-insights/app-a")
        subscriptions = insight.get("subscriptions") if found == 200 else None
        return subscriptions[-1]["status"].get("listeners") if subscriptions else None

    # Insights are written asynchronously, at most about once a second per proxy.
    before = int(wait_until(listeners_status, timeout=20, what="app-a's insight")["responsesRejected"])
    zone.put(duplicate)
    try:
        status = wait_until(
            lambda: (s := listeners_status()) and int(s["responsesRejected"]) > before and s,
            timeout=20,
            what="app-a's NACK of the listeners in its DataplaneInsight",
        )
        assert status["lastErrorPolicies"] == ["MeshProxyPatch/duplicate-listener"], status
        assert "duplicate" in status["lastError"], status
        nacks = [json.loads(line) for line in zone.cp.logs().splitlines() if '"event": "xds_nack"' in line]
        assert any(
            n["proxy"] == "default/app-a" and n["policies"] == ["MeshProxyPatch/duplicate-listener"] for n in nacks
        ), nacks[-3:]
        # Envoy kept its last good listeners: traffic flows, the duplicate is not there.
        for _ in range(5):
            assert get(zone.url_a_to_b) == (200, "app-b")
        active = active_listeners(zone)
        assert "duplicate" not in active and f"outbound:127.0.0.1:{zone.a.outbound}" in active, active
        acked = int(status["responsesAcknowledged"])
    finally:
        zone.delete(duplicate)
    # The good listeners are sent again (the proxy last refused the bad version) and accepted.
    wait_until(
        lambda: (s := listeners_status()) and int(s["responsesAcknowledged"]) > acked,
        timeout=20,
        what="app-a's ACK of the listeners once the patch is deleted",
    )

    def recovered() -> bool:
        # The version of the last listeners Envoy accepted is the one the control plane serves now.
        section = next(sec for sec in zone.a.config_dump()["configs"] if "dynamic_listeners" in sec)
        _, generated = zone.cp.get("/meshes/default/dataplanes/app-a/_config")
        return bool(section["version_info"] == generated["versions"]["listeners"])

    wait_until(recovered, timeout=20, what="app-a's Envoy running the control plane's current listeners again")
    assert get(zone.url_a_to_b) == (200, "app-b")
