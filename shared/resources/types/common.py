"""Schema nodes shared by the proxy and service types: ports, addresses and Kuma tags.

Kuma's rules are followed where they matter to the data plane (an address Envoy can
resolve, a port in range, the mandatory ``kuma.io/service`` tag) and kept loose elsewhere.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from zonemesh.shared.resources.schema import AnyValue, Check, Errors, Int, List, Map, Node, join

SERVICE_TAG = "kuma.io/service"
PROTOCOL_TAG = "kuma.io/protocol"
ZONE_TAG = "kuma.io/zone"

# kuma.io/protocol values Kuma accepts on inbounds and external services.
PROTOCOLS = ("http", "http2", "grpc", "kafka", "tcp", "tls")

PORT = Int(min=1, max=65535)

# Kuma's character sets: keys may contain '/', values may not.
_TAG_NAME = re.compile(r"[a-zA-Z0-9.\-_:/]+")
_TAG_VALUE = re.compile(r"[a-zA-Z0-9.\-_:]+")
_HOST_LABEL = r"[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(\.{_HOST_LABEL})*\.?")


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_hostname(text: str) -> bool:
    return len(text) <= 253 and _HOSTNAME.fullmatch(text) is not None


def split_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6). Raises ValueError with a user-facing reason."""
    if any(c in text for c in "/?#"):
        raise ValueError('must be "host:port", not a URL')
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError('must be "host:port", e.g. "example.com:443"')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not is_ip(host):
            raise ValueError(f"{host!r} in brackets must be an IPv6 address")
    elif ":" in host:
        raise ValueError('an IPv6 address must be written in brackets, e.g. "[::1]:443"')
    elif not (is_ip(host) or is_hostname(host)):
        raise ValueError(f"{host!r} has to be a valid IP address or a domain name")
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} must be a number in range 1-65535")
    return host, int(port_text)


class Address(Node):
    """An IP address, or (unless ``ip_only``) a domain name."""

    def __init__(self, *, ip_only: bool = False) -> None:
        self.ip_only = ip_only

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if not isinstance(value, str):
            errors.add(path, "must be a string")
        elif not value:
            errors.add(path, "must not be empty")
        elif self.ip_only and not is_ip(value):
            errors.add(path, "has to be a valid IP address")
        elif not self.ip_only and not (is_ip(value) or is_hostname(value)):
            errors.add(path, "has to be a valid IP address or domain name")


class HostPort(Node):
    """``host:port``, as Kuma writes upstream addresses (external services, log collectors)."""

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if not isinstance(value, str):
            errors.add(path, "must be a string")
            return
        try:
            split_host_port(value)
        except ValueError as exc:
            errors.add(path, str(exc))


class Tags(Node):
    """Kuma tags: non-empty keys and values from Kuma's character sets.

    ``require_service``: the ``kuma.io/service`` tag must be present, as on every
    dataplane inbound, gateway and external service.
    """

    def __init__(self, *, require_service: bool = False) -> None:
        self.require_service = require_service

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if not isinstance(value, Mapping):
            errors.add(path, "must be an object")
            return
        for key, tag_value in value.items():
            where = f'{path}["{key}"]'
            if not isinstance(key, str) or not _TAG_NAME.fullmatch(key):
                errors.add(
                    where,
                    "tag name must consist of alphanumeric characters, dots, dashes, colons, slashes and underscores",
                )
            if not isinstance(tag_value, str):
                errors.add(where, "tag value must be a string")
            elif not tag_value:
                errors.add(where, "tag value cannot be empty")
            elif not _TAG_VALUE.fullmatch(tag_value):
                errors.add(
                    where, "tag value must consist of alphanumeric characters, dots, dashes, colons and underscores"
                )
        if self.require_service and SERVICE_TAG not in value:
            errors.add(f'{path}["{SERVICE_TAG}"]', f'tag "{SERVICE_TAG}" has to exist')
        protocol = value.get(PROTOCOL_TAG)
        if isinstance(protocol, str) and protocol and protocol not in PROTOCOLS:
            errors.add(
                f'{path}["{PROTOCOL_TAG}"]',
                f"tag {PROTOCOL_TAG!r} has an invalid value {protocol!r}; allowed: {', '.join(PROTOCOLS)}",
            )


def zone_field(spec: Mapping[str, Any], key: str = "zone") -> list[tuple[str, str]]:
    """``spec[key]`` as a zone reference (see ``ResourceType.zone_refs``), when set."""
    value = spec.get(key)
    return [(key, value)] if isinstance(value, str) and value else []


def tag_zone(tags: Any, path: str) -> list[tuple[str, str]]:
    """The ``kuma.io/zone`` tag of a tag set as a zone reference, when set."""
    value = tags.get(ZONE_TAG) if isinstance(tags, Mapping) else None
    return [(f'{path}["{ZONE_TAG}"]', value)] if isinstance(value, str) else []


def exactly_one(*names: str) -> Check:
    def check(value: Mapping[str, Any], path: str, errors: Errors) -> None:
        present = [n for n in names if value.get(n) is not None]
        if len(present) != 1:
            errors.add(path, f"must have exactly one of: {', '.join(names)}")

    return check


class InsightSpec(Node):
    """An insight's spec: what the control plane that writes it records, except that
    ``subscriptions`` (what readers walk to tell online from offline) is a list of objects."""

    _SUBSCRIPTIONS = List(Map(AnyValue()))

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if not isinstance(value, Mapping):
            errors.add(path, "must be an object")
            return
        if value.get("subscriptions") is not None:
            self._SUBSCRIPTIONS.check(value["subscriptions"], join(path, "subscriptions"), errors)
