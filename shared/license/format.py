"""The license file (seed 000's format) and its signature.

    {"license": {"version": 1, "signature": "<base64>", "payload": {"customer": ..., "license_creation_date": ...,
     "product_subscription": ..., "dataplanes": "5", "license_expiration_date": ..., "license_key": ...}}}

The signature is Ed25519 over the *canonical* payload: the payload object as JSON with sorted
keys, no insignificant whitespace, UTF-8 (`canonical_payload`). So a reformatted file still
verifies, while any change to a payload key or value does not. Everything outside the payload
that is not signed is checked strictly instead: unknown or duplicate fields are refused, the
version must be 1, and the signature must be canonical base64 (a base64 text whose unused low
bits were changed would otherwise decode to the same signature).

Optional signed field beyond the seed: ``enforcement`` = ``warn`` (default for an issued license:
proxies over the limit still join, with a warning) or ``strict`` (connections over the limit are
refused, as with the demo license).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

VERSION = 1
ENFORCEMENTS = ("warn", "strict")
REQUIRED = (
    "customer",
    "license_creation_date",
    "product_subscription",
    "dataplanes",
    "license_expiration_date",
    "license_key",
)
DEMO_DATAPLANES = 5
DEMO_DAYS = 30
WARN_BEFORE = timedelta(days=30)

_DATE = re.compile(r"([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})")
_COUNT = re.compile(r"[0-9]{1,18}")  # ASCII digits: "²".isdigit() is True and int("²") raises


class LicenseError(ValueError):
    """The license cannot be used; the message says exactly why."""


@dataclass(frozen=True)
class License:
    customer: str
    product: str
    dataplanes: int
    expires: datetime
    created: date | None = None
    license_key: str = ""
    demo: bool = False
    strict: bool = False
    source: str = ""  # where it came from: a path, "inline", "api", "demo"
    text: str = ""  # the file as given (empty for the demo license)

    def expired(self, now: datetime) -> bool:
        return now >= self.expires

    def remaining(self, now: datetime) -> timedelta:
        return self.expires - now


def canonical_payload(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise LicenseError(f"field {key!r} appears twice")
        out[key] = value
    return out


def parse_date(text: str, field: str) -> datetime:
    """``YYYY-M-D`` (the seed's form; the day starts at 00:00 UTC) or an RFC 3339 time with a zone."""
    match = _DATE.fullmatch(text)
    try:
        if match:
            year, month, day = (int(g) for g in match.groups())
            return datetime(year, month, day, tzinfo=UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise LicenseError(f"payload.{field}: {text!r} is not a date: {exc}") from None
    if parsed.tzinfo is None:
        raise LicenseError(f"payload.{field}: {text!r} has no time zone (use YYYY-MM-DD or ...Z)")
    return parsed.astimezone(UTC)


def format_expiry(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _object(value: Any, where: str, allowed: Iterable[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LicenseError(f"{where} must be a JSON object")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise LicenseError(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}: the file was altered")
    return value


def _decode_signature(text: Any) -> bytes:
    if not isinstance(text, str) or not text:
        raise LicenseError("license.signature must be a non-empty base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise LicenseError("license.signature is not valid base64: the file was altered or truncated") from None
    if base64.b64encode(raw).decode() != text:
        raise LicenseError("license.signature is not in canonical base64 form: the file was altered")
    return raw


def parse(text: str | bytes, trusted: Iterable[Ed25519PublicKey], source: str = "") -> License:
    """Parse and verify a license file. Raises LicenseError saying exactly what is wrong.

    Expiry is not checked here (see `check_expiry`): a running control plane keeps an expired one.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LicenseError(f"the license is not UTF-8 text (byte {exc.start}): the file was altered") from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise LicenseError(
            f"the license is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:  # integers of over 4300 digits, nesting ~1000 deep
        raise LicenseError(f"the license is not valid JSON: {str(exc)[:200] or 'nested too deeply'}") from None
    top = _object(doc, "the license file", ("license",))
    if "license" not in top:
        raise LicenseError('the license file has no "license" object')
    body = _object(top["license"], "license", ("version", "signature", "payload"))
    for name in ("version", "signature", "payload"):
        if name not in body:
            raise LicenseError(f"license.{name} is missing")
    if body["version"] != VERSION or isinstance(body["version"], bool):
        raise LicenseError(f"license.version {body['version']!r} is not supported (this control plane reads {VERSION})")
    signature = _decode_signature(body["signature"])
    payload = body["payload"]
    if not isinstance(payload, dict):
        raise LicenseError("license.payload must be a JSON object")
    keys = list(trusted)
    if not keys:
        raise LicenseError("no trusted license issuer key is configured")
    message = canonical_payload(payload)
    for key in keys:
        try:
            key.verify(signature, message)
            break
        except InvalidSignature:
            continue
    else:
        raise LicenseError(
            "the license signature does not match its payload: the file was altered, "
            "or it was signed by an issuer whose key is not trusted (see license_trusted_keys)"
        )
    return _from_payload(payload, source, text)


def _from_payload(payload: Mapping[str, Any], source: str, text: str) -> License:
    missing = [name for name in REQUIRED if name not in payload]
    if missing:
        raise LicenseError(f"license.payload lacks {', '.join(missing)}")
    for name in REQUIRED:
        if name != "dataplanes" and not isinstance(payload[name], str):
            raise LicenseError(f"license.payload.{name} must be a string")
    raw_count = payload["dataplanes"]
    if isinstance(raw_count, bool) or not isinstance(raw_count, int | str) or not _COUNT.fullmatch(str(raw_count)):
        raise LicenseError(f"license.payload.dataplanes must be a whole number, got {raw_count!r}")
    enforcement = payload.get("enforcement", "warn")
    if enforcement not in ENFORCEMENTS:
        raise LicenseError(f"license.payload.enforcement must be one of {', '.join(ENFORCEMENTS)}")
    return License(
        customer=payload["customer"],
        product=payload["product_subscription"],
        dataplanes=int(raw_count),
        expires=parse_date(payload["license_expiration_date"], "license_expiration_date"),
        created=parse_date(payload["license_creation_date"], "license_creation_date").date(),
        license_key=payload["license_key"],
        strict=enforcement == "strict",
        source=source,
        text=text,
    )


def check_expiry(lic: License, now: datetime) -> None:
    """Raise when the license has expired: the reason global refuses to start."""
    if lic.expired(now):
        what = "demo license" if lic.demo else "license"
        raise LicenseError(
            f"the {what} expired at {format_expiry(lic.expires)}"
            + ("" if lic.demo else f" (customer {lic.customer!r}, key {lic.license_key!r})")
            + ": install a new license (--license-path, ZONEMESH_LICENSE_PATH or ZONEMESH_LICENSE_INLINE)"
        )


def demo_license(first_start: datetime) -> License:
    """The pre-bundled license: 5 proxies, strict, 30 days from the first start of this control plane."""
    return License(
        customer="demo",
        product="zonemesh",
        dataplanes=DEMO_DATAPLANES,
        expires=first_start + timedelta(days=DEMO_DAYS),
        created=first_start.date(),
        demo=True,
        strict=True,
        source="demo",
    )


def issue(
    private_key: Ed25519PrivateKey,
    *,
    customer: str,
    dataplanes: int,
    expires: str,
    license_key: str,
    created: str | None = None,
    product: str = "zonemesh",
    enforcement: str = "warn",
) -> str:
    """Sign a license and return the file text (pretty JSON, as in seed 000)."""
    if enforcement not in ENFORCEMENTS:
        raise LicenseError(f"enforcement must be one of {', '.join(ENFORCEMENTS)}")
    if dataplanes < 0:
        raise LicenseError("dataplanes must not be negative")
    created = created or datetime.now(UTC).date().isoformat()
    parse_date(expires, "license_expiration_date")
    parse_date(created, "license_creation_date")
    payload: dict[str, Any] = {
        "customer": customer,
        "license_creation_date": created,
        "product_subscription": product,
        "dataplanes": str(dataplanes),
        "license_expiration_date": expires,
        "license_key": license_key,
    }
    if enforcement != "warn":
        payload["enforcement"] = enforcement
    signature = base64.b64encode(private_key.sign(canonical_payload(payload))).decode()
    doc = {"license": {"version": VERSION, "signature": signature, "payload": payload}}
    return json.dumps(doc, indent=2) + "\n"
