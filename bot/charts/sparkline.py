"""The same charts for the console: one Unicode sparkline per series, as a view rich renders.

Pure: chart data in, a view out (rendered by `bot.console.render` like every other answer).
"""

from __future__ import annotations

import math

from bot.charts.service import ChartData, Line, Panel
from bot.status.snapshot import Level
from bot.status.views import Item, Section, View

BARS = "▁▂▃▄▅▆▇█"
WIDTH = 40  # characters per sparkline


def sparkline(values: list[float], width: int = WIDTH, top: float | None = None) -> str:
    """Values squeezed into `width` characters (each the highest value it covers); a gap is a space."""
    if not values:
        return ""
    chunks = [values[len(values) * n // width: len(values) * (n + 1) // width] for n in range(min(width, len(values)))]
    peaks = [max((v for v in chunk if not math.isnan(v)), default=math.nan) for chunk in chunks]
    known = [p for p in peaks if not math.isnan(p)]
    ceiling = max([*known, top or 0.0]) or 1.0
    return "".join(" " if math.isnan(p) else BARS[min(len(BARS) - 1, int(p / ceiling * (len(BARS) - 1) + 0.5))]
                   for p in peaks)


def line_item(line: Line, panel: Panel) -> Item:
    values = [v for _, v in line.points]
    known = [v for v in values if not math.isnan(v)]
    over = panel.threshold is not None and bool(known) and known[-1] > panel.threshold
    summary = f"now {known[-1]:g}, max {max(known):g}" if known else "nothing measured"
    return Item(Level.WARN if over else None, line.label, f"{sparkline(values, top=panel.threshold)}  {summary}")


def chart_view(chart: ChartData) -> View:
    sections = tuple(Section(panel.unit.capitalize(), tuple(line_item(line, panel) for line in panel.lines),
                             note=panel.threshold_label) for panel in chart.panels)
    return View("Chart", chart.title, None, sections)
