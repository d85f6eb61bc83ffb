"""A short, bounded run of the atheris harness of the frame decoders (fuzz/fuzz_decoders.py).

The harness runs in a subprocess because libFuzzer owns the process it runs in. Its corpus and
any crash input go to a temporary directory, so the run leaves no files in the repository.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SCALE

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "fuzz" / "fuzz_decoders.py"

FUZZ_SECONDS = 15  # libFuzzer's -max_total_time, after which the harness stops by itself
# Startup and the final report add a few seconds, and a slow machine gets four times the run.
RUN_TIMEOUT = 4 * FUZZ_SECONDS * SCALE

requires_atheris = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed; run `.venv/bin/pip install atheris` "
    "(or install the test extras) to enable the fuzz smoke test",
)


def describe_crashes(artifacts: Path) -> str:
    """Return each saved crash input as hex, for the failure message."""
    crashes = sorted(artifacts.iterdir())
    return "\n".join(f"{path.name}: {path.read_bytes().hex()}" for path in crashes)


@requires_atheris
def test_fuzz_harness_short_run(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"  # empty: the harness seeds it
    artifacts = tmp_path / "artifacts"
    corpus.mkdir()
    artifacts.mkdir()

    result = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            f"-max_total_time={FUZZ_SECONDS}",
            f"-artifact_prefix={artifacts}/",
            "-print_final_stats=1",
            str(corpus),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )

    report = result.stderr[-4000:]
    assert result.returncode == 0, f"fuzzer failed:\n{report}\n{describe_crashes(artifacts)}"
    assert not any(artifacts.iterdir()), f"crash inputs saved:\n{describe_crashes(artifacts)}"
    executed = re.search(r"stat::number_of_executed_units:\s*(\d+)", result.stderr)
    assert executed is not None, f"no final statistics in the fuzzer output:\n{report}"
    assert int(executed.group(1)) > 1000, f"too few inputs executed:\n{report}"


def test_fuzz_harness_passes_ruff() -> None:
    # The static checks lint src, tests, scripts and bench, so fuzz/ is linted here.
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.fail(f"ruff is not installed next to {sys.executable}; install the test extras")

    result = subprocess.run(
        [ruff, "check", "fuzz"], cwd=ROOT, capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
