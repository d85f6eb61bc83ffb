"""Check that the committed *_pb2 files are exactly what the pinned protoc generates.

A stale file means a .proto edit without regeneration, and a reformatted one means a tool
rewrote generated output. Either way the fix is `python scripts/generate_protos.py`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
SOURCE_ROOT = REPOSITORY_ROOT / "src"
GENERATOR_PATH = REPOSITORY_ROOT / "scripts" / "generate_protos.py"

GENERATED_FILES = [
    "tether/protocol/tether_pb2.py",
    "tether/protocol/tether_pb2.pyi",
    "tether/bus/envelope_pb2.py",
    "tether/bus/envelope_pb2.pyi",
]


def load_generator() -> ModuleType:
    """Import scripts/generate_protos.py, which is not part of the installed package."""
    spec = importlib.util.spec_from_file_location("generate_protos", GENERATOR_PATH)
    assert spec is not None, f"cannot load {GENERATOR_PATH}"
    assert spec.loader is not None, f"cannot load {GENERATOR_PATH}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def regenerated_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the generator once into a temporary folder and return that folder."""
    output_root = tmp_path_factory.mktemp("generated")
    load_generator().generate(output_root)
    return output_root


def test_generator_covers_every_proto() -> None:
    proto_files = sorted(path.relative_to(SOURCE_ROOT) for path in SOURCE_ROOT.rglob("*.proto"))

    assert [str(path) for path in proto_files] == sorted(load_generator().PROTO_FILES)


@pytest.mark.parametrize("relative_path", GENERATED_FILES)
def test_generated_file_up_to_date(regenerated_root: Path, relative_path: str) -> None:
    committed = (SOURCE_ROOT / relative_path).read_bytes()
    regenerated = (regenerated_root / relative_path).read_bytes()

    assert committed == regenerated, (
        f"src/{relative_path} differs from the output of the pinned protoc. "
        "Run `python scripts/generate_protos.py` and commit the result."
    )
