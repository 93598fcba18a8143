"""Docs derived from code must match it: scripts/render_docs.py --check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_doc_tables_are_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_docs.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_every_registered_type_is_documented() -> None:
    from zonemesh.shared.resources import REGISTRY

    text = (ROOT / "docs" / "resources.md").read_text()
    missing = [t.name for t in REGISTRY if f"| {t.name} |" not in text]
    assert not missing, f"docs/resources.md lacks {missing}; run: python scripts/render_docs.py"
