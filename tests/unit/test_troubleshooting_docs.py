"""docs/troubleshooting.md quotes the messages users see; each quoted message must still be one the
code emits. The first cell of every table row holds the message: each of its literal parts (what is
left after removing `<placeholders>`, `...`, quoted values and ': ' joins) must occur in the source."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "troubleshooting.md"
FOLDERS = ("shared", "global_cp", "zone_cp", "zonemesh")
# Messages written by gRPC, OpenSSL, the OS or Envoy, not by zonemesh: not looked up in the source.
FOREIGN = (
    "failed to connect to all addresses",  # gRPC, global unreachable
    "Stream removed",  # gRPC, the peer went away mid-stream
    "Handshake read failed",  # gRPC, the peer closed during the TLS handshake
    "address already in use",  # the OS
    "Connection refused",  # the OS, via gRPC or Python
    "Not enough segments",  # PyJWT
    "upstream connect error",  # Envoy
    "no healthy upstream",  # Envoy, a cluster without a usable endpoint
    "RBAC: access denied",  # Envoy's RBAC filter
)
# Placeholders, elisions, values the code fills in (repr'd or quoted), and the ': ' between the
# layers of a message (a wrapper's prefix and the wrapped reason are written in different places).
VARIABLE = re.compile(r"<[^>]*>|\.\.\.|'[^']*'|\"[^\"]*\"|: |\(exit \d\)|^\d{3} ")
MIN_PART = 4
# The zone shows a refused stream as "<gRPC status name>: <details>".
GRPC_CODES = {code.name for code in grpc.StatusCode}


def source_text() -> str:
    """Every string literal of the code, with implicit concatenations joined (as the AST has them)
    and the literal parts of f-strings: messages are split over lines in the source."""
    strings = []
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    strings.append(node.value)
    return "\n".join(strings)


def quoted_messages(text: str) -> list[str]:
    messages = []
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("|---"):
            continue
        first = line.strip("|").split(" | ")[0]
        messages += re.findall(r"`([^`]+)`", first)
    return messages


def literal_parts(message: str) -> list[str]:
    parts = [p.strip(" ;,.()") for p in VARIABLE.split(message)]
    return [p for p in parts if len(p) >= MIN_PART and p not in GRPC_CODES]


def missing_parts(text: str, source: str) -> list[tuple[str, str]]:
    missing = []
    for message in quoted_messages(text):
        if any(f in message for f in FOREIGN):
            continue
        missing += [(message, part) for part in literal_parts(message) if part not in source]
    return missing


def test_quoted_messages_are_in_the_code() -> None:
    text = PAGE.read_text()
    assert len(quoted_messages(text)) >= 30, "the table reader found too few messages"
    missing = missing_parts(text, source_text())
    assert not missing, "docs/troubleshooting.md quotes text the code no longer emits:\n" + "\n".join(
        f"  {part!r} (in {message!r})" for message, part in missing
    )


def test_foreign_messages_are_still_quoted() -> None:
    text = PAGE.read_text()
    unused = [f for f in FOREIGN if f not in text]
    assert not unused, f"FOREIGN lists messages the page no longer quotes: {unused}"


def test_a_reworded_message_is_caught() -> None:
    text = PAGE.read_text()
    assert "Zone CP is still connected" in text
    drifted = text.replace("Zone CP is still connected", "Zone CP is connected still")
    assert any("Zone CP is connected still" in part for _, part in missing_parts(drifted, source_text()))
