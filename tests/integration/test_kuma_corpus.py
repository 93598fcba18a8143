"""Kuma's documents, as Kuma's docs print them, apply unchanged to a real zonemesh control plane.

testdata/kuma_corpus/ holds one universal-format document per file, each taken from a page of
Kuma's docs (the comment on its first line names the page, and the file and line in
kumahq/kuma-website). Every one is applied, unchanged, with ``zmctl apply -f`` to a standalone
control plane process and must read back equal. testdata/kuma_corpus/refused/ holds the documents
of Kuma's docs that zonemesh refuses on purpose, each with the refusal it must give (``# Refused
by zonemesh: ...``): a feature not supported yet (refused, never stored and ignored), or, with a
``# Why: ...`` line, a document Kuma refuses too or one that could not take effect. Every type a
user can write has at least one document in the corpus, read from the registry, so a new type
without a document fails here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from zonemesh.shared.resources import REGISTRY, ResourceType
from zonemesh.shared.resources.codec import load_documents

from zonemesh.ctl.main import main as zmctl_main
from zonemesh.testing import ControlPlaneProcess

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).parent / "testdata" / "kuma_corpus"
REFUSED = CORPUS / "refused"
SOURCE = "# From Kuma's docs: https://kuma.io/docs/"
REFUSAL = "# Refused by zonemesh: "
# What a document carries besides its content; the control plane adds the times on read.
META = {"type", "name", "mesh", "labels", "creationTime", "modificationTime", "version"}


def document(path: Path) -> dict[str, Any]:
    docs = load_documents(path.read_text())
    assert len(docs) == 1 and isinstance(docs[0], dict), f"{path.name}: one document per file"
    return dict(docs[0])


def corpus_type(path: Path) -> ResourceType:
    return REGISTRY.get(document(path)["type"])


def applied_files() -> list[Path]:
    """The corpus in the order a user applies it: by the registry's order (meshes first), a Mesh
    with mTLS after those without, so that what follows finds mTLS on, as its page sets it up
    (a cross-mesh MeshGateway needs it)."""
    order = {rtype.name: index for index, rtype in enumerate(REGISTRY)}
    return sorted(CORPUS.glob("*.yaml"), key=lambda p: (order[corpus_type(p).name], "mtls" in document(p), p.name))


def refused_files() -> list[Path]:
    return sorted(REFUSED.glob("*.yaml"))


def refusal(path: Path) -> str:
    lines = [line for line in path.read_text().splitlines() if line.startswith(REFUSAL)]
    assert len(lines) == 1, f"{path.name}: one '{REFUSAL}<the refusal's words>' line"
    return lines[0].removeprefix(REFUSAL)


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(tmp_path_factory.mktemp("kuma-corpus") / "cp", args=["--store", "memory"])
    try:
        process.start(timeout=60)
        yield process
    finally:
        process.kill()


class Applied(NamedTuple):
    code: int
    out: str
    err: str


def zmctl_apply(
    cp: ControlPlaneProcess, path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Applied:
    """``zmctl --cp-address <cp> apply -f <path>`` through zmctl's entry point, in this process:
    one process per document would make most of this module's time on two shared cores."""
    monkeypatch.setenv("ZMCTL_CONFIG", os.devnull)  # no zmctl config: the flag's address, no token
    capsys.readouterr()
    code = zmctl_main(["--cp-address", cp.api, "apply", "-f", str(path)])
    out, err = capsys.readouterr()
    return Applied(code, out, err)


def stored(cp: ControlPlaneProcess, doc: dict[str, Any]) -> tuple[int, Any]:
    rtype = REGISTRY.get(doc["type"])
    return cp.get(rtype.item_path(doc["name"], doc.get("mesh", "")))


def test_every_document_names_its_kuma_docs_page() -> None:
    files = [*applied_files(), *refused_files()]
    assert files
    for path in files:
        assert path.read_text().startswith(SOURCE), f"{path.name}: first line must be '{SOURCE}...'"


def test_every_refusal_is_a_feature_not_supported_yet_or_says_why() -> None:
    for path in refused_files():
        if "not supported yet" not in refusal(path):
            assert "\n# Why: " in path.read_text(), f"{path.name}: refused, but not as not supported yet: say why"


def test_every_type_a_user_writes_has_a_corpus_document() -> None:
    """From the registry: a type written only by control planes (insights) has none; a targetRef
    policy type not supported yet has one among the refused; every other type has one applied, or
    one refused whose file says why (Zone: the one Kuma docs document of it wraps it in ``spec:``)."""
    applied = {corpus_type(p).name for p in applied_files()}
    refused = {corpus_type(p).name for p in refused_files()}
    missing = []
    for rtype in REGISTRY.filter(lambda t: not t.system):
        if rtype.support is not None and not rtype.support.supported:
            if rtype.name not in refused:
                missing.append(f"{rtype.name} (not supported yet: a document of it in refused/)")
        elif rtype.name not in applied | refused:
            missing.append(rtype.name)
    assert not missing, f"no Kuma docs document in {CORPUS} for: {', '.join(missing)}"
    for path in refused_files():
        rtype = corpus_type(path)
        supported = rtype.support is None or rtype.support.supported
        if supported and rtype.name not in applied:
            assert "\n# Why: " in path.read_text(), f"{path.name}: the only document of {rtype.name}: say why"


def test_kuma_documents_apply_unchanged_and_read_back_equal(
    cp: ControlPlaneProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    files = applied_files()
    # The test's environment, not the documents: a mesh that documents live in but no corpus
    # document creates (a page's "my-mesh") is created first, with nothing but its name.
    created_by_corpus = {document(p)["name"] for p in files if corpus_type(p).name == "Mesh"}
    for mesh in sorted({document(p).get("mesh") for p in files} - {None, *created_by_corpus}):
        assert cp.put(f"/meshes/{mesh}", {"type": "Mesh", "name": mesh})[0] in (200, 201)

    # One after the other, each read back at once: two pages may show documents of the same name.
    for path in files:
        doc = document(path)
        if doc["type"] == "Mesh":
            # Each page's Mesh as the first write of that mesh: pages show Mesh "default" with
            # different mTLS backends, and an enabled backend is never swapped in place.
            assert cp.delete(f"/meshes/{doc['name']}")[0] in (200, 404)
        run = zmctl_apply(cp, path, capsys, monkeypatch)
        assert run.code == 0, f"{path.name}: zmctl apply -f failed:\n{run.err}"
        status, body = stored(cp, doc)
        assert status == 200, f"{path.name}: not stored after apply ({status}): {body}"
        # Every field the document gives reads back as given. A control plane may add what it
        # computes itself (a ZoneIngress's availableServices), as Kuma's does.
        content = {k: v for k, v in doc.items() if k not in META}
        assert {k: v for k, v in body.items() if k in content} == content, f"{path.name}: reads back changed"


@pytest.mark.parametrize("path", refused_files(), ids=lambda p: p.name)
def test_refused_kuma_documents_say_why_and_store_nothing(
    cp: ControlPlaneProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, path: Path
) -> None:
    doc = document(path)
    before = stored(cp, doc)  # another page may show an accepted document of the same name
    run = zmctl_apply(cp, path, capsys, monkeypatch)
    assert run.code != 0, f"{path.name}: applied, but zonemesh does not take it:\n{run.out}"
    assert refusal(path) in run.err, run.err
    assert "Traceback" not in run.err, run.err
    after = stored(cp, doc)
    assert after[0] == before[0], f"{path.name}: refused, yet stored"
    if before[0] == 200:
        assert after == before, f"{path.name}: refused, yet it changed what was stored"
