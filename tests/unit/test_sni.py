"""The SNI format of mesh destinations (zone_cp/xds/sni.py): encode, parse, refusals."""

from __future__ import annotations

import pytest
from zonemesh.zone_cp.xds import envoy, sni


def test_service_and_mesh_only() -> None:
    assert sni.encode("backend", "default") == "backend{mesh=default}"


def test_tags_sorted_with_the_mesh_marker_and_without_the_service_tag() -> None:
    name = sni.encode("backend", "prod", {"version": "v2", "kuma.io/service": "backend", "kuma.io/zone": "zone-2"})
    assert name == "backend{kuma.io/zone=zone-2,mesh=prod,version=v2}"


def test_same_as_the_sni_outbound_clusters_send() -> None:
    assert sni.encode("web", "default") == envoy.sni("default", "web")


@pytest.mark.parametrize(
    ("service", "mesh", "tags"),
    [
        ("backend", "default", {}),
        ("backend_svc_8080", "m-1", {"version": "v1"}),
        ("a.b:c", "x", {"team/owner": "z:y", "k8s.io/ns": "kuma-demo", "version": "1.0"}),
    ],
)
def test_round_trip(service: str, mesh: str, tags: dict[str, str]) -> None:
    encoded = sni.encode(service, mesh, tags)
    assert sni.parse(encoded) == (service, mesh, tags)


def test_encoding_does_not_depend_on_tag_order() -> None:
    assert sni.encode("s", "m", {"b": "2", "a": "1"}) == sni.encode("s", "m", {"a": "1", "b": "2"})


@pytest.mark.parametrize(
    ("service", "mesh", "tags", "message"),
    [
        ("", "default", {}, "service must not be empty"),
        ("backend", "", {}, "mesh must not be empty"),
        ("back{end", "default", {}, "contains {"),
        ("backend", "default", {"mesh": "other"}, "collides with the mesh marker"),
        ("backend", "default", {"ver=sion": "v1"}, "tag name"),
        ("backend", "default", {"version": "v1,v2"}, "value of tag 'version'"),
        ("backend", "default", {"version": ""}, "must not be empty"),
    ],
)
def test_encode_refuses_what_cannot_round_trip(service: str, mesh: str, tags: dict[str, str], message: str) -> None:
    with pytest.raises(sni.SniError, match=message):
        sni.encode(service, mesh, tags)


@pytest.mark.parametrize(
    "text",
    [
        "backend",  # no braces
        "backend{mesh=default",  # unterminated
        "{mesh=default}",  # no service
        "backend{}",  # no pairs
        "backend{version=v1}",  # no mesh
        "backend{mesh=default,mesh=other}",  # twice
        "backend{mesh=default,version}",  # not a pair
        "backend{mesh=default,=v1}",
        "backend{mesh=default,a=b{c}",
        "outbound.example.com",  # a plain hostname (TLS origination to an ExternalService)
    ],
)
def test_parse_refuses_other_names(text: str) -> None:
    with pytest.raises(sni.SniError, match="is not a mesh SNI"):
        sni.parse(text)
