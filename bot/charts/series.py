"""Time series of what opsbot already measures, at one-minute resolution, in the store.

Per queue: waiting tasks, consumers and (when the snapshot carries it) the oldest waiting age; per
task name: succeeded, failed and retried per minute (counted from the task events the history
recorder sees); for the stack: workers up and active tasks. `samples` is pure (a snapshot in, values
out); `SeriesStore` reads and writes the `series` table; `SeriesRecorder` writes, on the leader only,
from the snapshots the bot takes anyway (and takes one itself when nobody did for a while), and
prunes what is older than `OPSBOT_SERIES_DAYS` as it writes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Float, Index, Integer, String, Table, delete, insert, select, update
from sqlalchemy.engine import Engine

from bot.status.snapshot import CeleryState, Snapshot
from bot.tables import metadata, task_history_table

log = logging.getLogger(__name__)

MINUTE = 60
SAMPLE_SECONDS = 30.0  # without a snapshot offered for this long, the recorder takes one itself
WRITE_SECONDS = 5.0  # how often the writer thread stores what it has
PRUNE_SECONDS = 60.0
MAX_NAMES = 50_000  # task ids remembered to name their succeeded/failed events (which carry no name)
# The snapshot field with a queue's oldest waiting age in seconds, when the probe measures it.

series_table = Table(
    "series", metadata,
    Column("kind", String(16), primary_key=True),  # "queue", "task" or "stack"
    Column("name", String(255), primary_key=True),  # the queue or task name; "" for the stack
    Column("metric", String(32), primary_key=True),
    Column("at", Integer, primary_key=True),  # the minute's start, epoch seconds
    Column("value", Float, nullable=False),
    Index("ix_series_at", "at"),
)


@dataclass(frozen=True, order=True)
class Key:
    kind: str
    name: str
    metric: str


# Task events counted per minute, by the metric they count.
COUNTED = {"task-succeeded": "succeeded", "task-failed": "failed", "task-retried": "retried"}
TASK_METRICS = ("succeeded", "failed", "retried")


def minute(at: float) -> int:
    return int(at // MINUTE) * MINUTE


def samples(snapshot: Snapshot) -> dict[Key, float]:
    """The gauges one snapshot gives. Pure. What the snapshot cannot tell is left out, never zero."""
    values: dict[Key, float] = {}
    if snapshot.broker.up:
        for queue in snapshot.broker.queues:
            values[Key("queue", queue.name, "waiting")] = float(queue.ready)
            if queue.consumers is not None:
                values[Key("queue", queue.name, "consumers")] = float(queue.consumers)
            if queue.ready and queue.oldest_sent_at is not None:
                values[Key("queue", queue.name, "waiting_age")] = max(0.0, snapshot.taken_at - queue.oldest_sent_at)
    if snapshot.celery.state is not CeleryState.UNKNOWN:
        values[Key("stack", "", "workers")] = float(sum(1 for w in snapshot.celery.workers if w.answered))
        values[Key("stack", "", "active")] = float(len(snapshot.celery.active_tasks))
    return values


class TaskCounter:
    """Counts finished, failed and retried tasks per name and minute, from the event stream.

    Celery's task-succeeded and task-failed events carry no task name: it is remembered from the
    task's earlier events (sent, received, started), else read from the history at write time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: OrderedDict[str, str] = OrderedDict()
        self._counts: dict[tuple[str, str, int], int] = {}  # (task id or name, metric, minute) -> count
        self._unnamed: set[str] = set()

    def on_event(self, event: dict[str, Any]) -> None:
        task_id, name = str(event.get("uuid") or ""), event.get("name")
        with self._lock:
            if name and task_id:
                self._names[task_id] = str(name)[:255]
                self._names.move_to_end(task_id)
                while len(self._names) > MAX_NAMES:
                    self._names.popitem(last=False)
            metric = COUNTED.get(str(event.get("type")))
            if metric is None or not task_id:
                return
            known = self._names.get(task_id)
            if known is None:
                self._unnamed.add(task_id)
            at = minute(float(event.get("timestamp") or time.time()))
            slot = (known or task_id, metric, at)
            self._counts[slot] = self._counts.get(slot, 0) + 1

    def take(self, lookup: Callable[[set[str]], dict[str, str]]) -> dict[tuple[Key, int], int]:
        """What was counted since the last take, by series and minute; `lookup` names the unnamed."""
        with self._lock:
            counts, self._counts = self._counts, {}
            unnamed, self._unnamed = self._unnamed, set()
        names = lookup(unnamed) if unnamed else {}
        taken: dict[tuple[Key, int], int] = {}
        for (who, metric, at), count in counts.items():
            name = names.get(who, "unknown") if who in unnamed else who
            slot = (Key("task", name, metric), at)
            taken[slot] = taken.get(slot, 0) + count
        return taken


class SeriesStore:
    """The `series` table: gauges overwrite their minute, counters add to it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def write(self, gauges: dict[Key, float], at: float, counts: dict[tuple[Key, int], int]) -> None:
        table = series_table
        rows = [(key, minute(at), value, False) for key, value in gauges.items()]
        rows += [(key, slot, float(count), True) for (key, slot), count in counts.items()]
        with self.engine.begin() as conn:
            for key, slot, value, adds in rows:
                where = (table.c.kind == key.kind, table.c.name == key.name[:255], table.c.metric == key.metric,
                         table.c.at == slot)
                new_value = table.c.value + value if adds else value
                if not conn.execute(update(table).where(*where).values(value=new_value)).rowcount:
                    conn.execute(insert(table).values(kind=key.kind, name=key.name[:255], metric=key.metric,
                                                      at=slot, value=value))

    def prune(self, older_than: float) -> int:
        with self.engine.begin() as conn:
            return conn.execute(delete(series_table).where(series_table.c.at < older_than)).rowcount

    def read(self, keys: Iterable[Key], since: float) -> dict[Key, list[tuple[int, float]]]:
        """Each key's points since `since`, oldest first (keys without any point are left out)."""
        table = series_table
        wanted = set(keys)
        found: dict[Key, list[tuple[int, float]]] = {}
        if not wanted:
            return found
        kinds = {k.kind for k in wanted}
        names = {k.name for k in wanted}
        query = (select(table.c.kind, table.c.name, table.c.metric, table.c.at, table.c.value)
                 .where(table.c.at >= since, table.c.kind.in_(kinds), table.c.name.in_(names))
                 .order_by(table.c.at))
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                key = Key(row.kind, row.name, row.metric)
                if key in wanted:
                    found.setdefault(key, []).append((int(row.at), float(row.value)))
        return found

    def names(self, kind: str, since: float, metrics: Iterable[str] | None = None) -> list[str]:
        """The queue or task names with points since `since`."""
        table = series_table
        query = select(table.c.name).distinct().where(table.c.kind == kind, table.c.at >= since)
        if metrics is not None:
            query = query.where(table.c.metric.in_(list(metrics)))
        with self.engine.connect() as conn:
            return sorted(str(name) for name in conn.execute(query).scalars())

    def task_names(self, task_ids: set[str]) -> dict[str, str]:
        """Names of tasks the history knows, for events that came without one."""
        table = task_history_table
        with self.engine.connect() as conn:
            rows = conn.execute(select(table.c.task_id, table.c.name)
                                .where(table.c.task_id.in_(list(task_ids)), table.c.name.is_not(None)))
            return {str(task_id): str(name) for task_id, name in rows}


class SeriesRecorder:
    """Writes the series on the leader: gauges from snapshots, counts from task events."""

    def __init__(self, store: SeriesStore, days: float, take_snapshot: Callable[[], Snapshot],
                 should_record: Callable[[], bool] = lambda: True) -> None:
        self.store = store
        self.days = days
        self.take_snapshot = take_snapshot
        self.should_record = should_record  # several replicas share one table: only the leader writes
        self.counter = TaskCounter()
        self._offered: Snapshot | None = None
        self._last_sample = float("-inf")
        self._last_prune = float("-inf")
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="series", daemon=True)

    def start(self) -> SeriesRecorder:
        self._thread.start()
        return self

    def offer(self, snapshot: Snapshot) -> None:
        """A snapshot the bot took anyway (a poll, a command): the next write uses the newest."""
        with self._lock:
            if self._offered is None or snapshot.taken_at >= self._offered.taken_at:
                self._offered = snapshot

    def on_task_event(self, event: dict[str, Any]) -> None:
        self.counter.on_event(event)

    def _run(self) -> None:
        while not self._stopped.wait(WRITE_SECONDS if self._last_sample > float("-inf") else 0.5):
            try:
                self.write_once()
            except Exception:
                log.exception("could not write the time series")

    def write_once(self) -> None:
        with self._lock:
            snapshot, self._offered = self._offered, None
        if not self.should_record():
            self.counter.take(lambda ids: {})  # a standby's counts are the leader's to write
            return
        if snapshot is None and time.monotonic() - self._last_sample >= SAMPLE_SECONDS:
            snapshot = self.take_snapshot()
        gauges = samples(snapshot) if snapshot is not None else {}
        if snapshot is not None:
            self._last_sample = time.monotonic()
        counts = self.counter.take(self.store.task_names)
        if gauges or counts:
            self.store.write(gauges, snapshot.taken_at if snapshot else time.time(), counts)
        if time.monotonic() - self._last_prune >= PRUNE_SECONDS:
            self._last_prune = time.monotonic()
            self.store.prune(time.time() - self.days * 86400)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=3)
