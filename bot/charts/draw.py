"""A chart as a PNG, with matplotlib's headless Agg backend. Pure: chart data in, PNG bytes out.

Made to be read at Slack's preview size (the image is shown about half as wide as it is): a title,
large type, thick lines, axes labelled with their unit and the local time, the alert threshold as a
dashed line, at most a few series, in Okabe and Ito's colour-blind-safe palette.
"""

from __future__ import annotations

import io
import math
import time
from datetime import datetime

import matplotlib

matplotlib.use("Agg")  # no display, ever; set before anything draws

from matplotlib import dates as mdates
from matplotlib.figure import Figure

from bot.charts.service import ChartData, Panel

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour-vision deficiency.
OKABE_ITO = {"orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
             "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7", "black": "#000000"}
# A series' colour follows what it means, so "failed" looks the same on every chart.
COLOURS = {"waiting": OKABE_ITO["blue"], "failed": OKABE_ITO["vermillion"], "succeeded": OKABE_ITO["green"],
           "retried": OKABE_ITO["orange"], "consumers": OKABE_ITO["sky"], "workers": OKABE_ITO["blue"],
           "active": OKABE_ITO["green"], "waiting_age": OKABE_ITO["orange"]}
# Lines of one role on one panel (several queues' waiting tasks) take these in turn.
CYCLE = (OKABE_ITO["blue"], OKABE_ITO["orange"], OKABE_ITO["green"], OKABE_ITO["vermillion"])
THRESHOLD = OKABE_ITO["purple"]
WIDTH_INCHES, PANEL_INCHES, SMALL_PANEL_INCHES, DPI = 8.0, 2.8, 1.5, 100
LINE_WIDTH = 3.0


def literal(text: str) -> str:
    """Data shown as written: matplotlib reads `$...$` as math."""
    return text.replace("$", r"\$")


def colours(panel: Panel) -> list[str]:
    roles = [line.role for line in panel.lines]
    if len(set(roles)) == len(roles):
        return [COLOURS.get(role, CYCLE[n % len(CYCLE)]) for n, role in enumerate(roles)]
    return [CYCLE[n % len(CYCLE)] for n in range(len(roles))]


def time_axis_label(start: float) -> str:
    zone = time.strftime("%Z", time.localtime(start)) or "local"
    return f"local time ({zone})"


def draw_panel(ax: object, panel: Panel, chart: ChartData) -> None:
    for line, colour in zip(panel.lines, colours(panel), strict=True):
        xs = [datetime.fromtimestamp(at) for at, _ in line.points]
        ys = [value for _, value in line.points]
        ax.plot(xs, ys, color=colour, linewidth=LINE_WIDTH, label=literal(line.label))  # type: ignore[attr-defined]
    if panel.threshold is not None:
        ax.axhline(panel.threshold, color=THRESHOLD, linewidth=2.0, linestyle=(0, (6, 3)),  # type: ignore[attr-defined]
                   label=literal(panel.threshold_label))
    top = max([v for line in panel.lines for _, v in line.points if not math.isnan(v)] + [panel.threshold or 0, 1])
    ax.set_ylim(0, top * 1.15)  # type: ignore[attr-defined]
    ax.set_xlim(datetime.fromtimestamp(chart.start), datetime.fromtimestamp(chart.end))  # type: ignore[attr-defined]
    ax.set_ylabel(literal(panel.unit), fontsize=12)  # type: ignore[attr-defined]
    ax.grid(True, color="#DDDDDD", linewidth=0.8)  # type: ignore[attr-defined]
    ax.tick_params(labelsize=11)  # type: ignore[attr-defined]
    ax.yaxis.get_major_locator().set_params(integer=True)  # type: ignore[attr-defined]
    ax.legend(loc="upper left", fontsize=10, frameon=True, framealpha=0.85)  # type: ignore[attr-defined]


def png(chart: ChartData) -> bytes:
    # The first panel is the one the chart is about; the others (consumers, age) give context.
    extra = len(chart.panels) - 1
    figure = Figure(figsize=(WIDTH_INCHES, 1.2 + PANEL_INCHES + SMALL_PANEL_INCHES * extra), dpi=DPI,
                    layout="constrained")
    ratios = [PANEL_INCHES] + [SMALL_PANEL_INCHES] * extra
    axes = figure.subplots(len(chart.panels), 1, sharex=True, squeeze=False,
                           gridspec_kw={"height_ratios": ratios})[:, 0]
    for ax, panel in zip(axes, chart.panels, strict=True):
        draw_panel(ax, panel, chart)
    span = chart.end - chart.start
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%a %H:%M" if span > 86400 else "%H:%M"))
    axes[-1].set_xlabel(time_axis_label(chart.start), fontsize=12)
    figure.suptitle(literal(chart.title), fontsize=15, fontweight="bold")
    out = io.BytesIO()
    figure.savefig(out, format="png", facecolor="white")
    return out.getvalue()
