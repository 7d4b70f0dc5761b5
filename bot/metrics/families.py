"""The snapshot and the store's facts as metric families (pure), and celery-exporter's label rules."""

from __future__ import annotations

import re
from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass, field

from celery.utils import nodesplit
from prometheus_client.core import GaugeMetricFamily

from bot.alerting.engine import check_name
from bot.alerting.state import AlertStore
from bot.status.snapshot import CeleryState, Snapshot

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


def gauge(name: str, documentation: str, labels: Iterable[str], samples: Iterable[tuple[Iterable[str], float]]
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
        gauge("celery_worker_up", "Indicates if a worker has recently sent a heartbeat.", ["hostname"],
               (([host], value) for host, value in sorted(up.items()))),
        gauge("celery_worker_tasks_active", "The number of tasks the worker is currently processing",
               ["hostname"], (([host], active[host]) for host in sorted(up))),
        gauge("celery_queue_length", "The number of message in broker queue.", ["queue_name"],
               (([q.name], q.ready) for q in queues)),
        gauge("celery_active_consumer_count", "The number of active consumer in broker queue.", ["queue_name"],
               (([q.name], q.consumers) for q in queues if q.consumers is not None)),
    ]
    if celery.state is not CeleryState.UNKNOWN:
        families += [
            gauge("celery_active_worker_count", "The number of active workers in broker queue.", ["queue_name"],
                   (([q.name], sum(q.name in (w.queues or ()) for w in answering)) for q in queues)),
            gauge("celery_active_process_count", "The number of active processes in broker queue.",
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
        gauge("opsbot_snapshot_age_seconds", "Seconds since the snapshot these metrics describe was taken.", [],
               [([], max(0.0, now - snapshot.taken_at))]),
        gauge("opsbot_probe_up", "1 if the service answered as it should in the latest snapshot, else 0.",
               ["service"], (([s], float(o == "ok")) for s, o in known.items())),
        gauge("opsbot_worker_up", "Per Celery node: 1 answering, 0 heartbeating but silent or lost.", ["worker"],
               (([w.name], float(w.answered)) for w in (*celery.workers, *celery.lost))),
        gauge("opsbot_broker_alarms", "RabbitMQ resource alarms in force (publishers are blocked).", [],
               [([], len(snapshot.broker.alarms))] if snapshot.broker.up else []),
        # The age when measured (not now): with the snapshot's age it is exact; `exact` 0 marks a lower bound.
        gauge("opsbot_oldest_waiting_task_age_seconds", "How long the oldest waiting task of a queue had waited.",
               ["queue_name", "exact"],
               (([q.name, str(int(q.oldest_exact))], q.oldest_age) for q in snapshot.broker.queues
                if snapshot.broker.up and q.ready and q.oldest_age is not None)),
    ]


# --- What only the store knows ------------------------------------------------------------------


@dataclass(frozen=True)
class StoreFacts:
    incidents: dict[str, int] = field(default_factory=dict)  # open incidents by check name
    outbox_depth: int = 0


def read_store_facts(store: AlertStore) -> StoreFacts:
    """Open incidents and the outbox depth; raises when the store cannot be read."""
    state = store.load()[0]
    return StoreFacts(dict(Tally(check_name(key) for key in state.incidents)), store.depth())
