"""`tether bench ... --profile`: sample the Python server processes with py-spy during a run.

py-spy (`pip install py-spy`, part of the `bench` extra) attaches to a running process by its
PID and reads its Python stacks from outside, so the server needs no change. It takes 200
samples per second with `--nonblocking`, which does not pause the server for each sample. A
stack may then be read while it changes: py-spy drops it and counts an error, or keeps the part
it could read. It writes "collapsed stacks", one line per distinct stack: `frame;frame;...
count`. Only running stacks are sampled, so the counts show where the CPU time went. Native
code (uvloop, sqlite3, the kernel's work in a system call) is charged to the Python frame that
called it.

`summarize` turns such a file into the functions with the most samples, by self time (the
innermost frame) and inclusive time (anywhere on the stack).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tether.bench.servers import stop_child

__all__ = ["Profiler", "find_py_spy", "summarize"]

SAMPLES_PER_SECOND = 200
_TOP = 20  # functions listed per summary


def find_py_spy() -> str | None:
    """Return the py-spy program beside this Python, else the one on PATH, else None."""
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")


class Profiler:
    """One py-spy process recording one server process into a collapsed-stacks file."""

    def __init__(self, pid: int, output: Path) -> None:
        py_spy = find_py_spy()
        if py_spy is None:
            raise FileNotFoundError("--profile needs py-spy; install it with `pip install py-spy`")
        self.output = output
        self.log_path = output.with_suffix(".log")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--format", "raw", "--function",
             "--nonblocking", "--rate", str(SAMPLES_PER_SECOND), "--output", str(output)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            start_new_session=True,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop recording with SIGINT, on which py-spy writes its file, and wait for it."""
        stop_child(self.popen, signal.SIGINT, 30.0)
        self._log.close()


def summarize(path: Path, top: int = _TOP) -> dict[str, Any]:
    """Return the samples of a collapsed-stacks file and its top functions.

    `self` and `inclusive` list [function, percent of samples], highest first; a function that
    appears several times on one stack (recursion) counts once for inclusive time.
    """
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_time[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(n / total * 100, 1)] for name, n in counter.most_common(top)]

    if total == 0:
        return {"samples": 0, "self": [], "inclusive": []}
    return {"samples": total, "self": share(self_time), "inclusive": share(inclusive)}
