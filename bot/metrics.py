"""Prometheus metrics, and the /healthz and /readyz endpoints, for the monitoring stack teams already run.

The `celery_*` metrics keep celery-exporter's names, labels and buckets, so its dashboards and alert
rules work against opsbot unchanged (README, "Metrics", lists the differences). Task counters and the
runtime histogram follow Celery's event stream; everything about the stack's state comes from the
latest snapshot, read by a custom collector: a scrape never waits on a broker, worker or database.
Anything slow (a snapshot, reading the store) runs in background threads that keep those facts fresh.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from celery.utils import nodesplit
from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from slack_sdk.http_retry.handler import RetryHandler
from sqlalchemy import func, select

from bot.alerting.engine import AlertState, check_name
from bot.status.snapshot import CeleryState, Snapshot

log = logging.getLogger(__name__)

# Celery event type -> celery-exporter's counter (exposed with the `_total` suffix).
TASK_COUNTERS = {
    "task-sent": ("celery_task_sent", "Sent when a task message is published."),
    "task-received": ("celery_task_received", "Sent when the worker receives a task."),
    "task-started": ("celery_task_started", "Sent just before the worker executes the task."),
    "task-succeeded": ("celery_task_succeeded", "Sent if the task executed successfully."),
    "task-failed": ("celery_task_failed", "Sent if the execution of the task failed."),
    "task-rejected": ("celery_task_rejected", "The task was rejected by the worker."),
    "task-revoked": ("celery_task_revoked", "Sent if the task has been revoked."),
    "task-retried": ("celery_task_retried", "Sent if the task failed, but will be retried in the future."),
}
TASK_LABELS = ("name", "hostname", "queue_name")
DEFAULT_QUEUE = "celery"  # celery-exporter's label when no task-sent event told the queue
SERVICES = ("broker", "management", "celery", "flower")
METRICS_PATHS = ("/metrics", "/healthz", "/readyz")
STORE_SECONDS = 2.0  # how often the store is read (incidents, outbox) and thereby checked
STORE_STALE = 10.0  # a store check older than this (the database hangs) makes us not ready
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,80}")


def host_of(node: str | None) -> str:
    """celery-exporter's `hostname` label: the host part of a node name ('w1@host' -> 'host').

    Producers send task-sent events as 'gen<pid>@host': the full name would make one series per process.
    """
    return nodesplit(node or "")[1] or "unknown"


def exception_class(text: str | None) -> str:
    """The class name from an exception's repr ("ValueError('boom')" -> "ValueError"), as celery-exporter."""
    head = (text or "").split("(", 1)
    return head[0] if len(head) == 2 and re.fullmatch(r"\w+", head[0]) else "UnknownException"


# --- The snapshot, as metric families (pure) ---------------------------------------------------


def _gauge(name: str, documentation: str, labels: Iterable[str], samples: Iterable[tuple[Iterable[str], float]]
           ) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def probe_outcomes(snapshot: Snapshot) -> dict[str, str]:
    """Each service's outcome in a snapshot: "ok", a failure kind, or "not_running"/"unknown" for Celery."""
    broker, celery, flower = snapshot.broker, snapshot.celery, snapshot.flower
    outcomes = {"broker": broker.problem.kind.value if broker.problem else "ok"}
    if broker.kind == "rabbitmq" and broker.up:
        outcomes["management"] = broker.management_problem.kind.value if broker.management_problem else "ok"
    if celery.problem is not None:
        outcomes["celery"] = celery.problem.kind.value
    else:
        outcomes["celery"] = {CeleryState.RUNNING: "ok", CeleryState.NOT_RUNNING: "not_running"}.get(
            celery.state, "unknown")
    outcomes["flower"] = flower.problem.kind.value if flower.problem else "ok"
    return outcomes


def celery_families(snapshot: Snapshot) -> list[GaugeMetricFamily]:
    """celery-exporter's gauges from one snapshot. Unknown is absent, never a made-up zero."""
    broker, celery = snapshot.broker, snapshot.celery
    up: dict[str, float] = {}
    active: Tally[str] = Tally()
    for worker in (*celery.workers, *celery.lost):
        host = host_of(worker.name)
        up[host] = max(up.get(host, 0.0), 1.0 if worker.answered else 0.0)
        active[host] += len(worker.active)
    answering = [w for w in celery.workers if w.answered]
    queues = broker.queues if broker.up else ()
    families = [
        _gauge("celery_worker_up", "Indicates if a worker has recently sent a heartbeat.", ["hostname"],
               (([host], value) for host, value in sorted(up.items()))),
        _gauge("celery_worker_tasks_active", "The number of tasks the worker is currently processing",
               ["hostname"], (([host], active[host]) for host in sorted(up))),
        _gauge("celery_queue_length", "The number of message in broker queue.", ["queue_name"],
               (([q.name], q.ready) for q in queues)),
        _gauge("celery_active_consumer_count", "The number of active consumer in broker queue.", ["queue_name"],
               (([q.name], q.consumers) for q in queues if q.consumers is not None)),
    ]
    if celery.state is not CeleryState.UNKNOWN:
        families += [
            _gauge("celery_active_worker_count", "The number of active workers in broker queue.", ["queue_name"],
                   (([q.name], sum(q.name in (w.queues or ()) for w in answering)) for q in queues)),
            _gauge("celery_active_process_count", "The number of active processes in broker queue.",
                   ["queue_name"],
                   (([q.name], sum(w.concurrency or 0 for w in answering if q.name in (w.queues or ())))
                    for q in queues)),
        ]
    return families


def opsbot_snapshot_families(snapshot: Snapshot, now: float) -> list[GaugeMetricFamily]:
    celery = snapshot.celery
    outcomes = probe_outcomes(snapshot)
    known = {service: outcome for service, outcome in outcomes.items() if outcome != "unknown"}
    return [
        _gauge("opsbot_snapshot_age_seconds", "Seconds since the snapshot these metrics describe was taken.", [],
               [([], max(0.0, now - snapshot.taken_at))]),
        _gauge("opsbot_probe_up", "1 if the service answered as it should in the latest snapshot, else 0.",
               ["service"], (([s], float(o == "ok")) for s, o in known.items())),
        _gauge("opsbot_worker_up", "Per Celery node: 1 answering, 0 heartbeating but silent or lost.", ["worker"],
               (([w.name], float(w.answered)) for w in (*celery.workers, *celery.lost))),
        _gauge("opsbot_broker_alarms", "RabbitMQ resource alarms in force (publishers are blocked).", [],
               [([], len(snapshot.broker.alarms))] if snapshot.broker.up else []),
        # The age when measured (not now): with the snapshot's age it is exact; `exact` 0 marks a lower bound.
        _gauge("opsbot_oldest_waiting_task_age_seconds", "How long the oldest waiting task of a queue had waited.",
               ["queue_name", "exact"],
               (([q.name, str(int(q.oldest_exact))], q.oldest_age) for q in snapshot.broker.queues
                if snapshot.broker.up and q.ready and q.oldest_age is not None)),
    ]


# --- What only the store knows ------------------------------------------------------------------


@dataclass(frozen=True)
class StoreFacts:
    incidents: dict[str, int] = field(default_factory=dict)  # open incidents by check name
    outbox_depth: int = 0


def read_store_facts(store: Any) -> StoreFacts:
    """Open incidents and the outbox depth; raises when the store cannot be read."""
    from bot.store import outbox_table

    state = AlertState.from_json(store.load_alert_state()[0])
    with store.engine.connect() as conn:
        depth = int(conn.execute(select(func.count()).select_from(outbox_table)).scalar_one())
    return StoreFacts(dict(Tally(check_name(key) for key in state.incidents)), depth)


# --- Slack API errors -------------------------------------------------------------------------


class SlackErrorCounter(RetryHandler):
    """Counts failed Slack Web API attempts by method. Never asks for a retry: the other handlers decide.

    A retry handler sees every attempt of every client built from ours (bolt copies our handlers into
    its per-request clients), answers with `ok: false` included.
    """

    def __init__(self, counter: Counter) -> None:
        super().__init__(max_retry_count=0)
        self.counter = counter
        self.last_ok: bool | None = None  # did the last attempt reach Slack? (HTTP mode's readiness)

    def can_retry(self, *, state: Any, request: Any, response: Any = None, error: Exception | None = None) -> bool:
        try:
            self._observe(request, response, error)
        except Exception:  # counting must never break a Slack call
            log.debug("could not count a Slack API answer", exc_info=True)
        return False

    def _observe(self, request: Any, response: Any, error: Exception | None) -> None:
        method = str(getattr(request, "url", "")).split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        method = method if _IDENTIFIER.fullmatch(method) else "other"
        if response is None:
            self.last_ok = False
            self.counter.labels(method=method, error="connection").inc()
            return
        status = int(getattr(response, "status_code", 0) or 0)
        self.last_ok = status < 500
        body = getattr(response, "body", None) or {}
        if status >= 400:
            self.counter.labels(method=method, error=f"http_{status}").inc()
        elif isinstance(body, dict) and body.get("ok") is False:
            code = str(body.get("error") or "")
            self.counter.labels(method=method, error=code if _IDENTIFIER.fullmatch(code) else "other").inc()


# --- The registry -----------------------------------------------------------------------------


class Metrics(Collector):
    """Every metric opsbot exports, in one registry of its own (never the process-global one)."""

    def __init__(self, poll_seconds: float, is_leader: Callable[[], bool] = lambda: True,
                 clock: Callable[[], float] = time.time) -> None:
        self.poll_seconds = poll_seconds
        self.is_leader = is_leader
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        self.task_counters = {
            kind: Counter(name, doc, [*TASK_LABELS, "exception"] if kind == "task-failed" else list(TASK_LABELS),
                          registry=self.registry)
            for kind, (name, doc) in TASK_COUNTERS.items()
        }
        self.task_runtime = Histogram("celery_task_runtime", "Histogram of task runtime measurements.",
                                      list(TASK_LABELS), registry=self.registry, buckets=Histogram.DEFAULT_BUCKETS)
        self.probe_duration = Histogram("opsbot_probe_duration_seconds", "Seconds each probe of a snapshot took.",
                                        ["service"], registry=self.registry,
                                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5))
        self.probe_results = Counter("opsbot_probes", "Probes by service and outcome (ok or why not).",
                                     ["service", "outcome"], registry=self.registry)
        self.slack_errors = Counter("opsbot_slack_api_errors", "Failed Slack Web API attempts by method and error.",
                                    ["method", "error"], registry=self.registry)
        self.slack_observer = SlackErrorCounter(self.slack_errors)
        self.slack_connected: Callable[[], bool] = lambda: bool(self.slack_observer.last_ok)
        self._snapshot: Snapshot | None = None
        self._store: StoreFacts | None = None
        self.store_checked_at: float | None = None  # last time the store answered
        self.store_error: str = "not checked yet"
        self.registry.register(self)

    # Fed by the event monitor's thread.
    def on_task_event(self, event: dict[str, Any], task: Any = None) -> None:
        kind = event.get("type")
        if kind not in TASK_COUNTERS or not self.is_leader():  # replicas other than the leader would double
            return
        labels = {"name": str(event.get("name") or getattr(task, "name", None) or "unknown"),
                  "hostname": host_of(event.get("hostname")),
                  "queue_name": str(event.get("queue") or getattr(task, "queue", None) or DEFAULT_QUEUE)}
        for counter_kind, counter in self.task_counters.items():
            extra = {}
            if counter_kind == "task-failed":
                extra["exception"] = exception_class(event.get("exception")) if kind == counter_kind else ""
            if counter_kind == kind:
                counter.labels(**labels, **extra).inc()
            elif kind != "task-sent":
                # As celery-exporter: a worker's first event makes all its series visible at 0, so that
                # rate() and increase() see the first failure (task-sent comes from any producer: not it).
                counter.labels(**labels, **extra).inc(0)
        if kind == "task-succeeded" and event.get("runtime") is not None:
            self.task_runtime.labels(**labels).observe(float(event["runtime"]))

    def observe_snapshot(self, snapshot: Snapshot) -> None:
        for service, outcome in probe_outcomes(snapshot).items():
            self.probe_results.labels(service=service, outcome=outcome).inc()
        for service, seconds in snapshot.durations.items():
            self.probe_duration.labels(service=service).observe(seconds)
        current = self._snapshot
        if current is None or snapshot.taken_at >= current.taken_at:
            self._snapshot = snapshot

    def latest_snapshot(self) -> Snapshot | None:
        return self._snapshot

    def store_read(self, facts: StoreFacts | None, error: str = "") -> None:
        if facts is not None:
            self._store, self.store_checked_at, self.store_error = facts, self.clock(), ""
        else:
            self.store_error = error

    def collect(self) -> Iterator[Metric]:
        """Called on each scrape: reads only what is in memory."""
        now = self.clock()
        leading = self.is_leader()
        yield _gauge("opsbot_leader", "1 if this replica leads (alerts, history, celery_* task counters).", [],
                     [([], float(leading))])
        store_up = self.store_checked_at is not None and now - self.store_checked_at < STORE_STALE
        yield _gauge("opsbot_store_up", "1 if the store answered within the last few seconds.", [],
                     [([], float(store_up))])
        if not leading:
            return  # the stack's state and the incidents come from the leader only: one alert, not one a replica
        if self._store is not None:
            yield _gauge("opsbot_open_incidents", "Open incidents by check.", ["check"],
                         (([check], count) for check, count in sorted(self._store.incidents.items())))
            yield _gauge("opsbot_outbox_depth", "Slack posts waiting in the outbox.", [],
                         [([], self._store.outbox_depth)])
        snapshot = self._snapshot
        if snapshot is not None:
            yield from opsbot_snapshot_families(snapshot, now)
            yield from celery_families(snapshot)

    def describe(self) -> Iterable[Metric]:
        return []  # dynamic: never collected at registration

    # --- Health ---

    def readiness(self) -> dict[str, tuple[bool, str]]:
        """Slack connected, store reachable, last poll recent: each with a short reason."""
        now = self.clock()
        slack = self.slack_connected()
        checks = {"slack": (slack, "connected" if slack else "not connected to Slack")}
        if self.store_checked_at is not None and now - self.store_checked_at < STORE_STALE:
            checks["store"] = (True, "reachable")
        else:
            checks["store"] = (False, f"not reachable: {self.store_error}"[:200])
        snapshot = self._snapshot
        limit = 3 * self.poll_seconds
        if snapshot is None:
            checks["poll"] = (False, "no snapshot taken yet")
        else:
            age = now - snapshot.taken_at
            checks["poll"] = (age < limit, f"last snapshot {age:.1f} s ago (limit {limit:.0f} s)")
        return checks


# --- Background: keep the snapshot and the store facts fresh ----------------------------------


class Every:
    """Run `job` every `seconds` in a named daemon thread (the name is what /healthz looks for)."""

    def __init__(self, name: str, seconds: float, job: Callable[[], None]) -> None:
        self.seconds = seconds
        self.job = job
        self._stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.job()
            except Exception:
                log.exception("%s failed", self.thread.name)
            self._stopped.wait(self.seconds)

    def start(self) -> Every:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()


def keep_fresh(metrics: Metrics, take_snapshot: Callable[[], Snapshot], store: Any) -> list[Every]:
    """A snapshot whenever the latest is a poll interval old (alerting usually takes them), and the store read."""

    def poll() -> None:
        latest = metrics.latest_snapshot()
        if latest is None or metrics.clock() - latest.taken_at >= metrics.poll_seconds:
            take_snapshot()  # observed by the caller's wrapper

    def read_store() -> None:
        try:
            facts = read_store_facts(store)
        except Exception as exc:
            metrics.store_read(None, type(exc).__name__)
            return
        metrics.store_read(facts)

    return [Every("metrics-poll", 1.0, poll).start(), Every("metrics-store", STORE_SECONDS, read_store).start()]


# --- HTTP -------------------------------------------------------------------------------------

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def health_app(metrics: Metrics, threads: Callable[[], Iterable[str]]) -> WsgiApp:
    """/metrics, /healthz (the process and its threads) and /readyz, as one WSGI app.

    `threads` names the threads that must be alive (what is expected depends on what was started).
    """
    exposition = make_wsgi_app(metrics.registry)

    def reply(start_response: Callable[..., Any], ok: bool, body: dict[str, Any]) -> list[bytes]:
        data = json.dumps(body, sort_keys=True).encode()
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                        ("Cache-Control", "no-store")])
        return [data]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return exposition(environ, start_response)
        if path == "/healthz":
            alive = {t.name for t in threading.enumerate() if t.is_alive()}
            missing = sorted(set(threads()) - alive)
            return reply(start_response, not missing, {"alive": not missing, "dead_threads": missing})
        if path == "/readyz":
            checks = metrics.readiness()
            ready = all(ok for ok, _ in checks.values())
            return reply(start_response, ready,
                         {"ready": ready, "checks": {name: {"ok": ok, "detail": detail}
                                                     for name, (ok, detail) in checks.items()}})
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    return app


def with_health(metrics_app: WsgiApp, other: WsgiApp) -> WsgiApp:
    """Our three paths first, everything else to `other` (the Slack request handler in HTTP mode)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") in METRICS_PATHS:
            return metrics_app(environ, start_response)
        return other(environ, start_response)

    return app


class MetricsServer:
    """A small threaded HTTP server (waitress) for the health app, in a daemon thread."""

    def __init__(self, app: WsgiApp, host: str, port: int) -> None:
        from waitress import create_server

        self.server = create_server(app, host=host, port=port, threads=2)
        self.thread = threading.Thread(target=self.server.run, name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.close()
