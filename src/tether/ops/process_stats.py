"""CPU time and resident memory of this process, read for the metrics and the dashboard.

Both read only what the kernel keeps anyway (getrusage, /proc/self/statm), never a listing of
open files, so they are cheap enough to read every few seconds at any number of connections.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cpu_seconds", "resident_bytes"]


def cpu_seconds() -> float | None:
    """Return the user plus system CPU time of this process, in seconds; None off Unix."""
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def resident_bytes() -> int | None:
    """Return the resident memory of this process, in bytes; None without /proc (Linux only)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")
