"""Fuzzing the HTTP API with Kuma's own OpenAPI document: no input gets a 5xx, every answer
follows Kuma's document.

schemathesis generates requests, valid and invalid by the schema, for every operation of Kuma's
OpenAPI document (testdata/kuma-openapi-v2.14.3.yaml) that a zonemesh control plane serves, and
sends them to a real ``zonemesh-cp`` process on 127.0.0.1, writes (PUT, DELETE) included, with the
admin token. Every answer must be below 500 and conform to the document: a status code it lists
for the operation, its content type, its response schema (Kuma's list shape, ResourceTypeDescription,
...) and headers; every error is ``application/problem+json`` with Kuma's Error schema. The one
exception, written down in docs/api.md (#kumas-openapi-document) with why: status codes in
``UNLISTED_STATUSES`` where the document lists none for the operation (Kuma's server answers them too).

Which operations: those whose method and path template a route of a control plane's API app
has. The apps are built by the same functions the processes run (``build_api_app`` with the mode's
``assemble(config).routes``), so a new route is fuzzed as soon as Kuma's document describes it. Each
operation runs against a standalone control plane when it serves it (every resource route, the
zone's inspection routes), else against a global one (``/global-insight``, ...). Generation is
bounded (EXAMPLES per operation and generation mode) and seeded (SEED): a run is repeatable.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema_rs
import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.openapi.checks import UndefinedStatusCode
from zonemesh.shared.api.app import build_api_app
from zonemesh.shared.config import Config
from zonemesh.shared.resources.manager import Mode, ResourceManager
from zonemesh.shared.store.memory import MemoryStore

from zonemesh.testing import ControlPlaneProcess, http

pytestmark = pytest.mark.slow

OPENAPI = Path(__file__).parent / "testdata" / "kuma-openapi-v2.14.3.yaml"
EXAMPLES = 6  # per operation and generation mode (positive, negative)
SEED = 15
METHODS = ("get", "put", "post", "delete", "patch")
MODES = ("standalone", "global")  # an operation runs against the first that serves it
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
DOCS = Path(__file__).parents[2] / "docs" / "api.md"
# Status codes Kuma's document leaves out of some operations although Kuma's server answers them
# there too (a PUT lists 200 and 201, never the 400 of an invalid document). Accepted where the
# document lists no such code, each with the reason docs/api.md gives; any other unlisted code fails.
UNLISTED_STATUSES = (400, 404)


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


def _concrete(path: str, operation: dict[str, Any], served: set[tuple[str, str]], method: str) -> Iterator[str]:
    """Kuma's path as each served route writes it: where zonemesh serves one route per value of a
    Kuma path parameter (``{resourceType}`` of ``_rules``, ``{policyType}`` of
    ``_resources/dataplanes``), that value written into the path, once per route. A parameter with
    an ``enum`` takes only its values. A path served as Kuma writes it is only that path (Kuma's
    ``/zoneegresses/{name}`` is not ``/zoneegresses/_overview``)."""
    if (method.upper(), _template(path)) in served:
        yield path
        return
    kuma = path.strip("/").split("/")
    enums = {
        parameter["name"]: parameter["schema"]["enum"]
        for parameter in operation.get("parameters", [])
        if parameter.get("in") == "path" and "enum" in parameter.get("schema", {})
    }
    for served_method, template in sorted(served):
        ours = template.strip("/").split("/")
        if served_method != method.upper() or len(ours) != len(kuma):
            continue
        written = []
        for theirs, mine in zip(kuma, ours, strict=True):
            name = theirs[1:-1] if theirs.startswith("{") and theirs.endswith("}") else None
            if name is not None and mine != "{}" and mine in enums.get(name, [mine]):
                written.append(mine)  # zonemesh serves this value of the parameter as its own route
            elif (name is not None and mine == "{}") or theirs == mine:
                written.append(theirs)
            else:
                break
        else:
            yield "/" + "/".join(written)


def _without_written(operation: dict[str, Any], concrete: str) -> dict[str, Any]:
    """The operation without the path parameters ``concrete`` has written in."""
    parameters = [
        parameter
        for parameter in operation.get("parameters", [])
        if parameter.get("in") != "path" or "{" + parameter["name"] + "}" in concrete
    ]
    return {**operation, "parameters": parameters}


def served_schema(served: set[tuple[str, str]]) -> dict[str, Any]:
    """Kuma's document reduced to the ``served`` operations, each under the paths zonemesh serves it."""
    document = yaml.safe_load(OPENAPI.read_text())
    paths: dict[str, Any] = {}
    for path, item in document["paths"].items():
        shared = {key: value for key, value in item.items() if key not in METHODS}
        for method, operation in item.items():
            if method not in METHODS:
                continue
            for concrete in _concrete(path, operation, served, method):
                paths.setdefault(concrete, dict(shared))[method] = _without_written(operation, concrete)
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


def _accepted(failure: Exception) -> bool:
    """An unlisted status code of UNLISTED_STATUSES on an operation that lists none of its kind."""
    return isinstance(failure, UndefinedStatusCode) and failure.status_code in UNLISTED_STATUSES


def _error_validator() -> Any:
    document = yaml.safe_load(OPENAPI.read_text())
    return jsonschema_rs.validator_for({"$ref": "#/components/schemas/Error", "components": document["components"]})


ERROR_SCHEMA = _error_validator()


def error_problems(response: Any) -> list[str]:
    """What is wrong with an error answer (any status of 400 or more), listed in the document or
    not: it must be ``application/problem+json`` with Kuma's Error schema."""
    if response.status_code < 400:
        return []
    problems = []
    content_type = (response.headers.get("content-type") or [""])[0].split(";")[0].strip()
    if content_type != "application/problem+json":
        problems.append(f"error content type {content_type!r}, not application/problem+json")
    try:
        body = json.loads(response.content)
    except ValueError:
        return [*problems, "error body is not JSON"]
    problems += [f"error body: {e.instance_path}: {e.message}" for e in ERROR_SCHEMA.iter_errors(body)]
    return problems


def generation_modes(operation: Any) -> tuple[GenerationMode, ...]:
    """Invalid requests too where the document constrains something (a body, a query parameter or
    a header): Kuma's path parameters are any string, and looking for an invalid one finds none
    after a long search (it took most of the test's time)."""
    constrained = len(operation.body) or len(operation.query) or len(operation.headers)
    return (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if constrained else (GenerationMode.POSITIVE,)


def fuzz(mode: str, cp: ControlPlaneProcess, served: set[tuple[str, str]]) -> tuple[int, int, list[str]]:
    """Send every ``served`` operation's generated cases to ``cp``: (operations, cases, 5xx answers)."""
    assert urlsplit(cp.api).hostname == "127.0.0.1"
    schema = schemathesis.openapi.from_dict(served_schema(served))
    schema.config.update(base_url=cp.api)
    headers = {"Authorization": f"Bearer {_admin_token(cp)}"}
    session = requests.Session()
    failures: list[str] = []
    cases = 0
    answering = 0.0  # seconds spent waiting for the control plane, the rest is generation and checks

    def send(case: Any) -> None:
        nonlocal cases, answering
        cases += 1
        sent = time.monotonic()
        response = case.call(session=session, headers=headers, allow_redirects=False, timeout=30)
        answering += time.monotonic() - sent
        assert urlsplit(response.request.url).hostname == "127.0.0.1"
        problems: list[str] = []
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as exc:
            problems += [e.title for e in exc.exceptions if not _accepted(e)]
        problems += error_problems(response)
        if problems:
            failures.append(
                f"[{mode}] {case.method} {response.request.url} -> {response.status_code}: "
                f"{response.text[:300]} ({'; '.join(problems)})"
            )

    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for generation_mode in generation_modes(operation):
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
    print(f"schemathesis [{mode}]: {cases} cases, {answering:.1f}s waiting for answers")
    return len(operations), cases, failures


def test_every_unlisted_status_accepted_is_written_down_with_why() -> None:
    """docs/api.md's table of status codes Kuma's document leaves out lists exactly UNLISTED_STATUSES."""
    section = DOCS.read_text().split("### Kuma's OpenAPI document", 1)[1].split("\n## ", 1)[0]
    written = {int(m) for m in re.findall(r"^\| ([1-5][0-9][0-9]) \|", section, flags=re.MULTILINE)}
    assert written == set(UNLISTED_STATUSES)


def test_every_answer_is_below_500_and_follows_kumas_document(control_planes: dict[str, ControlPlaneProcess]) -> None:
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
    summary = f"{len(failures)} server errors or answers Kuma's document does not allow:\n"
    assert not failures, summary + "\n".join(failures[:40]) + "\n" + logs
