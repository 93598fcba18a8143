"""Resource types: registry declarations and validation, through the universal codec.

Invalid cases start from a small valid document per type and change one thing, so each
row shows exactly what breaks it and which `field`/`reason` the API will report.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from zonemesh.shared.resources import REGISTRY, Resource, Scope, Sync
from zonemesh.shared.resources.codec import dump_yaml, from_universal, load_documents, parse_universal, to_universal
from zonemesh.shared.resources.schema import FieldError, ValidationError
from zonemesh.shared.resources.types.dataplane import dataplane_tags, is_builtin_gateway, is_gateway

TESTDATA = Path(__file__).parent / "testdata" / "resources"
VALID_FILES = sorted((TESTDATA / "valid").glob("*.yaml"))
SEED_DEFAULTS = TESTDATA / "seed_default_policies.yaml"


def parse(doc: Any) -> Resource:
    """Valid as Kuma defines the type (whether or not zonemesh applies it yet: see test_support.py)."""
    return parse_universal(doc)[0]


def errors_of(doc: Any) -> list[FieldError]:
    with pytest.raises(ValidationError) as exc:
        parse_universal(doc)
    return exc.value.errors


def documents(path: Path) -> list[Any]:
    return load_documents(path.read_text())


# --- the documents the product itself ships must validate as written ---------------------


def test_seed_default_policies_validate_exactly_as_written() -> None:
    docs = documents(SEED_DEFAULTS)
    assert [d["type"] for d in docs] == ["MeshTimeout", "MeshTimeout", "MeshRetry", "MeshCircuitBreaker"]
    for doc in docs:
        original = copy.deepcopy(doc)
        res = from_universal(doc)[0]  # accepted as they would be through the API
        assert res.spec == original["spec"], "validation must not rewrite the spec"
        assert (res.mesh, res.name) == ("default", original["name"])


@pytest.mark.parametrize("path", VALID_FILES, ids=lambda p: p.stem)
def test_valid_examples(path: Path) -> None:
    docs = documents(path)
    assert docs
    for doc in docs:
        parse(doc)


@pytest.mark.parametrize("path", [*VALID_FILES, SEED_DEFAULTS], ids=lambda p: p.stem)
def test_universal_round_trip(path: Path) -> None:
    for doc in documents(path):
        res = parse(doc)
        again = parse(load_documents(dump_yaml([to_universal(res)]))[0])
        assert (again.type, again.mesh, again.name, again.spec) == (res.type, res.mesh, res.name, res.spec)


def test_every_new_type_has_a_valid_example() -> None:
    covered = {doc["type"] for path in VALID_FILES for doc in documents(path)}
    expected = {row.name for row in TYPES} - {"MeshTimeout"}
    assert expected <= covered


# --- invalid documents: a base per type, one change per row ------------------------------

BASES: dict[str, str] = {
    "mtp": """
        type: MeshTrafficPermission
        mesh: default
        name: p
        spec:
          targetRef: {kind: Mesh}
          from:
            - targetRef: {kind: Mesh}
              default: {action: Allow}
    """,
    "mr": """
        type: MeshRetry
        mesh: default
        name: p
        spec:
          targetRef: {kind: Mesh}
          to:
            - targetRef: {kind: Mesh}
              default:
                http:
                  numRetries: 1
                  backOff: {baseInterval: 25ms, maxInterval: 250ms}
    """,
    "mcb": """
        type: MeshCircuitBreaker
        mesh: default
        name: p
        spec:
          targetRef: {kind: Mesh}
          to:
            - targetRef: {kind: Mesh}
              default:
                connectionLimits: {maxConnections: 10}
                outlierDetection:
                  detectors:
                    totalFailures: {consecutive: 5}
          from:
            - targetRef: {kind: Mesh}
              default:
                connectionLimits: {maxConnections: 10}
    """,
    "mhc": """
        type: MeshHealthCheck
        mesh: default
        name: p
        spec:
          targetRef: {kind: Mesh}
          to:
            - targetRef: {kind: MeshService, name: backend}
              default:
                interval: 10s
                http: {path: /health, expectedStatuses: [200]}
    """,
    "mhttpr": """
        type: MeshHTTPRoute
        mesh: default
        name: p
        spec:
          targetRef: {kind: Mesh}
          to:
            - targetRef: {kind: MeshService, name: backend}
              rules:
                - matches:
                    - path: {type: PathPrefix, value: /api}
                  default:
                    filters:
                      - type: RequestHeaderModifier
                        requestHeaderModifier:
                          set: [{name: x-a, value: "1"}]
                    backendRefs:
                      - {kind: MeshService, name: backend, weight: 1}
    """,
    "mhttpr-gw": """
        type: MeshHTTPRoute
        mesh: default
        name: p
        spec:
          targetRef: {kind: MeshGateway, name: edge}
          to:
            - targetRef: {kind: Mesh}
              rules:
                - matches: [{path: {type: PathPrefix, value: /}}]
                  default:
                    backendRefs: [{kind: MeshService, name: web}]
    """,
    "mtcpr": """
        type: MeshTCPRoute
        mesh: default
        name: p
        spec:
          targetRef: {kind: Mesh}
          to:
            - targetRef: {kind: MeshService, name: redis}
              rules:
                - default:
                    backendRefs: [{kind: MeshService, name: redis-v2, weight: 1}]
    """,
    "mfi": """
        type: MeshFaultInjection
        mesh: default
        name: p
        spec:
          targetRef: {kind: Mesh, proxyTypes: [Sidecar]}
          from:
            - targetRef: {kind: Mesh}
              default:
                http:
                  - abort: {httpStatus: 503, percentage: 50}
                    delay: {value: 1s, percentage: "12.5"}
                    responseBandwidth: {limit: 10kbps, percentage: 100}
    """,
    "mrl": """
        type: MeshRateLimit
        mesh: default
        name: p
        spec:
          targetRef: {kind: Mesh, proxyTypes: [Sidecar]}
          from:
            - targetRef: {kind: Mesh}
              default:
                local:
                  http:
                    requestRate: {num: 10, interval: 1s}
                    onRateLimit: {status: 429}
    """,
    "mal": """
        type: MeshAccessLog
        mesh: default
        name: p
        spec:
          targetRef: {kind: Mesh}
          to:
            - targetRef: {kind: Mesh}
              default:
                backends:
                  - type: File
                    file: {path: /dev/stdout, format: {type: Plain, plain: "%START_TIME%"}}
    """,
    "dp": """
        type: Dataplane
        mesh: default
        name: dp-1
        networking:
          address: 192.168.0.2
          inbound:
            - port: 8080
              serviceAddress: 127.0.0.1
              tags: {kuma.io/service: backend, version: v1}
          outbound:
            - port: 10001
              tags: {kuma.io/service: db}
    """,
    "dp-gw": """
        type: Dataplane
        mesh: default
        name: gw-1
        networking:
          address: 192.168.0.3
          gateway:
            type: DELEGATED
            tags: {kuma.io/service: edge}
    """,
    "zi": """
        type: ZoneIngress
        name: zi-1
        zone: zone-1
        networking:
          address: 192.168.0.1
          advertisedAddress: 10.0.0.1
          port: 10001
          advertisedPort: 10000
          admin: {port: 9901}
        availableServices:
          - mesh: default
            instances: 1
            tags: {kuma.io/service: backend}
    """,
    "ze": """
        type: ZoneEgress
        name: ze-1
        zone: zone-1
        networking: {address: 192.168.0.4, port: 10002, admin: {port: 9901}}
    """,
    "es": """
        type: ExternalService
        mesh: default
        name: es-1
        tags: {kuma.io/service: httpbin}
        networking:
          address: httpbin.org:443
          tls:
            enabled: true
            caCert: {secret: ca}
    """,
}

DELETE = object()  # patch value: remove the key


class Case(NamedTuple):
    id: str
    base: str
    patch: dict[str, Any]  # dotted path ("spec.to[0].default") -> new value (YAML text is parsed) or DELETE
    field: str
    reason: str


def y(text: str) -> Any:
    """A patch value written as YAML, to keep rows short."""
    return yaml.safe_load(text)


# fmt: off
CASES = [
    # generic: meta, spec, targetRef
    Case("unknown-spec-field", "mtp", {"spec.foo": 1}, "spec.foo", "unknown field"),
    Case("unknown-top-field-wrapped", "mtp", {"foo": 1}, "foo", "unknown field"),
    Case("missing-spec", "mtp", {"spec": DELETE}, "spec", "must be defined"),
    Case("missing-targetref-kind", "mtp", {"spec.targetRef": {}}, "spec.targetRef.kind", "must be defined"),
    Case("unknown-kind", "mtp", {"spec.targetRef.kind": "Foo"}, "spec.targetRef.kind", "unknown kind"),
    Case("missing-mesh", "mtp", {"mesh": DELETE}, "mesh", "must be defined"),
    Case("bad-name", "mtp", {"name": "Not_A Name"}, "name", "lower case alphanumeric"),
    # MeshTrafficPermission
    Case("mtp-no-from", "mtp", {"spec.from": DELETE}, "spec", "at least one of: from"),
    Case("mtp-empty-from", "mtp", {"spec.from": []}, "spec.from", "needs at least one item"),
    Case("mtp-to-unknown", "mtp", {"spec.to": y("[{targetRef: {kind: Mesh}, default: {action: Allow}}]")},
         "spec.to", "unknown field"),
    Case("mtp-top-gateway", "mtp", {"spec.targetRef": {"kind": "MeshGateway", "name": "edge"}},
         "spec.targetRef.kind", "not supported"),
    Case("mtp-bad-action", "mtp", {"spec.from[0].default.action": "Maybe"},
         "spec.from[0].default.action", "must be one of: Allow, Deny, AllowWithShadowDeny"),
    Case("mtp-no-action", "mtp", {"spec.from[0].default": {}}, "spec.from[0].default.action", "must be defined"),
    Case("mtp-no-default", "mtp", {"spec.from[0].default": DELETE}, "spec.from[0].default", "must be defined"),
    Case("mtp-from-no-targetref", "mtp", {"spec.from[0].targetRef": DELETE},
         "spec.from[0].targetRef", "must be defined"),
    Case("mtp-subset-without-tags", "mtp", {"spec.from[0].targetRef": {"kind": "MeshSubset"}},
         "spec.from[0].targetRef.tags", "must not be empty"),
    Case("mtp-service-without-name", "mtp", {"spec.targetRef": {"kind": "MeshService"}},
         "spec.targetRef.name", "must be set with kind MeshService"),
    # MeshRetry
    Case("mr-from-unknown", "mr",
         {"spec.from": y("[{targetRef: {kind: Mesh}, default: {tcp: {maxConnectAttempt: 1}}}]")},
         "spec.from", "unknown field"),
    Case("mr-to-subset", "mr", {"spec.to[0].targetRef": y("{kind: MeshSubset, tags: {a: b}}")},
         "spec.to[0].targetRef.kind", "not supported"),
    Case("mr-bad-duration", "mr", {"spec.to[0].default.http.perTryTimeout": "5 seconds"},
         "spec.to[0].default.http.perTryTimeout", "invalid duration"),
    Case("mr-duration-number", "mr", {"spec.to[0].default.http.perTryTimeout": 5},
         "spec.to[0].default.http.perTryTimeout", "must be a duration string"),
    Case("mr-negative-retries", "mr", {"spec.to[0].default.http.numRetries": -1},
         "spec.to[0].default.http.numRetries", "greater than or equal to 0"),
    Case("mr-retries-string", "mr", {"spec.to[0].default.http.numRetries": "3"},
         "spec.to[0].default.http.numRetries", "must be an integer"),
    Case("mr-backoff-inverted", "mr",
         {"spec.to[0].default.http.backOff": {"baseInterval": "1s", "maxInterval": "100ms"}},
         "spec.to[0].default.http.backOff.maxInterval", "greater than or equal to baseInterval"),
    Case("mr-backoff-zero", "mr", {"spec.to[0].default.http.backOff.baseInterval": "0s"},
         "spec.to[0].default.http.backOff.baseInterval", "greater than zero"),
    Case("mr-backoff-empty", "mr", {"spec.to[0].default.http.backOff": {}},
         "spec.to[0].default.http.backOff", "at least one of: baseInterval, maxInterval"),
    Case("mr-empty-default", "mr", {"spec.to[0].default": {}},
         "spec.to[0].default", "at least one of: tcp, http, grpc"),
    Case("mr-empty-http", "mr", {"spec.to[0].default.http": {}}, "spec.to[0].default.http", "must not be empty"),
    Case("mr-retry-on-unknown", "mr", {"spec.to[0].default.http.retryOn": ["Sometimes"]},
         "spec.to[0].default.http.retryOn[0]", "unknown item 'Sometimes'"),
    Case("mr-retry-on-bad-status", "mr", {"spec.to[0].default.http.retryOn": ["5xx", "700"]},
         "spec.to[0].default.http.retryOn[1]", "unknown item '700'"),
    Case("mr-grpc-retry-on", "mr", {"spec.to[0].default.grpc": {"retryOn": ["5xx"]}},
         "spec.to[0].default.grpc.retryOn[0]", "must be one of: Canceled"),
    Case("mr-reset-headers-missing", "mr", {"spec.to[0].default.http.rateLimitedBackOff": {"maxInterval": "10s"}},
         "spec.to[0].default.http.rateLimitedBackOff.resetHeaders", "must be defined"),
    Case("mr-header-upper-case", "mr",
         {"spec.to[0].default.http.retriableRequestHeaders": [{"name": "X-Retry", "type": "Present"}]},
         "spec.to[0].default.http.retriableRequestHeaders[0].name", "lower-case HTTP header name"),
    Case("mr-present-with-value", "mr",
         {"spec.to[0].default.http.retriableResponseHeaders": [{"name": "x-r", "type": "Present", "value": "1"}]},
         "spec.to[0].default.http.retriableResponseHeaders[0].value", "must not be set with type Present"),
    Case("mr-omit-tags-without-tags", "mr",
         {"spec.to[0].default.http.hostSelection": [{"predicate": "OmitHostsWithTags"}]},
         "spec.to[0].default.http.hostSelection[0].tags", "must be defined"),
    Case("mr-priorities-twice", "mr",
         {"spec.to[0].default.http.hostSelection": [{"predicate": "OmitPreviousPriorities"}] * 2},
         "spec.to[0].default.http.hostSelection[1].predicate", "only be specified once"),
    Case("mr-tcp-zero-attempts", "mr", {"spec.to[0].default.tcp": {"maxConnectAttempt": 0}},
         "spec.to[0].default.tcp.maxConnectAttempt", "greater than or equal to 1"),
    Case("mr-gateway-to-service", "mr",
         {"spec.targetRef": {"kind": "MeshGateway", "name": "edge"},
          "spec.to[0].targetRef": {"kind": "MeshService", "name": "backend"}},
         "spec.to[0].targetRef.kind", "must be Mesh when the top-level targetRef is a MeshGateway"),
    Case("mr-proxy-types-on-service", "mr",
         {"spec.targetRef": {"kind": "MeshService", "name": "b", "proxyTypes": ["Sidecar"]}},
         "spec.targetRef.proxyTypes", "must not be set with kind MeshService"),
    # MeshCircuitBreaker
    Case("mcb-from-service", "mcb", {"spec.from[0].targetRef": {"kind": "MeshService", "name": "web"}},
         "spec.from[0].targetRef.kind", "not supported"),
    Case("mcb-zero-connections", "mcb", {"spec.to[0].default.connectionLimits.maxConnections": 0},
         "spec.to[0].default.connectionLimits.maxConnections", "greater than or equal to 1"),
    Case("mcb-unknown-limit", "mcb", {"spec.to[0].default.connectionLimits.maxStreams": 1},
         "spec.to[0].default.connectionLimits.maxStreams", "unknown field"),
    Case("mcb-eject-percent", "mcb", {"spec.to[0].default.outlierDetection.maxEjectionPercent": 101},
         "spec.to[0].default.outlierDetection.maxEjectionPercent", "less than or equal to 100"),
    Case("mcb-no-detectors", "mcb", {"spec.to[0].default.outlierDetection": {"interval": "5s"}},
         "spec.to[0].default.outlierDetection.detectors", "must be defined unless outlier detection is disabled"),
    Case("mcb-empty-detectors", "mcb", {"spec.to[0].default.outlierDetection.detectors": {}},
         "spec.to[0].default.outlierDetection.detectors", "at least one of: totalFailures"),
    Case("mcb-stdev-zero", "mcb",
         {"spec.to[0].default.outlierDetection.detectors": {"successRate": {"standardDeviationFactor": "0.0"}}},
         "spec.to[0].default.outlierDetection.detectors.successRate.standardDeviationFactor", "greater than zero"),
    Case("mcb-panic-threshold", "mcb", {"spec.to[0].default.outlierDetection.healthyPanicThreshold": 150},
         "spec.to[0].default.outlierDetection.healthyPanicThreshold", "percentage from 0 to 100"),
    Case("mcb-empty-default", "mcb", {"spec.from[0].default": {}},
         "spec.from[0].default", "at least one of: connectionLimits, outlierDetection"),
    Case("mcb-bad-interval", "mcb", {"spec.to[0].default.outlierDetection.interval": "-5s"},
         "spec.to[0].default.outlierDetection.interval", "invalid duration"),
    # MeshHealthCheck
    Case("mhc-status-600", "mhc", {"spec.to[0].default.http.expectedStatuses": [200, 600]},
         "spec.to[0].default.http.expectedStatuses[1]", "less than or equal to 599"),
    Case("mhc-interval-zero", "mhc", {"spec.to[0].default.interval": "0s"},
         "spec.to[0].default.interval", "greater than zero"),
    Case("mhc-no-protocol", "mhc", {"spec.to[0].default.http": DELETE},
         "spec.to[0].default", "at least one of: http, tcp, grpc"),
    Case("mhc-zero-threshold", "mhc", {"spec.to[0].default.healthyThreshold": 0},
         "spec.to[0].default.healthyThreshold", "greater than or equal to 1"),
    Case("mhc-jitter-percent", "mhc", {"spec.to[0].default.intervalJitterPercent": 120},
         "spec.to[0].default.intervalJitterPercent", "less than or equal to 100"),
    Case("mhc-from-unknown", "mhc", {"spec.from": y("[{targetRef: {kind: Mesh}, default: {tcp: {}}}]")},
         "spec.from", "unknown field"),
    Case("mhc-empty-path", "mhc", {"spec.to[0].default.http.path": ""},
         "spec.to[0].default.http.path", "must not be empty"),
    # MeshHTTPRoute
    Case("mhttpr-no-to", "mhttpr", {"spec.to": DELETE}, "spec.to", "must be defined"),
    Case("mhttpr-no-rules", "mhttpr", {"spec.to[0].rules": DELETE}, "spec.to[0].rules", "must be defined"),
    Case("mhttpr-default-in-to", "mhttpr", {"spec.to[0].default": {}}, "spec.to[0].default", "unknown field"),
    Case("mhttpr-from-unknown", "mhttpr", {"spec.from": []}, "spec.from", "unknown field"),
    Case("mhttpr-sidecar-to-mesh", "mhttpr", {"spec.to[0].targetRef": {"kind": "Mesh"}},
         "spec.to[0].targetRef.kind", "must be one of MeshService unless"),
    Case("mhttpr-no-matches", "mhttpr", {"spec.to[0].rules[0].matches": []},
         "spec.to[0].rules[0].matches", "must not be empty"),
    Case("mhttpr-path-type", "mhttpr", {"spec.to[0].rules[0].matches[0].path.type": "Glob"},
         "spec.to[0].rules[0].matches[0].path.type", "must be one of: Exact, PathPrefix, RegularExpression"),
    Case("mhttpr-relative-path", "mhttpr", {"spec.to[0].rules[0].matches[0].path.value": "api"},
         "spec.to[0].rules[0].matches[0].path.value", "must be an absolute path"),
    Case("mhttpr-prefix-slash", "mhttpr", {"spec.to[0].rules[0].matches[0].path.value": "/api/"},
         "spec.to[0].rules[0].matches[0].path.value", "trailing slash"),
    Case("mhttpr-method", "mhttpr", {"spec.to[0].rules[0].matches[0].method": "get"},
         "spec.to[0].rules[0].matches[0].method", "must be one of"),
    Case("mhttpr-duplicate-query", "mhttpr",
         {"spec.to[0].rules[0].matches[0].queryParams": y("[{type: Exact, name: a}, {type: Exact, name: a}]")},
         "spec.to[0].rules[0].matches[0].queryParams[1].name", "multiple entries for name a"),
    Case("mhttpr-negative-weight", "mhttpr", {"spec.to[0].rules[0].default.backendRefs[0].weight": -1},
         "spec.to[0].rules[0].default.backendRefs[0].weight", "greater than or equal to 0"),
    Case("mhttpr-backend-kind", "mhttpr", {"spec.to[0].rules[0].default.backendRefs[0].kind": "Mesh"},
         "spec.to[0].rules[0].default.backendRefs[0].kind", "must be one of: MeshService, MeshServiceSubset"),
    Case("mhttpr-backend-no-name", "mhttpr", {"spec.to[0].rules[0].default.backendRefs[0].name": DELETE},
         "spec.to[0].rules[0].default.backendRefs[0].name", "must be set with kind MeshService"),
    Case("mhttpr-subset-no-tags", "mhttpr", {"spec.to[0].rules[0].default.backendRefs[0].kind": "MeshServiceSubset"},
         "spec.to[0].rules[0].default.backendRefs[0].tags", "must be set with kind MeshServiceSubset"),
    Case("mhttpr-backend-port", "mhttpr", {"spec.to[0].rules[0].default.backendRefs[0].port": 0},
         "spec.to[0].rules[0].default.backendRefs[0].port", "greater than or equal to 1"),
    Case("mhttpr-filter-block-missing", "mhttpr",
         {"spec.to[0].rules[0].default.filters[0].type": "ResponseHeaderModifier"},
         "spec.to[0].rules[0].default.filters[0].responseHeaderModifier", "must be defined with type"),
    Case("mhttpr-empty-modifier", "mhttpr", {"spec.to[0].rules[0].default.filters[0].requestHeaderModifier": {}},
         "spec.to[0].rules[0].default.filters[0].requestHeaderModifier", "at least one of: set, add, remove"),
    Case("mhttpr-duplicate-header", "mhttpr",
         {"spec.to[0].rules[0].default.filters[0].requestHeaderModifier.remove": ["x-a"]},
         "spec.to[0].rules[0].default.filters[0].requestHeaderModifier.remove[0]", "duplicate header name"),
    Case("mhttpr-redirect-status", "mhttpr",
         {"spec.to[0].rules[0].default.filters": y("[{type: RequestRedirect, requestRedirect: {statusCode: 200}}]")},
         "spec.to[0].rules[0].default.filters[0].requestRedirect.statusCode", "must be one of: 301, 302"),
    Case("mhttpr-redirect-ip-host", "mhttpr",
         {"spec.to[0].rules[0].default.filters": y("[{type: RequestRedirect, requestRedirect: {hostname: 10.0.0.1}}]")},
         "spec.to[0].rules[0].default.filters[0].requestRedirect.hostname", "cannot be an IP address"),
    Case("mhttpr-prefix-rewrite-exact-match", "mhttpr",
         {"spec.to[0].rules[0].matches[0].path.type": "Exact",
          "spec.to[0].rules[0].default.filters": y("[{type: URLRewrite, urlRewrite: "
                                                   "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}]")},
         "spec.to[0].rules[0].default.filters[0].urlRewrite.path.replacePrefixMatch",
         "all matches match a path prefix"),
    Case("mhttpr-rewrite-type-field", "mhttpr",
         {"spec.to[0].rules[0].default.filters": y("[{type: URLRewrite, urlRewrite: "
                                                   "{path: {type: ReplaceFullPath}}}]")},
         "spec.to[0].rules[0].default.filters[0].urlRewrite.path.replaceFullPath", "must be defined with type"),
    Case("mhttpr-mirror-percentage", "mhttpr",
         {"spec.to[0].rules[0].default.filters": y("[{type: RequestMirror, requestMirror: "
                                                  "{percentage: 101, backendRef: {kind: MeshService, name: b}}}]")},
         "spec.to[0].rules[0].default.filters[0].requestMirror.percentage", "percentage from 0 to 100"),
    Case("mhttpr-sidecar-hostnames", "mhttpr", {"spec.to[0].hostnames": ["example.com"]},
         "spec.to[0].hostnames", "only be set when the top-level targetRef is a MeshGateway"),
    Case("mhttpr-sidecar-host-to-backend", "mhttpr",
         {"spec.to[0].rules[0].default.filters": y("[{type: URLRewrite, urlRewrite: {hostToBackendHostname: true}}]")},
         "spec.to[0].rules[0].default.filters[0].urlRewrite.hostToBackendHostname", "MeshGateway"),
    Case("mhttpr-gateway-no-backends", "mhttpr-gw", {"spec.to[0].rules[0].default.backendRefs": []},
         "spec.to[0].rules[0].default.backendRefs", "must not be empty on a MeshGateway route"),
    Case("mhttpr-gateway-to-service", "mhttpr-gw", {"spec.to[0].targetRef": {"kind": "MeshService", "name": "web"}},
         "spec.to[0].targetRef.kind", "must be Mesh when the top-level targetRef is a MeshGateway"),
    # MeshTCPRoute
    Case("mtcpr-no-backends", "mtcpr", {"spec.to[0].rules[0].default.backendRefs": []},
         "spec.to[0].rules[0].default.backendRefs", "must not be empty"),
    Case("mtcpr-no-rules", "mtcpr", {"spec.to[0].rules": DELETE}, "spec.to[0].rules", "must be defined"),
    Case("mtcpr-matches-unknown", "mtcpr", {"spec.to[0].rules[0].matches": []},
         "spec.to[0].rules[0].matches", "unknown field"),
    Case("mtcpr-sidecar-to-mesh", "mtcpr", {"spec.to[0].targetRef": {"kind": "Mesh"}},
         "spec.to[0].targetRef.kind", "must be one of MeshService"),
    Case("mtcpr-weight-type", "mtcpr", {"spec.to[0].rules[0].default.backendRefs[0].weight": "half"},
         "spec.to[0].rules[0].default.backendRefs[0].weight", "must be an integer"),
    # MeshFaultInjection
    Case("mfi-status-99", "mfi", {"spec.from[0].default.http[0].abort.httpStatus": 99},
         "spec.from[0].default.http[0].abort.httpStatus", "greater than or equal to 100"),
    Case("mfi-status-600", "mfi", {"spec.from[0].default.http[0].abort.httpStatus": 600},
         "spec.from[0].default.http[0].abort.httpStatus", "less than or equal to 599"),
    Case("mfi-percentage-text", "mfi", {"spec.from[0].default.http[0].abort.percentage": "half"},
         "spec.from[0].default.http[0].abort.percentage", "percentage from 0 to 100"),
    Case("mfi-percentage-float", "mfi", {"spec.from[0].default.http[0].abort.percentage": 50.5},
         "spec.from[0].default.http[0].abort.percentage", 'in quotes such as "50.5"'),
    Case("mfi-percentage-over", "mfi", {"spec.from[0].default.http[0].delay.percentage": "100.5"},
         "spec.from[0].default.http[0].delay.percentage", "percentage from 0 to 100"),
    Case("mfi-percentage-negative", "mfi", {"spec.from[0].default.http[0].delay.percentage": -1},
         "spec.from[0].default.http[0].delay.percentage", "percentage from 0 to 100"),
    Case("mfi-bandwidth", "mfi", {"spec.from[0].default.http[0].responseBandwidth.limit": "10MB"},
         "spec.from[0].default.http[0].responseBandwidth.limit", "kbps, Mbps or Gbps"),
    Case("mfi-empty-fault", "mfi", {"spec.from[0].default.http": [{}]},
         "spec.from[0].default.http[0]", "at least one of: abort, delay, responseBandwidth"),
    Case("mfi-delay-no-value", "mfi", {"spec.from[0].default.http[0].delay.value": DELETE},
         "spec.from[0].default.http[0].delay.value", "must be defined"),
    Case("mfi-no-http", "mfi", {"spec.from[0].default": {}}, "spec.from[0].default.http", "must be defined"),
    Case("mfi-sidecar-to", "mfi", {"spec.to": y("[{targetRef: {kind: Mesh}, default: {http: []}}]")},
         "spec.to", "can only be defined when the top-level targetRef includes gateways"),
    Case("mfi-gateway-from", "mfi", {"spec.targetRef": {"kind": "MeshGateway", "name": "edge"}},
         "spec.from", "must not be defined when the top-level targetRef includes gateways"),
    # MeshRateLimit
    Case("mrl-zero-num", "mrl", {"spec.from[0].default.local.http.requestRate.num": 0},
         "spec.from[0].default.local.http.requestRate.num", "greater than or equal to 1"),
    Case("mrl-short-interval", "mrl", {"spec.from[0].default.local.http.requestRate.interval": "10ms"},
         "spec.from[0].default.local.http.requestRate.interval", "greater than 50ms"),
    Case("mrl-no-interval", "mrl", {"spec.from[0].default.local.http.requestRate.interval": DELETE},
         "spec.from[0].default.local.http.requestRate.interval", "must be defined"),
    Case("mrl-empty-local", "mrl", {"spec.from[0].default.local": {}},
         "spec.from[0].default.local", "at least one of: http, tcp"),
    Case("mrl-empty-http", "mrl", {"spec.from[0].default.local.http": {}},
         "spec.from[0].default.local.http", "at least one of: disabled, requestRate, onRateLimit"),
    Case("mrl-status", "mrl", {"spec.from[0].default.local.http.onRateLimit.status": 700},
         "spec.from[0].default.local.http.onRateLimit.status", "less than or equal to 599"),
    Case("mrl-from-service", "mrl", {"spec.from[0].targetRef": {"kind": "MeshService", "name": "web"}},
         "spec.from[0].targetRef.kind", "not supported"),
    Case("mrl-no-local", "mrl", {"spec.from[0].default": {}}, "spec.from[0].default.local", "must be defined"),
    Case("mrl-tcp-empty", "mrl", {"spec.from[0].default.local.tcp": {}},
         "spec.from[0].default.local.tcp", "at least one of: disabled, connectionRate"),
    # MeshAccessLog
    Case("mal-no-backends", "mal", {"spec.to[0].default": {}}, "spec.to[0].default.backends", "must be defined"),
    Case("mal-two-backends-in-one", "mal", {"spec.to[0].default.backends[0].tcp": {"address": "127.0.0.1:5000"}},
         "spec.to[0].default.backends[0]", "exactly one of: tcp, file, openTelemetry"),
    Case("mal-type-mismatch", "mal", {"spec.to[0].default.backends[0].type": "Tcp"},
         "spec.to[0].default.backends[0].tcp", "must be defined with type Tcp"),
    Case("mal-tcp-no-port", "mal", {"spec.to[0].default.backends": [{"tcp": {"address": "logstash"}}]},
         "spec.to[0].default.backends[0].tcp.address", '"host:port"'),
    Case("mal-empty-path", "mal", {"spec.to[0].default.backends[0].file.path": ""},
         "spec.to[0].default.backends[0].file.path", "must not be empty"),
    Case("mal-plain-and-json", "mal", {"spec.to[0].default.backends[0].file.format.json": [{"key": "a", "value": "b"}]},
         "spec.to[0].default.backends[0].file.format", "exactly one of: plain, json"),
    Case("mal-format-type", "mal", {"spec.to[0].default.backends[0].file.format.type": "Xml"},
         "spec.to[0].default.backends[0].file.format.type", "must be one of: Plain, Json"),
    Case("mal-otel-attribute", "mal",
         {"spec.to[0].default.backends": y("[{openTelemetry: {endpoint: 'otel:4317', "
                                           "attributes: [{key: Mesh, value: x}]}}]")},
         "spec.to[0].default.backends[0].openTelemetry.attributes[0].key", "lower-case OpenTelemetry attribute"),
    Case("mal-otel-url", "mal",
         {"spec.to[0].default.backends": y("[{openTelemetry: {endpoint: 'http://otel:4317/v1'}}]")},
         "spec.to[0].default.backends[0].openTelemetry.endpoint", "not a URL"),
    Case("mal-from-service", "mal",
         {"spec.from": y("[{targetRef: {kind: MeshService, name: web}, default: {backends: []}}]")},
         "spec.from[0].targetRef.kind", "not supported"),
    # Dataplane
    Case("dp-no-inbound-no-gateway", "dp", {"networking.inbound": DELETE},
         "networking", "has to contain at least one inbound interface or gateway"),
    Case("dp-empty-inbound", "dp", {"networking.inbound": []},
         "networking", "has to contain at least one inbound interface or gateway"),
    Case("dp-inbound-and-gateway", "dp", {"networking.gateway": y("{tags: {kuma.io/service: edge}}")},
         "networking", "inbound cannot be defined both with gateway"),
    Case("dp-missing-networking", "dp", {"networking": DELETE}, "networking", "must be defined"),
    Case("dp-missing-address", "dp", {"networking.address": DELETE}, "networking.address", "must be defined"),
    Case("dp-bad-address", "dp", {"networking.address": "not an address!"},
         "networking.address", "valid IP address or domain name"),
    Case("dp-port-zero", "dp", {"networking.inbound[0].port": 0},
         "networking.inbound[0].port", "greater than or equal to 1"),
    Case("dp-port-too-big", "dp", {"networking.inbound[0].port": 70000},
         "networking.inbound[0].port", "less than or equal to 65535"),
    Case("dp-port-missing", "dp", {"networking.inbound[0].port": DELETE},
         "networking.inbound[0].port", "must be defined"),
    Case("dp-duplicate-port", "dp", {"networking.inbound[1]": y("{port: 8080, tags: {kuma.io/service: other}}")},
         "networking.inbound[1].port", "port 8080 is already used by inbound[0]"),
    Case("dp-no-service-tag", "dp", {"networking.inbound[0].tags": {"version": "v1"}},
         'networking.inbound[0].tags["kuma.io/service"]', 'tag "kuma.io/service" has to exist'),
    Case("dp-no-tags", "dp", {"networking.inbound[0].tags": DELETE}, "networking.inbound[0].tags", "must be defined"),
    Case("dp-empty-tag-value", "dp", {"networking.inbound[0].tags": {"kuma.io/service": "backend", "version": ""}},
         'networking.inbound[0].tags["version"]', "tag value cannot be empty"),
    Case("dp-bad-tag-name", "dp", {"networking.inbound[0].tags": {"kuma.io/service": "backend", "bad key!": "x"}},
         'networking.inbound[0].tags["bad key!"]', "tag name must consist of"),
    Case("dp-bad-tag-value", "dp", {"networking.inbound[0].tags": {"kuma.io/service": "back end"}},
         'networking.inbound[0].tags["kuma.io/service"]', "tag value must consist of"),
    Case("dp-bad-protocol", "dp", {"networking.inbound[0].tags": {"kuma.io/service": "b", "kuma.io/protocol": "ftp"}},
         'networking.inbound[0].tags["kuma.io/protocol"]', "invalid value 'ftp'"),
    Case("dp-service-address-not-ip", "dp", {"networking.inbound[0].serviceAddress": "localhost"},
         "networking.inbound[0].serviceAddress", "has to be a valid IP address"),
    Case("dp-service-address-loop", "dp", {"networking.inbound[0].serviceAddress": "192.168.0.2"},
         "networking.inbound[0].serviceAddress", "have to differ from address and port"),
    Case("dp-outbound-no-destination", "dp", {"networking.outbound[0].tags": DELETE},
         "networking.outbound[0]", "must have tags (with kuma.io/service) or backendRef"),
    Case("dp-outbound-both", "dp", {"networking.outbound[0].backendRef": {"kind": "MeshService", "name": "db"}},
         "networking.outbound[0]", "only one of tags, backendRef"),
    Case("dp-outbound-backend-ref", "dp",
         {"networking.outbound[0].tags": DELETE,
          "networking.outbound[0].backendRef": {"kind": "MeshService", "name": "db"}},
         "networking.outbound[0].backendRef", "an outbound by backendRef (MeshService resources) is not supported yet"),
    Case("dp-outbound-no-service", "dp", {"networking.outbound[0].tags": {"version": "1"}},
         'networking.outbound[0].tags["kuma.io/service"]', "has to exist"),
    Case("dp-outbound-address", "dp", {"networking.outbound[0].address": "db.local"},
         "networking.outbound[0].address", "has to be a valid IP address"),
    Case("dp-unknown-networking-field", "dp", {"networking.foo": 1}, "networking.foo", "unknown field"),
    Case("dp-unknown-field", "dp", {"foo": 1}, "foo", "unknown field"),
    Case("dp-spec-key", "dp", {"spec": {}}, "spec", "unknown field"),
    Case("dp-inbound-wrong-type", "dp", {"networking.inbound": {"port": 1}}, "networking.inbound", "must be a list"),
    Case("dp-gateway-no-service", "dp-gw", {"networking.gateway.tags": {"team": "a"}},
         'networking.gateway.tags["kuma.io/service"]', "has to exist"),
    Case("dp-gateway-type", "dp-gw", {"networking.gateway.type": "EXTERNAL"},
         "networking.gateway.type", "must be one of: DELEGATED, BUILTIN"),
    Case("dp-admin-port", "dp", {"networking.admin": {"port": 0}},
         "networking.admin.port", "greater than or equal to 1"),
    # ZoneIngress / ZoneEgress
    Case("zi-mesh-field", "zi", {"mesh": "default"}, "mesh", "not mesh-scoped"),
    Case("zi-port-missing", "zi", {"networking.port": DELETE}, "networking.port", "must be defined"),
    Case("zi-advertised-port-alone", "zi", {"networking.advertisedAddress": DELETE},
         "networking.advertisedAddress", "has to be defined with advertisedPort"),
    Case("zi-advertised-address-alone", "zi", {"networking.advertisedPort": DELETE},
         "networking.advertisedPort", "has to be defined with advertisedAddress"),
    Case("zi-service-tag", "zi", {"availableServices[0].tags": {"version": "1"}},
         'availableServices[0].tags["kuma.io/service"]', "has to exist"),
    Case("zi-negative-instances", "zi", {"availableServices[0].instances": -1},
         "availableServices[0].instances", "greater than or equal to 0"),
    Case("zi-admin-port-clash", "zi", {"networking.admin.port": 10001},
         "networking.admin.port", "must differ from port"),
    Case("ze-port-zero", "ze", {"networking.port": 0}, "networking.port", "greater than or equal to 1"),
    Case("ze-admin-port-clash", "ze", {"networking.admin.port": 10002},
         "networking.admin.port", "must differ from port"),
    Case("ze-unknown-field", "ze", {"networking.advertisedPort": 1}, "networking.advertisedPort", "unknown field"),
    # ExternalService
    Case("es-no-port", "es", {"networking.address": "httpbin.org"}, "networking.address", '"host:port"'),
    Case("es-bad-port", "es", {"networking.address": "httpbin.org:99999"}, "networking.address", "range 1-65535"),
    Case("es-bad-host", "es", {"networking.address": "bad host:80"},
         "networking.address", "valid IP address or a domain name"),
    Case("es-ipv6-no-brackets", "es", {"networking.address": "fd00::1:80"}, "networking.address", "in brackets"),
    Case("es-no-address", "es", {"networking.address": DELETE}, "networking.address", "must be defined"),
    Case("es-no-tags", "es", {"tags": DELETE}, "tags", "must be defined"),
    Case("es-no-service-tag", "es", {"tags": {"team": "a"}}, 'tags["kuma.io/service"]', "has to exist"),
    Case("es-service-is-host", "es", {"tags": {"kuma.io/service": "httpbin.org"}},
         'tags["kuma.io/service"]', "cannot be the same as the host"),
    Case("es-cert-without-key", "es", {"networking.tls.clientCert": {"secret": "cert"}},
         "networking.tls.clientKey", "have to be defined together"),
    Case("es-two-sources", "es", {"networking.tls.caCert": {"secret": "ca", "file": "/ca.pem"}},
         "networking.tls.caCert", "exactly one of: secret, inline, inlineString, file"),
    Case("es-inline-not-base64", "es", {"networking.tls.caCert": {"inline": "not base64!"}},
         "networking.tls.caCert.inline", "must be base64-encoded"),
    Case("es-verification-mode", "es", {"networking.tls.verification": {"mode": "Trust"}},
         "networking.tls.verification.mode", "must be one of: Secured"),
]
# fmt: on


_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def patched(base: str, patch: dict[str, Any]) -> Any:
    doc = yaml.safe_load(BASES[base])
    for dotted, value in patch.items():
        keys: list[Any] = [int(index) if index else name for name, index in _TOKEN.findall(dotted)]
        parent = doc
        for key in keys[:-1]:
            parent = parent[key]
        last = keys[-1]
        if value is DELETE:
            del parent[last]
        elif isinstance(parent, list) and last == len(parent):
            parent.append(value)
        else:
            parent[last] = value
    return doc


@pytest.mark.parametrize("base", sorted(BASES))
def test_bases_are_valid(base: str) -> None:
    parse(yaml.safe_load(BASES[base]))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_invalid(case: Case) -> None:
    errors = errors_of(patched(case.base, case.patch))
    matching = [e for e in errors if e.field == case.field]
    assert matching, f"no error at {case.field}; got {[e.as_dict() for e in errors]}"
    assert any(case.reason in e.reason for e in matching), f"got {[e.as_dict() for e in matching]}"


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


def test_every_problem_is_reported_at_once() -> None:
    doc = patched(
        "mr",
        {
            "spec.to[0].default.http.numRetries": -1,
            "spec.to[0].default.http.perTryTimeout": "soon",
            "spec.to[0].targetRef": {"kind": "MeshGateway", "name": "x"},
            "spec.extra": True,
        },
    )
    fields = {e.field for e in errors_of(doc)}
    assert {
        "spec.to[0].default.http.numRetries",
        "spec.to[0].default.http.perTryTimeout",
        "spec.to[0].targetRef.kind",
        "spec.extra",
    } <= fields


def test_semantic_checks_wait_for_a_well_formed_spec() -> None:
    # A gateway route with a bad field: only the schema error, not a semantic one on top.
    doc = patched("mhttpr-gw", {"spec.to[0].rules[0].default.backendRefs": [], "spec.to[0].foo": 1})
    assert [e.field for e in errors_of(doc)] == ["spec.to[0].foo"]


def test_valid_tag_characters() -> None:
    doc = patched("dp", {"networking.inbound[0].tags": {"kuma.io/service": "backend_v1.ns:8080", "k8s.io/app-x": "a"}})
    parse(doc)


@pytest.mark.parametrize("value", [0, 100, "0", "50", "50.5", "100", "100.0", "99.999"])
def test_percentage_accepts_int_and_decimal_strings(value: Any) -> None:
    parse(patched("mfi", {"spec.from[0].default.http[0].abort.percentage": value}))


@pytest.mark.parametrize(
    "address", ["1.2.3.4:80", "example.com:443", "[::1]:8080", "my-svc.ns.svc.cluster.local:5432", "localhost:1"]
)
def test_external_service_addresses(address: str) -> None:
    parse(patched("es", {"networking.address": address}))


# --- registry ------------------------------------------------------------------------------


class TypeRow(NamedTuple):
    name: str
    plural: str
    short: str | None
    scope: Scope
    sync: Sync
    wrapped: bool


_POLICY = (Scope.MESH, Sync.GLOBAL_TO_ZONES | Sync.ZONE_TO_GLOBAL, True)
TYPES = [
    TypeRow("MeshTimeout", "meshtimeouts", "mt", *_POLICY),
    TypeRow("MeshTrafficPermission", "meshtrafficpermissions", "mtp", *_POLICY),
    TypeRow("MeshRetry", "meshretries", "mr", *_POLICY),
    TypeRow("MeshCircuitBreaker", "meshcircuitbreakers", "mcb", *_POLICY),
    TypeRow("MeshHealthCheck", "meshhealthchecks", "mhc", *_POLICY),
    TypeRow("MeshHTTPRoute", "meshhttproutes", "mhttpr", *_POLICY),
    TypeRow("MeshTCPRoute", "meshtcproutes", "mtcpr", *_POLICY),
    TypeRow("MeshFaultInjection", "meshfaultinjections", "mfi", *_POLICY),
    TypeRow("MeshRateLimit", "meshratelimits", "mrl", *_POLICY),
    TypeRow("MeshAccessLog", "meshaccesslogs", "mal", *_POLICY),
    TypeRow("MeshLoadBalancingStrategy", "meshloadbalancingstrategies", "mlbs", *_POLICY),
    TypeRow("Dataplane", "dataplanes", "dp", Scope.MESH, Sync.ZONE_TO_GLOBAL, False),
    TypeRow("ZoneIngress", "zoneingresses", "zi", Scope.GLOBAL, Sync.ZONE_TO_GLOBAL | Sync.ACROSS_ZONES, False),
    TypeRow("ZoneEgress", "zoneegresses", "ze", Scope.GLOBAL, Sync.ZONE_TO_GLOBAL, False),
    TypeRow("ExternalService", "externalservices", None, Scope.MESH, Sync.GLOBAL_TO_ZONES, False),
]


@pytest.mark.parametrize("row", TYPES, ids=[r.name for r in TYPES])
def test_declared_types(row: TypeRow) -> None:
    rtype = REGISTRY.get(row.name)
    assert (rtype.plural, rtype.short_name, rtype.scope, rtype.sync, rtype.wrapped) == (
        row.plural,
        row.short,
        row.scope,
        row.sync,
        row.wrapped,
    )
    assert rtype.policy is row.wrapped  # every wrapped type here is a targetRef policy


def test_zone_proxy_aliases() -> None:
    assert REGISTRY.resolve("zone-ingresses").name == "ZoneIngress"
    assert REGISTRY.resolve("zone-egresses").name == "ZoneEgress"
    assert REGISTRY.get("ZoneIngress").collection_path() == "/zoneingresses"
    assert REGISTRY.get("Dataplane").collection_path("default") == "/meshes/default/dataplanes"


def _cli_names(name: str) -> set[str]:
    rtype = REGISTRY.get(name)
    names = {rtype.name, rtype.name.lower(), rtype.plural, rtype.path, *rtype.aliases}
    if rtype.short_name:
        names.add(rtype.short_name)
    return names


@pytest.mark.parametrize("name", sorted(t.name for t in REGISTRY))
def test_every_type_resolves_by_each_of_its_names(name: str) -> None:
    for cli_name in _cli_names(name):
        assert REGISTRY.resolve(cli_name).name == name, cli_name
    assert REGISTRY.resolve(name.upper()).name == name


def test_no_name_is_shared_between_types() -> None:
    owners: dict[str, str] = {}
    for rtype in REGISTRY:
        for cli_name in {n.lower() for n in _cli_names(rtype.name)}:
            assert owners.setdefault(cli_name, rtype.name) == rtype.name, f"{cli_name!r} used twice"


def test_policies_share_one_shape() -> None:
    for rtype in REGISTRY.policies():
        assert rtype.wrapped and rtype.scope is Scope.MESH and rtype.provided_by_both, rtype.name
        lower = rtype.name.lower()
        # Kuma's plurals: meshretries, meshtlses, meshproxypatches, meshtimeouts
        suffix = "es" if lower.endswith(("s", "ch")) else "s"
        plural = lower[:-1] + "ies" if lower.endswith("y") else lower + suffix
        assert rtype.plural == plural, rtype.name


# --- dataplane helpers ---------------------------------------------------------------------


def _dataplanes() -> dict[str, Resource]:
    return {d["name"]: parse(d) for d in documents(TESTDATA / "valid" / "dataplane.yaml")}


def test_dataplane_tags_and_gateway_helpers() -> None:
    dps = _dataplanes()
    sidecar, gateway = dps["backend-1"], dps["edge-gateway"]
    assert [t["kuma.io/service"] for t in dataplane_tags(sidecar)] == ["backend", "backend-admin"]
    assert dataplane_tags(gateway) == [{"kuma.io/service": "edge"}]
    assert not is_gateway(sidecar) and not is_builtin_gateway(sidecar)
    assert is_gateway(gateway) and is_builtin_gateway(gateway)
    delegated = parse(yaml.safe_load(BASES["dp-gw"]))
    assert is_gateway(delegated) and not is_builtin_gateway(delegated)


def test_dataplane_tags_are_copies() -> None:
    sidecar = _dataplanes()["backend-1"]
    dataplane_tags(sidecar)[0]["kuma.io/service"] = "changed"
    assert sidecar.spec["networking"]["inbound"][0]["tags"]["kuma.io/service"] == "backend"
