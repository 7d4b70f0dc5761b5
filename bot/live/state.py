"""What each worker runs, kept from Celery's event stream as Flower keeps it, within a bounded memory.

Task events (received, started, succeeded, failed, retried, revoked, rejected) move a task between a
worker's reserved and active sets, and a finished task is dropped at once. Each heartbeat carries the
worker's own count of active tasks: events from one worker arrive in the order it sent them, so when
that count equals the tasks we track at the moment the heartbeat is applied, our list was right as of
that heartbeat and every later event of that worker has been applied since. Such a worker is *known*
and `/tasks` answers for it without asking; any other (no task event seen since it came online or
since we connected, a count that disagrees, a task started since it was last asked, whose pool process
only inspect names, a pool size we never read) is *uncertain* and asked with inspect, by name, and its
answer seeds the state. A finished task leaves the list at its event, without asking.

What inspect alone can tell (pool, its size, the consumed queues, autoscale bounds, the start time)
is kept per worker with the time it was read, and shown with its age.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from bot.probes.celery_probe import autoscale_bounds, pool_name, pool_size, queue_names
from bot.status.snapshot import TaskInfo, WorkerInfo
from bot.task_args import summarize_repr

# Tracked tasks per worker, active and reserved together: past it the worker is asked instead (a
# prefork pool of 256 with a full prefetch is rare; the cap keeps a runaway worker from costing more).
MAX_TASKS_PER_WORKER = 256
# Finished task ids remembered, fleet-wide, so an inspect answer sent before a task ended cannot bring it back.
FINISHED_MEMORY = 1024
# Celery's rule (celery.events.state): a worker is gone when no heartbeat came for twice its interval.
EXPIRE_FACTOR = 2.0
DEFAULT_FREQ = 2.0
FORGET_AFTER = 3600.0  # seconds without a heartbeat before a worker's entry is dropped
FINISHING = frozenset({"task-succeeded", "task-failed", "task-retried", "task-revoked", "task-rejected"})


@dataclass(slots=True)
class LiveTask:
    id: str
    name: str | None  # None: seen started, never seen received (we connected in between)
    args_summary: str
    running: bool = False  # started (active), else received (reserved or scheduled)
    started_at: float | None = None  # the worker's clock, as inspect's time_start
    worker_pid: int | None = None
    scheduled: bool = False  # received with an ETA: held until its time, neither reserved nor active
    seen: float = 0.0  # monotonic time it was last changed by an event

    @classmethod
    def from_info(cls, info: TaskInfo, running: bool) -> LiveTask:
        """From an inspect answer (bot.probes.celery_probe.active_tasks: the one reading of a reply)."""
        return cls(id=info.id, name=sys.intern(info.name), args_summary=info.args_summary, running=running,
                   started_at=info.started_at if running else None, worker_pid=info.worker_pid)

    def info(self, worker: str) -> TaskInfo:
        return TaskInfo(id=self.id, name=self.name or "?", worker=worker, started_at=self.started_at,
                        args_summary=self.args_summary, worker_pid=self.worker_pid)


@dataclass(frozen=True, slots=True)
class TaskLabels:
    """A task's labels for the metrics, when celery's State no longer holds it (bot.metrics reads these names)."""

    name: str | None
    queue: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerFacts:
    """What only inspect tells, as read at `read_at` (epoch seconds)."""

    pool: str | None
    concurrency: int | None
    started: float | None  # epoch seconds the worker started (read time minus its uptime)
    queues: tuple[str, ...] | None
    autoscale: tuple[int, int] | None
    processed: int | None
    read_at: float


def facts_from(stats: dict[str, Any], queues: Any, read_at: float) -> WorkerFacts:
    totals = stats.get("total") or {}
    uptime = stats.get("uptime")
    return WorkerFacts(pool=pool_name(stats), concurrency=pool_size(stats),
                       started=read_at - uptime if isinstance(uptime, (int, float)) else None,
                       queues=queue_names(queues), autoscale=autoscale_bounds(stats),
                       processed=sum(totals.values()) if isinstance(totals, dict) else None, read_at=read_at)


@dataclass(slots=True)
class LiveWorker:
    heard_at: float = 0.0  # epoch seconds of the last heartbeat, by our clock
    freq: float = DEFAULT_FREQ
    loadavg: tuple[float, ...] | None = None
    processed: int | None = None
    task_events: bool = False  # a task event came from it since it came online (or we connected)
    agreed: bool = False  # the last heartbeat's active count matched our list (or an inspect seeded it)
    # A task started since the last inspect (its pool process unknown: task-started carries the worker's pid),
    # or more tasks than the cap: asked by name once, then vouched for by the events again.
    incomplete: bool = False
    tasks: dict[str, LiveTask] = field(default_factory=dict)
    facts: WorkerFacts | None = None
    active_infos: tuple[TaskInfo, ...] | None = None  # built once per change, for every answer until the next

    def active(self) -> list[LiveTask]:
        return [t for t in self.tasks.values() if t.running]

    def reserved(self) -> int:
        return sum(1 for t in self.tasks.values() if not t.running and not t.scheduled)

    def alive(self, now: float) -> bool:
        return self.heard_at > 0 and now < self.heard_at + self.freq * EXPIRE_FACTOR

    def known(self, now: float) -> bool:
        return (self.task_events and self.agreed and not self.incomplete and self.facts is not None
                and self.alive(now))


@dataclass(frozen=True)
class LiveView:
    """The known workers as the status shows them, and the ones to ask."""

    workers: tuple[WorkerInfo, ...]
    uncertain: frozenset[str]
    heard_age: float | None  # seconds since the least recently heard of the known workers
    facts_age: float | None  # seconds since the oldest pool reading among them


class LiveState:
    """Thread-safe: the event thread applies, the probes and the reconciler read and seed."""

    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self._workers: dict[str, LiveWorker] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    # --- events ------------------------------------------------------------------------------

    def apply(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type", ""))
        name = event.get("hostname")
        if not isinstance(name, str) or not kind.startswith(("worker-", "task-")) or kind == "task-sent":
            return  # task-sent comes from producers, not from the worker that will run the task
        with self._lock:
            if kind.startswith("worker-"):
                self._worker_event(kind, name, event)
            else:
                self._task_event(kind, name, event)

    def _worker_event(self, kind: str, name: str, event: dict[str, Any]) -> None:
        if kind == "worker-offline":
            self._workers.pop(name, None)
            return
        worker = self._workers.get(name)
        if worker is None or kind == "worker-online":  # a (re)started worker runs nothing we knew of
            worker = self._workers[name] = LiveWorker()
        worker.heard_at = self.clock()
        freq = event.get("freq")
        worker.freq = float(freq) if isinstance(freq, (int, float)) and freq > 0 else DEFAULT_FREQ
        loadavg = event.get("loadavg")
        worker.loadavg = tuple(loadavg) if isinstance(loadavg, (list, tuple)) else None
        processed = event.get("processed")
        worker.processed = processed if isinstance(processed, int) else worker.processed
        active = event.get("active")
        if kind == "worker-heartbeat" and isinstance(active, int):
            worker.agreed = active == sum(1 for t in worker.tasks.values() if t.running)

    def _task_event(self, kind: str, name: str, event: dict[str, Any]) -> None:
        worker = self._workers.get(name)
        task_id = event.get("uuid")
        if worker is None or not isinstance(task_id, str):
            return  # no heartbeat yet: nothing to vouch for this worker's list anyway
        worker.task_events = True
        worker.heard_at = self.clock()  # any event of a worker shows it alive, as in celery's State
        worker.active_infos = None
        if kind in FINISHING:
            worker.tasks.pop(task_id, None)
            self._finished[task_id] = None
            while len(self._finished) > FINISHED_MEMORY:
                self._finished.popitem(last=False)
            return
        task = worker.tasks.get(task_id)
        if task is None:
            if len(worker.tasks) >= MAX_TASKS_PER_WORKER:
                worker.incomplete = True
                return
            task = worker.tasks[task_id] = LiveTask(task_id, None, "")
        if kind == "task-received":
            task.name = sys.intern(str(event.get("name") or "?"))
            task.args_summary = summarize_repr(event.get("args"), event.get("kwargs"))
            task.scheduled = bool(event.get("eta"))
        elif kind == "task-started":
            task.running = True
            task.started_at = event.get("timestamp") or self.clock()
            task.scheduled = False
            # Its `pid` is the worker's, not the pool child's that a stuck-task alert names: ask the worker once.
            worker.incomplete = True
        task.seen = time.monotonic()

    # --- inspect answers ---------------------------------------------------------------------

    def seed(self, name: str, active: tuple[TaskInfo, ...], reserved: tuple[TaskInfo, ...],
             facts: WorkerFacts, asked_at: float) -> None:
        """A worker's inspect answer, asked at `asked_at` (monotonic): its lists replace ours, but a task an
        event started after we asked stays, and a task an event finished is not brought back."""
        with self._lock:
            worker = self._workers.get(name)
            if worker is None:
                return  # no heartbeat from it: the probe asks it every time, there is nothing to keep
            tasks = {}
            for info, running in [(t, True) for t in active] + [(t, False) for t in reserved]:
                if info.id and info.id not in self._finished and len(tasks) < MAX_TASKS_PER_WORKER:
                    tasks[info.id] = LiveTask.from_info(info, running)
            tasks.update({t.id: t for t in worker.tasks.values() if t.seen > asked_at and t.id not in tasks})
            worker.tasks = tasks
            worker.facts = facts
            worker.agreed = True
            # A task an event started after we asked has no pool process yet: ask again for it.
            worker.incomplete = (len(active) + len(reserved) > MAX_TASKS_PER_WORKER
                                 or any(t.running and t.worker_pid is None for t in tasks.values()))
            worker.active_infos = None

    def seed_facts(self, name: str, facts: WorkerFacts) -> None:
        """A pool reading without the task lists (they came too late): the tasks stay as the events tell."""
        with self._lock:
            if name in self._workers:
                self._workers[name].facts = facts

    def forget_facts(self, names: list[str]) -> None:
        """Worker control changed these workers' pools or queues: read them again before showing them."""
        with self._lock:
            for name in names:
                if name in self._workers:
                    self._workers[name].facts = None

    def reset(self) -> None:
        """The event connection dropped: events were missed, no worker's tasks can be vouched for (the
        workers themselves are remembered: one gone quiet meanwhile is listed as lost)."""
        with self._lock:
            for worker in self._workers.values():
                worker.tasks.clear()
                worker.task_events = worker.agreed = False
                worker.active_infos = None

    # --- reading -----------------------------------------------------------------------------

    def view(self, expected: set[str]) -> LiveView:
        now = self.clock()
        known, heard, read = [], [], []
        with self._lock:
            for name in sorted(expected):
                worker = self._workers.get(name)
                if worker is None or not worker.known(now):
                    continue
                known.append(self._info(name, worker, now))
                heard.append(worker.heard_at)
                read.append(worker.facts.read_at)  # type: ignore[union-attr]  # known: facts are set
        return LiveView(workers=tuple(known), uncertain=frozenset(expected - {w.name for w in known}),
                        heard_age=now - min(heard) if heard else None, facts_age=now - min(read) if read else None)

    @staticmethod
    def _info(name: str, worker: LiveWorker, now: float) -> WorkerInfo:
        facts = worker.facts
        assert facts is not None
        if worker.active_infos is None:
            worker.active_infos = tuple(t.info(name) for t in worker.active())
        return WorkerInfo(name=name, pool=facts.pool, concurrency=facts.concurrency, active=worker.active_infos,
                          reserved=worker.reserved(),
                          processed=worker.processed if worker.processed is not None else facts.processed,
                          uptime=now - facts.started if facts.started is not None else None,
                          loadavg=worker.loadavg, heartbeat_age=now - worker.heard_at, queues=facts.queues,
                          autoscale=facts.autoscale)

    def alive_workers(self) -> set[str]:
        now = self.clock()
        with self._lock:
            return {name for name, worker in self._workers.items() if worker.alive(now)}

    def worker_details(self) -> dict[str, dict]:
        """What the heartbeats tell about each worker: age of the last one, alive or not, load average."""
        now = self.clock()
        with self._lock:
            return {name: {"heartbeat_age": now - w.heard_at, "alive": w.alive(now), "loadavg": w.loadavg}
                    for name, w in self._workers.items()}

    def last_heard(self) -> float | None:
        """Epoch seconds of the latest heartbeat or task event from any worker; None if none came."""
        with self._lock:
            return max((w.heard_at for w in self._workers.values()), default=None)

    def to_reconcile(self, stale_after: float) -> list[str]:
        """Workers alive but not known, and those whose pool reading is older than `stale_after` seconds."""
        now = self.clock()
        with self._lock:
            return sorted(name for name, w in self._workers.items() if w.alive(now) and (
                not w.known(now) or w.facts is None or now - w.facts.read_at > stale_after))

    def prune(self) -> None:
        now = self.clock()
        with self._lock:
            for name in [n for n, w in self._workers.items() if now - w.heard_at > FORGET_AFTER]:
                del self._workers[name]

    def task_name(self, worker: str, task_id: str) -> str | None:
        """The name of a task this worker runs or holds (finishing events do not carry it)."""
        with self._lock:
            task = self._workers[worker].tasks.get(task_id) if worker in self._workers else None
            return task.name if task is not None else None
