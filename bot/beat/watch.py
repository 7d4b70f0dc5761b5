"""Watching the beat schedule run: each run is seen in the `task-sent` (from beat, when it sends events)
or `task-received` (from the worker) event of the entry's task, and its outcome in the task's later events.

`BeatWatch` keeps the last run of every entry in memory and builds a `BeatReport` on demand; the
judging is done by bot.beat.health.
"""

from __future__ import annotations

import ast
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from bot.beat import schedules
from bot.beat.health import default_grace
from bot.beat.model import BeatReport, EntryStatus
from bot.celeryapp import AppFacts, BeatEntry
from bot.history.record import EVENT_STATES
from bot.redact import redact

log = logging.getLogger(__name__)

RUN_EVENTS = ("task-sent", "task-received")
MAX_TRACKED = 2000  # task ids remembered to attach outcomes to runs
DATABASE_REFRESH = 30.0  # seconds between two readings of a database schedule
MAX_REPR = 4096  # event args longer than this are not parsed (Celery cuts them near 1024 anyway)


@dataclass(frozen=True)
class Run:
    at: float
    task_id: str
    outcome: str | None = None


def _literal(text: Any) -> Any:
    """A Python literal from an event's args repr, or None when it is not one (a datetime, a custom object)."""
    if not isinstance(text, str) or len(text) > MAX_REPR:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def same_arguments(entry: BeatEntry, event: dict[str, Any]) -> bool:
    args, kwargs = _literal(event.get("args")), _literal(event.get("kwargs"))
    if args is None or kwargs is None:
        # Not literals: compare the reprs as Celery made them from the entry's own arguments.
        return event.get("args") in (repr(entry.args), repr(list(entry.args))) and \
            event.get("kwargs") == repr(entry.kwargs)
    return list(args) == list(entry.args) and kwargs == entry.kwargs


def match(entries: tuple[BeatEntry, ...], event: dict[str, Any]) -> BeatEntry | None:
    """The entry a task event belongs to: by task name, and by arguments where entries share a task."""
    candidates = [entry for entry in entries if entry.task == event.get("name")]
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    return next((entry for entry in candidates if same_arguments(entry, event)), None)


class BeatWatch:
    def __init__(self, load_entries: Callable[[], tuple[BeatEntry, ...]], grace: float | None = None,
                 connected_since: Callable[[], float | None] = lambda: None, source: str = "beat_schedule",
                 refresh_every: float | None = None, clock: Callable[[], float] = time.time) -> None:
        self.load_entries = load_entries
        self.grace = grace  # OPSBOT_BEAT_GRACE; None: 10 % of each entry's period, at least a minute
        self.connected_since = connected_since  # when the event stream (re)connected; None while down
        self.source = source
        self.refresh_every = refresh_every  # a database schedule changes: read it again this often
        self.clock = clock
        self.started_at = clock()
        self.entries: tuple[BeatEntry, ...] = ()
        self._read_entries()
        self._runs: dict[str, Run] = {}
        self._task_entry: OrderedDict[str, str] = OrderedDict()  # task id -> entry name
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def start(self) -> BeatWatch:
        if self.refresh_every:
            threading.Thread(target=self._refresh_loop, name="beat-schedule", daemon=True).start()
        return self

    def _refresh_loop(self) -> None:
        while not self._stopped.wait(self.refresh_every or 60.0):
            self._read_entries()

    def _read_entries(self) -> None:
        try:
            self.entries = self.load_entries()
        except Exception as exc:  # the schedule's database is down: keep watching what we had
            log.warning("could not read the beat schedule (%s: %s); keeping the last one", type(exc).__name__,
                        redact(str(exc))[:200])

    def stop(self) -> None:
        self._stopped.set()

    def on_event(self, event: dict[str, Any]) -> None:
        kind, task_id = event.get("type"), event.get("uuid")
        if not task_id:
            return
        with self._lock:
            if kind in RUN_EVENTS:
                self._on_run(event, str(task_id))
            elif kind in EVENT_STATES and (name := self._task_entry.get(str(task_id))):
                run = self._runs.get(name)
                if run is not None and run.task_id == task_id:
                    self._runs[name] = replace(run, outcome=EVENT_STATES[kind])

    def _on_run(self, event: dict[str, Any], task_id: str) -> None:
        if task_id in self._task_entry:
            return  # the same run seen again (sent, then received)
        entry = match(self.entries, event)
        if entry is None:
            return
        at = float(event.get("timestamp") or self.clock())
        self._task_entry[task_id] = entry.name
        while len(self._task_entry) > MAX_TRACKED:
            self._task_entry.popitem(last=False)
        previous = self._runs.get(entry.name)
        if previous is None or at >= previous.at:
            self._runs[entry.name] = Run(at, task_id, EVENT_STATES[str(event["type"])])

    def report(self) -> BeatReport:
        connected = self.connected_since()
        since = max(self.started_at, connected or 0.0)
        with self._lock:
            runs = dict(self._runs)
        return BeatReport(tuple(self._status(entry, runs.get(entry.name), since) for entry in self.entries),
                          watching_since=since, watching=connected is not None, source=self.source)

    def _status(self, entry: BeatEntry, run: Run | None, since: float) -> EntryStatus:
        last = max(filter(None, (run.at if run else None, entry.last_run_at)), default=None)
        # A run may have happened unseen before `since`: expect the next one only after it.
        expected = schedules.next_run(entry.schedule, max(last or 0.0, since))
        period = schedules.period(entry.schedule, expected)
        return EntryStatus(
            name=entry.name, task=entry.task, schedule=schedules.describe(entry.schedule), period=period,
            next_run_at=expected, grace=self.grace if self.grace is not None else default_grace(period),
            last_run_at=last, last_outcome=run.outcome if run and run.at == last else None)


def watch_for(facts: AppFacts | None, grace: float | None,
              connected_since: Callable[[], float | None]) -> BeatWatch | None:
    """The watch for the app's schedule: its beat_schedule, or django-celery-beat's database; None without an app."""
    if facts is None:
        return None
    if facts.database_scheduler:
        from bot.beat.database import database_entries

        return BeatWatch(database_entries, grace, connected_since, source="django-celery-beat database",
                         refresh_every=DATABASE_REFRESH).start()
    schedule = facts.beat_schedule
    return BeatWatch(lambda: schedule, grace, connected_since).start()
