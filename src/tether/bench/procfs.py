"""Readings from Linux: process CPU and RSS, socket memory, machine load.

Process figures come from /proc/PID/stat and /proc/PID/status. Kernel socket memory has two
parts, read separately because they behave differently:

- socket objects: the slab caches that every TCP socket uses (`TCP`, `sock_inode_cache`, `filp`
  and `eventpoll_epi` in /proc/slabinfo, which needs root). The count covers every socket of the
  machine, the load generator's ends included, so the runner divides the growth by two sockets
  per loopback connection.
- socket buffers: the `skmem` of the server's own sockets from `ss -tm`, that is receive and send
  buffers plus memory reserved ahead (`r + t + f + w + o`), per socket.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable

__all__ = [
    "SOCKET_SLAB_CACHES",
    "cpu_seconds",
    "machine_busy_seconds",
    "peer_addresses",
    "rss_bytes",
    "socket_buffer_bytes",
    "socket_slab_bytes",
    "sockstat_tcp",
]

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
SOCKET_SLAB_CACHES = ("TCP", "sock_inode_cache", "filp", "eventpoll_epi")
"""Slab caches that grow by one object per open TCP socket watched by epoll."""

_SKMEM = re.compile(r"skmem:\(r(\d+),rb\d+,t(\d+),tb\d+,f(\d+),w(\d+),o(\d+)")


def cpu_seconds(pid: int) -> float:
    """Return utime + stime of process `pid` in seconds, or NaN once it has exited."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return math.nan
    # The command name in field 2 may contain spaces, so split after its closing bracket.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_SECOND


def rss_bytes(pid: int) -> int:
    """Return the resident set size of process `pid` in bytes, or 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def machine_busy_seconds() -> float:
    """Return the CPU time all processes of the machine used since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / CLOCK_TICKS_PER_SECOND


def socket_slab_bytes() -> int | None:
    """Return the bytes of the SOCKET_SLAB_CACHES objects in use, or None without root."""
    try:
        with open("/proc/slabinfo") as slabinfo:
            lines = slabinfo.readlines()
    except OSError:
        return None
    total = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in SOCKET_SLAB_CACHES:
            active_objects, object_size = int(fields[1]), int(fields[3])
            total += active_objects * object_size
    return total


def sockstat_tcp() -> dict[str, int]:
    """Return the TCP line of /proc/net/sockstat: inuse, orphan, tw, alloc and mem (pages)."""
    with open("/proc/net/sockstat") as sockstat:
        for line in sockstat:
            if line.startswith("TCP:"):
                fields = line.split()[1:]
                return {fields[i]: int(fields[i + 1]) for i in range(0, len(fields) - 1, 2)}
    return {}


def peer_addresses(ports: Iterable[int], path: str = "/proc/net/tcp") -> dict[str, int]:
    """Return the established IPv4 connections to local `ports`, counted by remote address.

    Reads the kernel's socket table (`/proc/net/tcp`), where addresses are hexadecimal and in
    host byte order (little-endian here) and state 01 is ESTABLISHED.
    """
    wanted = set(ports)
    counts: dict[str, int] = {}
    with open(path) as table:
        next(table)  # the header line
        for line in table:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state != "01" or int(local.rsplit(":", 1)[1], 16) not in wanted:
                continue
            address = _ipv4(remote.rsplit(":", 1)[0])
            counts[address] = counts.get(address, 0) + 1
    return counts


def _ipv4(little_endian_hex: str) -> str:
    value = int(little_endian_hex, 16).to_bytes(4, "little")
    return ".".join(str(part) for part in value)


def socket_buffer_bytes(ports: Iterable[int]) -> tuple[int, int] | None:
    """Return (sockets, skmem bytes) of the established sockets whose local port is in `ports`.

    Returns None when `ss` (iproute2) is not installed.
    """
    ss = shutil.which("ss")
    if ss is None:
        return None
    wanted = " or ".join(f"sport = :{port}" for port in ports)
    result = subprocess.run(
        [ss, "-tmnH", "state", "established", f"( {wanted} )"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    sockets = 0
    total = 0
    for found in _SKMEM.finditer(result.stdout):
        sockets += 1
        total += sum(int(value) for value in found.groups())
    return sockets, total


class CpuMeter:
    """CPU time of named processes and of the whole machine between two moments."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self._before: dict[str, float] = {}
        self._started = 0.0

    def start(self) -> None:
        """Take the first snapshot."""
        self._before = self._snapshot()
        self._started = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Return the CPU seconds each process used since start(), plus "machine" and "wall"."""
        after = self._snapshot()
        used = {
            name: round(after[name] - self._before[name], 3)
            for name in self._before
            if not math.isnan(after[name]) and not math.isnan(self._before[name])
        }
        used["wall"] = round(time.monotonic() - self._started, 3)
        return used

    def _snapshot(self) -> dict[str, float]:
        snapshot = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        snapshot["machine"] = machine_busy_seconds()
        return snapshot
