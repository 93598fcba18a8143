"""`zmctl license` offline commands, run exactly as docs/license.md shows them (as real subprocesses)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

from zonemesh.spawn import python_module

ROOT = Path(__file__).resolve().parents[2]


def doc_commands() -> list[str]:
    text = (ROOT / "docs" / "license.md").read_text()
    block = re.search(r"<!-- license-commands -->\n```sh\n(.*?)```\n<!-- end license-commands -->", text, re.S)
    assert block, "docs/license.md lost its license-commands block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def zmctl(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(python_module("zonemesh.ctl", *args), cwd=cwd, capture_output=True, text=True, timeout=60)


def test_documented_commands_work_as_written(tmp_path: Path) -> None:
    outputs = []
    for line in doc_commands():
        argv = shlex.split(line)
        assert argv[0] == "zmctl", line
        proc = zmctl(tmp_path, *argv[1:])
        assert proc.returncode == 0, (line, proc.stderr)
        outputs.append(proc.stdout)
    assert (tmp_path / "issuer.key").stat().st_mode & 0o777 == 0o600
    doc = json.loads((tmp_path / "license.json").read_text())
    assert doc["license"]["payload"]["dataplanes"] == "20"
    assert "valid license for 'acme': 20 data plane proxies" in outputs[2]
    shown = json.loads(outputs[3])
    assert shown["allowedDataplaneProxies"] == 20 and shown["enforcement"] == "warn" and not shown["expired"]


def test_verify_refuses_altered_untrusted_and_expired(tmp_path: Path) -> None:
    assert zmctl(tmp_path, "license", "keygen", "--private-key", "k", "--public-key", "k.pub").returncode == 0
    again = zmctl(tmp_path, "license", "keygen", "--private-key", "k", "--public-key", "k.pub")
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    issue = ["license", "issue", "--private-key", "k", "--customer", "c", "--dataplanes", "3"]
    assert zmctl(tmp_path, *issue, "--expires", "2099-01-01", "-o", "ok.json").returncode == 0
    assert zmctl(tmp_path, *issue, "--expires", "2020-01-01", "-o", "old.json").returncode == 0
    text = (tmp_path / "ok.json").read_text()
    (tmp_path / "altered.json").write_text(text.replace('"3"', '"4"'))

    cases = {
        "altered.json": "the license signature does not match its payload",
        "old.json": "the license expired at 2020-01-01T00:00:00Z",
        "missing.json": "cannot read license file missing.json",
    }
    for name, reason in cases.items():
        proc = zmctl(tmp_path, "license", "verify", "-f", name, "--trusted-key", "k.pub")
        assert proc.returncode == 1 and reason in proc.stderr, (name, proc.stderr)
    untrusted = zmctl(tmp_path, "license", "verify", "-f", "ok.json")
    assert untrusted.returncode == 1 and "not trusted" in untrusted.stderr
    bad_count = zmctl(tmp_path, *issue[:-1], "-1", "--expires", "2099-01-01")
    assert bad_count.returncode == 2 and "--dataplanes must be 0 or more" in bad_count.stderr
