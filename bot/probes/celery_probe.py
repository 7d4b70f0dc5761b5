"""The Celery probe: asks the workers, over the broker, what they run, waiting only for those expected."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import kombu
from celery import Celery

from bot.config import Settings
from bot.probes.failures import problem_from, target_of
from bot.status.snapshot import CeleryState, CeleryStatus, LiveAges, TaskInfo, WorkerInfo
from bot.task_args import summarize_repr

# With no idea how many workers to expect, wait at most this long for their replies.
DISCOVERY_TIMEOUT = 1.0
# Workers send a heartbeat every 2 s. When none has for longer than that, nobody is expected to reply:
# ask briefly all the same, for a worker started with --without-heartbeat.
HEARTBEAT_INTERVAL = 2.0
QUIET_DISCOVERY_TIMEOUT = 0.25
LOST_MEMORY = 3600.0  # a worker whose heartbeats stopped is listed as lost for an hour


def make_control_app(broker_url: str, timeout: float) -> Celery:
    """A task-less Celery app used only for remote control; it never retries a dead broker."""
    app = Celery("opsbot", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_connection_timeout=timeout,
        broker_connection_retry=False,
        broker_connection_max_retries=0,
        broker_transport_options={"max_retries": 0, "socket_timeout": timeout,
                                  "socket_connect_timeout": timeout},
        worker_hijack_root_logger=False,
    )
    return app


def pool_name(stats: dict[str, Any]) -> str | None:
    implementation = (stats.get("pool") or {}).get("implementation") or ""
    # "celery.concurrency.prefork:TaskPool" -> "prefork"; "...thread:TaskPool" -> "threads"
    module = implementation.split(":")[0].rsplit(".", 1)[-1]
    return {"thread": "threads"}.get(module, module) or None


def pool_size(stats: dict[str, Any]) -> int | None:
    """The processes a pool runs now. Prefork's `max-concurrency` keeps its start value after pool_grow or
    pool_shrink; its list of processes does not."""
    pool = stats.get("pool") or {}
    processes = pool.get("processes")
    return len(processes) if isinstance(processes, list) and processes else pool.get("max-concurrency")


def autoscale_bounds(stats: dict[str, Any]) -> tuple[int, int] | None:
    """(min, max) of a worker started with --autoscale (its stats carry an `autoscaler`)."""
    scaler = stats.get("autoscaler")
    if not isinstance(scaler, dict) or scaler.get("max") is None:
        return None
    return int(scaler.get("min") or 0), int(scaler["max"])


def queue_names(active_queues: Any) -> tuple[str, ...] | None:
    """The names in a worker's `active_queues` reply; None when it gave none."""
    if not isinstance(active_queues, list):
        return None
    return tuple(str(q.get("name")) for q in active_queues if isinstance(q, dict))


def task_from(raw: dict[str, Any], worker: str) -> TaskInfo:
    return TaskInfo(
        id=str(raw.get("id", "")),
        name=str(raw.get("name") or raw.get("type") or "?"),
        worker=worker,
        started_at=raw.get("time_start"),
        args_summary=summarize_repr(raw.get("args"), raw.get("kwargs")),
        worker_pid=raw.get("worker_pid"),
    )


def active_tasks(answers: dict[str, Any]) -> dict[str, tuple[TaskInfo, ...]]:
    """An `active` reply as typed tasks per worker: the probe, task control and the worker views all read
    the same reply, so it is turned into `TaskInfo` here and nowhere else."""
    return {worker: tuple(task_from(raw, worker) for raw in tasks or [] if isinstance(raw, dict))
            for worker, tasks in answers.items()}


def ask_active(app: Celery, conn: kombu.Connection, expected: set[str], deadline: float,
               discovery: float = DISCOVERY_TIMEOUT) -> dict[str, Any]:
    """Every worker's `active` tasks, waiting only for the workers we expect.

    `limit` counts replies, not names: a worker we did not expect may take the place of one we did.
    If the limit was reached without them, the missing ones are asked again by name. With nobody to
    expect, wait at most `discovery` seconds.
    """
    limit = len(expected) or None
    remaining = max(0.05, deadline - time.monotonic())
    timeout = min(remaining, discovery) if limit is None else remaining
    # safe=True: the reprs Celery cut at send time, not full reprs of arguments of any size.
    answers = app.control.inspect(timeout=timeout, limit=limit, connection=conn).active(safe=True) or {}
    missing = sorted(expected - set(answers))
    if missing and limit is not None and len(answers) >= limit:
        timeout = max(0.05, deadline - time.monotonic())
        inspector = app.control.inspect(destination=missing, timeout=timeout, limit=len(missing), connection=conn)
        answers.update(inspector.active(safe=True) or {})
    return answers


class CeleryProbe:
    """Asks the workers, over the broker, what they run.

    `inspect(limit=N)` returns as soon as N workers replied instead of waiting the whole timeout
    (10 ms against 1 s), so we remember how many workers to expect: the ones that answered last
    time, or those whose heartbeats we see (`alive_workers`, from `bot.status.heartbeats`).
    """

    def __init__(self, settings: Settings,
                 alive_workers: Callable[[], set[str] | None] | None = None,
                 heartbeat_details: Callable[[], dict[str, dict]] | None = None,
                 heartbeat_quiet: Callable[[], float | None] | None = None) -> None:
        self.settings = settings
        self.app = make_control_app(settings.broker_url, settings.probe_timeout)
        # Heartbeats are fresher than our last answer (a dead worker drops out after ~4 s).
        self.alive_workers = alive_workers or (lambda: None)
        # What heartbeats say of each worker (age, load average); empty without a monitor.
        self.heartbeat_details = heartbeat_details or (lambda: {})
        # Seconds since any worker sent a heartbeat; None while heartbeats cannot be followed.
        self.heartbeat_quiet = heartbeat_quiet or (lambda: None)
        self._last_answered: set[str] = set()
        self._lock = threading.Lock()

    def expected(self) -> set[str]:
        """Whom to wait for: the workers whose heartbeats we see and those that answered last time
        (some workers send no heartbeats; a worker that died is dropped after one slow answer)."""
        alive = self.alive_workers() or set()
        with self._lock:
            return alive | self._last_answered

    def probe(self, deadline: float) -> CeleryStatus:
        expected = self.expected()
        quiet = self.heartbeat_quiet()
        silent = quiet is not None and quiet > HEARTBEAT_INTERVAL
        discovery = QUIET_DISCOVERY_TIMEOUT if silent else DISCOVERY_TIMEOUT
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=0)
                replies = self._ask_all(conn, expected, deadline, discovery)
        except Exception as exc:
            return CeleryStatus(state=CeleryState.UNKNOWN,
                                problem=problem_from(exc, target_of(self.settings.broker_url)))
        return self.status(expected, replies, silent)

    def status(self, expected: set[str], replies: dict[str, dict], silent: bool,
               known: tuple[WorkerInfo, ...] = (), ages: LiveAges | None = None) -> CeleryStatus:
        """The status from the replies, with the workers `known` without asking (bot.live) among them."""
        asked = set(replies["active"])
        answered = asked | {w.name for w in known}
        with self._lock:
            self._last_answered = answered
        details = self.heartbeat_details()
        lost = tuple(WorkerInfo(name=name, answered=False, heartbeat_age=d["heartbeat_age"],
                                loadavg=tuple(d["loadavg"] or ()) or None)
                     for name, d in sorted(details.items())
                     if not d["alive"] and name not in answered and d["heartbeat_age"] < LOST_MEMORY)
        if not answered:
            return CeleryStatus(state=CeleryState.NOT_RUNNING, lost=lost, heartbeats_silent=silent)
        tasks = active_tasks(replies["active"])
        workers = [self._worker(name, replies, tasks[name], details.get(name) or {}) for name in sorted(asked)]
        workers = sorted([*workers, *known], key=lambda w: w.name) if known else workers
        heartbeating = self.alive_workers() or set()
        not_answering = [WorkerInfo(name=name, answered=False)
                         for name in sorted((expected & heartbeating) - answered)]
        return CeleryStatus(state=CeleryState.RUNNING, workers=tuple(workers + not_answering), lost=lost,
                            heartbeats_silent=silent, live=ages)

    def _ask_all(self, conn: kombu.Connection, expected: set[str], deadline: float,
                 discovery: float) -> dict[str, dict]:
        """`active` from everyone, then `reserved` and `stats` from exactly the workers that answered."""
        replies = {"active": ask_active(self.app, conn, expected, deadline, discovery)}
        # Addressed by name, the others answer as soon as these have: no one else can crowd in.
        destination = sorted(replies["active"])
        for command in ("reserved", "stats", "active_queues"):
            if not destination:
                break
            timeout = max(0.05, deadline - time.monotonic())
            inspector = self.app.control.inspect(destination=destination, timeout=timeout, limit=len(destination),
                                                 connection=conn)
            replies[command] = getattr(inspector, command)() or {}
        return replies

    @staticmethod
    def _worker(name: str, replies: dict[str, dict], active: tuple[TaskInfo, ...], heartbeat: dict) -> WorkerInfo:
        stats = replies.get("stats", {}).get(name) or {}
        totals = stats.get("total") or {}
        return WorkerInfo(
            name=name,
            pool=pool_name(stats),
            concurrency=pool_size(stats),
            active=active,
            reserved=len(replies.get("reserved", {}).get(name) or []),
            processed=sum(totals.values()) if isinstance(totals, dict) else None,
            uptime=stats.get("uptime"),
            loadavg=tuple(heartbeat.get("loadavg") or ()) or None,
            heartbeat_age=heartbeat.get("heartbeat_age"),
            queues=queue_names(replies.get("active_queues", {}).get(name)),
            autoscale=autoscale_bounds(stats),
        )
