"""Shell blocks of the docs that tests run exactly as written: a block is the first fenced ``sh``
block after a ``<!-- tested: NAME -->`` marker."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
README = DOCS.parent / "README.md"


def block(page: str | Path, name: str) -> str:
    """``page``: a file name in docs/, or a path (``README``)."""
    text = (page if isinstance(page, Path) else DOCS / page).read_text()
    marker = f"<!-- tested: {name} -->"
    if marker not in text:
        raise AssertionError(f"docs/{page} has no {marker}")
    match = re.search(r"```sh\n(.*?)```", text[text.index(marker) :], re.DOTALL)
    if match is None:
        raise AssertionError(f"docs/{page}: no ```sh block after {marker}")
    return match.group(1)
