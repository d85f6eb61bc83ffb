"""PNG plots of `tether bench` results files, drawn with matplotlib (the `bench` extra).

    tether bench plot bench/results/figures/*.json --output-dir docs/images/bench

Each results file gives the plots its scenario has data for, named after the file:

- `<name>-latency.png`: latency distributions, one panel per latency figure. Direct has send
  to delivered, presence has status change, connect and leave to contact notified, and group
  has send to the last member per message (when its client parsed it, and when its socket had
  it) and send to each member. Each line is one run's
  cumulative distribution (`cdf_ms` in the results), coloured by target, on a logarithmic
  time axis.
- `<name>-memory.png` (idle): resident memory of the gateways against the connections open,
  sampled while the connections opened, one line per run.
- `<name>-cpu.png`: the scenario's CPU figures per target (idle: per heartbeat; direct: per
  message; group: per delivery), a bar for the median and a dot for each run.

matplotlib is imported only here, through `matplotlib.figure.Figure`, so no GUI backend and no
global pyplot state is involved.
"""

from __future__ import annotations

import json
import statistics
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.bench.stats import lookup

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PlotsUnavailable", "plot_command", "plot_file"]

LATENCY_PANELS: Mapping[str, Sequence[tuple[str, str]]] = {
    "direct": (("delivery_latency", "send → delivered"),),
    "presence": (
        ("status.latency", "status change → contact notified"),
        ("join.latency", "connect → contact notified"),
        ("leave.latency", "leave → contact notified"),
    ),
    "group": (
        ("last_member_latency", "send → last member has it (per message)"),
        ("last_member_socket_latency", "send → last member's socket has it (per message)"),
        ("delivery_latency", "send → member has it (per delivery)"),
    ),
}
"""Per scenario: (dotted key of a latency summary with `cdf_ms`, panel title)."""

CPU_PANELS: Mapping[str, Sequence[tuple[str, str]]] = {
    "idle": (("server_cpu_us_per_heartbeat", "server CPU per heartbeat (µs)"),),
    "direct": (
        ("server_cpu_us_per_message", "server CPU per message (µs)"),
        ("gateway_cpu_us_per_message", "gateway CPU per message (µs)"),
    ),
    "group": (
        ("server_cpu_us_per_delivery", "server CPU per delivery (µs)"),
        ("gateway_cpu_us_per_delivery", "gateway CPU per delivery (µs)"),
    ),
}
"""Per scenario: (dotted key of a CPU figure in each run, panel title)."""

_COLOURS = {
    "tether": "tab:blue",
    "floor": "tab:gray",
    "python-socketio": "tab:orange",
    "node-socketio": "tab:green",
}
_SMALLEST_MS = 1e-3  # the log axis cannot show 0 ms; such points are drawn at 1 µs


class PlotsUnavailable(Exception):
    """matplotlib is not installed."""


def plot_command(paths: list[Path], output_dir: Path | None) -> int:
    """Run `tether bench plot`: draw the plots of each file; return the exit status."""
    status = 0
    for path in paths:
        try:
            written = plot_file(path, output_dir or path.parent)
        except PlotsUnavailable as error:
            print(f"tether bench plot: {error}", file=sys.stderr)
            return 1
        except (OSError, ValueError) as error:
            print(f"tether bench plot: cannot plot {path}: {error}", file=sys.stderr)
            status = 2
            continue
        if not written:
            print(f"{path}: nothing to plot", file=sys.stderr)
        for output in written:
            print(f"plot written to {output}")
    return status


def plot_file(path: Path, output_dir: Path) -> list[Path]:
    """Draw every plot that the results file at `path` has data for; return the PNG paths.

    Raises PlotsUnavailable without matplotlib, OSError when a file cannot be read or written,
    and ValueError (json.JSONDecodeError among them) when it is not a results file.
    """
    figure_class = _figure_class()
    results = json.loads(path.read_text())
    if not (
        isinstance(results, dict)
        and isinstance(results.get("scenario"), str)
        and isinstance(results.get("runs"), dict)
    ):
        raise ValueError("not a results file of tether bench: no 'scenario' and 'runs'")
    scenario = results["scenario"]
    runs: dict[str, list[dict[str, Any]]] = results["runs"]
    output_dir.mkdir(parents=True, exist_ok=True)
    title = f"{scenario}: {results.get('command', path.name)}"
    drawings = (
        ("latency", _draw_latency, LATENCY_PANELS.get(scenario, ())),
        ("memory", _draw_memory, (("rss_series", "gateway RSS while connections open"),)),
        ("cpu", _draw_cpu, CPU_PANELS.get(scenario, ())),
    )
    written = []
    for suffix, draw, panels in drawings:
        panels = [(key, name) for key, name in panels if _has_data(runs, key)]
        if not panels:
            continue
        figure = figure_class(figsize=(6.4 * len(panels), 4.4), layout="constrained")
        axes_list = figure.subplots(1, len(panels), squeeze=False)[0]
        for axes, (key, name) in zip(axes_list, panels, strict=True):
            draw(axes, runs, key)
            axes.set_title(name, fontsize="medium")
        figure.suptitle(
            textwrap.fill(title, width=90 * len(panels), break_on_hyphens=False), fontsize="small"
        )
        output = output_dir / f"{path.stem}-{suffix}.png"
        figure.savefig(output, dpi=100)
        written.append(output)
    return written


def _figure_class() -> type[Figure]:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise PlotsUnavailable(
            "matplotlib is not installed; install it with `pip install -e '.[bench]'`"
        ) from error
    return Figure


def _has_data(runs: Mapping[str, list[dict[str, Any]]], key: str) -> bool:
    """Tell whether any run has a non-empty series or a number at the dotted key."""
    for results in runs.values():
        for result in results:
            if _series(result, key) or lookup(result, key) is not None:
                return True
    return False


def _series(result: Mapping[str, Any], key: str) -> list[list[float]]:
    """Return the list of [x, y] points at a dotted key (a latency's cdf_ms, an RSS series)."""
    value: Any = result
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return []
        value = value[part]
    if isinstance(value, Mapping):
        value = value.get("cdf_ms", [])
    return value if isinstance(value, list) else []


def _draw_latency(axes: Axes, runs: Mapping[str, list[dict[str, Any]]], key: str) -> None:
    for target, results in runs.items():
        for index, result in enumerate(results):
            points = _series(result, key)
            if not points:
                continue
            fractions = [fraction for fraction, _ in points]
            milliseconds = [max(ms, _SMALLEST_MS) for _, ms in points]
            axes.step(
                milliseconds,
                fractions,
                where="post",
                color=_COLOURS.get(target),
                alpha=0.8,
                label=target if index == 0 else None,
            )
    axes.set_xscale("log")
    _plain_log_ticks(axes)
    axes.set_xlabel("milliseconds")
    axes.set_ylabel("fraction at or below")
    axes.set_ylim(0, 1.01)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")


def _draw_memory(axes: Axes, runs: Mapping[str, list[dict[str, Any]]], key: str) -> None:
    for target, results in runs.items():
        per_connection = [lookup(result, "rss_bytes_per_connection") for result in results]
        known = [value for value in per_connection if value is not None]
        label = target
        if known:
            label += f" ({statistics.median(known):,.0f} B per connection)"
        for index, result in enumerate(results):
            points = sorted(_series(result, key))
            if not points:
                continue
            base = points[0][1]
            axes.plot(
                [count for count, _ in points],
                [(rss - base) / 1e6 for _, rss in points],
                marker=".",
                color=_COLOURS.get(target),
                alpha=0.8,
                label=label if index == 0 else None,
            )
    axes.set_xlabel("connections open")
    axes.set_ylabel("RSS growth of the gateways (MB)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left", fontsize="small")


def _draw_cpu(axes: Axes, runs: Mapping[str, list[dict[str, Any]]], key: str) -> None:
    targets = list(runs)
    for position, target in enumerate(targets):
        values = [v for v in (lookup(result, key) for result in runs[target]) if v is not None]
        if not values:
            continue
        median = statistics.median(values)
        colour = _COLOURS.get(target)
        axes.bar(position, median, color=colour, alpha=0.6)
        axes.scatter([position] * len(values), values, color=colour, edgecolors="black", zorder=3)
        axes.annotate(
            f"{median:,.1f}",
            (position, median),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            fontsize="small",
        )
    axes.set_xticks(range(len(targets)), targets)
    axes.set_ylabel("µs")
    axes.grid(True, axis="y", alpha=0.3)


def _plain_log_ticks(axes: Axes) -> None:
    """Label the logarithmic x axis with plain numbers (5, 20, 0.5) instead of powers of 10."""
    from matplotlib.ticker import FuncFormatter, LogFormatter

    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value:g}"))
    # Minor ticks (2, 3, ... 9 of each decade) get labels only when the axis spans about one
    # decade or less, where there would otherwise be no label at all.
    axes.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
