"""zmctl as a real process against a real control plane process (memory store) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from zonemesh.spawn import python_module
from zonemesh.testing import ControlPlaneProcess, free_port, wait_until

pytestmark = pytest.mark.slow

DEFAULT_TIMEOUTS = ("mesh-timeout-all-default", "mesh-gateways-timeout-all-default")

TIMEOUT_TEMPLATE = """\
type: MeshTimeout
name: {name}
mesh: default
spec:
  targetRef: {{kind: Mesh}}
  to:
  - targetRef: {{kind: MeshService, name: backend}}
    default: {{connectionTimeout: 3s}}
"""


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(tmp_path_factory.mktemp("cp"), args=["--store", "memory"])
    process.start(timeout=20)
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
def zmctl(cp: ControlPlaneProcess, tmp_path: Path) -> ZmctlRunner:
    return ZmctlRunner(cp.api, tmp_path)


class ZmctlRunner:
    """Runs `python -m zonemesh.ctl` with its own HOME/ZMCTL_CONFIG, aimed at the test's CP."""

    def __init__(self, address: str, home: Path) -> None:
        self.address = address
        self.env = {**os.environ, "HOME": str(home), "ZMCTL_CONFIG": str(home / "zmctl.yaml")}

    def __call__(self, *args: str, stdin: str | None = None, address: str | None = "") -> Run:
        """``address=None`` uses the zmctl config instead of --cp-address."""
        target = [] if address is None else ["--cp-address", address or self.address]
        proc = subprocess.run(
            python_module("zonemesh.ctl", *target, *args),
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return Run(proc.returncode, proc.stdout, proc.stderr)


def test_get_meshes_lists_default(zmctl: ZmctlRunner) -> None:
    run = zmctl("get", "meshes")
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].split() == ["NAME", "MTLS", "AGE"]
    assert lines[1].split()[:2] == ["default", "off"]


def test_get_default_timeouts(zmctl: ZmctlRunner) -> None:
    run = zmctl("get", "meshtimeouts", "-m", "default")
    assert run.code == 0, run.err
    assert run.out.splitlines()[0].split() == ["MESH", "NAME", "TARGETREF", "AGE"]
    for name in DEFAULT_TIMEOUTS:
        assert f"default   {name}" in run.out


def test_get_one_as_json_and_paged_list(zmctl: ZmctlRunner) -> None:
    run = zmctl("get", "mt", "mesh-timeout-all-default", "-o", "json")
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    assert (doc["type"], doc["mesh"], doc["name"]) == ("MeshTimeout", "default", "mesh-timeout-all-default")

    page = zmctl("get", "meshtimeouts", "--size", "1", "-o", "json")
    listing = json.loads(page.out)
    assert listing["total"] >= 2 and len(listing["items"]) == 1 and listing["next"]
    table = zmctl("get", "meshtimeouts", "--size", "1")
    assert "Rerun the command with --offset=" in table.err


@pytest.mark.parametrize("type_name", ["zones", "zone-ingresses", "zoneegresses", "dataplanes", "global-secrets"])
def test_get_other_types(zmctl: ZmctlRunner, type_name: str) -> None:
    run = zmctl("get", type_name)
    assert run.code == 0, run.err
    assert "NAME" in run.out.splitlines()[0]


def test_yaml_output_round_trips_through_apply(zmctl: ZmctlRunner) -> None:
    before = zmctl("get", "meshtimeouts", "-o", "yaml")
    assert before.code == 0, before.err
    applied = zmctl("apply", "-f", "-", stdin=before.out)
    assert applied.code == 0, applied.err
    for name in DEFAULT_TIMEOUTS:
        assert f'Updated MeshTimeout "{name}" in mesh "default"' in applied.out

    after = json.loads(zmctl("get", "mt", "mesh-timeout-all-default", "-o", "json").out)
    original = next(d for d in json.loads(zmctl("get", "mt", "-o", "json").out)["items"] if d["name"] == after["name"])
    assert after["spec"] == original["spec"]


def test_apply_creates_then_updates_and_delete_removes(zmctl: ZmctlRunner, tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(TIMEOUT_TEMPLATE.format(name="{{ NAME }}"))
    created = zmctl("apply", "-f", str(path), "--var", "NAME=cli-timeout")
    assert created.code == 0, created.err
    assert created.out.strip() == 'Created MeshTimeout "cli-timeout" in mesh "default"'
    updated = zmctl("apply", "-f", str(path), "--var", "NAME=cli-timeout")
    assert updated.out.strip() == 'Updated MeshTimeout "cli-timeout" in mesh "default"'

    deleted = zmctl("delete", "meshtimeouts", "cli-timeout", "-m", "default")
    assert deleted.code == 0, deleted.err
    assert deleted.out.strip() == 'Deleted MeshTimeout "cli-timeout" in mesh "default"'
    gone = zmctl("get", "meshtimeouts", "cli-timeout")
    assert gone.code == 1
    assert "not found" in gone.err.lower()
    again = zmctl("delete", "meshtimeouts", "cli-timeout")
    assert again.code == 1 and "cannot delete" in again.err


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        ("{targetRef: {kind: Mesh}, bogus: 1}", "spec.bogus", "unknown field"),
        (
            "{targetRef: {kind: Mesh}, to: [{targetRef: {kind: Mesh}, default: {connectionTimeout: 5}}]}",
            "spec.to[0].default.connectionTimeout",
            "duration",
        ),
        (
            "{targetRef: {kind: MeshExternalService, name: x}, to: [{targetRef: {kind: Mesh}, default: {}}]}",
            "spec.targetRef.kind",
            "targetRef kind MeshExternalService is not supported yet by zonemesh",
        ),
    ],
    ids=["unknown-field", "wrong-type", "kind-not-supported-yet"],
)
def test_invalid_apply_names_the_field(zmctl: ZmctlRunner, spec: str, field: str, reason: str) -> None:
    doc = f"type: MeshTimeout\nname: invalid-one\nmesh: default\nspec: {spec}\n"
    run = zmctl("apply", "-f", "-", stdin=doc)
    assert run.code == 1
    assert field in run.err and reason in run.err
    assert "document 1" in run.err
    assert zmctl("get", "meshtimeouts", "invalid-one").code == 1  # nothing was created


def test_apply_with_stale_version_is_a_conflict(zmctl: ZmctlRunner) -> None:
    assert zmctl("apply", "-f", "-", stdin=TIMEOUT_TEMPLATE.format(name="versioned")).code == 0
    snapshot = zmctl("get", "meshtimeouts", "versioned", "-o", "yaml").out
    assert "version:" in snapshot
    first = zmctl("apply", "-f", "-", stdin=snapshot)
    assert first.code == 0, first.err  # the version was current
    stale = zmctl("apply", "-f", "-", stdin=snapshot)
    assert stale.code == 1
    assert "Conflict (409)" in stale.err
    assert "zmctl get meshtimeouts versioned -m default -o yaml" in stale.err


def test_server_side_refusal_is_reported(zmctl: ZmctlRunner) -> None:
    # Valid locally, refused by the CP: the mesh does not exist.
    doc = TIMEOUT_TEMPLATE.format(name="x").replace("mesh: default", "mesh: no-such-mesh")
    run = zmctl("apply", "-f", "-", stdin=doc)
    assert run.code == 1
    assert 'cannot apply MeshTimeout "x" in mesh "no-such-mesh"' in run.err
    assert "mesh: mesh 'no-such-mesh' does not exist" in run.err


def test_inspect_meshes(zmctl: ZmctlRunner) -> None:
    run = zmctl("inspect", "meshes", "-o", "json")
    assert run.code == 0, run.err
    default = next(m for m in json.loads(run.out) if m["name"] == "default")
    assert default["mtls"] == "off"
    assert default["dataplanes"] == 0
    assert default["policies"]["MeshTimeout"] >= 2
    table = zmctl("inspect", "meshes")
    assert table.out.splitlines()[0].split() == ["NAME", "MTLS", "DATAPLANES", "POLICIES"]


def test_inspect_dataplanes(zmctl: ZmctlRunner) -> None:
    run = zmctl("inspect", "dataplanes", "-m", "default")
    assert run.code == 0, run.err
    assert run.out.splitlines()[0].split()[:3] == ["MESH", "NAME", "TAGS"]


def test_inspect_config_dump_of_a_missing_dataplane(zmctl: ZmctlRunner) -> None:
    run = zmctl("inspect", "dataplane", "no-such-dp", "--type", "config-dump")
    assert run.code == 1
    assert 'Dataplane "no-such-dp" in mesh "default"' in run.err


INSPECTED = """\
type: Dataplane
mesh: default
name: inspected-1
networking:
  address: 127.0.0.1
  inbound:
  - port: 18080
    servicePort: 18081
    tags: {kuma.io/service: inspected, kuma.io/protocol: http}
  outbound:
  - port: 18001
    tags: {kuma.io/service: backend}
---
type: MeshTimeout
mesh: default
name: inspected-backend
spec:
  targetRef: {kind: MeshService, name: inspected}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default: {connectionTimeout: 4s}
"""


def test_inspect_rules_and_policies_of_a_dataplane(zmctl: ZmctlRunner) -> None:
    applied = zmctl("apply", "-f", "-", stdin=INSPECTED)
    assert applied.code == 0, applied.err
    try:
        check_inspection(zmctl)
    finally:  # the control plane is the module's: leave it as found (test_inspect_meshes counts dataplanes)
        zmctl("delete", "dataplane", "inspected-1", "-m", "default")
        zmctl("delete", "meshtimeout", "inspected-backend", "-m", "default")


def check_inspection(zmctl: ZmctlRunner) -> None:

    def rules() -> Run | None:  # 503 until the xDS side's watch has the Dataplane
        run = zmctl("inspect", "dataplane", "inspected-1", "--type", "rules")
        return run if run.code == 0 else None

    run = wait_until(rules, 30, what="the rules of inspected-1")
    body = json.loads(run.out)
    assert body["resource"]["name"] == "inspected-1"
    timeout = next(r for r in body["rules"] if r["type"] == "MeshTimeout")
    backend = next(
        r for r in timeout["toRules"] if {"key": "kuma.io/service", "value": "backend", "not": False} in r["matchers"]
    )
    assert backend["conf"]["connectionTimeout"] == "4s"
    origin = [o["name"] for o in backend["origin"]]  # other tests of the module leave Mesh-wide timeouts
    assert origin[0] == "mesh-timeout-all-default" and origin[-1] == "inspected-backend"  # the last one wins

    policies = zmctl("inspect", "dataplane", "inspected-1", "--type", "policies")
    assert policies.code == 0, policies.err
    assert json.loads(policies.out) == {"policies": []}

    missing = zmctl("inspect", "dataplane", "no-such-dp", "--type", "rules")
    assert missing.code == 1
    assert 'cannot get the rules of Dataplane "no-such-dp" in mesh "default"' in missing.err


def test_configured_control_plane_is_used(zmctl: ZmctlRunner) -> None:
    added = zmctl("config", "control-planes", "add", "--name", "test", "--address", zmctl.address, address=None)
    assert added.code == 0, added.err
    run = zmctl("get", "meshes", address=None)
    assert run.code == 0, run.err
    assert "default" in run.out


def test_connection_refused_is_clear(zmctl: ZmctlRunner) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    run = zmctl("get", "meshes", address=address)
    assert run.code == 1
    assert f"cannot reach the control plane at {address}: connection refused" in run.err


def test_validation_example_in_docs_is_what_zmctl_prints(zmctl: ZmctlRunner, tmp_path: Path) -> None:
    """docs/resources.md shows `cat bad.yaml` and `zmctl apply -f bad.yaml`: both must be real."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "resources.md").read_text()
    example = docs.split("$ cat bad.yaml\n", 1)[1].split("```", 1)[0]
    document, printed = example.split("$ zmctl apply -f bad.yaml\n")
    (tmp_path / "bad.yaml").write_text(document)
    run = zmctl("apply", "-f", str(tmp_path / "bad.yaml"))
    assert run.code != 0
    assert run.err.strip() == printed.strip()
    assert zmctl("get", "meshtimeout", "t1", "-m", "default").code != 0  # nothing was applied
