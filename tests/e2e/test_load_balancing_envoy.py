"""MeshLoadBalancingStrategy on real Envoys, with a real global and three zones, all on 127.0.0.1.

    global ──KDS── zone-1 CP: web (the client) + backend b-1a, b-1b (two local instances)
           ├────── zone-2 CP: backend b-2 + ingress-2
           └────── zone-3 CP: backend b-3 + ingress-3

Every backend instance answers its own name, so a call shows which instance served it. Policies
are created on global. In order: RingHash with a header hash policy sends one header value to one
instance every time while RoundRobin spreads; every load balancer type is ACKed by Envoy with the
settings the policy gave; affinity tags weigh zone-1's sub-localities (ACKed, traffic still local);
a failover order keeps traffic local while local instances exist, and
once they are gone sends it to the zone the order names first (Envoy's config_dump shows the
priorities). The processes and helpers are test_cross_zone.py's (World, start_zone).

Every wait is bounded; every process is stopped at the end.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from test_cross_zone import WAIT, Envoy, World, start_zone
from zonemesh.shared.kds.naming import hashed_name
from zonemesh.shared.resources import REGISTRY

from zonemesh.testing import (
    ALLOW_ALL,
    MTLS_MESH,
    ControlPlaneProcess,
    dynamic_cluster,
    free_port,
    http,
    sidecar_dataplane,
    stop_processes,
    wait_until,
)

pytestmark = pytest.mark.slow

# global's allow-all as zones store it: under Kuma's hashed name (shared/kds/naming.py)
ALLOW_ALL_ON_ZONES = f"/meshes/default/meshtrafficpermissions/{hashed_name('default', 'allow-all')}"

ZONES = ("zone-1", "zone-2", "zone-3")
BACKENDS = (("zone-1", "b-1a"), ("zone-1", "b-1b"), ("zone-2", "b-2"), ("zone-3", "b-3"))
POLICY = "backend-lb"


@dataclass
class Lab:
    world: World
    web: Envoy
    web_out: int  # web's outbound port to backend
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)  # backend instance -> its agent
    inbound: dict[str, int] = field(default_factory=dict)  # backend instance -> its inbound port

    def call(self, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """One call from web to backend: (status, name of the instance that answered)."""
        try:
            status, body = http("GET", f"http://127.0.0.1:{self.web_out}/", headers=headers, timeout=5)
        except OSError as exc:
            return 0, str(exc)
        return status, str(body)

    def answers(self, count: int, headers: dict[str, str] | None = None) -> list[str]:
        result = []
        for _ in range(count):
            status, body = self.call(headers)
            assert status == 200, body
            result.append(body)
        return result

    def put_policy(self, default: dict[str, Any]) -> None:
        doc = {
            "type": "MeshLoadBalancingStrategy",
            "mesh": "default",
            "name": POLICY,
            "spec": {
                "targetRef": {"kind": "Mesh"},
                "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": default}],
            },
        }
        status, body = self.world.glob.put(REGISTRY.get(doc["type"]).item_path(POLICY, "default"), doc)
        assert status in (200, 201), body

    def backend_cluster(self) -> dict[str, Any]:
        return dynamic_cluster(self.web.config_dump(), "backend")

    def backend_hash_policies(self) -> list[dict[str, Any]]:
        """The hash policies of web's route to backend (config_dump)."""
        for section in self.web.config_dump()["configs"]:
            for entry in section.get("dynamic_route_configs", []):
                if entry["route_config"]["name"] == "outbound:backend":
                    (route,) = entry["route_config"]["virtual_hosts"][0]["routes"]
                    return list(route["route"].get("hash_policy", []))
        raise AssertionError("no route outbound:backend in web's config dump")

    def backend_endpoints(self) -> dict[str, Any]:
        """The ClusterLoadAssignment Envoy holds for backend (config_dump with EDS)."""
        for section in self.web.config_dump()["configs"]:
            for entry in section.get("dynamic_endpoint_configs", []):
                if entry["endpoint_config"]["cluster_name"] == "backend":
                    return entry["endpoint_config"]  # type: ignore[no-any-return]
        raise AssertionError("no endpoints of backend in web's config dump")

    def priorities(self) -> list[tuple[int, str, list[str]]]:
        """(priority, zone, instances) per locality of backend, the instances by their names."""
        names = {f"127.0.0.1:{port}": name for name, port in self.inbound.items()}
        names.update({f"127.0.0.1:{e.port}": e.name for e in self.world.ingress.values()})  # type: ignore[attr-defined]
        result = []
        for group in self.backend_endpoints()["endpoints"]:
            hosts = []
            for host in group.get("lb_endpoints", []):
                address = host["endpoint"]["address"]["socket_address"]
                hosts.append(names.get(f"{address['address']}:{address['port_value']}", "?"))
            result.append((int(group.get("priority", 0)), group.get("locality", {}).get("zone", ""), sorted(hosts)))
        return sorted(result)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("load-balancing")
    kds_port = free_port()
    glob = ControlPlaneProcess(
        work / "global",
        args=["--mode", "global", "--store", "memory", "--kds-address", "127.0.0.1", "--kds-port", str(kds_port)],
    ).start(timeout=WAIT)
    w = World(work, glob, {}, {zone: free_port() for zone in ZONES})
    try:
        for zone in ZONES:
            status, token = http("POST", glob.api + "/tokens/zone", {"zone": zone, "validFor": "24h"})
            assert status == 200, token
            w.zones[zone] = start_zone(work, zone, kds_port, str(token), w.xds_ports[zone])
        w.put_global(MTLS_MESH)
        w.put_global(ALLOW_ALL)
        for cp in w.zones.values():
            ca = "/meshes/default/secrets/default.ca-builtin-cert-ca-1"
            wait_until(lambda cp=cp, ca=ca: cp.get(ca)[0] == 200, WAIT, what="global's mesh CA in zones")
            wait_until(
                lambda cp=cp: cp.get(ALLOW_ALL_ON_ZONES)[0] == 200,
                WAIT,
                what="policies in zones",
            )
        agents, inbound = {}, {}
        for zone, name in BACKENDS:
            inbound[name], app, admin = free_port(), free_port(), free_port()
            w.start_app(name, app)
            token = w.token(zone, "/tokens/dataplane", {"mesh": "default", "name": name, "validFor": "1h"})
            doc = sidecar_dataplane("backend", inbound[name], app)
            agents[name] = w.start_agent(zone, name, doc, token, admin, "dataplane")
        for zone in ("zone-2", "zone-3"):
            w.ingress[zone] = w.start_zone_proxy(zone, "ingress")
        web_in, web_app, web_admin, web_out = free_port(), free_port(), free_port(), free_port()
        w.start_app("web", web_app)
        token = w.token("zone-1", "/tokens/dataplane", {"mesh": "default", "name": "web-1", "validFor": "1h"})
        doc = sidecar_dataplane("web", web_in, web_app, outbound=[("backend", web_out)])
        w.start_agent("zone-1", "web-1", doc, token, web_admin, "dataplane")
        lab = Lab(w, Envoy("web-1", web_admin), web_out, agents, inbound)
        # Both local instances and both other zones' ingresses are web's endpoints of backend.
        expected = sorted(
            [f"127.0.0.1:{inbound['b-1a']}", f"127.0.0.1:{inbound['b-1b']}"]
            + [f"127.0.0.1:{w.ingress[z].port}" for z in ("zone-2", "zone-3")]  # type: ignore[attr-defined]
        )
        wait_until(lambda: sorted(lab.web.hosts("backend")) == expected, WAIT, what="backend's endpoints in zone-1")
        wait_until(lambda: lab.call()[0] == 200, WAIT, what="web -> backend")
        yield lab
    except BaseException:
        print(w.logs())
        raise
    finally:
        stop_processes(w.procs)
        for cp in w.zones.values():
            cp.stop()
        glob.stop()


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, lab: Lab) -> None:
    """A failed test shows what the control planes logged while it ran (tests/conftest.py)."""
    since = {name: len(cp.logs()) for name, cp in lab.world.control_planes().items()}
    request.node.failure_logs = lambda: lab.world.logs(since)


RING_HASH = {
    "loadBalancer": {
        "type": "RingHash",
        "ringHash": {"hashPolicies": [{"type": "Header", "header": {"name": "x-user"}}]},
    }
}


def test_ring_hash_sends_one_header_value_to_one_instance_and_round_robin_spreads(lab: Lab) -> None:
    # Without a policy: this zone's two instances, in turn (Envoy's default round robin).
    assert sorted(set(lab.answers(6))) == ["b-1a", "b-1b"]

    lab.put_policy(RING_HASH)
    wait_until(lambda: lab.backend_cluster().get("lb_policy") == "RING_HASH", WAIT, what="RING_HASH ACKed")
    hashed = [{"header": {"header_name": "x-user"}}]
    wait_until(lambda: lab.backend_hash_policies() == hashed, WAIT, what="the route's hash policy ACKed")
    served: dict[str, set[str]] = {}
    for user in range(16):
        for _ in range(4):
            status, body = lab.call({"x-user": f"user-{user}"})
            assert status == 200, body
            served.setdefault(f"user-{user}", set()).add(body)
    assert all(len(instances) == 1 for instances in served.values()), served  # one instance per user, always
    # ...and the users are spread over both (16 users on one of 2 instances: 2^-15 by chance).
    assert set().union(*served.values()) == {"b-1a", "b-1b"}, served

    lab.put_policy({"loadBalancer": {"type": "RoundRobin"}})
    wait_until(lambda: "lb_policy" not in lab.backend_cluster(), WAIT, what="ROUND_ROBIN ACKed (Envoy's default)")
    answers = lab.answers(6, {"x-user": "user-0"})  # the same header: no longer sticky
    assert sorted(answers) == ["b-1a"] * 3 + ["b-1b"] * 3, answers


@pytest.mark.parametrize(
    ("load_balancer", "lb_policy", "settings"),
    [
        (
            {"type": "LeastRequest", "leastRequest": {"choiceCount": 3, "activeRequestBias": "1.5"}},
            "LEAST_REQUEST",
            {"least_request_lb_config": {"choice_count": 3, "active_request_bias": {"default_value": 1.5}}},
        ),
        ({"type": "Random"}, "RANDOM", {}),
        (
            {
                "type": "Maglev",
                "maglev": {
                    "tableSize": 251,
                    "hashPolicies": [
                        {"type": "Cookie", "cookie": {"name": "session", "path": "/", "ttl": "1h"}, "terminal": True},
                        {"type": "QueryParameter", "queryParameter": {"name": "user"}},
                        {"type": "FilterState", "filterState": {"key": "io.zonemesh.user"}},
                        {"type": "SourceIP", "connection": {"sourceIP": True}},
                    ],
                },
            },
            "MAGLEV",
            {"maglev_lb_config": {"table_size": "251"}},
        ),
        (
            {"type": "RingHash", "ringHash": {"hashFunction": "MurmurHash2", "minRingSize": 64, "maxRingSize": 128}},
            "RING_HASH",
            {
                "ring_hash_lb_config": {
                    "hash_function": "MURMUR_HASH_2",
                    "minimum_ring_size": "64",
                    "maximum_ring_size": "128",
                }
            },
        ),
    ],
)
def test_envoy_takes_every_load_balancer_with_its_settings(
    lab: Lab, load_balancer: dict[str, Any], lb_policy: str, settings: dict[str, Any]
) -> None:
    lab.put_policy({"loadBalancer": load_balancer})
    cluster = wait_until(
        lambda: (c := lab.backend_cluster()).get("lb_policy") == lb_policy and c, WAIT, what=f"{lb_policy} ACKed"
    )
    for key, value in settings.items():
        for inner, expected in value.items():
            got = cluster[key][inner]
            assert (got if not isinstance(expected, dict) else {k: got[k] for k in expected}) == expected
    assert lab.call()[0] == 200  # and traffic still flows


def test_affinity_tags_weigh_localities_within_the_zone(lab: Lab) -> None:
    """web and the backends share kuma.io/protocol=http: zone-1's instances form the sub-locality
    of that tag (Kuma's default weight 9 for the second of two tags), balanced by locality weight."""
    tags = [{"key": "team"}, {"key": "kuma.io/protocol"}]  # web has no `team` tag: only the second applies
    lab.put_policy(
        {
            "localityAwareness": {
                "localZone": {"affinityTags": tags},
                "crossZone": {"failover": [{"to": {"type": "Any"}}]},
            }
        }
    )
    wait_until(
        lambda: "locality_weighted_lb_config" in lab.backend_cluster().get("common_lb_config", {}),
        WAIT,
        what="locality-weighted balancing ACKed",
    )
    local = next(g for g in lab.backend_endpoints()["endpoints"] if g["locality"].get("zone") == "zone-1")
    assert (local["locality"]["sub_zone"], local["load_balancing_weight"]) == ("kuma.io/protocol=http", 9)
    assert set(lab.answers(6)) == {"b-1a", "b-1b"}


FAILOVER = {
    "localityAwareness": {
        "crossZone": {
            "failover": [{"to": {"type": "Only", "zones": ["zone-3"]}}, {"to": {"type": "Any"}}],
            "failoverThreshold": {"percentage": 70},
        }
    }
}


def test_cross_zone_failover_order(lab: Lab) -> None:
    w = lab.world
    lab.put_policy(FAILOVER)
    expected = [(0, "zone-1", ["b-1a", "b-1b"]), (1, "zone-3", ["ingress-zone-3"]), (2, "zone-2", ["ingress-zone-2"])]
    wait_until(lambda: lab.priorities() == expected, WAIT, what="priorities local, zone-3, zone-2 in config_dump")
    assert lab.backend_endpoints()["policy"]["overprovisioning_factor"] == 143  # failoverThreshold 70 %
    # Local instances healthy: traffic stays in zone-1.
    assert set(lab.answers(8)) == {"b-1a", "b-1b"}

    # The local instances go (their agents unregister them): zone-3, named first, takes everything.
    for name in ("b-1a", "b-1b"):
        lab.agents[name].send_signal(signal.SIGTERM)
    for name in ("b-1a", "b-1b"):
        assert lab.agents[name].wait(30) == 0
    wait_until(
        lambda: lab.priorities() == [(0, "zone-3", ["ingress-zone-3"]), (1, "zone-2", ["ingress-zone-2"])],
        WAIT,
        what="zone-3 first, then zone-2, once zone-1 has no instance",
    )
    wait_until(lambda: lab.call() == (200, "b-3"), WAIT, what="zone-3 answers")
    assert lab.answers(8) == ["b-3"] * 8

    # The order decides, not the instance counts: name zone-2 first and zone-2 takes everything.
    lab.put_policy(
        {
            "localityAwareness": {
                "crossZone": {"failover": [{"to": {"type": "Only", "zones": ["zone-2"]}}, {"to": {"type": "Any"}}]}
            }
        }
    )
    wait_until(lambda: lab.call() == (200, "b-2"), WAIT, what="zone-2 answers")
    assert lab.answers(8) == ["b-2"] * 8
    assert lab.priorities() == [(0, "zone-2", ["ingress-zone-2"]), (1, "zone-3", ["ingress-zone-3"])]
    # localZone without crossZone: traffic stays in zone-1, which has no instance left.
    lab.put_policy({"localityAwareness": {"localZone": {}}})
    wait_until(lambda: lab.call()[0] == 503, WAIT, what="no zone to go to")
    assert lab.call() == (503, "no healthy upstream")  # docs/troubleshooting.md
    # Without the policy, zonemesh's default: every other zone at one priority, by instance count.
    assert w.glob.delete(REGISTRY.get("MeshLoadBalancingStrategy").item_path(POLICY, "default"))[0] == 200
    wait_until(
        lambda: lab.priorities() == [(0, "zone-2", ["ingress-zone-2"]), (0, "zone-3", ["ingress-zone-3"])],
        WAIT,
        what="the default layout back",
    )
    assert set(lab.answers(8)) == {"b-2", "b-3"}
