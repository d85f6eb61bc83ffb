"""Regenerate the Python code for tether's .proto files.

Run from the repository root after editing a .proto file:

    python scripts/generate_protos.py

The output is committed. tests/test_generated_code.py runs the same generator into a
temporary folder and fails when the committed files differ, so the pinned grpcio-tools
version in pyproject.toml decides the exact output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent / "src"
PROTO_FILES = ("tether/protocol/tether.proto", "tether/bus/envelope.proto")


def generate(output_root: Path) -> None:
    """Write *_pb2.py and *_pb2.pyi for every .proto file under output_root."""
    from grpc_tools import protoc  # test dependency, imported late so --help works without it

    arguments = [
        "protoc",
        f"--proto_path={SOURCE_ROOT}",
        f"--python_out={output_root}",
        f"--pyi_out={output_root}",
        *(str(SOURCE_ROOT / name) for name in PROTO_FILES),
    ]
    status = protoc.main(arguments)
    if status != 0:
        raise RuntimeError(f"protoc failed with exit status {status}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=SOURCE_ROOT, help="root folder to write to")
    generate(parser.parse_args().output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
