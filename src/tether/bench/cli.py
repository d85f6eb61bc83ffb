"""`tether bench`: run a scenario on tether and its peers, alternately, and write the results.

    tether bench setup
    tether bench report bench/results/idle-*.json
    tether bench idle --connections 5000 --targets tether,floor,python-socketio,node-socketio
    tether bench direct --mode cluster --rate 2000 --targets tether,node-socketio --repeat 3
    tether bench group --mode cluster --members 10000 --messages 100 --rate 1
    tether bench plot bench/results/group-*.json --output-dir docs/images/bench

Each run starts the target's server processes, the load processes and the measurement from
scratch. With `--repeat 3` and two targets the order is tether, peer, tether, peer, tether,
peer, so both see the same machine state on average. The results file (JSON) contains every run,
the median of each compared figure per target and the ratios tether / target; a summary table
goes to stdout and a progress line to stderr. When matplotlib is installed (the `bench` extra),
the runner also draws the results' plots as PNG files beside the results file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.bench.servers import Target

__all__ = ["add_bench_parser", "bench"]

_SCENARIO_HELP = {
    "idle": "N connections heartbeating: memory per connection, CPU per heartbeat",
    "direct": "direct messages at a fixed rate between pairs: latency, CPU per message",
    "storm": "SIGKILL a gateway holding N connections: time until all are back, peak CPU, flaps",
    "crash": "SIGKILL a gateway: time until contacts see its users offline",
    "presence": "status changes under background chat: change to contact notified",
    "group": "messages to one large group across gateways: time to last member, CPU per delivery",
}
_CLUSTER_ONLY = ("storm", "crash")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _nice(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 19:
        raise argparse.ArgumentTypeError(f"must be 0 to 19, got {text}")
    return value


def _source_addresses(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 254:
        raise argparse.ArgumentTypeError(f"must be 1 to 254, got {text}")
    return value


def _targets(text: str) -> list[str]:
    from tether.bench.servers import TARGETS

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TARGETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown target {', '.join(unknown) or text!r}: choose from {', '.join(TARGETS)}"
        )
    return names


def _add_common(parser: argparse.ArgumentParser, scenario: str) -> None:
    parser.add_argument(
        "--targets",
        type=_targets,
        default=["tether"],
        help="comma-separated servers to measure, alternately: tether, floor (embedded TCP "
        "only), python-socketio, node-socketio (default: tether)",
    )
    parser.add_argument(
        "--mode",
        choices=["embedded", "cluster"],
        default="cluster" if scenario in _CLUSTER_ONLY else "embedded",
        help="embedded: one server process; cluster: gateways joined by a private Redis "
        "(tether: plus a logic worker)",
    )
    parser.add_argument(
        "--gateways",
        type=_positive_int,
        default=3 if scenario == "group" else 2,
        help="gateway processes in cluster mode",
    )
    parser.add_argument(
        "--transport",
        choices=["tcp", "ws"],
        default="tcp",
        help="transport of tether's clients; the Socket.IO peers always use WebSocket",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=_positive,
        default=4.0,
        help="seconds between heartbeats (tether) and pings (Socket.IO pingInterval)",
    )
    parser.add_argument(
        "--repeat", type=_positive_int, default=1, help="runs of each target, alternating"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=Path("bench/results"),
        help="folder of the results files and of the peers that `tether bench setup` installs",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON results file (default: RESULTS_DIR/SCENARIO-TIME.json)",
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the servers' and load processes' logs; their folder is printed at the end",
    )
    parser.add_argument(
        "--deadline",
        type=_positive,
        default=1800.0,
        help="seconds after which the load processes exit, whatever happens",
    )
    parser.add_argument(
        "--source-addresses",
        type=_source_addresses,
        default=1,
        metavar="N",
        help="bind the load clients to 127.0.0.1 to 127.0.0.N in turn, so that one server port "
        "can take N times the about 28,000 connections one source address allows (default 1: "
        "the kernel picks 127.0.0.1)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample every Python server process with py-spy from start to stop; the top "
        "functions go into the results file and the collapsed stacks beside it",
    )


def _add_drain(parser: argparse.ArgumentParser, *, default: float) -> None:
    parser.add_argument(
        "--drain",
        type=_positive,
        default=default,
        help=f"seconds to wait for the last deliveries after sending (default {default:g})",
    )


def add_bench_parser(commands: Any) -> None:
    """Add `bench` and its scenarios to the `tether` command's subparsers."""
    bench_parser = commands.add_parser(
        "bench",
        help="measure tether against the floor and Socket.IO peers on one scenario",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scenarios = bench_parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")

    setup = scenarios.add_parser(
        "setup", help="install the Socket.IO peers from PyPI and npm into RESULTS_DIR/peers"
    )
    setup.add_argument("--results-dir", type=Path, default=Path("bench/results"))

    report = scenarios.add_parser(
        "report", help="print Markdown tables of results files, as in docs/benchmarks.md"
    )
    report.add_argument("files", nargs="+", type=Path, metavar="FILE", help="JSON results file")

    plot = scenarios.add_parser(
        "plot",
        help="draw PNG plots of results files: latency distributions, memory against "
        "connections, CPU per message or delivery (needs matplotlib: the bench extra)",
    )
    plot.add_argument("files", nargs="+", type=Path, metavar="FILE", help="JSON results file")
    plot.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="folder of the PNG files (default: the folder of each results file)",
    )

    idle = scenarios.add_parser("idle", help=_SCENARIO_HELP["idle"])
    _add_common(idle, "idle")
    idle.add_argument("--connections", type=_positive_int, default=5000, help="connections")
    idle.add_argument(
        "--duration", type=_positive, default=20.0, help="seconds of heartbeats measured"
    )

    direct = scenarios.add_parser("direct", help=_SCENARIO_HELP["direct"])
    _add_common(direct, "direct")
    direct.add_argument("--pairs", type=_positive_int, default=100, help="sender-recipient pairs")
    direct.add_argument(
        "--rate", type=_positive, default=1000.0, help="messages offered per second, in total"
    )
    direct.add_argument("--duration", type=_positive, default=10.0, help="seconds of sending")
    _add_drain(direct, default=10.0)

    storm = scenarios.add_parser("storm", help=_SCENARIO_HELP["storm"])
    _add_common(storm, "storm")
    storm.add_argument(
        "--connections", type=_positive_int, default=2000, help="connections on the gateway killed"
    )
    storm.add_argument("--watchers", type=_positive_int, default=20, help="watching users")
    storm.add_argument(
        "--contacts",
        type=_positive_int,
        default=20,
        help="storm users among each watcher's contacts",
    )
    storm.add_argument(
        "--connect-rate",
        type=_positive,
        default=1000.0,
        help="tether: new connections per second each gateway accepts (its default)",
    )
    storm.add_argument(
        "--lease-timeout", type=_positive, default=8.0, help="tether: gateway lease in seconds"
    )

    crash = scenarios.add_parser("crash", help=_SCENARIO_HELP["crash"])
    _add_common(crash, "crash")
    crash.add_argument(
        "--users", type=_positive_int, default=200, help="users on the killed gateway"
    )
    crash.add_argument("--watchers", type=_positive_int, default=100, help="watching users")
    crash.add_argument(
        "--contacts",
        type=_positive_int,
        default=20,
        help="killed users among each watcher's contacts",
    )
    crash.add_argument(
        "--lease-timeout", type=_positive, default=5.0, help="tether: gateway lease in seconds"
    )

    presence = scenarios.add_parser("presence", help=_SCENARIO_HELP["presence"])
    _add_common(presence, "presence")
    presence.add_argument("--changers", type=_positive_int, default=200, help="changing users")
    presence.add_argument("--watchers", type=_positive_int, default=200, help="watching users")
    presence.add_argument(
        "--contacts", type=_positive_int, default=50, help="changers among each watcher's contacts"
    )
    presence.add_argument("--changes", type=_positive_int, default=400, help="status changes")
    presence.add_argument(
        "--change-rate", type=_positive, default=20.0, help="status changes per second"
    )
    presence.add_argument(
        "--joiners", type=_positive_int, default=100, help="users that connect, then leave"
    )
    presence.add_argument(
        "--join-rate", type=_positive, default=20.0, help="joins, then leaves, per second"
    )
    presence.add_argument(
        "--grace-period",
        type=_positive,
        default=5.0,
        help="tether: seconds a user's last device may be gone before contacts see offline",
    )
    presence.add_argument(
        "--chat-pairs", type=_positive_int, default=50, help="pairs chatting in the background"
    )
    presence.add_argument(
        "--chat-rate", type=_positive, default=50.0, help="background messages per second"
    )

    group = scenarios.add_parser("group", help=_SCENARIO_HELP["group"])
    _add_common(group, "group")
    group.add_argument(
        "--members", type=_positive_int, default=10_000, help="group members, besides the sender"
    )
    group.add_argument(
        "--messages", type=_positive_int, default=100, help="messages the sender sends"
    )
    group.add_argument("--rate", type=_positive, default=1.0, help="group messages sent per second")
    group.add_argument(
        "--member-gateways",
        type=_positive_int,
        default=None,
        help="put the members on the first N gateways only (default: all); tether publishes "
        "a group message to the gateways with members only",
    )
    group.add_argument(
        "--member-processes",
        type=_positive_int,
        default=2,
        help="load processes that hold the members (more when one would hold over 15,000)",
    )
    group.add_argument(
        "--pushes-per-second",
        type=_positive,
        default=None,
        help="tether: the gateways' --pushes-per-second (default: the server's, 20); above "
        "it, a member's messages are merged into one push",
    )
    group.add_argument(
        "--push-burst",
        type=_positive_int,
        default=None,
        help="tether: the gateways' --push-burst (default: the server's, 20)",
    )
    group.add_argument(
        "--member-nice",
        type=_nice,
        default=0,
        help="nice value (0 to 19) of the members' load processes; a higher value lets the "
        "servers run first when both want the CPU",
    )
    group.add_argument(
        "--baseline",
        type=_positive,
        default=5.0,
        help="seconds of the quiet window whose CPU (heartbeats, timers) is subtracted",
    )
    _add_drain(group, default=30.0)
    group.add_argument(
        "--deliver-acks",
        action="store_true",
        help="tether: members acknowledge every message, as the SDK does; by default they "
        "do not, as the Socket.IO clients never do",
    )


def bench(arguments: argparse.Namespace) -> int:
    """Run `tether bench SCENARIO` from parsed options; return the exit status."""
    if arguments.scenario == "setup":
        from tether.bench.setup import setup_peers

        return setup_peers(arguments.results_dir)
    if arguments.scenario == "report":
        from tether.bench.report import report

        return report(arguments.files)
    if arguments.scenario == "plot":
        from tether.bench.plots import plot_command

        return plot_command(arguments.files, arguments.output_dir)
    problem = _check(arguments)
    if problem:
        print(f"tether bench {arguments.scenario}: {problem}", file=sys.stderr)
        return 2
    from tether.cli.main import run

    return run(_bench(arguments))


def _check(arguments: argparse.Namespace) -> str:
    """Return what is wrong with a combination of options, or an empty string."""
    if "floor" in arguments.targets and (
        arguments.mode != "embedded" or arguments.transport != "tcp"
        or arguments.scenario not in ("idle", "direct")
    ):  # fmt: skip
        return "the floor runs only the idle and direct scenarios, embedded, over TCP"
    if arguments.profile:
        from tether.bench.profile import find_py_spy

        if find_py_spy() is None:
            return "--profile needs py-spy; install it with `pip install -e '.[bench]'`"
    if arguments.scenario in _CLUSTER_ONLY and arguments.mode != "cluster":
        return f"{arguments.scenario} needs --mode cluster: it kills one of several gateways"
    if arguments.scenario in _CLUSTER_ONLY and arguments.gateways < 2:
        return f"{arguments.scenario} needs at least 2 gateways"
    if arguments.scenario == "storm" and arguments.targets != ["tether"]:
        return "storm runs on tether only so far: its swarm speaks tether's protocol"
    if (
        arguments.scenario == "group"
        and arguments.member_gateways is not None
        and (arguments.mode != "cluster" or arguments.member_gateways > arguments.gateways)
    ):
        return "--member-gateways needs --mode cluster and at most --gateways gateways"
    if arguments.scenario in ("storm", "crash", "presence") and arguments.contacts > (
        arguments.connections if arguments.scenario == "storm"
        else arguments.users if arguments.scenario == "crash"
        else arguments.changers + arguments.joiners
    ):  # fmt: skip
        return "--contacts must not exceed the number of users that can be contacts"
    return ""


async def _bench(arguments: argparse.Namespace) -> int:
    from tether.bench.runner import Progress
    from tether.bench.scenarios import COMPARED, SCENARIOS, Run
    from tether.bench.servers import TargetOptions, make_target
    from tether.bench.setup import peer_versions
    from tether.bench.stats import compare_runs

    scenario = arguments.scenario
    options = TargetOptions(
        mode=arguments.mode,
        gateways=arguments.gateways if arguments.mode == "cluster" else 1,
        transport=arguments.transport,
        heartbeat_interval=arguments.heartbeat_interval,
        lease_timeout=getattr(arguments, "lease_timeout", 5.0),
        connections_per_second=getattr(arguments, "connect_rate", 1_000_000.0),
        grace_period=getattr(arguments, "grace_period", 5.0),
        results_dir=arguments.results_dir,
        profile=arguments.profile,
        pushes_per_second=getattr(arguments, "pushes_per_second", None),
        push_burst=getattr(arguments, "push_burst", None),
    )
    workroot = Path(tempfile.mkdtemp(prefix=f"tether-bench-{scenario}-"))
    progress = Progress()
    progress.start()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in arguments.targets}
    load_before = os.getloadavg()
    started = time.time()
    output: Path = arguments.output or arguments.results_dir / (
        f"{scenario}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(started))}.json"
    )
    try:
        for repeat in range(arguments.repeat):
            for name in arguments.targets:
                workdir = workroot / f"{name}-{repeat + 1}"
                target = make_target(name, workdir, options)
                progress.phase(f"{scenario} run {repeat + 1}/{arguments.repeat}: {name} starting")
                try:
                    result = await SCENARIOS[scenario](Run(target, workdir, arguments, progress))
                finally:
                    await asyncio.to_thread(target.stop)
                if target.profilers:
                    result["profile"] = _keep_profiles(target, output, f"{name}-{repeat + 1}")
                runs[name].append(result)
    except BaseException:
        await progress.stop()
        print(f"tether bench: run failed; server and load logs kept in {workroot}", file=sys.stderr)
        raise
    await progress.stop()
    if arguments.keep_logs:
        print(f"server and load logs kept in {workroot}", file=sys.stderr)
    else:
        shutil.rmtree(workroot, ignore_errors=True)

    summary = compare_runs(runs, COMPARED[scenario])
    results: dict[str, Any] = {
        "scenario": scenario,
        "command": shlex.join(["tether", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_seconds": round(time.time() - started, 1),
        "machine": _machine(load_before),
        "peers": peer_versions(arguments.results_dir),
        "settings": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(arguments).items()
            if key != "command"
        },
        **summary,
        "runs": runs,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    _print_summary(results)
    print(f"results written to {output}")
    _plot(output)
    return 0


def _keep_profiles(target: Target, output: Path, run_name: str) -> dict[str, Any]:
    """Copy a run's py-spy files beside the results file; return their summaries by process."""
    from tether.bench.profile import summarize

    summaries: dict[str, Any] = {}
    output.parent.mkdir(parents=True, exist_ok=True)
    for process, profiler in target.profilers.items():
        if not profiler.output.exists():
            message = f"py-spy wrote nothing; its output is in {profiler.log_path} (--keep-logs)"
            summaries[process] = {"error": message}
            continue
        kept = output.with_name(f"{output.stem}-{run_name}-{process}.pyspy.txt")
        shutil.copyfile(profiler.output, kept)
        summaries[process] = {"file": str(kept), **summarize(kept)}
    return summaries


def _plot(output: Path) -> None:
    """Draw the plots of a results file beside it, when matplotlib is installed."""
    from tether.bench.plots import PlotsUnavailable, plot_file

    try:
        written = plot_file(output, output.parent)
    except PlotsUnavailable as error:
        print(f"no plots: {error}", file=sys.stderr)
        return
    for path in written:
        print(f"plot written to {path}")


def _print_summary(results: dict[str, Any]) -> None:
    medians: dict[str, dict[str, float | None]] = results["medians"]
    targets = list(medians)
    keys = list(next(iter(medians.values())))
    width = max(len(key) for key in keys) + 2
    print(f"{results['scenario']}: medians of {results['settings']['repeat']} run(s) per target")
    print(" " * width + "".join(f"{target:>18}" for target in targets))
    for key in keys:
        cells = "".join(f"{_cell(medians[target][key]):>18}" for target in targets)
        print(f"{key:<{width}}{cells}")
    for pair, ratios in results["ratios"].items():
        text = ", ".join(f"{key} {_cell(value)}" for key, value in ratios.items())
        print(f"{pair}: {text}")


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """Return what the results depend on: CPUs, load, Python, kernel, tether's git commit."""
    machine: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_average_1_min_before": load_before[0],
        "load_average_1_min_after": os.getloadavg()[0],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "open_files_limit": _open_files_limit(),
    }
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=False, timeout=10,
        ).stdout.strip()  # fmt: skip
        status = subprocess.run(
            ["git", "status", "--porcelain", "src", "bench"],
            capture_output=True, text=True, check=False, timeout=10,
        ).stdout.strip()  # fmt: skip
        machine["git_commit"] = commit
        machine["uncommitted_changes"] = bool(status)
    except OSError:
        pass
    return machine


def _open_files_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
