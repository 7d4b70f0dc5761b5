"""Judging a snapshot: the level and the wording of every state, and the findings (what is wrong).

Pure functions of the snapshot. Slack, the console, `opsbot status` and the alert engine all take
their words and colours from here, so they always agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.status.snapshot import (
    BrokerStatus,
    CeleryState,
    CeleryStatus,
    Failure,
    FlowerStatus,
    Level,
    LiveAges,
    Problem,
    QueueInfo,
    Snapshot,
    WorkerInfo,
)

BROKER_NAMES = {"rabbitmq": "RabbitMQ", "redis": "Redis"}


@dataclass(frozen=True)
class Finding:
    """One thing that is not right, keyed by what it is about ("broker", "worker:w1@host", ...), and
    what it means for the tasks (the alert's impact line). Neither may change from poll to poll while
    the failure stays the same, or every poll would redraw the alert."""

    key: str
    level: Level
    text: str
    impact: str = ""


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def duration(seconds: float) -> str:
    """'45 s', '3 min 12 s', '2 h 05 min', '3 d 4 h'."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def time_of_day(epoch: float) -> str:
    """A time of day in the bot's local time zone, to the second."""
    return datetime.fromtimestamp(epoch).strftime("%H:%M:%S")


def problem_text(problem: Problem, setting: str) -> str:
    """What went wrong, in words that point at the fix. `setting` is the variable to check."""
    match problem.kind:
        case Failure.REFUSED:
            return f"not reachable at {problem.target} (connection refused)"
        case Failure.TIMEOUT:
            return f"timed out: {problem.target} did not answer in time"
        case Failure.UNAUTHORIZED:
            return f"refuses opsbot's credentials at {problem.target} (check {setting})"
        case Failure.NO_MANAGEMENT:
            return (f"management API not reachable at {problem.target}: "
                    "is the rabbitmq_management plugin enabled?")
    detail = f": {problem.detail}" if problem.detail else ""
    return f"unexpected answer from {problem.target}{detail}"


# --- Broker -----------------------------------------------------------------------------------


def broker_name(broker: BrokerStatus) -> str:
    return BROKER_NAMES.get(broker.kind, broker.kind)


def queue_level(queue: QueueInfo) -> Level:
    # Tasks waiting where nobody consumes will wait forever.
    return Level.WARN if queue.ready and queue.consumers == 0 else Level.OK


def queue_text(queue: QueueInfo) -> str:
    if not queue.exists:
        return "not declared yet: no worker has consumed it and nothing was sent to it"
    text = "no tasks waiting" if not queue.ready else f"{plural(queue.ready, 'task')} waiting"
    if queue.consumers is not None:
        text += f", {plural(queue.consumers, 'consumer')}"
    if queue.unacked:
        text += f", {queue.unacked} unacknowledged"
    if queue.ready and queue.oldest_age is not None:
        text += f", oldest waiting {'' if queue.oldest_exact else 'over '}{duration(queue.oldest_age)}"
    if queue_level(queue) is Level.WARN:
        text += ": nothing consumes this queue"
    return text


def broker_level(broker: BrokerStatus) -> Level:
    if broker.problem or broker.alarms:
        return Level.DOWN
    if broker.management_problem or any(queue_level(q) is Level.WARN for q in broker.queues):
        return Level.WARN
    return Level.OK


def management_text(problem: Problem) -> str:
    return problem_text(problem, "RABBITMQ_MANAGEMENT_URL")


def broker_text(broker: BrokerStatus) -> str:
    """The broker's line; when it is amber, the reasons follow in the line itself."""
    if broker.problem:
        return "Not running: " + problem_text(broker.problem, "CELERY_BROKER_URL")
    if broker.alarms:
        return f"Running, but {'; '.join(broker.alarms)}: publishers are blocked"
    waiting = broker.waiting
    where = ", ".join(f"{q.name}: {q.ready}" for q in broker.queues if q.ready)
    parts = [f"Running, {plural(waiting, 'task')} waiting ({where})" if waiting else "Running, no tasks waiting"]
    unconsumed = [q.name for q in broker.queues if queue_level(q) is Level.WARN]
    if unconsumed:
        parts.append(f"nothing consumes {', '.join(unconsumed)}")
    if broker.management_problem:
        parts.append(management_text(broker.management_problem))
    return "; ".join(parts)


# --- Celery -----------------------------------------------------------------------------------


def celery_level(celery: CeleryStatus) -> Level:
    match celery.state:
        case CeleryState.UNKNOWN:
            # Asking failed while the broker runs: opsbot is blind to the workers, which is a problem
            # of its own. Without a problem the broker is down, and its red line says so.
            return Level.WARN if celery.problem else Level.UNKNOWN
        case CeleryState.NOT_RUNNING:
            return Level.DOWN
    return Level.WARN if any(not w.answered for w in celery.workers) else Level.OK


def ask_failure_text(problem: Problem) -> str:
    """Why the workers could not be asked: the library's own words when it is nothing we know."""
    if problem.kind is Failure.UNEXPECTED and problem.detail:
        return problem.detail
    return problem_text(problem, "CELERY_BROKER_URL")


def celery_text(celery: CeleryStatus) -> str:
    match celery.state:
        case CeleryState.UNKNOWN if celery.problem:
            return "Status unknown: could not ask the workers: " + ask_failure_text(celery.problem)
        case CeleryState.UNKNOWN:
            return "Status unknown: the broker is not reachable, so no worker can answer"
        case CeleryState.NOT_RUNNING if celery.heartbeats_silent:
            return "Not running: no worker answered, and none is sending heartbeats"
        case CeleryState.NOT_RUNNING:
            return "Not running: no worker answered"
    answering = [w for w in celery.workers if w.answered]
    active = sum(len(w.active) for w in answering)
    reserved = sum(w.reserved for w in answering)
    text = f"Running: {plural(len(answering), 'worker')}, {active} active, {reserved} reserved"
    silent = len(celery.workers) - len(answering)
    if silent:
        text += f"; {plural(silent, 'worker')} not answering"
    return text


# Pool readings (size, queues) change only by worker control or autoscale: their age is worth a word past this.
FACTS_NOTE_AFTER = 60.0


def live_text(live: LiveAges) -> str:
    """How old the figures are that came from the workers' events rather than from an answer now."""
    text = f"active tasks as of {duration(live.heard_age)} ago (events of {plural(live.workers, 'worker')})"
    if live.facts_age >= FACTS_NOTE_AFTER:
        text += f", pools as of {duration(live.facts_age)} ago"
    return text


def worker_level(worker: WorkerInfo) -> Level:
    return Level.OK if worker.answered else Level.WARN


def worker_text(worker: WorkerInfo) -> str:
    if not worker.answered:
        if worker.heartbeat_age is not None:
            return f"lost: last heartbeat {duration(worker.heartbeat_age)} ago"
        return "sends heartbeats but did not answer: busy, blocked or shutting down"
    pool = worker.pool or "unknown pool"
    concurrency = f" x{worker.concurrency}" if worker.concurrency else ""
    return f"{pool}{concurrency}, {len(worker.active)} active, {worker.reserved} reserved"


def worker_details_text(worker: WorkerInfo) -> str:
    """The long form for `/tasks workers`: everything known about one worker."""
    parts = [worker_text(worker)]
    if worker.answered and worker.heartbeat_age is not None:
        parts.append(f"online (heartbeat {duration(worker.heartbeat_age)} ago)")
    if worker.processed is not None:
        parts.append(f"{worker.processed} processed")
    if worker.uptime is not None:
        parts.append(f"up {duration(worker.uptime)}")
    if worker.loadavg:
        parts.append("load " + " ".join(f"{value:.2f}" for value in worker.loadavg))
    return ", ".join(parts)


# --- Flower -----------------------------------------------------------------------------------


def flower_level(flower: FlowerStatus) -> Level:
    if flower.problem is None:
        return Level.OK
    # Flower answered but will not let us in: it runs, its API is closed to us.
    return Level.WARN if flower.problem.kind is Failure.UNAUTHORIZED else Level.DOWN


def flower_text(flower: FlowerStatus) -> str:
    if flower.problem is None:
        return "Running"
    if flower.problem.kind is Failure.UNAUTHORIZED:
        return "Running, but " + problem_text(flower.problem, "FLOWER_URL")
    if flower.problem.kind is Failure.REFUSED:
        return f"Not running: {problem_text(flower.problem, 'FLOWER_URL')}. Has it been started?"
    return "Not running: " + problem_text(flower.problem, "FLOWER_URL")


# --- The whole stack --------------------------------------------------------------------------


# What each failure means for the tasks: the impact line of its alert.
IMPACT_BROKER_DOWN = "No task can be queued or processed while the broker is down."
IMPACT_ALARM = "Publishers are blocked: no new task can be queued until the alarm clears."
IMPACT_NO_MANAGEMENT = ("Waiting counts are still exact; consumers, unacknowledged tasks and resource alarms "
                        "are unknown.")
IMPACT_NO_WORKER = "No worker would process a task sent now."
IMPACT_NO_WORKER_WAITING = "No worker would process a task sent now, nor the tasks already waiting."
IMPACT_BLIND = ("opsbot cannot see the workers: no worker alert can fire, and running tasks cannot be listed "
                "or terminated from here.")
IMPACT_WORKER = "Its tasks are not being processed; the other workers carry on."
IMPACT_FLOWER = "Monitoring only: tasks still run, but Flower's dashboards are unavailable."
IMPACT_TASK_FAILING = "Runs of this task fail: the work it does is not getting done."
IMPACT_TASK_STUCK = "It holds a worker's pool slot: fewer tasks run meanwhile, and its work may never finish."


def queue_impact(name: str) -> str:
    return f"Tasks waiting in {name} are not being processed."


def waiting_impact(name: str) -> str:
    return f"Tasks sent to {name} wait too long before a worker takes them."


def broker_findings(broker: BrokerStatus) -> list[Finding]:
    name = broker_name(broker)
    found = []
    if broker.problem or broker.alarms:
        found.append(Finding("broker", Level.DOWN, f"{name}: {broker_text(broker)}",
                             IMPACT_BROKER_DOWN if broker.problem else IMPACT_ALARM))
    if broker.management_problem:
        found.append(Finding("broker.management", Level.WARN, f"{name}: {management_text(broker.management_problem)}",
                             IMPACT_NO_MANAGEMENT))
    for queue in broker.queues:
        if queue_level(queue) is not Level.OK:
            found.append(Finding(f"queue:{queue.name}", queue_level(queue),
                                 f"Queue {queue.name}: {queue_text(queue)}", queue_impact(queue.name)))
    return found


def celery_findings(celery: CeleryStatus, waiting: int) -> list[Finding]:
    found = []
    if celery.state is CeleryState.NOT_RUNNING:
        found.append(Finding("celery", Level.DOWN, f"Celery: {celery_text(celery)}",
                             IMPACT_NO_WORKER_WAITING if waiting else IMPACT_NO_WORKER))
    elif celery.state is CeleryState.UNKNOWN and celery.problem:
        found.append(Finding("celery", celery_level(celery), f"Celery: {celery_text(celery)}", IMPACT_BLIND))
    for worker in celery.workers:
        if worker_level(worker) is not Level.OK:
            found.append(Finding(f"worker:{worker.name}", worker_level(worker),
                                 f"Worker {worker.name}: {worker_text(worker)}", IMPACT_WORKER))
    return found


def findings(snapshot: Snapshot) -> list[Finding]:
    """Everything that is not OK, worst first."""
    found = broker_findings(snapshot.broker) + celery_findings(snapshot.celery, snapshot.broker.waiting)
    if flower_level(snapshot.flower) is not Level.OK:
        found.append(Finding("flower", flower_level(snapshot.flower), f"Flower: {flower_text(snapshot.flower)}",
                             IMPACT_FLOWER))
    found += beat_findings(snapshot)
    return sorted(found, key=lambda f: -f.level)


def beat_findings(snapshot: Snapshot) -> list[Finding]:
    from bot.beat import health  # imported here: bot.beat.health builds on this module

    return health.findings(snapshot.beat, snapshot.taken_at)


def service_levels(snapshot: Snapshot) -> list[tuple[str, Level]]:
    levels = [(broker_name(snapshot.broker), broker_level(snapshot.broker)),
              ("Celery", celery_level(snapshot.celery)), ("Flower", flower_level(snapshot.flower))]
    beat = max((f.level for f in beat_findings(snapshot)), default=None)
    return levels + ([("Celery beat", beat)] if beat is not None else [])


def overall_level(snapshot: Snapshot) -> Level:
    return max(level for _, level in service_levels(snapshot))


def summary(snapshot: Snapshot) -> str:
    """The one line that comes first: 'All systems go' or what is wrong (or cannot be told)."""
    found = findings(snapshot)
    if not found:
        # A service that cannot be judged is not a green one.
        unknown = [name for name, level in service_levels(snapshot) if level is not Level.OK]
        return f"Status unknown: {', '.join(unknown)}" if unknown else "All systems go"
    first = found[0].text
    return first if len(found) == 1 else f"{first} (and {plural(len(found) - 1, 'more problem')})"


def exit_code(level: Level) -> int:
    """For `opsbot status`: 0 all green, 1 amber, 2 red."""
    return {Level.OK: 0, Level.UNKNOWN: 1, Level.WARN: 1, Level.DOWN: 2}[level]
