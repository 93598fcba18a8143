"""Delta xDS with the real Envoy: zonemesh-dp's sidecars speak DeltaAggregatedResources by
default, and the control plane sends only what changed, removes what is gone, re-sends nothing
to an Envoy that reconnects with what it has, and keeps a refused resource out while the others
of its type keep flowing. A sidecar run with ``--xds-protocol sotw`` still works next to them.

The set-up is test_zone_envoy's (``running_zone``: a standalone control plane, app-a -> app-b
over mTLS through two real Envoys) plus app-c, a State of the World sidecar calling app-b. What
the control plane sends is counted by its ``xds_resources_sent_total`` metric, per type and
protocol; what Envoy did with it, by its own stats and config dump.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from test_zone_envoy import Proxy, Zone, get, running_zone

from zonemesh.testing import (
    free_port,
    log_excerpt,
    sidecar_dataplane,
    start_http_app,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.slow

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
TYPES = {"clusters": CLUSTER, "endpoints": ENDPOINT, "listeners": LISTENER, "routes": ROUTE}


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zone]:
    with running_zone(tmp_path_factory.mktemp("delta")) as zone:
        # app-c: a State of the World sidecar (the flag), calling app-b like app-a does.
        c = Proxy("app-c", free_port(), free_port(), free_port(), free_port())
        c.app = start_http_app(c.name, c.app_port)
        zone.procs.append(c.app)
        dataplane = sidecar_dataplane(c.name, c.inbound, c.app_port, outbound=[("app-b", c.outbound or 0)])
        c.process, c.log = zone.start_dp(c.name, dataplane, zone.token(c.name), c.admin_port, "--xds-protocol", "sotw")
        zone.c = c  # type: ignore[attr-defined]
        wait_until(lambda: get(f"http://127.0.0.1:{c.outbound}/") == (200, "app-b"), timeout=30, what="app-c -> app-b")
        yield zone


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, zone: Zone) -> None:
    since = len(zone.cp.logs())
    request.node.failure_logs = lambda: log_excerpt("control plane", zone.cp.logs()[since:])


def app_c(zone: Zone) -> Proxy:
    c: Proxy = zone.c  # type: ignore[attr-defined]
    return c


def sent(zone: Zone, protocol: str = "delta") -> dict[str, int]:
    """Resources the control plane has sent, per type, over streams of ``protocol``."""
    return {
        short: int(zone.metric("xds_resources_sent_total", f'protocol="{protocol}",type_url="{url}"'))
        for short, url in TYPES.items()
    }


def since(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def settled(zone: Zone, protocol: str = "delta") -> dict[str, int]:
    """The counts once the control plane has sent nothing more for a moment (bounded)."""
    last = sent(zone, protocol)

    def quiet() -> dict[str, int] | None:
        nonlocal last
        now = sent(zone, protocol)
        same, last = now == last, now
        return now if same else None

    return wait_until(quiet, timeout=15, interval=0.7, what="the control plane to stop sending")  # type: ignore[no-any-return]


def opened(zone: Zone, since: int = 0) -> dict[str, str]:
    """Proxy -> protocol of its last ADS stream, from the control plane's log (from offset ``since``)."""
    found = {}
    for line in zone.cp.logs()[since:].splitlines():
        if '"event": "xds_stream_opened"' in line:
            event = json.loads(line)
            found[event["proxy"]] = event["protocol"]
    return found


def cluster_versions(zone: Zone, proxy: Proxy) -> dict[str, str]:
    dump = proxy.config_dump("?resource=dynamic_active_clusters")
    return {entry["cluster"]["name"]: entry["version_info"] for entry in dump["configs"]}


def patch(name: str, target: str, *modifications: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "MeshProxyPatch",
        "mesh": "default",
        "name": name,
        "spec": {
            "targetRef": {"kind": "Dataplane", "name": target},
            "default": {"appendModifications": list(modifications)},
        },
    }


def test_sidecars_speak_delta_by_default_and_sotw_when_asked(zone: Zone) -> None:
    assert opened(zone) == {"default/app-a": "delta", "default/app-b": "delta", "default/app-c": "sotw"}
    bootstrap = zone.a.config_dump("?mask=bootstrap")["configs"][0]["bootstrap"]
    assert bootstrap["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    assert get(zone.url_a_to_b) == (200, "app-b")
    assert get(f"http://127.0.0.1:{app_c(zone).outbound}/") == (200, "app-b")


def test_a_policy_change_sends_only_the_resources_it_changed(zone: Zone) -> None:
    timeout = {
        "type": "MeshTimeout",
        "mesh": "default",
        "name": "a-to-b-connect",
        "spec": {
            "targetRef": {"kind": "Dataplane", "name": "app-a"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "app-b"}, "default": {"connectionTimeout": "7s"}}],
        },
    }
    before, sotw_before = settled(zone), sent(zone, "sotw")
    versions = cluster_versions(zone, zone.a)
    a_updates, b_updates = (
        zone.a.stat("cluster_manager.cds.update_success"),
        zone.b.stat("cluster_manager.cds.update_attempt"),
    )
    zone.put(timeout)
    try:
        wait_until(lambda: zone.a.cluster("app-b").get("connect_timeout") == "7s", timeout=15, what="7s on app-a")
        # Only app-a's cluster app-b, and its endpoints again (the updated cluster warms on them).
        assert since(before, settled(zone)) == {"clusters": 1, "endpoints": 1, "listeners": 0, "routes": 0}
        assert since(sotw_before, sent(zone, "sotw")) == {"clusters": 0, "endpoints": 0, "listeners": 0, "routes": 0}
        assert zone.a.stat("cluster_manager.cds.update_success") == a_updates + 1
        assert zone.b.stat("cluster_manager.cds.update_attempt") == b_updates  # nothing went to app-b
        assert zone.a.stat("cluster_manager.warming_clusters") == 0  # warmed on the endpoints sent again
        # Each resource carries its own version: app-a's other clusters were not touched.
        after = cluster_versions(zone, zone.a)
        assert {name for name in after if after[name] != versions.get(name)} == {"app-b"}, (versions, after)
        assert get(zone.url_a_to_b) == (200, "app-b")
    finally:
        zone.delete(timeout)
    wait_until(lambda: zone.a.cluster("app-b").get("connect_timeout") == "5s", timeout=15, what="5s back")


def test_a_removed_destination_has_its_cluster_removed(zone: Zone) -> None:
    # app-a's calls to app-b also go to app-c (1 in 100): app-a gets a cluster app-c.
    route = {
        "type": "MeshHTTPRoute",
        "mesh": "default",
        "name": "a-to-b-and-c",
        "spec": {
            "targetRef": {"kind": "Dataplane", "name": "app-a"},
            "to": [
                {
                    "targetRef": {"kind": "MeshService", "name": "app-b"},
                    "rules": [
                        {
                            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                            "default": {
                                "backendRefs": [
                                    {"kind": "MeshService", "name": "app-b", "weight": 99},
                                    {"kind": "MeshService", "name": "app-c", "weight": 1},
                                ]
                            },
                        }
                    ],
                }
            ],
        },
    }
    zone.put(route)
    try:
        wait_until(lambda: "app-c" in cluster_versions(zone, zone.a), timeout=15, what="cluster app-c on app-a")
        removed_before = zone.a.stat("cluster_manager.cluster_removed")
        before = settled(zone)
    finally:
        zone.delete(route)
    wait_until(lambda: "app-c" not in cluster_versions(zone, zone.a), timeout=15, what="cluster app-c gone")
    assert zone.a.stat("cluster_manager.cluster_removed") == removed_before + 1
    # A removal is a name in removed_resources: no cluster is sent for it.
    assert since(before, settled(zone))["clusters"] == 0
    assert get(zone.url_a_to_b) == (200, "app-b")


def test_a_refused_resource_stays_refused_while_the_others_of_its_type_change(zone: Zone) -> None:
    # Envoy refuses a cluster with a 0s connect timeout (a rule of its own); then a valid patch
    # changes another cluster of app-a. With State of the World the second change would carry
    # the refused cluster again (the whole type) and be refused too.
    bad = patch(
        "zero-connect-timeout",
        "app-a",
        {"cluster": {"operation": "Patch", "match": {"name": "app-b"}, "value": "connectTimeout: 0s"}},
    )
    local = next(name for name in cluster_versions(zone, zone.a) if name.startswith("localhost:"))
    good = patch(
        "inbound-timeout",
        "app-a",
        {"cluster": {"operation": "Patch", "match": {"name": local}, "value": "connectTimeout: 3s"}},
    )

    def clusters_status() -> dict[str, Any] | None:
        found, insight = zone.cp.get("/meshes/default/dataplane-insights/app-a")
        subscriptions = insight.get("subscriptions") if found == 200 else None
        return subscriptions[-1]["status"].get("clusters") if subscriptions else None

    status = wait_until(clusters_status, timeout=15, what="app-a's insight")
    rejected, nacks = int(status["responsesRejected"]), zone.metric("xds_nack_total", "Cluster")
    last_good = zone.a.cluster("app-b")
    zone.put(bad)
    try:
        status = wait_until(
            lambda: (s := clusters_status()) and int(s["responsesRejected"]) > rejected and s,
            timeout=15,
            what="app-a's NACK in its insight",
        )
        assert status["lastErrorPolicies"] == ["MeshProxyPatch/zero-connect-timeout"], status
        assert "ConnectTimeout" in status["lastError"], status
        acked = int(status["responsesAcknowledged"])
        zone.put(good)
        wait_until(lambda: zone.a.cluster(local).get("connect_timeout") == "3s", timeout=15, what="3s on " + local)
        status = wait_until(
            lambda: (s := clusters_status()) and int(s["responsesAcknowledged"]) > acked and s,
            timeout=15,
            what="app-a's ACK of the valid change",
        )
        assert status["lastResponse"] == "ACK" and int(status["responsesRejected"]) == rejected + 1, status
        assert zone.metric("xds_nack_total", "Cluster") == nacks + 1  # the refused cluster was not sent again
        assert zone.a.cluster("app-b") == last_good  # Envoy keeps its last good one
        assert get(zone.url_a_to_b) == (200, "app-b")
        nack = [json.loads(line) for line in zone.cp.logs().splitlines() if '"event": "xds_nack"' in line][-1]
        assert (nack["proxy"], nack["resources"]) == ("default/app-a", ["app-b"]), nack
    finally:
        zone.delete(bad)
        zone.delete(good)
    # The cluster as it was is sent again (the proxy last refused another version of it), and accepted.
    wait_until(
        lambda: zone.a.cluster(local).get("connect_timeout") != "3s", timeout=15, what="the inbound cluster back"
    )
    wait_until(lambda: (s := clusters_status()) and s["lastResponse"] == "ACK", timeout=15, what="an ACK again")
    assert zone.a.cluster("app-b")["connect_timeout"] == "5s"


def test_after_a_control_plane_restart_nothing_unchanged_is_sent_again(zone: Zone) -> None:
    mark = len(zone.cp.logs())
    zone.cp.kill()  # SIGKILL: the streams break; Envoy keeps serving and reconnects
    assert get(zone.url_a_to_b) == (200, "app-b")
    zone.cp.start()

    def reconnected() -> bool:
        # Both delta sidecars reconnected, and the new instance generated their config (the
        # versions it would serve are those Envoy runs: nothing to send).
        if not {"default/app-a", "default/app-b"} <= set(opened(zone, mark)):
            return False
        for proxy in (zone.a, zone.b):
            _, generated = zone.cp.get(f"/meshes/default/dataplanes/{proxy.name}/_config")
            if "versions" not in generated:
                return False
        return True

    wait_until(reconnected, timeout=30, what="app-a and app-b on the new control plane")
    # Envoy named what it has (initial_resource_versions): no cluster, endpoint, listener or
    # route is sent again (only the workload certificates the new instance issued differ).
    assert settled(zone) == {"clusters": 0, "endpoints": 0, "listeners": 0, "routes": 0}
    assert opened(zone, mark)["default/app-a"] == "delta"
    zone.put(
        {
            "type": "MeshTimeout",
            "mesh": "default",
            "name": "after-restart",
            "spec": {
                "targetRef": {"kind": "Dataplane", "name": "app-a"},
                "to": [{"targetRef": {"kind": "MeshService", "name": "app-b"}, "default": {"connectionTimeout": "8s"}}],
            },
        }
    )
    try:
        wait_until(lambda: zone.a.cluster("app-b").get("connect_timeout") == "8s", timeout=15, what="8s on app-a")
        assert settled(zone)["clusters"] == 1
        assert get(zone.url_a_to_b) == (200, "app-b")
    finally:
        zone.delete({"type": "MeshTimeout", "mesh": "default", "name": "after-restart"})


def test_the_sotw_sidecar_gets_the_whole_type_and_keeps_working(zone: Zone) -> None:
    c = app_c(zone)
    clusters = len(cluster_versions(zone, c))
    before = settled(zone, "sotw")
    timeout = {
        "type": "MeshTimeout",
        "mesh": "default",
        "name": "c-to-b-connect",
        "spec": {
            "targetRef": {"kind": "Dataplane", "name": "app-c"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "app-b"}, "default": {"connectionTimeout": "6s"}}],
        },
    }
    zone.put(timeout)
    try:
        wait_until(lambda: c.cluster("app-b").get("connect_timeout") == "6s", timeout=15, what="6s on app-c")
        # State of the World: every cluster of app-c again, and all its endpoints (the EDS request
        # that follows names them all).
        assert since(before, settled(zone, "sotw"))["clusters"] == clusters
        assert get(f"http://127.0.0.1:{c.outbound}/") == (200, "app-b")
    finally:
        zone.delete(timeout)
    assert c.process is not None and stop_process(c.process) == 0
