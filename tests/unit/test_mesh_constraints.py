"""Mesh constraints.dataplaneProxy: which proxies may be part of a mesh (Kuma's tag selectors)."""

from __future__ import annotations

import pytest
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.schema import ValidationError
from zonemesh.shared.resources.types.mesh import constraint_violation
from zonemesh.shared.store.memory import MemoryStore


def mesh(**constraints: object) -> Resource:
    return Resource(type="Mesh", name="default", spec={"constraints": {"dataplaneProxy": constraints}})


def test_requirements_need_one_match_per_inbound_and_star_matches_any_value() -> None:
    m = mesh(requirements=[{"tags": {"team": "*"}}, {"tags": {"kuma.io/service": "web"}}])
    assert constraint_violation(m, [{"kuma.io/service": "web"}]) is None
    assert constraint_violation(m, [{"kuma.io/service": "db", "team": "payments"}]) is None
    reason = constraint_violation(m, [{"kuma.io/service": "web"}, {"kuma.io/service": "db"}])
    assert reason is not None and "inbound[1] tags (kuma.io/service=db) match none" in reason
    assert constraint_violation(mesh(), [{"kuma.io/service": "db"}]) is None  # no constraints: anyone


def test_a_restriction_refuses_what_it_matches() -> None:
    m = mesh(restrictions=[{"tags": {"kuma.io/service": "legacy", "version": "*"}}])
    assert constraint_violation(m, [{"kuma.io/service": "legacy"}]) is None  # no version tag: no match
    reason = constraint_violation(m, [{"kuma.io/service": "legacy", "version": "1"}])
    assert reason is not None and "restrictions[0] (kuma.io/service=legacy, version=*)" in reason


async def test_a_dataplane_written_through_the_api_must_meet_them() -> None:
    manager = ResourceManager(MemoryStore())
    await manager.apply(mesh(requirements=[{"tags": {"team": "*"}}]))
    dataplane = Resource(
        type="Dataplane",
        name="web-1",
        mesh="default",
        spec={"networking": {"address": "127.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}},
    )
    with pytest.raises(ValidationError) as exc:
        await manager.apply(dataplane)
    assert exc.value.errors[0].field == "networking" and "match none" in exc.value.errors[0].reason
    dataplane.spec["networking"]["inbound"][0]["tags"]["team"] = "web"
    await manager.apply(dataplane)
