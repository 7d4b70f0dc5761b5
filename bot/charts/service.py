"""What a chart shows: the subject and period a user asked for, turned into panels of series.

`parse` reads `chart [queues|tasks|workers|<queue>|<task-name>] [1h|6h|24h|7d]`; `Charts.data` reads
the store and returns a `ChartData` (plain data, drawn by `bot.charts.draw` as a PNG and by
`bot.charts.sparkline` for the console) or a sentence saying why there is nothing to draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from bot.charts.series import MINUTE, TASK_METRICS, Key, SeriesStore
from bot.health.rules import FAILING, WAITING

PERIODS = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}
PERIOD_NAMES = {"1h": "last hour", "6h": "last 6 hours", "24h": "last 24 hours", "7d": "last 7 days"}
# Bucket width per period: at most a few hundred points, readable at Slack's preview size.
STEPS = {"1h": 60, "6h": 120, "24h": 600, "7d": 3600}
SUBJECTS = ("queues", "tasks", "workers")
MAX_SERIES = 4  # lines per panel: more is a tangle nobody reads
USAGE = "Usage: /tasks chart [queues|tasks|workers|<queue>|<task-name>] [1h|6h|24h|7d]"


# A panel to read: its unit, and the series in it with their labels.
Spec = tuple[str, list[tuple[Key, str]]]


class ChartUsage(ValueError):
    """A chart request we do not understand; the message is safe to show."""


@dataclass(frozen=True)
class Line:
    label: str
    role: str  # picks the colour: "waiting", "failed", ... (see bot.charts.draw.COLOURS)
    points: tuple[tuple[float, float], ...]  # (epoch seconds, value); NaN where nothing was measured


@dataclass(frozen=True)
class Panel:
    unit: str  # the y axis label, with its unit
    lines: tuple[Line, ...]
    threshold: float | None = None
    threshold_label: str = ""


@dataclass(frozen=True)
class ChartData:
    title: str
    start: float
    end: float
    panels: tuple[Panel, ...]

    @property
    def alt_text(self) -> str:
        """What the chart says, for screen readers and Slack's alt text."""
        parts = []
        for panel in self.panels:
            for line in panel.lines:
                values = [v for _, v in line.points if not math.isnan(v)]
                if values:
                    parts.append(f"{line.label}: now {values[-1]:g}, max {max(values):g} {panel.unit}")
        return f"{self.title}. " + "; ".join(parts)


@dataclass(frozen=True)
class Request:
    subject: str = "queues"
    period: str = "1h"


def parse(words: list[str]) -> Request:
    """`[subject] [period]` in either order; the subject may be any queue or task name."""
    period = [w for w in words if w.lower() in PERIODS]
    subject = [w for w in words if w.lower() not in PERIODS]
    if len(period) > 1 or len(subject) > 1:
        raise ChartUsage(USAGE)
    return Request(subject[0] if subject else "queues", period[0].lower() if period else "1h")


def buckets(points: list[tuple[int, float]], start: float, end: float, step: int, counter: bool
            ) -> tuple[tuple[float, float], ...]:
    """Minute points on a regular grid of `step` seconds: gauges keep a bucket's highest value (a
    spike stays visible) and show a gap where nothing was measured; counters become per-minute rates."""
    first = int(start // step) * step
    grid = range(first, int(end) + 1, step)
    sums: dict[int, float] = {}
    for at, value in points:
        slot = int(at // step) * step
        sums[slot] = sums.get(slot, 0.0) + value if counter else max(sums.get(slot, value), value)
    if counter:
        return tuple((float(t), sums.get(t, 0.0) * MINUTE / step) for t in grid)
    return tuple((float(t), sums.get(t, math.nan)) for t in grid)


class Charts:
    def __init__(self, store: SeriesStore, queues: tuple[str, ...], backlog_threshold: int,
                 days: float, clock: Callable[[], float]) -> None:
        self.store = store
        self.queues = queues
        self.backlog_threshold = backlog_threshold
        self.days = days
        self.clock = clock

    def data(self, request: Request) -> ChartData | str:
        """The chart asked for, or why there is none."""
        end = self.clock()
        start = end - PERIODS[request.period]
        build = self._builder(request.subject, start)
        if build is None:
            return (f"I have no series called '{request.subject[:60]}'. {USAGE}: a watched queue, or a task "
                    f"name seen in the last {self.days:g} days.")
        title, panels = build
        read = self.store.read({k for _, specs in panels for k, _ in specs}, start - STEPS[request.period])
        drawn = []
        for (unit, specs), threshold in zip(panels, self._thresholds(panels), strict=True):
            lines = tuple(Line(label, key.metric, buckets(read[key], start, end, STEPS[request.period],
                                                           key.kind == "task"))
                          for key, label in specs if key in read)
            if lines:
                drawn.append(Panel(unit, lines[:MAX_SERIES], *threshold))
        if not drawn:
            return f"Nothing measured for {title.lower()} in the {PERIOD_NAMES[request.period]} yet."
        return ChartData(f"{title}, {PERIOD_NAMES[request.period]}", start, end, tuple(drawn))

    def _thresholds(self, panels: list[Spec]) -> list[tuple[float | None, str]]:
        """The backlog threshold goes on panels of waiting tasks."""
        found = []
        for unit, _ in panels:
            if unit == WAITING_UNIT:
                found.append((float(self.backlog_threshold), f"alert threshold {self.backlog_threshold}"))
            else:
                found.append((None, ""))
        return found

    def _builder(self, subject: str, since: float) -> tuple[str, list[Spec]] | None:
        if subject.lower() == "queues":
            queues = self._busiest_queues(since)
            return "Tasks waiting per queue", [(WAITING_UNIT, [(Key("queue", q, "waiting"), q) for q in queues])]
        if subject.lower() == "tasks":
            names = self._busiest_tasks(since)
            return "Failed tasks per name", [(RATE_UNIT, [(Key("task", n, "failed"), n) for n in names])]
        if subject.lower() == "workers":
            return "Workers", [("workers up", [(Key("stack", "", "workers"), "workers up")]),
                               ("tasks running", [(Key("stack", "", "active"), "active tasks")])]
        if subject in self.queues or subject in self.store.names("queue", since):
            return f"Queue {subject}", queue_panels(subject)
        if subject in self.store.names("task", self.clock() - self.days * 86400):
            return f"Task {subject}", [(RATE_UNIT, [(Key("task", subject, m), m) for m in TASK_METRICS])]
        return None

    def _busiest_queues(self, since: float) -> list[str]:
        keys = [Key("queue", q, "waiting") for q in {*self.queues, *self.store.names("queue", since)}]
        return top(self.store.read(keys, since), keys)

    def _busiest_tasks(self, since: float) -> list[str]:
        keys = [Key("task", n, "failed") for n in self.store.names("task", since, ["failed"])]
        return top(self.store.read(keys, since), keys)


WAITING_UNIT = "tasks waiting"
RATE_UNIT = "tasks per minute"


def queue_panels(queue: str) -> list[Spec]:
    return [(WAITING_UNIT, [(Key("queue", queue, "waiting"), "waiting")]),
            ("oldest waiting (s)", [(Key("queue", queue, "waiting_age"), "oldest waiting")]),
            ("consumers", [(Key("queue", queue, "consumers"), "consumers")])]


def top(read: dict[Key, list[tuple[int, float]]], keys: list[Key]) -> list[str]:
    """The names of the series with the highest values, at most MAX_SERIES of them."""
    ranked = sorted(keys, key=lambda k: (-max((v for _, v in read.get(k, [])), default=-1.0), k.name))
    return [k.name for k in ranked[:MAX_SERIES] if k in read]


def incident_subject(key: str) -> str | None:
    """The chart an incident's message carries: the series concerned, or None.

    Backlog and waiting-time incidents are about a queue (`queue:<name>:backlog`, `queue:<name>:wait`);
    failing-task incidents about a task name (`task:failing:<name>`).
    """
    if key.startswith(FAILING):
        return key.removeprefix(FAILING)
    head, _, rest = key.partition(":")
    name, _, what = rest.rpartition(":")
    if head == "queue" and name and what in ("backlog", WAITING.lstrip(":")):
        return name
    return None
