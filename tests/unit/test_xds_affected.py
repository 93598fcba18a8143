"""A policy change regenerates only the proxies whose config it can change, and that is proven.

For every golden policy case (tests/unit/testdata/policies) each of the case's policies is added
to, and removed from, a mesh of the golden base plus a few more proxies (one calling only ``api``,
one calling nothing); every proxy is generated before and after and each one whose config moved
(byte for byte) must be in what ``affected_by_policy`` returns for that change, as the
reconciler calls it (the mesh's consumers and routes). A narrowing that misses a proxy fails
here. Then, that the narrowing happens: a policy on requests to one service affects its callers
only, where it used to affect the whole mesh.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from zonemesh.shared.resources.codec import from_universal, load_documents
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.context import outbound_services
from zonemesh.zone_cp.xds.generators import generate
from zonemesh.zone_cp.xds.policies import POLICY_TYPES
from zonemesh.zone_cp.xds.reconciler import ROUTE_PLUGINS, Consumers, affected_by_policy, policy_destinations
from zonemesh.zone_cp.xds.resources import encode_any
from zonemesh.zone_cp.xds.testing import TestCA, load_resources, mesh_context

TESTDATA = Path(__file__).parent / "testdata" / "policies"
CASES = sorted(
    (directory.name, path.name.removesuffix(".input.yaml"))
    for directory in TESTDATA.iterdir()
    if directory.is_dir()
    for path in directory.glob("*.input.yaml")
)

# Besides the golden base's web-1 (calls backend and api), backend-1/2, api-1 and gateway-1: a
# proxy calling only api, and one calling nothing, so that narrowing has proxies to leave out.
MORE = """
type: Dataplane
mesh: default
name: other-1
networking:
  address: 10.0.0.7
  inbound:
    - port: 6000
      tags: {kuma.io/service: other, kuma.io/protocol: http}
  outbound:
    - port: 10002
      tags: {kuma.io/service: api}
---
type: Dataplane
mesh: default
name: lonely-1
networking:
  address: 10.0.0.8
  inbound:
    - port: 6100
      tags: {kuma.io/service: lonely, kuma.io/protocol: http}
"""


def _load(path: Path) -> list[Resource]:
    return [from_universal(doc)[0] for doc in load_documents(path.read_text())]


def _consumers(dataplanes: Iterable[Resource]) -> Consumers:
    found: dict[str, set[str]] = {}
    for dp in dataplanes:
        for service in outbound_services(dp):
            found.setdefault(service, set()).add(dp.name)
    return found


async def _configs(resources: Iterable[Resource], ca: TestCA) -> dict[str, dict[str, dict[str, bytes]]]:
    ctx = await mesh_context(list(resources), ca=ca)
    configs = {}
    for name, dp in ctx.dataplanes.items():
        generated = generate(ctx, dp)
        configs[name] = {t: {n: encode_any(t, m) for n, m in by.items()} for t, by in generated.by_type.items()}
    return configs


def _affected(before: Resource | None, after: Resource | None, state: dict[tuple[str, str], Resource]) -> set[str]:
    """What the reconciler regenerates for this change, ``state`` being its mirror after it."""
    dataplanes = [r for r in state.values() if r.type == "Dataplane"]
    routes = [r for r in state.values() if r.type in ROUTE_PLUGINS]
    return affected_by_policy(before, after, dataplanes, consumers=_consumers(dataplanes), routes=routes)


@pytest.mark.parametrize(("policy", "case"), CASES, ids=[f"{p}/{c}" for p, c in CASES])
async def test_a_proxy_left_out_of_a_policy_change_would_have_got_the_same_config(policy: str, case: str) -> None:
    ca = TestCA()
    state = {(r.type, r.name): r for r in [*_load(TESTDATA / "_base.yaml"), *load_resources(MORE)]}
    documents = _load(TESTDATA / policy / f"{case}.input.yaml")
    state.update(((r.type, r.name), r) for r in documents if r.type not in POLICY_TYPES)  # e.g. mTLS on
    for doc in (r for r in documents if r.type in POLICY_TYPES):
        key = (doc.type, doc.name)
        previous = state.get(key)
        before = await _configs(state.values(), ca)
        state[key] = doc
        after = await _configs(state.values(), ca)
        moved = {name for name in after if after[name] != before.get(name)}
        assert moved <= _affected(previous, doc, state), (doc.name, "put", sorted(moved))
        # Its deletion (from the state with it) moves the same proxies back.
        without = dict(state)
        del without[key]
        if previous is None:
            assert moved <= _affected(doc, None, without), (doc.name, "delete", sorted(moved))


ONE_SERVICE = """
type: MeshTimeout
mesh: default
name: timeout-to-backend
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: backend}
      default: {connectionTimeout: 3s}
"""


async def test_a_policy_on_requests_to_one_service_affects_only_its_callers() -> None:
    ca = TestCA()
    state = {(r.type, r.name): r for r in [*_load(TESTDATA / "_base.yaml"), *load_resources(MORE)]}
    before = await _configs(state.values(), ca)
    [doc] = load_resources(ONE_SERVICE)
    state[(doc.type, doc.name)] = doc
    after = await _configs(state.values(), ca)
    # web-1 calls backend; the builtin gateway may route there. Not api-1, other-1, lonely-1...
    assert _affected(None, doc, state) == {"web-1", "gateway-1"}
    assert after["web-1"] != before["web-1"]  # the policy does something
    assert all(after[name] == before[name] for name in after if name not in ("web-1", "gateway-1"))


def test_what_a_policy_configures_only_outbound_traffic_to_named_services() -> None:
    [one] = load_resources(ONE_SERVICE)
    assert policy_destinations(one) == {"backend"}
    for spec in (
        {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {}}]},
        {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "labels": {"a": "b"}}}]},
        {"targetRef": {"kind": "Mesh"}, "to": one.spec["to"], "from": [{"targetRef": {"kind": "Mesh"}}]},
        {"targetRef": {"kind": "Mesh"}, "to": one.spec["to"], "rules": [{"default": {}}]},
        {"targetRef": {"kind": "Mesh"}, "to": one.spec["to"], "default": {}},
        {"targetRef": {"kind": "Mesh"}, "to": []},
    ):
        assert policy_destinations(Resource(type="MeshTimeout", name="p", mesh="default", spec=spec)) is None, spec


ROUTE_TO_BACKEND = """
type: MeshHTTPRoute
mesh: default
name: api-to-backend
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: api}
      rules:
        - matches: [{path: {type: PathPrefix, value: /legacy}}]
          default:
            backendRefs: [{kind: MeshService, name: backend}]
"""


async def test_a_policy_on_requests_to_a_service_reaches_who_routes_there_from_another_outbound() -> None:
    """other-1 calls only api, but a route sends its /legacy requests to backend: it builds a
    backend cluster, which a policy on requests to backend configures."""
    ca = TestCA()
    state = {(r.type, r.name): r for r in [*_load(TESTDATA / "_base.yaml"), *load_resources(MORE)]}
    [route] = load_resources(ROUTE_TO_BACKEND)
    state[(route.type, route.name)] = route
    before = await _configs(state.values(), ca)
    [doc] = load_resources(ONE_SERVICE)
    state[(doc.type, doc.name)] = doc
    after = await _configs(state.values(), ca)
    moved = {name for name in after if after[name] != before[name]}
    assert "other-1" in moved
    assert moved <= _affected(None, doc, state) == {"web-1", "other-1", "gateway-1"}
