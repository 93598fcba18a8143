"""A small declarative schema language for resource specs.

Every resource type describes its spec with these nodes; checking a document walks the
schema and collects *every* problem as a (field path, reason) pair, so the API can report
all of them at once in Kuma's `invalid_parameters` format. Unknown fields are errors.

Paths look like Kuma's: ``spec.to[0].default.http.requestTimeout``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason}


# Where the fields of a ValidationError come from (Kuma's error schema, ``invalid_parameters[].source``).
SOURCES = ("body", "query", "header", "path")


class ValidationError(Exception):
    """Raised with every problem found in a document, never just the first.

    ``source`` says where the fields are: the request ``body`` (documents, token requests), its
    ``query`` (page size, filters), a ``header`` (If-Match) or the URL ``path`` (names)."""

    def __init__(
        self, errors: Iterable[FieldError], title: str = "Resource is not valid", source: str = "body"
    ) -> None:
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
        self.errors = list(errors)
        self.title = title
        self.source = source
        super().__init__(f"{title}: " + "; ".join(f"{e.field}: {e.reason}" for e in self.errors))


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Errors(list[FieldError]):
    """An error collector passed down the walk."""

    def add(self, path: str, reason: str) -> None:
        self.append(FieldError(path or "<root>", reason))


class Node:
    """A schema node. Subclasses check one JSON shape."""

    def check(self, value: Any, path: str, errors: Errors) -> None:
        raise NotImplementedError


@dataclass
class AnyValue(Node):
    def check(self, value: Any, path: str, errors: Errors) -> None:
        return None


@dataclass
class Str(Node):
    min_len: int = 0
    max_len: int | None = None
    pattern: str | None = None
    pattern_reason: str = "has an invalid format"
    choices: tuple[str, ...] | None = None

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if not isinstance(value, str):
            errors.add(path, "must be a string")
            return
        if self.choices is not None and value not in self.choices:
            errors.add(path, f"must be one of: {', '.join(self.choices)}")
            return
        if len(value) < self.min_len:
            errors.add(
                path, "must not be empty" if self.min_len == 1 else f"must have at least {self.min_len} characters"
            )
        if self.max_len is not None and len(value) > self.max_len:
            errors.add(path, f"must have at most {self.max_len} characters")
        # re.ASCII: "\d" must not take "٣" (Arabic-Indic three), which float() and int() then accept.
        if self.pattern is not None and value and not re.fullmatch(self.pattern, value, re.ASCII):
            errors.add(path, self.pattern_reason)


def Enum(*choices: str) -> Str:
    return Str(choices=tuple(choices))


@dataclass
class Int(Node):
    min: int | None = None
    max: int | None = None

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.add(path, "must be an integer")
            return
        if self.min is not None and value < self.min:
            errors.add(path, f"must be greater than or equal to {self.min}")
        if self.max is not None and value > self.max:
            errors.add(path, f"must be less than or equal to {self.max}")


@dataclass
class Number(Node):
    min: float | None = None
    max: float | None = None

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.add(path, "must be a number")
            return
        if self.min is not None and value < self.min:
            errors.add(path, f"must be greater than or equal to {self.min}")
        if self.max is not None and value > self.max:
            errors.add(path, f"must be less than or equal to {self.max}")


@dataclass
class Bool(Node):
    def check(self, value: Any, path: str, errors: Errors) -> None:
        if not isinstance(value, bool):
            errors.add(path, "must be a boolean")


_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|µs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# Go's time.Duration is an int64 of nanoseconds (about 292 years): Kuma refuses longer durations,
# and Envoy's protobuf Duration could not carry "1e400h" (float infinity) at all.
MAX_DURATION_SECONDS = (2**63 - 1) / 1e9


@functools.lru_cache(maxsize=1024)
def parse_duration(text: str) -> float:
    """Parse a Go duration ("1h30m", "500ms", "0s") into seconds. Raises ValueError.

    Cached: generation parses the same few policy durations for every proxy it regenerates."""
    if text == "0":
        return 0.0
    if not _DURATION.fullmatch(text):
        raise ValueError(f"invalid duration {text!r}")
    seconds = sum(float(num) * _UNIT_SECONDS[unit] for num, unit in _DURATION_PART.findall(text))
    if not seconds <= MAX_DURATION_SECONDS:  # also refuses inf and nan
        raise ValueError(f"duration {text!r} is longer than Go's maximum (2562047h47m16.854775807s)")
    return seconds


# Kuma's Mesh writes certificate lifetimes (``dpCert.rotation.expiration``, a builtin CA's
# ``caCert.expiration``) with its own units too: a whole number of days, weeks or years ("1d",
# "10y"; Kuma's mesh.ParseDuration, where a year is 365 days).
_CERT_DURATION = re.compile(r"([0-9]+)(d|w|y)")
_CERT_UNIT_SECONDS = {"d": 86400.0, "w": 7 * 86400.0, "y": 365 * 86400.0}


def parse_cert_duration(text: str) -> float:
    """Seconds in a Mesh certificate lifetime: a Go duration ("8760h") or Kuma's "1d", "2w", "10y".
    Raises ValueError."""
    match = _CERT_DURATION.fullmatch(text)
    if match is None:
        return parse_duration(text)
    seconds = int(match.group(1)) * _CERT_UNIT_SECONDS[match.group(2)]
    if not seconds <= MAX_DURATION_SECONDS:
        raise ValueError(f"duration {text!r} is longer than Go's maximum (2562047h47m16.854775807s)")
    return seconds


@dataclass
class Duration(Node):
    """A Go-style duration string, as Kuma policies use them (e.g. ``15s``, ``500ms``, ``1h``).
    ``cert``: a Mesh certificate lifetime, which Kuma also takes in days, weeks or years."""

    positive: bool = False
    cert: bool = False

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if not isinstance(value, str):
            errors.add(path, 'must be a duration string such as "5s" or "500ms"')
            return
        try:
            seconds = parse_cert_duration(value) if self.cert else parse_duration(value)
        except ValueError:
            units = "ns, us, ms, s, m, h, or a whole number of d, w or y" if self.cert else "ns, us, ms, s, m or h"
            errors.add(path, f'invalid duration "{value}": use a number with a unit {units}, e.g. "5s"')
            return
        if self.positive and seconds <= 0:
            errors.add(path, "must be greater than zero")
        elif 0 < seconds < 1e-9:
            # Go (Kuma) and Envoy count durations in nanoseconds: this one would become 0.
            errors.add(path, f'invalid duration "{value}": shorter than 1ns, the smallest duration there is')


@dataclass
class List(Node):
    item: Node
    min_items: int = 0
    max_items: int | None = None

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if not isinstance(value, list):
            errors.add(path, "must be a list")
            return
        if len(value) < self.min_items:
            errors.add(
                path, "must not be empty" if self.min_items == 1 else f"must have at least {self.min_items} items"
            )
        if self.max_items is not None and len(value) > self.max_items:
            errors.add(path, f"must have at most {self.max_items} items")
        for i, item in enumerate(value):
            self.item.check(item, f"{path}[{i}]", errors)


@dataclass
class Map(Node):
    value: Node
    key: Str = field(default_factory=Str)
    min_items: int = 0

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if not isinstance(value, dict):
            errors.add(path, "must be an object")
            return
        if len(value) < self.min_items:
            errors.add(path, "must not be empty")
        for k, v in value.items():
            self.key.check(k, f"{path}[{k}]", errors)
            self.value.check(v, f'{path}["{k}"]', errors)


Check = Callable[[Mapping[str, Any], str, Errors], None]


@dataclass
class Obj(Node):
    """A JSON object with known fields. Unknown fields are rejected.

    ``checks`` run after the field walk, for rules across fields (one-of, at-least-one, ...);
    they receive the object, its path and the error collector.
    """

    fields: dict[str, Node]
    required: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()

    def check(self, value: Any, path: str, errors: Errors) -> None:
        if not isinstance(value, dict):
            errors.add(path, "must be an object")
            return
        for key in value:
            if key not in self.fields:
                errors.add(join(path, str(key)), "unknown field")
        for key in self.required:
            if value.get(key) is None:
                errors.add(join(path, key), "must be defined")
        for key, node in self.fields.items():
            if key in value and value[key] is not None:
                node.check(value[key], join(path, key), errors)
        for extra in self.checks:
            extra(value, path, errors)


@dataclass
class Union(Node):
    """The value must match one of the options (e.g. an int or a percentage string)."""

    options: tuple[Node, ...]
    reason: str

    def check(self, value: Any, path: str, errors: Errors) -> None:
        for option in self.options:
            trial = Errors()
            option.check(value, path, trial)
            if not trial:
                return
        errors.add(path, self.reason)


def one_of(*names: str) -> Check:
    """At most one of the fields may be set."""

    def check(value: Mapping[str, Any], path: str, errors: Errors) -> None:
        present = [n for n in names if value.get(n) is not None]
        if len(present) > 1:
            errors.add(path, f"only one of {', '.join(names)} may be set")

    return check


def at_least_one(*names: str) -> Check:
    def check(value: Mapping[str, Any], path: str, errors: Errors) -> None:
        if not any(value.get(n) is not None for n in names):
            errors.add(path, f"must have at least one of: {', '.join(names)}")

    return check


def validate(node: Node, value: Any, path: str = "") -> list[FieldError]:
    errors = Errors()
    node.check(value, path, errors)
    return list(errors)


# --- names ------------------------------------------------------------------------------
#
# One rule for every name that enters a control plane: the API body and URL path (percent-
# decoded), the mesh segment of URLs, gRPC Register/Unregister, the xDS node id, KDS, zmctl.
# Names become parts of keys ("Type/mesh/name" in KDS, "mesh/name" in the xDS cache, etcd keys)
# and of Envoy node ids ("mesh.name"): a '/' or a space in one would break them.


@dataclass(frozen=True)
class NameRule:
    """What a name of some kind may look like: a full-match pattern, a length bound and the
    reason a refused name is given."""

    pattern: str
    max_len: int
    reason: str

    def errors(self, value: Any, field: str) -> list[FieldError]:
        if not isinstance(value, str):
            return [FieldError(field, "must be a string")]
        if not value:
            return [FieldError(field, "must not be empty")]
        if len(value) > self.max_len:
            return [FieldError(field, f"must have at most {self.max_len} characters")]
        # re.ASCII: the classes are spelled out, but say it: no Unicode letter or digit gets in.
        if not re.fullmatch(self.pattern, value, re.ASCII):
            return [FieldError(field, self.reason)]
        return []


# Kuma's rule for resource names (pkg/core/resources/apis/mesh/meta_validator.go): a lowercase
# RFC 1123 subdomain of at most 253 characters. No '_' (Kuma refuses it since 2.5), no "..".
RESOURCE_NAME = NameRule(
    pattern=r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*",
    max_len=253,
    reason=(
        "must consist of lower case alphanumeric characters, '-' or '.' (a lowercase RFC 1123 subdomain), "
        "and each dot-separated part must start and end with an alphanumeric character"
    ),
)

# Zones and meshes: an RFC 1123 label. A zone name is a DNS label in Kuma; a mesh name must hold
# no dot because an Envoy node id is "<mesh>.<name>" and is split at its first dot (Kuma's form).
DNS_LABEL = NameRule(
    pattern=r"[a-z0-9]([-a-z0-9]*[a-z0-9])?",
    max_len=63,
    reason=(
        "must consist of lower case alphanumeric characters or '-' (a lowercase RFC 1123 label, no '.'), "
        "and must start and end with an alphanumeric character"
    ),
)
MESH_NAME = DNS_LABEL
ZONE_NAME = DNS_LABEL

# What zonemesh accepted before it took Kuma's rule ('_' allowed, dots in mesh names). Only a
# DELETE takes it, so that a resource stored under such a name can still be removed (Kuma let its
# old names be updated and deleted the same way while it tightened its rule).
EARLIER_NAME = NameRule(
    pattern=r"[a-z0-9]([-a-z0-9._]*[a-z0-9])?",
    max_len=253,
    reason=(
        "must consist of lower case alphanumeric characters, '-', '.' or '_', "
        "and start and end with an alphanumeric character"
    ),
)


def check_name(value: Any, field: str = "name", rule: NameRule = RESOURCE_NAME) -> list[FieldError]:
    """Every problem with ``value`` as a name (none: an empty list). ``field`` names it in the
    errors, as Kuma's invalid_parameters do ("name", "mesh", "spec.zone", ...)."""
    return rule.errors(value, field)


@dataclass
class NameField(Node):
    """A schema field holding a name (of a mesh, a backend, ...), checked by ``rule``."""

    rule: NameRule = RESOURCE_NAME

    def check(self, value: Any, path: str, errors: Errors) -> None:
        errors.extend(self.rule.errors(value, path or "<root>"))


Name = NameField(RESOURCE_NAME)
MeshName = NameField(MESH_NAME)
