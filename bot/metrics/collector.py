"""The registry: celery-exporter's task counters from Celery's events, opsbot's own metrics, a custom
collector that reads only what is in memory (a scrape never waits on the stack), and readiness."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from slack_sdk.http_retry.handler import RetryHandler

from bot.metrics.families import (
    DEFAULT_QUEUE,
    TASK_COUNTERS,
    TASK_LABELS,
    StoreFacts,
    celery_families,
    exception_class,
    gauge,
    host_of,
    opsbot_snapshot_families,
    probe_outcomes,
)
from bot.status.snapshot import Snapshot

log = logging.getLogger(__name__)

STORE_STALE = 10.0  # a store check older than this (the database hangs) makes us not ready

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,80}")


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
        yield gauge("opsbot_leader", "1 if this replica leads (alerts, history, celery_* task counters).", [],
                     [([], float(leading))])
        store_up = self.store_checked_at is not None and now - self.store_checked_at < STORE_STALE
        yield gauge("opsbot_store_up", "1 if the store answered within the last few seconds.", [],
                     [([], float(store_up))])
        if not leading:
            return  # the stack's state and the incidents come from the leader only: one alert, not one a replica
        if self._store is not None:
            yield gauge("opsbot_open_incidents", "Open incidents by check.", ["check"],
                         (([check], count) for check, count in sorted(self._store.incidents.items())))
            yield gauge("opsbot_outbox_depth", "Slack posts waiting in the outbox.", [],
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
