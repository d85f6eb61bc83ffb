"""`tether bench report FILE...`: print Markdown tables of results files, for docs/benchmarks.md.

One table per file: a row per compared figure, a column with the median of each target, then a
column with the ratio tether / target for each other target. A ratio below 1 means tether
spent less (bytes, CPU, milliseconds, seconds) than that target.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["markdown_table", "report"]


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def markdown_table(results: dict[str, Any]) -> str:
    """Return the Markdown table of one results file's medians and ratios."""
    medians: dict[str, dict[str, float | None]] = results["medians"]
    ratios: dict[str, dict[str, float | None]] = results["ratios"]
    targets = list(medians)
    keys = list(next(iter(medians.values()), {}))
    repeat = results["settings"]["repeat"]
    header = ["figure", *(f"{t} (median of {repeat})" for t in targets), *ratios]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in keys:
        cells = [key, *(_number(medians[t][key]) for t in targets)]
        cells += [_number(ratios[pair][key]) for pair in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(paths: list[Path]) -> int:
    """Print a heading, the command and the table of each results file; return 0."""
    for path in paths:
        results = json.loads(path.read_text())
        machine = results["machine"]
        print(f"### {results['scenario']}: {path.name}\n")
        print(f"```sh\n{results['command']}\n```\n")
        print(
            f"Load average (1 min) {machine['load_average_1_min_before']:.2f} before and "
            f"{machine['load_average_1_min_after']:.2f} after; {results['wall_seconds']} s.\n"
        )
        print(markdown_table(results) + "\n")
    return 0
