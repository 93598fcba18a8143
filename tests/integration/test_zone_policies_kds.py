"""Zone-originated policies and MeshGateways with real processes: one global (sqlite) and two
zones over KDS/TLS on 127.0.0.1, as in Kuma 2.x.

zone-1 applies (zmctl apply -f, Kuma's YAML with ``kuma.io/origin: zone``) a MeshTimeout named
like one of global's, and a MeshGateway; global stores them under Kuma's hashed names, shows them
with their zone (both label sets), refuses to change them; zone-2 never receives them; zone-1
keeps global's policy of the same name beside its own; a restart of zone-1 rewrites nothing; a
delete on zone-1 reaches global."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_kds import WAIT, items, kds_connected, online, start_global, versions, zone_process, zone_token
from zonemesh.shared.kds.naming import hashed_name

from zonemesh.testing import ControlPlaneProcess, free_port, wait_until, zmctl, zmctl_ok

pytestmark = pytest.mark.slow

TIMEOUTS = "/meshes/default/meshtimeouts"
GATEWAYS = "/meshes/default/meshgateways"
GLOBAL_TIMEOUT = {
    "type": "MeshTimeout",
    "name": "timeouts",
    "mesh": "default",
    "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "5s"}}]},
}
# Kuma's documentation form of a policy created on a federated zone.
ZONE_DOCS = """\
type: MeshTimeout
name: timeouts
mesh: default
labels:
  kuma.io/origin: zone
spec:
  targetRef:
    kind: Mesh
  to:
    - targetRef:
        kind: Mesh
      default:
        idleTimeout: 1s
---
type: MeshGateway
name: edge
mesh: default
labels:
  kuma.io/origin: zone
selectors:
  - match:
      kuma.io/service: edge
conf:
  listeners:
    - port: 8080
      protocol: HTTP
"""


def test_zone_policies_sync_up_and_stay_in_their_zone(tmp_path: Path) -> None:
    kds_port = free_port()
    glob = start_global(tmp_path / "global", kds_port)
    zones: list[ControlPlaneProcess] = []
    ours = hashed_name("default", "timeouts", "zone-1")  # zone-1's at global (Kuma's name)
    theirs = hashed_name("default", "timeouts")  # global's on zones
    edge = hashed_name("default", "edge", "zone-1")
    try:
        ca = tmp_path / "global" / "kds-tls.crt"
        zone1 = zone_process(tmp_path / "zone-1", "zone-1", kds_port, zone_token(glob, "zone-1"), ca, "sqlite")
        zone2 = zone_process(tmp_path / "zone-2", "zone-2", kds_port, zone_token(glob, "zone-2"), ca, "memory")
        zones += [zone1.start(), zone2.start()]
        wait_until(lambda: online(glob) == {"zone-1": True, "zone-2": True}, WAIT, what="both zones online")
        assert glob.put(f"{TIMEOUTS}/timeouts", GLOBAL_TIMEOUT)[0] == 201
        for zone in zones:
            wait_until(lambda z=zone: z.get(f"{TIMEOUTS}/{theirs}")[0] == 200, WAIT, what="global's in zone")

        # Without the origin label a zone refuses a policy (Kuma's guard), and stores nothing.
        status, refused = zone1.put(f"{TIMEOUTS}/timeouts", GLOBAL_TIMEOUT)
        assert status == 400 and "kuma.io/origin" in str(refused), refused
        docs = tmp_path / "zone-policies.yaml"
        docs.write_text(ZONE_DOCS)
        zmctl_ok(zone1.api, "apply", "-f", str(docs))

        wait_until(lambda: glob.get(f"{TIMEOUTS}/{ours}")[0] == 200, WAIT, what="zone-1's policy at global")
        wait_until(lambda: glob.get(f"{GATEWAYS}/{edge}")[0] == 200, WAIT, what="zone-1's gateway at global")
        _, shown = glob.get(f"{TIMEOUTS}/{ours}")
        assert shown["labels"] == {
            "zonemesh.io/origin": "zone",
            "zonemesh.io/zone": "zone-1",
            "zonemesh.io/display-name": "timeouts",
            "kuma.io/origin": "zone",
            "kuma.io/zone": "zone-1",
            "kuma.io/display-name": "timeouts",
        }
        assert shown["spec"]["to"][0]["default"]["idleTimeout"] == "1s"
        assert set(items(glob, f"{TIMEOUTS}?filter[labels.kuma.io/zone]=zone-1")) == {ours}
        _, own = glob.get(f"{TIMEOUTS}/timeouts")
        assert own["spec"]["to"][0]["default"]["idleTimeout"] == "5s"  # global's, untouched

        # Read-only at global, through the API and zmctl.
        status, refused = glob.put(f"{TIMEOUTS}/{ours}", {**GLOBAL_TIMEOUT, "name": ours})
        assert status == 405 and "read-only on global" in refused["detail"], refused
        assert glob.delete(f"{GATEWAYS}/{edge}")[0] == 405
        out = zmctl(glob.api, "delete", "meshtimeout", ours, "--mesh", "default")
        assert out.returncode != 0 and "read-only on global" in out.stderr + out.stdout

        # zone-1 holds both; zone-2 only global's (Kuma keeps a universal zone's policies in it).
        assert set(items(zone1, TIMEOUTS)) >= {"timeouts", theirs}
        zone2_names = set(items(zone2, TIMEOUTS))
        assert theirs in zone2_names and not {"timeouts", ours} & zone2_names
        assert items(zone2, GATEWAYS) == {}
        status, refused = zone1.put(f"{TIMEOUTS}/{theirs}", {**GLOBAL_TIMEOUT, "name": theirs})
        assert status == 405 and "read-only here" in refused["detail"], refused

        # Restart zone-1: resumed, nothing rewritten on either side.
        at_global = versions(glob, TIMEOUTS)
        at_zone = versions(zone1, TIMEOUTS)
        assert zone1.stop() == 0, zone1.logs()[-2000:]
        zone1.start()
        wait_until(lambda: kds_connected(zone1), WAIT, what="zone-1 reconnected")
        assert glob.put(f"{TIMEOUTS}/later", {**GLOBAL_TIMEOUT, "name": "later"})[0] == 201
        later = hashed_name("default", "later")
        wait_until(lambda: zone1.get(f"{TIMEOUTS}/{later}")[0] == 200, WAIT, what="a later policy in zone-1")
        assert {k: v for k, v in versions(glob, TIMEOUTS).items() if k != "later"} == at_global
        assert {k: v for k, v in versions(zone1, TIMEOUTS).items() if k != later} == at_zone

        # Deleted on its zone, gone at global; global's of the same name stays.
        assert zone1.delete(f"{TIMEOUTS}/timeouts")[0] == 200
        wait_until(lambda: glob.get(f"{TIMEOUTS}/{ours}")[0] == 404, WAIT, what="zone-1's deleted at global")
        assert glob.get(f"{TIMEOUTS}/timeouts")[0] == 200
        assert zone1.get(f"{TIMEOUTS}/{theirs}")[0] == 200
    finally:
        for cp in [*zones, glob]:
            cp.kill()
