"""Fuzzing the HTTP API with Kuma's own OpenAPI document: no input gets a 5xx.

schemathesis generates requests, valid and invalid by the schema, for every operation of Kuma's
OpenAPI document (testdata/kuma-openapi-v2.14.3.yaml) that a zonemesh control plane serves, and
sends them to a real ``zonemesh-cp`` process on 127.0.0.1, writes (PUT, DELETE) included, with the
admin token. The one check is ``not_a_server_error``: every answer must be below 500. Whether the
answers also follow Kuma's response schemas is a separate question, not asked here.

Which operations: those whose method and path template a route of a control plane's API app
has. The apps are built by the same functions the processes run (``build_api_app`` with the mode's
``assemble(config).routes``), so a new route is fuzzed as soon as Kuma's document describes it. Each
operation runs against a standalone control plane when it serves it (every resource route, the
zone's inspection routes), else against a global one (``/global-insight``, ...). Generation is
bounded (EXAMPLES per operation and generation mode) and seeded (SEED): a run is repeatable, and
takes about a minute on 2 cores.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from zonemesh.shared.api.app import build_api_app
from zonemesh.shared.config import Config
from zonemesh.shared.resources.manager import Mode, ResourceManager
from zonemesh.shared.store.memory import MemoryStore

from zonemesh.testing import ControlPlaneProcess, http

pytestmark = pytest.mark.slow

OPENAPI = Path(__file__).parent / "testdata" / "kuma-openapi-v2.14.3.yaml"
EXAMPLES = 8  # per operation and generation mode (positive, negative)
SEED = 15
METHODS = ("get", "put", "post", "delete", "patch")
MODES = ("standalone", "global")  # an operation runs against the first that serves it


def _template(path: str) -> str:
    """A path with its parameters anonymised: Kuma's and zonemesh's parameter names differ."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def served_operations(mode: str) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route the control plane's API app serves in ``mode``."""
    if mode == "global":
        from zonemesh.global_cp.app import assemble
    else:
        from zonemesh.zone_cp.app import assemble
    app = build_api_app(ResourceManager(MemoryStore(), mode=Mode(mode)), {}, {}, assemble(Config(mode=mode)).routes)
    return {(route.method, _template(route.resource.canonical)) for route in app.router.routes() if route.resource}


def served_schema(served: set[tuple[str, str]]) -> dict[str, Any]:
    """Kuma's document reduced to the ``served`` operations."""
    document = yaml.safe_load(OPENAPI.read_text())
    paths: dict[str, Any] = {}
    for path, item in document["paths"].items():
        kept = {
            key: value for key, value in item.items() if key not in METHODS or (key.upper(), _template(path)) in served
        }
        if any(key in METHODS for key in kept):
            paths[path] = kept
    document["paths"] = paths
    return document


@pytest.fixture
def control_planes(tmp_path: Path) -> Iterator[dict[str, ControlPlaneProcess]]:
    """A standalone and a global control plane (SQLite), both on 127.0.0.1."""
    cps = {mode: ControlPlaneProcess(tmp_path / mode, args=["--mode", mode]) for mode in MODES}
    try:
        for cp in cps.values():
            cp.start(wait=False)
        for cp in cps.values():
            cp.wait_ready()
        yield cps
    finally:
        for cp in cps.values():
            cp.stop()


def _admin_token(cp: ControlPlaneProcess) -> str:
    status, secret = http("GET", cp.api + "/global-secrets/admin-user-token")
    assert status == 200, secret
    return base64.b64decode(secret["data"]).decode()


def fuzz(mode: str, cp: ControlPlaneProcess, served: set[tuple[str, str]]) -> tuple[int, int, list[str]]:
    """Send every ``served`` operation's generated cases to ``cp``: (operations, cases, 5xx answers)."""
    assert urlsplit(cp.api).hostname == "127.0.0.1"
    schema = schemathesis.openapi.from_dict(served_schema(served))
    schema.config.update(base_url=cp.api)
    headers = {"Authorization": f"Bearer {_admin_token(cp)}"}
    session = requests.Session()
    failures: list[str] = []
    cases = 0

    def send(case: Any) -> None:
        nonlocal cases
        cases += 1
        response = case.call(session=session, headers=headers, allow_redirects=False, timeout=30)
        assert urlsplit(response.request.url).hostname == "127.0.0.1"
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except FailureGroup as exc:
            failures.append(
                f"[{mode}] {case.method} {response.request.url} -> {response.status_code}: "
                f"{response.text[:300]} ({exc.exceptions[0].title})"
            )

    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for generation_mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = seed(SEED)(
                settings(
                    max_examples=EXAMPLES,
                    database=None,
                    deadline=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )(given(case=operation.as_strategy(generation_mode))(send))
            )
            try:
                run()
            except Unsatisfiable:
                # No invalid request exists for an operation without parameters or body (GET /).
                assert generation_mode is GenerationMode.NEGATIVE
    return len(operations), cases, failures


def test_no_input_gets_a_server_error(control_planes: dict[str, ControlPlaneProcess]) -> None:
    started = time.monotonic()
    operations = cases = 0
    failures: list[str] = []
    fuzzed: set[tuple[str, str]] = set()
    for mode, cp in control_planes.items():
        served = served_operations(mode) - fuzzed
        fuzzed |= served
        counts = fuzz(mode, cp, served)
        operations, cases, failures = operations + counts[0], cases + counts[1], failures + counts[2]
    print(f"schemathesis: {operations} operations, {cases} cases, {time.monotonic() - started:.1f}s")
    assert operations > 60, "the document lost the operations zonemesh serves"
    logs = "\n".join(cp.logs()[-3000:] for cp in control_planes.values() if "api_internal_error" in cp.logs())
    assert not failures, f"{len(failures)} server errors:\n" + "\n".join(failures[:40]) + "\n" + logs
