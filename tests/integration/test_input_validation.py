"""Bad input at real control plane processes: a 400 that says what is wrong, never a 5xx, nothing stored.

Names (issue 15, finding 8): one rule whichever way a name enters, the URL path (percent-decoded)
and its mesh segment included. Input that used to crash a handler (finding 9): deep nesting,
oversized numbers, offsets past SQLite's integers, non-UTF-8 bodies, YAML aliases, odd digits.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from zonemesh.testing import ControlPlaneProcess

pytestmark = pytest.mark.slow

TIMEOUT = {
    "type": "MeshTimeout",
    "spec": {
        "targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "3s"}}],
    },
}
NAME_REASON = "lower case alphanumeric"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(tmp_path_factory.mktemp("standalone")).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def global_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(tmp_path_factory.mktemp("global"), args=["--mode", "global"]).start()
    try:
        yield process
    finally:
        process.stop()


def send(
    cp: ControlPlaneProcess,
    method: str,
    path: str,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request with the body and path exactly as given (percent-escapes stay escaped)."""
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(cp.api + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def refused(status: int, body: Any, field: str, reason: str) -> None:
    """A Kuma-style 400 naming ``field`` with ``reason`` in its invalid_parameters."""
    assert status == 400, body
    assert body["type"] == "/std-errors" and body["status"] == 400, body
    reasons = [p["reason"] for p in body["invalid_parameters"] if p["field"] == field]
    assert reasons and reason in reasons[0], body


def names(cp: ControlPlaneProcess, path: str) -> set[tuple[str, str]]:
    status, page = send(cp, "GET", path + "?size=1000")
    assert status == 200, page
    return {(item.get("mesh", ""), item["name"]) for item in page["items"]}


# --- finding 8: names -------------------------------------------------------------------------


def test_a_policy_name_from_the_url_path_is_checked(cp: ControlPlaneProcess) -> None:
    """PUT .../meshtimeouts/..%2F..%2Fetc used to store a MeshTimeout named "../../etc"."""
    status, body = send(cp, "PUT", "/meshes/default/meshtimeouts/..%2F..%2Fetc", json.dumps(TIMEOUT))
    refused(status, body, "name", NAME_REASON)
    assert body["title"] == "Invalid resource name"
    assert not any(name.startswith("..") for _, name in names(cp, "/meshtimeouts"))


def test_a_mesh_name_from_the_url_path_is_checked(cp: ControlPlaneProcess) -> None:
    """PUT /meshes/Bad%20Mesh%2F..%2Fx used to create that Mesh with its default policies."""
    status, body = send(cp, "PUT", "/meshes/Bad%20Mesh%2F..%2Fx", '{"type": "Mesh"}')
    refused(status, body, "name", NAME_REASON)
    assert names(cp, "/meshes") == {("", "default")}
    assert {mesh for mesh, _ in names(cp, "/meshtimeouts")} == {"default"}


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", "/meshes/default/dataplanes/..%2Fx", "name"),
        ("DELETE", "/meshes/default/meshtimeouts/a%20b", "name"),
        ("GET", "/meshes/Bad%20Mesh/meshtimeouts", "mesh"),
        ("GET", "/meshes/%C3%BC/meshtimeouts/t1", "mesh"),
        ("GET", "/meshes/default/dataplanes+insights/%2E%2E", "name"),
        ("GET", "/meshes/default/dataplanes/Web%2F1/_config", "name"),
        ("GET", "/zoneingresses/x%2Fy", "name"),
    ],
)
def test_every_name_in_a_url_is_checked(cp: ControlPlaneProcess, method: str, path: str, field: str) -> None:
    refused(*send(cp, method, path), field, "")


@pytest.mark.parametrize(
    ("path", "doc", "field", "reason"),
    [
        # Kuma's rule: no '_' (refused since Kuma 2.5), no empty dot-separated part, at most 253.
        ("/meshes/default/meshtimeouts/a_b", TIMEOUT, "name", NAME_REASON),
        ("/meshes/default/meshtimeouts/a..b", TIMEOUT, "name", NAME_REASON),
        ("/meshes/default/meshtimeouts/" + "a" * 254, TIMEOUT, "name", "at most 253"),
        # A mesh name holds no dot: Envoy node ids are "<mesh>.<name>", split at the first dot.
        ("/meshes/team.a", {"type": "Mesh"}, "name", "no '.'"),
    ],
)
def test_kumas_name_rule(cp: ControlPlaneProcess, path: str, doc: dict[str, Any], field: str, reason: str) -> None:
    refused(*send(cp, "PUT", path, json.dumps(doc)), field, reason)
    assert send(cp, "GET", path)[0] in (400, 404)


def test_names_kuma_accepts_are_accepted(cp: ControlPlaneProcess) -> None:
    for name in ("t.v1-b", "x" * 253):
        status, body = send(cp, "PUT", f"/meshes/default/meshtimeouts/{name}", json.dumps(TIMEOUT))
        assert status == 201, body
        assert send(cp, "DELETE", f"/meshes/default/meshtimeouts/{name}")[0] == 200


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({"mesh": "Bad Mesh", "validFor": "1h"}, "mesh"),
        ({"mesh": "default", "name": "web/1", "validFor": "1h"}, "name"),
    ],
)
def test_dataplane_token_requests_follow_the_name_rule(
    cp: ControlPlaneProcess, request_body: dict[str, Any], field: str
) -> None:
    refused(*send(cp, "POST", "/tokens/dataplane", json.dumps(request_body)), field, "")


def test_zone_tokens_are_issued_only_for_names_a_zone_can_connect_with(global_cp: ControlPlaneProcess) -> None:
    """The Zone type's rule (a DNS label), as KDS checks the connecting zone's name."""
    for zone in ("Zone 1", "zone.one", "z" * 64):
        refused(*send(global_cp, "POST", "/tokens/zone", json.dumps({"zone": zone})), "zone", "")
    status, token = send(global_cp, "POST", "/tokens/zone", json.dumps({"zone": "zone-1", "validFor": "1h"}))
    assert status == 200 and token.count(".") == 2


# --- finding 9: input that used to get a 500 ------------------------------------------------------


def deep_json(depth: int) -> str:
    return '{"type": "Mesh", "name": "deep", "logging": ' + '{"a": ' * depth + "1" + "}" * depth + "}"


def billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [{','.join(['*' + prev] * 9)}]")
    return "type: Mesh\nname: deep\nlogging:\n  " + "\n  ".join(lines) + "\n"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(deep_json(100_000), "nested more than 64 levels", id="json-recursion"),
        pytest.param(deep_json(100), "nested more than 64 levels", id="json-deep"),  # parses; recursed later
        pytest.param(
            "type: Mesh\nname: deep\nlogging: " + "[" * 100_000 + "]" * 100_000,
            "nested more than 64 levels",
            id="yaml-flow-recursion",
        ),
        pytest.param(
            "type: Mesh\nname: deep\nlogging:\n" + "".join(f"{'  ' * i}- \n" for i in range(1, 2000)),
            "nested",
            id="yaml-block-recursion",
        ),
        # On main this one expanded to 10^9 values in json.dumps (GBs, minutes): run it last.
        pytest.param(billion_laughs(), "more than 100000 values", id="yaml-billion-laughs"),
        pytest.param(b"\xff\xfe type: Mesh", "must be UTF-8", id="not-utf8"),
        pytest.param(
            '{"type": "Mesh", "name": "deep", "logging": {"n": ' + "1" * 5000 + "}}", "4300 digits", id="json-bigint"
        ),
        pytest.param("type: Mesh\nname: deep\nlogging: {n: " + "1" * 5000 + "}", "4300 digits", id="yaml-bigint"),
        pytest.param("type: Mesh\nname: deep\nlogging: {since: 2020-01-01}", "YAML read a date", id="yaml-date"),
        pytest.param('{"type": "Mesh", "name": "deep", "logging": {"x": NaN}}', "finite", id="json-nan"),
        pytest.param("type: Mesh\nname: deep\nlogging: {1: x}", "keys must be strings", id="yaml-int-key"),
        pytest.param("[1, 2]", "must be an object", id="list"),
        pytest.param("just text", "must be an object", id="text"),
    ],
)
def test_bodies_that_used_to_crash_are_refused(cp: ControlPlaneProcess, body: str | bytes, reason: str) -> None:
    status, answer = send(cp, "PUT", "/meshes/deep", body, {"Content-Type": "application/yaml"})
    assert status == 400, answer
    assert reason in answer["detail"], answer
    assert send(cp, "GET", "/meshes/deep")[0] == 404


@pytest.mark.parametrize("path", ["/meshes", "/zoneingresses", "/zoneegresses", "/meshes/default/meshtimeouts"])
def test_an_offset_past_any_integer_is_an_empty_page(cp: ControlPlaneProcess, path: str) -> None:
    status, page = send(cp, "GET", path + "?offset=99999999999999999999")
    assert status == 200, page
    assert page["items"] == [] and "next" not in page  # Kuma: no next past the last page
    assert page["total"] == send(cp, "GET", path)[1]["total"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("offset=%D9%A3", "offset"),  # Arabic-Indic three: int() reads it, SQL never should
        ("offset=-1", "offset"),
        ("size=-1", "size"),
        ("size=%EF%BC%91%EF%BC%90", "size"),  # fullwidth "10"
        ("size=1_0", "size"),
    ],
)
def test_page_parameters_are_ascii_numbers(cp: ControlPlaneProcess, query: str, field: str) -> None:
    for path in ("/meshes", "/meshes/default/dataplanes+insights"):
        refused(*send(cp, "GET", f"{path}?{query}"), field, "")


def test_if_match_and_version_must_be_versions(cp: ControlPlaneProcess) -> None:
    """'²'.isdigit() is True and int('²') raises: If-Match "²" used to be a 500."""
    doc = json.dumps({**TIMEOUT, "name": "guarded"})
    refused(*send(cp, "PUT", "/meshes/default/meshtimeouts/guarded", doc, {"If-Match": '"\u00b2"'}), "If-Match", "")
    assert send(cp, "PUT", "/meshes/default/meshtimeouts/guarded", doc, {"If-Match": '"0"'})[0] == 201
    refused(*send(cp, "DELETE", "/meshes/default/meshtimeouts/guarded", None, {"If-Match": "\u00b2"}), "If-Match", "")
    refused(*send(cp, "DELETE", "/meshes/default/meshtimeouts/guarded?version=%C2%B2"), "version", "")
    assert send(cp, "DELETE", "/meshes/default/meshtimeouts/guarded", None, {"If-Match": '"1"'})[0] == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mesh": "default", "validFor": "9" * 30 + "h"}, "validFor"),  # float infinity seconds: int() raised
        ({"mesh": "default", "validFor": "1h", "tags": {"kuma.io/service": [["web"]]}}, "tags"),
    ],
)
def test_dataplane_token_requests_that_used_to_crash(cp: ControlPlaneProcess, body: dict[str, Any], field: str) -> None:
    refused(*send(cp, "POST", "/tokens/dataplane", json.dumps(body)), field, "")


def test_dataplane_token_request_bodies_are_checked_like_resources(cp: ControlPlaneProcess) -> None:
    status, answer = send(cp, "POST", "/tokens/dataplane", '{"mesh": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert status == 400 and "nested" in answer["detail"], answer


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (
            {
                "spec": {
                    "targetRef": {"kind": "Mesh"},
                    "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"retryOn": ["\u00b2\u00b2\u00b2"]}}}],
                }
            },
            "spec.to[0].default.http.retryOn[0]",
        ),
        (
            {
                "spec": {
                    "targetRef": {"kind": "Mesh"},
                    "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"perTryTimeout": "\u0663s"}}}],
                }
            },
            "spec.to[0].default.http.perTryTimeout",
        ),
    ],
)
def test_unicode_digits_are_not_digits(cp: ControlPlaneProcess, doc: dict[str, Any], field: str) -> None:
    refused(*send(cp, "PUT", "/meshes/default/meshretries/odd", json.dumps({"type": "MeshRetry", **doc})), field, "")


def test_zone_token_and_license_requests_that_used_to_crash(global_cp: ControlPlaneProcess) -> None:
    refused(*send(global_cp, "POST", "/tokens/zone", json.dumps({"zone": "zone-1", "scope": [["cp"]]})), "scope", "")
    refused(*send(global_cp, "POST", "/tokens/zone", json.dumps({"zone": "zone-1", "scope": 7})), "scope", "")
    for license_body in (b"\xff{}", b'{"license": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        status, answer = send(global_cp, "PUT", "/license", license_body)
        assert status == 400, answer
        assert answer["title"] == "Invalid license"


def test_a_body_over_10_mib_is_413(cp: ControlPlaneProcess) -> None:
    status, answer = send(cp, "PUT", "/meshes/deep", b"a" * (10 * 1024 * 1024 + 1))
    assert status == 413, answer
    assert answer["status"] == 413


def test_a_token_with_a_unicode_digit_kid_is_a_401_on_loopback_too(cp: ControlPlaneProcess) -> None:
    """A presented token is checked from loopback too: int('²') in the validator used to be a 500."""
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT","kid":"\xc2\xb2"}').rstrip(b"=").decode()
    token = f"{header}.e30.c2ln"
    status, answer = send(cp, "GET", "/meshes", headers={"Authorization": f"Bearer {token}"})
    assert status == 401, answer
    assert "no valid kid" in answer["detail"]
