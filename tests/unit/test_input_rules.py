"""The rules every input passes, whatever its door (API, gRPC, KDS, zmctl): names, documents, numbers."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from zonemesh.shared import duration
from zonemesh.shared.resources import REGISTRY
from zonemesh.shared.resources.codec import MAX_DEPTH, MAX_VALUES, check_plain, load_documents, parse_document
from zonemesh.shared.resources.schema import (
    DNS_LABEL,
    MESH_NAME,
    RESOURCE_NAME,
    ZONE_NAME,
    ValidationError,
    check_name,
    parse_duration,
)
from zonemesh.shared.store.base import InvalidOffset, page_bounds
from zonemesh.shared.store.memory import MemoryStore
from zonemesh.shared.tokens.tokens import InvalidToken, parse_kid, user_token_validator

# Kuma's universal names: a lowercase RFC 1123 subdomain of at most 253 characters.
KUMA_ACCEPTS = ["a", "web-1", "web.v1", "1", "a-b.c-d", "zone-1.web", "x" * 253, "a." + "b" * 251]
KUMA_REFUSES = [
    "",
    "A",
    "a_b",
    "a..b",
    ".a",
    "a.",
    "-a",
    "a-",
    "a.-b",
    "a/b",
    "../../etc",
    "a b",
    "\u00fc",
    "\u0663",  # Arabic-Indic three: a digit to \d and to str.isdigit
    "x" * 254,
    "web\n",
]


@pytest.mark.parametrize("name", KUMA_ACCEPTS)
def test_names_kuma_accepts(name: str) -> None:
    assert check_name(name) == []


@pytest.mark.parametrize("name", KUMA_REFUSES)
def test_names_kuma_refuses(name: str) -> None:
    errors = check_name(name, "spec.x")
    assert [e.field for e in errors] == ["spec.x"]


@pytest.mark.parametrize("value", [None, 1, ["a"], {"a": 1}])
def test_a_name_is_a_string(value: Any) -> None:
    assert [e.reason for e in check_name(value)] == ["must be a string"]


def test_meshes_and_zones_are_dns_labels() -> None:
    """A mesh name cannot hold a dot (Envoy node ids are <mesh>.<name>); a zone name is a DNS label."""
    assert MESH_NAME is DNS_LABEL and ZONE_NAME is DNS_LABEL
    assert REGISTRY.get("Mesh").name_rule is MESH_NAME
    assert REGISTRY.get("Zone").name_rule is ZONE_NAME
    for name in ("a.b", "x" * 64, "a_b"):
        assert check_name(name, rule=DNS_LABEL)
    assert check_name("x" * 63, rule=DNS_LABEL) == []
    # every other type uses Kuma's rule
    assert {t.name for t in REGISTRY if t.name_rule is not RESOURCE_NAME} == {"Mesh", "Zone"}


def test_name_errors_of_a_type_name_both_fields() -> None:
    errors = REGISTRY.get("MeshTimeout").name_errors("a/b", "Bad Mesh")
    assert [e.field for e in errors] == ["name", "mesh"]
    assert REGISTRY.get("ZoneIngress").name_errors("ingress-1", "ignored") == []


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"a": 1, 2: "b"}, "keys must be strings"),
        ({"a": float("nan")}, "finite"),
        ({"a": float("inf")}, "finite"),
        ({"a": {1, 2}}, "YAML read a set"),
        ({"a": b"x"}, "YAML read a bytes"),
    ],
)
def test_only_plain_json_data_passes(doc: Any, reason: str) -> None:
    with pytest.raises(ValidationError) as refused:
        check_plain(doc)
    assert reason in str(refused.value)


def test_depth_and_value_bounds() -> None:
    nested: Any = 1
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    check_plain(nested)  # MAX_DEPTH levels pass
    with pytest.raises(ValidationError, match="nested more than"):
        check_plain([nested])
    shared = list(range(1000))
    check_plain([shared] * (MAX_VALUES // 1001))
    with pytest.raises(ValidationError, match="more than 100000 values"):
        check_plain([shared] * (MAX_VALUES // 1000 + 1))  # shared objects count each time they are used


def test_documents_from_files_follow_the_same_rules() -> None:
    """zmctl apply reads files with load_documents: the same bounds as an API body."""
    with pytest.raises(ValidationError, match="must be UTF-8"):
        load_documents(b"type: Mesh\nname: \xff")
    with pytest.raises(ValidationError, match="nested more than"):
        load_documents("a: " + "[" * 10_000 + "]" * 10_000)
    with pytest.raises(ValidationError, match=r"document 2\): when: .* YAML read a date"):
        load_documents("type: Mesh\nname: a\n---\ntype: Mesh\nname: b\nwhen: 2020-01-01\n")
    assert parse_document('{"a": 1}') == {"a": 1} and parse_document("a: 1") == {"a": 1}


@pytest.mark.parametrize("text", ["9" * 30 + "h", "1" * 400 + "s", "2562048h"])
def test_durations_longer_than_go_allows_are_refused(text: str) -> None:
    """float("1"*400) is infinity: int() of it raised far from the input (token validFor, Envoy timeouts)."""
    with pytest.raises(ValueError, match=r"longer|too long"):
        parse_duration(text)
    with pytest.raises(ValueError, match=r"longer|too long"):
        duration.parse_duration(text)
    assert parse_duration("2562047h") == 2562047 * 3600


@pytest.mark.parametrize("text", ["\u0663s", "\u00b2s", "\uff11s"])
def test_durations_take_ascii_digits_only(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
    with pytest.raises(ValueError):
        duration.parse_duration(text)


def test_page_bounds_clamp_and_refuse() -> None:
    assert page_bounds("99999999999999999999", 10, 5) == (5, 15, None)  # past the end: an empty page
    assert page_bounds("2", 2, 5) == (2, 4, "4")
    for bad in ("-1", "+1", "1_0", "\u0663", "\u00b2", " 1", "9" * 5000):
        with pytest.raises(InvalidOffset):
            page_bounds(bad, 10, 5)


@pytest.mark.parametrize("kid", ["\u00b2", "\u0663", "9" * 5000, "-1", "1.0", "", None, True, [1]])
def test_a_kid_is_an_ascii_serial(kid: Any) -> None:
    with pytest.raises(InvalidToken, match="no valid kid"):
        parse_kid(kid)
    assert parse_kid("12") == 12 and parse_kid(3) == 3


async def test_a_token_header_nested_deeply_is_an_invalid_token() -> None:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b'{"alg": "RS256", "kid": "1", "x": ' + b"[" * 1100 + b"]" * 1100 + b"}"
    token = ".".join([b64(header), b64(json.dumps({"a": 1}).encode()), b64(b"sig")])
    with pytest.raises(InvalidToken, match="malformed token"):
        await user_token_validator(MemoryStore()).validate(token)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0.0000000001s", 'invalid duration "0.0000000001s": shorter than 1ns, the smallest duration there is'),
        ("0.5ns", 'invalid duration "0.5ns": shorter than 1ns, the smallest duration there is'),
    ],
)
def test_a_duration_below_a_nanosecond_is_refused(text: str, reason: str) -> None:
    """Envoy and Go count in nanoseconds: such a duration would silently become 0 (for a
    timeout Envoy then NACKs, for others it means "none")."""
    from zonemesh.shared.resources.schema import Duration, validate

    assert [e.reason for e in validate(Duration(), text, "timeout")] == [reason]
    assert validate(Duration(positive=True), "1ns", "timeout") == []
    assert validate(Duration(), "0s", "timeout") == []
