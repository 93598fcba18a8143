"""Golden files per policy and proxy kind: what each policy sets in Envoy.

Layout: ``testdata/policies/<plugin module>/<case>.input.yaml`` holds the policies of a case (and
may override a document of ``_base.yaml`` by type and name, e.g. the Mesh to turn mTLS on). Each
case is generated for the sidecar ``web-1`` and the builtin gateway ``gateway-1`` of
``_base.yaml`` and compared with ``<case>.sidecar.golden.yaml`` / ``<case>.gateway.golden.yaml``.
Inputs go through the API's validation first (a case cannot hold what the API would refuse).

A new policy gets a directory here (``test_every_supported_policy_has_a_case`` insists), and a
case per behaviour. Regenerate with ``UPDATE_GOLDEN_FILES=true pytest tests/unit/test_policy_golden.py``
and review the diff like code: it is the Envoy config the change produces.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from zonemesh.shared.resources import REGISTRY
from zonemesh.shared.resources.codec import from_universal, load_documents
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.context import MeshContext
from zonemesh.zone_cp.xds.dump import dump
from zonemesh.zone_cp.xds.generators import generate
from zonemesh.zone_cp.xds.policies import PLUGINS
from zonemesh.zone_cp.xds.resources import ResourceSet
from zonemesh.zone_cp.xds.testing import TestCA, assert_golden, mesh_context, yaml_dump

TESTDATA = Path(__file__).parent / "testdata" / "policies"
PROXIES = {"sidecar": "web-1", "gateway": "gateway-1"}
CASES = sorted(
    (directory.name, path.name.removesuffix(".input.yaml"))
    for directory in TESTDATA.iterdir()
    if directory.is_dir()
    for path in directory.glob("*.input.yaml")
)


def load(path: Path) -> list[Resource]:
    return [from_universal(doc)[0] for doc in load_documents(path.read_text())]


async def context_for(policy: str, case: str) -> MeshContext:
    merged = {(r.type, r.name): r for r in load(TESTDATA / "_base.yaml")}
    merged.update(((r.type, r.name), r) for r in load(TESTDATA / policy / f"{case}.input.yaml"))
    return await mesh_context(merged.values(), ca=TestCA())


@pytest.mark.parametrize("kind", sorted(PROXIES))
@pytest.mark.parametrize(("policy", "case"), CASES, ids=[f"{p}/{c}" for p, c in CASES])
async def test_golden(policy: str, case: str, kind: str) -> None:
    ctx = await context_for(policy, case)
    rendered = yaml_dump(dump(generate(ctx, ctx.dataplanes[PROXIES[kind]]), hide_certificates=True))
    assert_golden(TESTDATA / policy / f"{case}.{kind}.golden.yaml", rendered)


def test_every_supported_policy_has_a_case() -> None:
    modules = {REGISTRY.get(p.type).support.plugin for p in PLUGINS}  # type: ignore[union-attr]
    with_cases = {policy for policy, _ in CASES}
    assert modules <= with_cases, f"policies without a golden case in {TESTDATA}: {sorted(modules - with_cases)}"


def test_every_golden_file_has_its_input() -> None:
    inputs = {(policy, case) for policy, case in CASES}
    stale = [
        path
        for path in TESTDATA.glob("*/*.golden.yaml")
        if (path.parent.name, path.name.split(".")[0]) not in inputs or path.name.split(".")[1] not in PROXIES
    ]
    assert not stale, f"golden files without an input case: {stale}"


PLACES = [("127.0.0.1", 80), ("127.0.0.1", 41234), ("10.0.0.1", 8080), ("fd00::1", 9)]


@pytest.mark.parametrize(("policy", "case"), CASES, ids=[f"{p}/{c}" for p, c in CASES])
async def test_an_inbound_placed_from_its_template_is_what_building_it_for_its_app_gives(
    policy: str, case: str
) -> None:
    """Replicas share an inbound's template (built once, policies applied) and each places it at
    its app's address and port: for every case's policies, byte for byte what building the
    inbound for that app gives, and without falling back to building it."""
    from zonemesh.zone_cp.xds.generators import inbound

    ctx = await context_for(policy, case)
    web = ctx.dataplanes[PROXIES["sidecar"]]
    for index, template in inbound.templates(ctx, web, {}, ResourceSet()):
        assert not template.direct
        for address, port in PLACES:
            cluster, filters, _ = inbound._at(ctx, template, address, port)
            direct_cluster, direct_listener = inbound._direct(
                ctx, template.service, template.protocol, address, port, template.policies
            )
            assert cluster.SerializeToString(deterministic=True) == direct_cluster.SerializeToString(deterministic=True)
            for chain in direct_listener.filter_chains:
                assert [f.SerializeToString(deterministic=True) for f in filters] == [
                    f.SerializeToString(deterministic=True) for f in chain.filters
                ], (index, address, port)
            # Not the way out: placing found every mention of the local cluster.
            assert not inbound._names_any_app([inbound._terminal(template, inbound.local_cluster_name(address, port))])
