"""Each stack's time series in the shared `series` table: its kinds carry its name ("prod/queue").

The charts then work per stack (`/tasks prod chart`), and a backlog alert carries its own stack's chart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from bot.charts.series import Key, SeriesStore
from bot.charts.service import ChartData, Charts, Request

if TYPE_CHECKING:
    from bot.charts.slack import IncidentCharts


class StackSeriesStore(SeriesStore):
    def __init__(self, engine: Engine, stack: str) -> None:
        super().__init__(engine)
        self.stack = stack
        self.prefix = f"{stack}/"

    def _in(self, key: Key) -> Key:
        return Key(self.prefix + key.kind, key.name, key.metric)

    def _out(self, key: Key) -> Key:
        return Key(key.kind.removeprefix(self.prefix), key.name, key.metric)

    def write(self, gauges: dict[Key, float], at: float, counts: dict[tuple[Key, int], int]) -> None:
        super().write({self._in(k): v for k, v in gauges.items()}, at,
                      {(self._in(k), slot): n for (k, slot), n in counts.items()})

    def read(self, keys: Iterable[Key], since: float) -> dict[Key, list[tuple[int, float]]]:
        return {self._out(k): points for k, points in super().read([self._in(k) for k in keys], since).items()}

    def names(self, kind: str, since: float, metrics: Iterable[str] | None = None) -> list[str]:
        return super().names(self.prefix + kind, since, metrics)


class StackCharts(Charts):
    """A stack's charts, titled with its name (a chart posted in a channel says which stack it shows)."""

    def __init__(self, store: SeriesStore, queues: tuple[str, ...], backlog_threshold: int, days: float,
                 clock: Callable[[], float]) -> None:
        super().__init__(store, queues, backlog_threshold, days, clock)
        self.stack = store.stack if isinstance(store, StackSeriesStore) else ""

    def data(self, request: Request) -> ChartData | str:
        chart = super().data(request)
        if isinstance(chart, str) or not self.stack:
            return chart
        return replace(chart, title=f"{chart.title} · {self.stack}")


def in_stack(incident_id: str) -> tuple[str, str]:
    """An incident id's stack and the id as a single stack's engine would make it ("" and itself if none)."""
    stack, _, rest = incident_id.partition("/")
    return (stack, rest) if rest else ("", incident_id)


class StackIncidentCharts:
    """The chart of an alert, drawn from the series of the stack the incident is about."""

    def __init__(self, by_stack: dict[str, IncidentCharts]) -> None:
        self.by_stack = by_stack

    def attach(self, incident_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        stack, own_id = in_stack(incident_id)
        charts = self.by_stack.get(stack)
        return charts.attach(own_id, payload) if charts is not None else payload
