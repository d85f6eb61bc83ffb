"""Compare WebSocket server libraries for the tether gateway: picows and websockets.

Each library serves an echo server in its own child process on 127.0.0.1 (uvloop event loop,
subprotocol ``tether.v1``, one binary reply per binary frame). Separate load processes open
``--connections`` connections with picows's client, so the client side is the same for every
server, then send ``--frames`` small binary frames in total. The script measures, on the server
process only:

- user-space memory per idle connection: VmRSS delta from /proc/PID/status, divided by N;
- CPU time per request/reply round: utime + stime delta from /proc/PID/stat, divided by M;
- throughput: replies per second over the whole frame phase, across all load processes;
- the time of a full ``gc.collect()`` with N connections open, and the pauses of the automatic
  collections during the connect and frame phases.

The orchestrator talks to its children through their stdin and stdout, one JSON object or one
command word per line. Every child arms ``signal.alarm`` with ``--deadline`` seconds, so a stuck
run ends by itself.

Run: ``.venv/bin/python bench/ws_libraries.py [--connections N] [--frames M]``.
Results: a table on stdout and JSON in bench/results/ws_libraries.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

SUBPROTOCOL = "tether.v1"
HOST = "127.0.0.1"
LIBRARIES = ("picows", "picows-uvloop", "websockets")
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "ws_libraries.json"
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")

# Each load process keeps well under the 20,000 open files allowed per process.
MAX_CONNECTIONS_PER_LOAD_PROCESS = 5000
# Opening handshakes in progress at once per load process, kept below LISTEN_BACKLOG.
CONNECT_CONCURRENCY = 200
LISTEN_BACKLOG = 2048
WARMUP_CONNECTIONS = 50
WARMUP_FRAMES = 2000
SETTLE_SECONDS = 1.0
# Time limit for one orchestrator step (connect, frame phase, close), in seconds.
STEP_TIMEOUT = 240.0
# Time the load process waits for the server to finish the closing handshakes, in seconds.
CLOSE_TIMEOUT = 30.0


# --- /proc readers -------------------------------------------------------------------------


def read_rss_bytes(pid: int) -> int:
    """Return the VmRSS of process ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"VmRSS missing from /proc/{pid}/status")


def read_cpu_seconds(pid: int) -> float:
    """Return utime + stime of process ``pid`` in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    # The command name in field 2 may contain spaces, so split after its closing bracket.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS_PER_SECOND


# --- child processes: shared helpers --------------------------------------------------------


def emit(message: dict[str, Any]) -> None:
    """Write one JSON line to the orchestrator."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def open_stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


# --- server process ---------------------------------------------------------------------------


class CollectorPauses:
    """Count and time the garbage collector's automatic collections, per generation."""

    def __init__(self) -> None:
        self.recording = True
        self._started_at = 0.0
        self.reset()

    def reset(self) -> None:
        self.count = [0, 0, 0]
        self.total_seconds = [0.0, 0.0, 0.0]
        self.max_seconds = [0.0, 0.0, 0.0]

    def on_collection(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started_at = time.perf_counter()
            return
        if not self.recording:
            return
        pause = time.perf_counter() - self._started_at
        generation = info["generation"]
        self.count[generation] += 1
        self.total_seconds[generation] += pause
        self.max_seconds[generation] = max(self.max_seconds[generation], pause)

    def report(self) -> dict[str, Any]:
        return {
            "collections": self.count,
            "total_ms": [round(s * 1e3, 3) for s in self.total_seconds],
            "max_ms": [round(s * 1e3, 3) for s in self.max_seconds],
        }


def time_full_collections(pauses: CollectorPauses) -> dict[str, Any]:
    """Time full collections as they are, then once more with every object frozen."""
    pauses.recording = False
    tracked_objects = len(gc.get_objects())

    full_seconds = []
    for _ in range(3):
        started = time.perf_counter()
        gc.collect()
        full_seconds.append(time.perf_counter() - started)

    # gc.freeze() moves every tracked object to the permanent generation, which the collector
    # skips. This shows what a gateway gains by freezing after a burst of connections.
    gc.freeze()
    started = time.perf_counter()
    gc.collect()
    frozen_seconds = time.perf_counter() - started
    gc.unfreeze()

    pauses.recording = True
    return {
        "tracked_objects": tracked_objects,
        "full_ms": [round(s * 1e3, 3) for s in full_seconds],
        "full_after_freeze_ms": round(frozen_seconds * 1e3, 3),
    }


async def start_picows_server(use_aiofastnet: bool, read_buffer_size: int) -> tuple[Any, int]:
    import picows

    class EchoListener(picows.WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
            if frame.msg_type == picows.WSMsgType.BINARY:
                transport.send(picows.WSMsgType.BINARY, frame.get_payload_as_bytes())
            elif frame.msg_type == picows.WSMsgType.CLOSE:
                # picows leaves the closing handshake to the listener (RFC 6455 section 5.5.1).
                transport.send_close(frame.get_close_code())
                transport.disconnect()

    def accept(request: picows.WSUpgradeRequest) -> picows.WSUpgradeResponseWithListener:
        offered = [
            name.strip()
            for header in request.headers.getall("Sec-WebSocket-Protocol", [])
            for name in header.split(",")
        ]
        if SUBPROTOCOL not in offered:
            response = picows.WSUpgradeResponse.create_error_response(400, b"missing subprotocol")
            return picows.WSUpgradeResponseWithListener(response, None)
        response = picows.WSUpgradeResponse.create_101_response(
            extra_headers={"Sec-WebSocket-Protocol": SUBPROTOCOL}
        )
        return picows.WSUpgradeResponseWithListener(response, EchoListener())

    server = await picows.ws_create_server(
        accept,
        HOST,
        0,
        use_aiofastnet=use_aiofastnet,
        read_buffer_init_size=read_buffer_size,
        backlog=LISTEN_BACKLOG,
    )
    return server, server.sockets[0].getsockname()[1]


async def start_websockets_server() -> tuple[Any, int]:
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            if isinstance(message, bytes):
                await connection.send(message)

    # Keepalive pings are off because tether clients send their own heartbeats, and the
    # default (ping_interval=20) adds one task per connection. Compression is off because no
    # client in this benchmark offers it.
    server = await serve(
        echo,
        HOST,
        0,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        compression=None,
        ping_interval=None,
        backlog=LISTEN_BACKLOG,
    )
    return server, server.sockets[0].getsockname()[1]


async def run_server(library: str, picows_read_buffer: int) -> None:
    pauses = CollectorPauses()
    gc.callbacks.append(pauses.on_collection)

    if library == "websockets":
        server, port = await start_websockets_server()
    else:
        server, port = await start_picows_server(library == "picows", picows_read_buffer)
    emit({"event": "ready", "port": port})

    commands = await open_stdin_reader()
    while line := await commands.readline():
        command = line.decode().strip()
        if command == "gc":
            emit({"event": "gc", **time_full_collections(pauses)})
        elif command == "gcstats":
            emit({"event": "gcstats", **pauses.report()})
            pauses.reset()
        elif command == "quit":
            break
        else:
            emit({"event": "error", "message": f"unknown command {command!r}"})
    server.close()


# --- load process -----------------------------------------------------------------------------


class LoadRun:
    """Send a quota of frames on every connection, keeping ``window`` frames in flight each."""

    def __init__(self, payload: bytes, window: int) -> None:
        self.payload = payload
        self.window = window
        self.unfinished = 0
        self.finished: asyncio.Future[None] | None = None

    def connection_finished(self) -> None:
        self.unfinished -= 1
        if self.unfinished == 0 and self.finished is not None:
            self.finished.set_result(None)


def make_load_listener(run: LoadRun) -> Any:
    import picows

    class LoadListener(picows.WSListener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.quota = 0
            self.sent = 0
            self.replies = 0
            self.transport: picows.WSTransport | None = None

        def on_ws_connected(self, transport: picows.WSTransport) -> None:
            self.transport = transport

        def start(self) -> None:
            for _ in range(min(run.window, self.quota)):
                self.send_frame()

        def send_frame(self) -> None:
            assert self.transport is not None
            self.transport.send(picows.WSMsgType.BINARY, run.payload)
            self.sent += 1

        def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
            if frame.msg_type != picows.WSMsgType.BINARY:
                return
            self.replies += 1
            if self.sent < self.quota:
                self.send_frame()
            elif self.replies == self.quota:
                run.connection_finished()

    return LoadListener


async def open_connections(port: int, count: int, listener_class: Any) -> list[Any]:
    import picows

    url = f"ws://{HOST}:{port}/"
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def open_one() -> Any:
        async with limit:
            transport, listener = await picows.ws_connect(
                listener_class, url, extra_headers={"Sec-WebSocket-Protocol": SUBPROTOCOL}
            )
        chosen = transport.response.headers.get("Sec-WebSocket-Protocol")
        if chosen != SUBPROTOCOL:
            raise RuntimeError(f"server chose subprotocol {chosen!r}, expected {SUBPROTOCOL!r}")
        return listener

    return list(await asyncio.gather(*(open_one() for _ in range(count))))


async def run_load(port: int, connections: int, frames: int, window: int, frame_size: int) -> None:
    run = LoadRun(bytes(i % 256 for i in range(frame_size)), window)
    listeners = await open_connections(port, connections, make_load_listener(run))

    base, extra = divmod(frames, connections)
    for index, listener in enumerate(listeners):
        listener.quota = base + (1 if index < extra else 0)
    run.unfinished = sum(1 for listener in listeners if listener.quota > 0)
    emit({"event": "connected", "connections": len(listeners)})

    commands = await open_stdin_reader()
    command = (await commands.readline()).strip()
    if command != b"go":
        raise RuntimeError(f"invalid command {command!r}, expected b'go'")

    run.finished = asyncio.get_running_loop().create_future()
    cpu_started, started = time.process_time(), time.monotonic()
    for listener in listeners:
        listener.start()
    if run.unfinished > 0:
        await run.finished
    ended, cpu_ended = time.monotonic(), time.process_time()
    replies = sum(listener.replies for listener in listeners)
    emit(
        {
            "event": "done",
            "replies": replies,
            "started": started,
            "ended": ended,
            "cpu_busy": (cpu_ended - cpu_started) / max(ended - started, 1e-9),
        }
    )

    command = (await commands.readline()).strip()
    if command != b"close":
        raise RuntimeError(f"invalid command {command!r}, expected b'close'")
    # The client starts the closing handshake and the server closes the TCP connection
    # (RFC 6455 section 7.1.1). Connections still open after the timeout are dropped.
    import picows

    for listener in listeners:
        listener.transport.send_close(picows.WSCloseCode.OK)
    waiting = asyncio.gather(*(listener.transport.wait_disconnected() for listener in listeners))
    try:
        await asyncio.wait_for(waiting, CLOSE_TIMEOUT)
    except TimeoutError:
        for listener in listeners:
            listener.transport.disconnect(graceful=False)
    emit({"event": "closed"})


# --- orchestrator -----------------------------------------------------------------------------


@dataclass
class Child:
    """A child process of this script, driven through its stdin and stdout."""

    process: asyncio.subprocess.Process

    @classmethod
    async def start(cls, *arguments: str) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            *arguments,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process)

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")

    async def expect(self, event: str, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            code = await self.process.wait()
            raise RuntimeError(f"child {self.pid} exited with code {code}, expected {event!r}")
        message: dict[str, Any] = json.loads(line)
        if message.get("event") != event:
            raise RuntimeError(f"child {self.pid} sent {message}, expected {event!r}")
        return message

    async def stop(self) -> None:
        """Wait up to 10 s for the child to exit, then kill it by its PID."""
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


def split_evenly(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


async def start_loads(
    port: int, connections: int, frames: int, processes: int, options: argparse.Namespace
) -> list[Child]:
    loads = []
    for part_connections, part_frames in zip(
        split_evenly(connections, processes), split_evenly(frames, processes), strict=True
    ):
        loads.append(
            await Child.start(
                "--role=load",
                f"--port={port}",
                f"--connections={part_connections}",
                f"--frames={part_frames}",
                f"--window={options.window}",
                f"--frame-size={options.frame_size}",
                f"--deadline={options.deadline}",
            )
        )
    for load in loads:
        await load.expect("connected")
    return loads


async def run_frames(loads: list[Child]) -> list[dict[str, Any]]:
    for load in loads:
        load.send("go")
    return [await load.expect("done") for load in loads]


async def close_loads(loads: list[Child]) -> None:
    for load in loads:
        load.send("close")
    for load in loads:
        await load.expect("closed")
        await load.stop()


async def measure_library(library: str, options: argparse.Namespace) -> dict[str, Any]:
    """Run one full measurement of one library and return its figures."""
    connections, frames = options.connections, options.frames
    processes = options.load_processes or math.ceil(connections / MAX_CONNECTIONS_PER_LOAD_PROCESS)
    server = await Child.start(
        "--role=server",
        f"--library={library}",
        f"--picows-read-buffer={options.picows_read_buffer}",
        f"--deadline={options.deadline}",
    )
    try:
        port = (await server.expect("ready"))["port"]

        # Warm-up: the first connections and frames pay for lazy imports and allocator growth,
        # which must not count as per-connection memory.
        warmup = await start_loads(
            port, min(WARMUP_CONNECTIONS, connections), WARMUP_FRAMES, 1, options
        )
        await run_frames(warmup)
        await close_loads(warmup)
        await asyncio.sleep(SETTLE_SECONDS)

        server.send("gc")
        gc_idle = await server.expect("gc")
        server.send("gcstats")
        await server.expect("gcstats")
        rss_before, cpu_before = read_rss_bytes(server.pid), read_cpu_seconds(server.pid)

        loads = await start_loads(port, connections, frames, processes, options)
        await asyncio.sleep(SETTLE_SECONDS)
        rss_connected, cpu_connected = read_rss_bytes(server.pid), read_cpu_seconds(server.pid)
        server.send("gcstats")
        gc_connect_phase = await server.expect("gcstats")
        server.send("gc")
        gc_connected = await server.expect("gc")

        server.send("gcstats")
        await server.expect("gcstats")
        cpu_frames_before = read_cpu_seconds(server.pid)
        reports = await run_frames(loads)
        cpu_frames_after = read_cpu_seconds(server.pid)
        server.send("gcstats")
        gc_frame_phase = await server.expect("gcstats")

        await close_loads(loads)
        server.send("quit")
        await server.stop()
    finally:
        if server.process.returncode is None:
            server.process.kill()
            await server.process.wait()

    replies = sum(report["replies"] for report in reports)
    if replies != frames:
        raise RuntimeError(f"{library}: received {replies} replies to {frames} frames sent")
    elapsed = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    return {
        "library": library,
        "connections": connections,
        "frames": frames,
        "load_processes": processes,
        "memory_per_connection_bytes": (rss_connected - rss_before) / connections,
        "rss_before_bytes": rss_before,
        "rss_connected_bytes": rss_connected,
        "connect_cpu_per_connection_us": (cpu_connected - cpu_before) / connections * 1e6,
        "cpu_per_round_us": (cpu_frames_after - cpu_frames_before) / frames * 1e6,
        "replies_per_second": replies / elapsed,
        "frame_phase_seconds": elapsed,
        "load_cpu_busy": [round(r["cpu_busy"], 3) for r in reports],
        "gc_full_ms": statistics.median(gc_connected["full_ms"]),
        "gc_full_idle_ms": statistics.median(gc_idle["full_ms"]),
        "gc_full_after_freeze_ms": gc_connected["full_after_freeze_ms"],
        "gc_tracked_objects_per_connection": (
            (gc_connected["tracked_objects"] - gc_idle["tracked_objects"]) / connections
        ),
        "gc_automatic_connect_phase": gc_connect_phase,
        "gc_automatic_frame_phase": gc_frame_phase,
    }


# Figures summarised in the table: key, column title, format.
FIGURES = (
    ("memory_per_connection_bytes", "bytes/conn", "{:.0f}"),
    ("cpu_per_round_us", "CPU us/round", "{:.2f}"),
    ("replies_per_second", "replies/s", "{:.0f}"),
    ("gc_full_ms", "full gc ms", "{:.1f}"),
    ("gc_full_after_freeze_ms", "gc frozen ms", "{:.3f}"),
    ("gc_tracked_objects_per_connection", "gc objs/conn", "{:.1f}"),
    ("connect_cpu_per_connection_us", "connect CPU us", "{:.0f}"),
)


def summarise(runs: list[dict[str, Any]], libraries: list[str]) -> dict[str, dict[str, float]]:
    """Return the median of every figure per library, plus picows/websockets ratios."""
    medians: dict[str, dict[str, float]] = {}
    for library in libraries:
        mine = [run for run in runs if run["library"] == library]
        medians[library] = {
            key: statistics.median(run[key] for run in mine) for key, _, _ in FIGURES
        }
    if "websockets" in medians:
        for library in libraries:
            if library == "websockets":
                continue
            medians[f"{library}/websockets"] = {
                key: medians[library][key] / medians["websockets"][key]
                for key, _, _ in FIGURES
                if medians["websockets"][key]
            }
    return medians


def print_table(summary: dict[str, dict[str, float]]) -> None:
    header = f"{'':26}" + "".join(f"{title:>16}" for _, title, _ in FIGURES)
    print(header)
    for row_name, figures in summary.items():
        is_ratio = "/" in row_name
        cells = []
        for key, _, number_format in FIGURES:
            value = figures.get(key)
            if value is None:
                cells.append(f"{'-':>16}")
            else:
                cells.append(f"{(f'{value:.2f}' if is_ratio else number_format.format(value)):>16}")
        print(f"{row_name:26}" + "".join(cells))


def describe_machine() -> dict[str, Any]:
    import aiofastnet
    import picows
    import websockets

    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "picows": picows.__version__,
        "aiofastnet": aiofastnet.__version__,
        "websockets": websockets.__version__,
        "uvloop": uvloop.__version__,
    }


async def run_benchmark(options: argparse.Namespace) -> None:
    libraries = options.libraries
    runs = []
    # Libraries take turns within each repetition, so slow drift of the machine is spread out.
    for repetition in range(1, options.runs + 1):
        for library in libraries:
            result = await measure_library(library, options)
            result["repetition"] = repetition
            runs.append(result)
            print(
                f"run {repetition} {library}: "
                + ", ".join(
                    f"{title} {number_format.format(result[key])}"
                    for key, title, number_format in FIGURES
                ),
                flush=True,
            )

    summary = summarise(runs, libraries)
    print(
        f"\nmedian of {options.runs} runs, "
        f"{options.connections} connections, {options.frames} frames"
    )
    print_table(summary)

    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": describe_machine(),
        "options": {key: value for key, value in vars(options).items() if key != "role"},
        "median": summary,
        "runs": runs,
    }
    output = Path(options.output)
    output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {output}")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])

    parser.add_argument(
        "--connections", type=int, default=2000, help="connections to open (default 2000)"
    )
    parser.add_argument(
        "--frames", type=int, default=200_000, help="frames to send in total (default 200000)"
    )
    parser.add_argument(
        "--window",
        type=int,
        default=1,
        help="frames in flight per connection; 1 is one heartbeat at a time (default 1)",
    )

    parser.add_argument(
        "--frame-size", type=int, default=12, help="payload bytes per frame (default 12)"
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions per library (default 3)")

    parser.add_argument(
        "--load-processes",
        type=int,
        default=0,
        help=f"load processes (default: one per {MAX_CONNECTIONS_PER_LOAD_PROCESS} connections)",
    )
    parser.add_argument(
        "--libraries",
        nargs="+",
        choices=LIBRARIES,
        default=list(LIBRARIES),
        help="servers to measure (picows-uvloop: picows on uvloop transports, not aiofastnet)",
    )
    parser.add_argument(
        "--picows-read-buffer",
        type=int,
        default=16 * 1024,
        help="initial read buffer of each picows server connection, in bytes (default 16384, "
        "the picows default; picows raises anything below 2048 to 2048)",
    )

    parser.add_argument("--output", default=str(RESULTS_PATH), help="JSON results file")
    parser.add_argument(
        "--deadline",
        type=int,
        default=900,
        help="seconds after which every child process ends itself (default 900)",
    )
    # Internal options, used when this script starts itself as a server or load process.
    parser.add_argument(
        "--role", choices=("bench", "server", "load"), default="bench", help=argparse.SUPPRESS
    )
    parser.add_argument("--library", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)

    options = parser.parse_args()
    if (
        options.connections < 1
        or options.frames < 1
        or options.window < 1
        or options.frame_size < 1
    ):
        parser.error("--connections, --frames, --window and --frame-size must be at least 1")
    return options


def main() -> None:
    options = parse_arguments()
    if options.role == "server":
        signal.alarm(options.deadline)
        uvloop.run(run_server(options.library, options.picows_read_buffer))
    elif options.role == "load":
        signal.alarm(options.deadline)
        uvloop.run(
            run_load(
                options.port,
                options.connections,
                options.frames,
                options.window,
                options.frame_size,
            )
        )
    else:
        uvloop.run(run_benchmark(options))


if __name__ == "__main__":
    main()
