"""Task-level health rules: pure functions over recorded task outcomes and a snapshot.

They return `TaskFinding`s, which the alert engine (`bot.alerting.engine`) handles like any other finding: one
incident per key, updated in place, resolved after `OPSBOT_RESOLVE_AFTER` good polls. Nothing here
does I/O; the edges read the store and the broker and hand the rows in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from bot.config import Settings
from bot.durations import parse_duration
from bot.redact import redact_details
from bot.status import assess
from bot.status.assess import Finding
from bot.status.snapshot import CeleryState, Level, Snapshot, short_id

FAILING = "task:failing:"  # + task name
STUCK = "task:stuck:"  # + task id
WAITING = ":wait"  # queue:<name>:wait
MIN_RUNS = 5  # the failure ratio counts only with at least this many runs in the window
LAST_FAILED = 3  # failed ids named in a failure alert, each with Show and Retry
MAX_EXCEPTION = 200


@dataclass(frozen=True)
class TaskFinding(Finding):
    """A finding about tasks: the lines under the alert, and the task ids its buttons act on."""

    details: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    retryable: tuple[str, ...] = ()  # filled in by the edge, which can ask the result backend


@dataclass(frozen=True)
class CountRule:
    glob: str
    count: int
    window: float


@dataclass(frozen=True)
class RuntimeRule:
    glob: str
    limit: float


def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    pairs = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        glob, sep, value = part.partition("=")
        if not sep or not glob.strip() or not value.strip():
            raise ValueError(f"{part[:40]!r} is not a rule: write {what}")
        pairs.append((glob.strip(), value.strip()))
    return pairs


def parse_failure_rules(text: str) -> tuple[CountRule, ...]:
    """`reports.*=1/1h,billing.charge=1/5m`: glob = failures / window."""
    rules = []
    for glob, value in _pairs(text, "glob=count/window, like reports.*=1/1h"):
        count, sep, window = value.partition("/")
        if not sep or not (count.isascii() and count.isdigit()) or int(count) < 1:
            raise ValueError(f"{value[:40]!r} is not count/window, like 1/1h")
        rules.append(CountRule(glob, int(count), float(parse_duration(window))))
    return tuple(rules)


def parse_runtime_rules(text: str) -> tuple[RuntimeRule, ...]:
    """`reports.*=2h,billing.charge=5m`: glob = longest allowed running time."""
    return tuple(RuntimeRule(glob, float(parse_duration(value)))
                 for glob, value in _pairs(text, "glob=duration, like reports.*=2h"))


@dataclass(frozen=True)
class HealthPolicy:
    failure_threshold: int = 3
    failure_window: float = 600.0
    failure_ratio: float = 0.5
    failure_rules: tuple[CountRule, ...] = ()
    failure_ignore: tuple[str, ...] = ()
    max_runtime: float = 1800.0
    runtime_rules: tuple[RuntimeRule, ...] = ()
    queue_max_wait: float = 300.0

    def failure_rule(self, name: str) -> CountRule:
        """The first rule whose glob matches, else the default threshold and window."""
        found = next((r for r in self.failure_rules if fnmatchcase(name, r.glob)), None)
        return found or CountRule("*", self.failure_threshold, self.failure_window)

    def runtime_limit(self, name: str) -> float:
        found = next((r for r in self.runtime_rules if fnmatchcase(name, r.glob)), None)
        return found.limit if found else self.max_runtime

    def ignored(self, name: str) -> bool:
        return any(fnmatchcase(name, glob) for glob in self.failure_ignore)

    @property
    def longest_window(self) -> float:
        return max([self.failure_window, *(r.window for r in self.failure_rules)])


def policy_from(settings: Settings) -> HealthPolicy:
    return HealthPolicy(
        failure_threshold=settings.failure_threshold, failure_window=float(parse_duration(settings.failure_window)),
        failure_ratio=settings.failure_ratio, failure_rules=parse_failure_rules(settings.failure_rules),
        failure_ignore=tuple(settings.failure_ignore), max_runtime=float(parse_duration(settings.task_max_runtime)),
        runtime_rules=parse_runtime_rules(settings.runtime_rules),
        queue_max_wait=float(parse_duration(settings.queue_max_wait)),
    )


# --- Failing tasks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Failed:
    """One failed run, as recorded in the history."""

    task_id: str
    name: str
    finished_at: float
    worker: str = ""
    exception: str = ""


@dataclass(frozen=True)
class Outcomes:
    """What the history says about the recent past: failed runs (newest first) and runs per name."""

    failed: tuple[Failed, ...] = ()
    runs: dict[str, int] = field(default_factory=dict)  # finished runs within the default window


# "ValueError('no such report')"; redaction may have eaten the closing quote ("password=***)").
EXCEPTION_REPR = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)\(['\"]?(?P<message>.*?)['\"]?,?\)?$")


def exception_line(text: str) -> str:
    """The exception's type and first line, redacted: 'ValueError: no such report'.

    Celery's task-failed event carries the exception's repr ("ValueError('no such report')")."""
    first = next((line for line in (text or "").splitlines() if line.strip()), "").strip()[:MAX_EXCEPTION * 4]
    match = EXCEPTION_REPR.match(first)
    if match:
        first = f"{match['type']}: {match['message']}" if match["message"] else match["type"]
    return redact_details(first)[:MAX_EXCEPTION]


def failing_tasks(outcomes: Outcomes, now: float, policy: HealthPolicy, open_keys: frozenset[str] = frozenset()
                  ) -> list[TaskFinding]:
    """One finding per task name that fails too often; an open incident lasts while failures go on."""
    by_name: dict[str, list[Failed]] = {}
    for failed in outcomes.failed:
        by_name.setdefault(failed.name, []).append(failed)
    found = []
    for name, failures in sorted(by_name.items()):
        if policy.ignored(name):
            continue
        rule = policy.failure_rule(name)
        recent = sorted((f for f in failures if now - f.finished_at <= rule.window),
                        key=lambda f: f.finished_at, reverse=True)
        # Runs are counted over the default window only: a per-name rule with its own window counts failures.
        runs = max(outcomes.runs.get(name, 0), len(recent)) if rule.window == policy.failure_window else None
        too_many = len(recent) >= rule.count
        too_often = runs is not None and runs >= MIN_RUNS and len(recent) / runs > policy.failure_ratio
        still = FAILING + name in open_keys and bool(recent)  # resolves after a whole window without a failure
        if too_many or too_often or still:
            found.append(failure_finding(name, recent, runs, rule.window))
    return found


def window_text(seconds: float) -> str:
    """A rule's window as it was set: '10 min', '1 h', '2 d', '45 s'."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return assess.duration(seconds)


def failure_finding(name: str, recent: list[Failed], runs: int | None, window: float) -> TaskFinding:
    latest = recent[0]
    workers = sorted({f.worker for f in recent if f.worker})
    text = f"Task {name}: {assess.plural(len(recent), 'failure')} in {window_text(window)}"
    out_of = f" out of {assess.plural(runs, 'run')}" if runs is not None else ""
    details = [f"{assess.plural(len(recent), 'failure')}{out_of} in the last {window_text(window)}"]
    if latest.exception:
        details.append(f"Latest: {exception_line(latest.exception)}")
    if workers:
        details.append("Failed on " + ", ".join(workers))
    return TaskFinding(FAILING + name, Level.DOWN, text, assess.IMPACT_TASK_FAILING, details=tuple(details),
                       targets=tuple(f.task_id for f in recent[:LAST_FAILED]))


# --- Stuck tasks ------------------------------------------------------------------------------


def stuck_tasks(snapshot: Snapshot, policy: HealthPolicy) -> list[TaskFinding]:
    """Tasks running longer than their limit. The text names the start, not the running time, so it
    stays the same from poll to poll (the alert is not redrawn every poll)."""
    if snapshot.celery.state is not CeleryState.RUNNING:
        return []
    found = []
    for task in snapshot.celery.active_tasks:
        limit = policy.runtime_limit(task.name)
        if task.started_at is None or snapshot.taken_at - task.started_at <= limit:
            continue
        pid = f", pid {task.worker_pid}" if task.worker_pid else ""
        text = (f"Task {task.name} ({short_id(task.id)}) has run since {assess.time_of_day(task.started_at)} on "
                f"{task.worker}{pid}: longer than {assess.duration(limit)}")
        found.append(TaskFinding(STUCK + task.id, Level.WARN, text, assess.IMPACT_TASK_STUCK,
                                 details=(f"Task id {task.id}",),
                                 targets=(task.id,)))
    return found


# --- Waiting time -----------------------------------------------------------------------------


def waiting_too_long(snapshot: Snapshot, policy: HealthPolicy) -> list[TaskFinding]:
    """Queues whose oldest waiting task was sent longer ago than OPSBOT_QUEUE_MAX_WAIT."""
    if not snapshot.broker.up:
        return []
    found = []
    for queue in snapshot.broker.queues:
        since = queue.oldest_sent_at
        if since is None or not queue.ready or snapshot.taken_at - since <= policy.queue_max_wait:
            continue
        text = (f"Queue {queue.name}: a task has waited since {assess.time_of_day(since)}, "
                f"longer than {assess.duration(policy.queue_max_wait)}")
        found.append(TaskFinding(f"queue:{queue.name}{WAITING}", Level.WARN, text, assess.waiting_impact(queue.name)))
    return found


def task_findings(snapshot: Snapshot, outcomes: Outcomes, now: float, policy: HealthPolicy,
                  open_keys: frozenset[str]) -> list[Finding]:
    return [*failing_tasks(outcomes, now, policy, open_keys), *stuck_tasks(snapshot, policy),
            *waiting_too_long(snapshot, policy)]
