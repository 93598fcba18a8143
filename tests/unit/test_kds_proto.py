"""The checked-in KDS code is what proto/kds.proto generates, and it imports inside the package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_generator() -> object:
    spec = importlib.util.spec_from_file_location("kds_generate", ROOT / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    generator = _load_generator()
    for path in generator.generate(tmp_path):  # type: ignore[attr-defined]
        checked_in = ROOT / "proto" / path.name
        assert checked_in.exists(), f"{checked_in} is missing: run python proto/generate.py"
        assert checked_in.read_text() == path.read_text(), (
            f"{checked_in.name} is stale: proto/kds.proto changed; run python proto/generate.py and commit"
        )


def test_generated_code_imports_from_the_package() -> None:
    from zonemesh.proto import kds_pb2, kds_pb2_grpc

    msg = kds_pb2.Message(changes=kds_pb2.Changes(nonce="n", type="Mesh"))
    assert kds_pb2.Message.FromString(msg.SerializeToString()).changes.nonce == "n"
    assert hasattr(kds_pb2_grpc, "KDSStub")
