"""Regenerate the checked-in Python code of proto/*.proto (kds.proto, dataplane.proto).

    python proto/generate.py            # writes proto/<name>_pb2.py, <name>_pb2.pyi, <name>_pb2_grpc.py
    python proto/generate.py --out DIR  # writes into DIR instead (the staleness test uses this)

A generated gRPC module imports ``<name>_pb2`` as a top-level module; it is rewritten to
``from zonemesh.proto import <name>_pb2`` so that it works inside the installed package.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ("kds", "dataplane")
OUTPUTS = tuple(f"{name}{suffix}" for name in PROTOS for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{HERE}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *(str(HERE / f"{name}.proto") for name in PROTOS),
        ]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    for name in PROTOS:
        grpc_module = out / f"{name}_pb2_grpc.py"
        text = grpc_module.read_text()
        text = re.sub(
            rf"^import {name}_pb2 as {name}__pb2$",
            f"from zonemesh.proto import {name}_pb2 as {name}__pb2",
            text,
            flags=re.M,
        )
        grpc_module.write_text(text)
    return [out / name for name in OUTPUTS]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
