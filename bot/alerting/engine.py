"""The alert engine: a pure state machine fed snapshots and the clock.

Per thing that can be wrong (the broker, Celery, Flower, each queue, each worker) a check counts
consecutive failures and successes: ok, pending on the first failure, firing after `alert_after`
failures, resolved after `resolve_after` successes. A flapping service neither spams nor resolves
falsely. `step` returns the new state and the effects (post, refresh, thread line) for the edges to
carry out; nothing here does I/O, so every transition is testable with plain data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from bot.alerting.mute import MuteScope
from bot.beat.health import is_beat_key
from bot.markup import phrase
from bot.status import assess
from bot.status.assess import Finding
from bot.status.snapshot import CeleryState, Level, Snapshot
from bot.workers import pauses

WORKER_MEMORY = 24 * 3600.0  # forget a worker not seen for a day: it was scaled away, not lost


@dataclass(frozen=True)
class Policy:
    alert_after: int = 2
    resolve_after: int = 2
    remind_seconds: float = 3600.0
    backlog_threshold: int = 100
    backlog_seconds: float = 600.0
    pause_remind_seconds: float = 3600.0  # a queue an admin paused is posted once paused this long


@dataclass(frozen=True)
class Check:
    failing: int = 0  # consecutive failures
    passing: int = 0  # consecutive successes
    since: float | None = None  # when the current run of failures began


@dataclass(frozen=True)
class Incident:
    id: str
    key: str
    level: Level
    text: str
    impact: str
    started_at: float  # the first failure
    fired_at: float
    resolved_at: float | None = None
    acked_by: str | None = None
    acked_at: float | None = None
    snoozed_until: float | None = None
    snoozed_by: str | None = None
    last_reminded_at: float | None = None
    silenced: bool = False  # fired while muted: not posted (yet)
    details: tuple[str, ...] = ()  # lines under the alert (task-level findings, bot.health)
    targets: tuple[str, ...] = ()  # the task ids its buttons act on
    retryable: tuple[str, ...] = ()  # those whose exact arguments are known: they get a Retry button

    def __post_init__(self) -> None:
        # Read back from JSON these are lists and an int; as tuples and a Level they compare equal to a
        # fresh finding's.
        for name in ("details", "targets", "retryable"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "level", Level(self.level))

    @property
    def open(self) -> bool:
        return self.resolved_at is None


@dataclass(frozen=True)
class AlertState:
    checks: dict[str, Check] = field(default_factory=dict)
    incidents: dict[str, Incident] = field(default_factory=dict)  # open ones, by key
    known_workers: dict[str, float] = field(default_factory=dict)  # name -> last seen
    backlog_since: dict[str, float] = field(default_factory=dict)  # queue -> above threshold since
    mutes: dict[MuteScope, float] = field(default_factory=dict)  # scope -> until

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AlertState:
        return cls(
            checks={k: Check(**v) for k, v in data.get("checks", {}).items()},
            incidents={k: Incident(**v) for k, v in data.get("incidents", {}).items()},
            known_workers=dict(data.get("known_workers", {})),
            backlog_since=dict(data.get("backlog_since", {})),
            mutes={MuteScope(k): v for k, v in data.get("mutes", {}).items()},
        )


# --- Effects: what the edges must do ----------------------------------------------------------


@dataclass(frozen=True)
class Post:
    """Open the incident's message."""

    incident: Incident


@dataclass(frozen=True)
class Refresh:
    """Redraw the incident's message in place (acknowledged, snoozed, changed, resolved)."""

    incident: Incident


@dataclass(frozen=True)
class Timeline:
    """A line in the incident's thread."""

    incident: Incident
    text: str


Effect = Post | Refresh | Timeline


# --- What is wrong ----------------------------------------------------------------------------


def service_of(key: str) -> str:
    """The mute scope a key belongs to: "worker:w1@h" -> "celery", "queue:x" -> "broker"."""
    head = key.split(":", 1)[0].split(".", 1)[0]
    return {"worker": "celery", "queue": "broker", "task": "celery"}.get(head, head)


def check_name(key: str) -> str:
    """The kind of check a key belongs to, for runbook links and metric labels: "worker:w1@h" -> "worker",
    "queue:x:backlog" -> "queue_backlog", "task:failing:x" -> "task_failing",
    "broker.management" -> "broker_management"."""
    parts = key.split(":")
    if parts[0] == "task" and len(parts) > 2:
        return f"task_{parts[1]}"
    kind = parts[0] + (f"_{parts[-1]}" if len(parts) > 2 and parts[-1] in ("backlog", "wait") else "")
    return kind.replace(".", "_")


def vanished_workers(snapshot: Snapshot, known: dict[str, float], now: float) -> list[Finding]:
    """Workers we saw before that no longer answer at all (a killed worker is just absent)."""
    if snapshot.celery.state is not CeleryState.RUNNING:
        return []  # the "celery" finding (or the broker's) covers them all
    present = {w.name for w in snapshot.celery.workers}
    # The wording must not change from poll to poll, or every poll would redraw the alert.
    return [Finding(f"worker:{name}", Level.DOWN, f"Worker {name} is gone (last seen at {assess.time_of_day(seen)})",
                    assess.IMPACT_WORKER)
            for name, seen in sorted(known.items()) if name not in present]


def backlog(snapshot: Snapshot, since: dict[str, float], now: float, policy: Policy) -> list[Finding]:
    found = []
    for queue in snapshot.broker.queues:
        start = since.get(queue.name)
        if start is not None and queue.ready > policy.backlog_threshold and now - start >= policy.backlog_seconds:
            found.append(Finding(f"queue:{queue.name}:backlog", Level.WARN,
                                 f"Queue {queue.name}: more than {policy.backlog_threshold} tasks waiting "
                                 f"since {assess.time_of_day(start)}", assess.queue_impact(queue.name)))
    return found


def failures(snapshot: Snapshot, state: AlertState, now: float, policy: Policy,
             extra: Sequence[Finding] = ()) -> dict[str, Finding]:
    found = [f for f in assess.findings(snapshot) if f.level >= Level.WARN] + list(extra)
    if snapshot.celery.state is not CeleryState.RUNNING:
        # The "celery" finding (or the broker's) covers them: no worker, no run of anything.
        found = [f for f in found if not f.key.startswith("worker:") and not is_beat_key(f.key)]
    found += vanished_workers(snapshot, state.known_workers, now)
    found += backlog(snapshot, state.backlog_since, now, policy)
    found += pauses.overdue(snapshot, now, policy.pause_remind_seconds)
    return {f.key: f for f in found}


def remembered_workers(snapshot: Snapshot, known: dict[str, float], now: float) -> dict[str, float]:
    seen = dict(known)
    for worker in snapshot.celery.workers:
        seen[worker.name] = now
    return {name: at for name, at in seen.items() if now - at < WORKER_MEMORY}


def backlog_starts(snapshot: Snapshot, since: dict[str, float], now: float, policy: Policy) -> dict[str, float]:
    if not snapshot.broker.up:
        return dict(since)  # no news about the queues: keep counting from when it began
    return {q.name: since.get(q.name, now) for q in snapshot.broker.queues if q.ready > policy.backlog_threshold}


def observable(snapshot: Snapshot, key: str) -> bool:
    """Can this snapshot tell whether `key` is fine? Not a worker while Celery is down, nor a queue
    while the broker is: their absence from the findings then means nothing."""
    if key.startswith(("worker:", "task:stuck:")):
        return snapshot.celery.state is CeleryState.RUNNING
    if key.startswith("queue:"):
        return snapshot.broker.up
    if is_beat_key(key):  # runs are seen in task events: only with workers and the event stream up
        return (snapshot.celery.state is CeleryState.RUNNING and snapshot.beat is not None
                and snapshot.beat.watching)
    return True


def muted(state: AlertState, key: str, now: float) -> bool:
    return any(until > now and scope in (MuteScope.ALL, service_of(key)) for scope, until in state.mutes.items())


# --- The state machine ------------------------------------------------------------------------


def incident_id(key: str, started_at: float) -> str:
    return f"{key}@{int(started_at * 1000)}"


def step(state: AlertState, snapshot: Snapshot, now: float, policy: Policy,
         extra: Sequence[Finding] = ()) -> tuple[AlertState, list[Effect]]:
    """One poll. `extra`: findings from outside the snapshot (task-level rules, bot.health)."""
    failing = failures(snapshot, state, now, policy, extra)
    checks: dict[str, Check] = {}
    incidents = dict(state.incidents)
    effects: list[Effect] = []
    for key in sorted(set(failing) | set(state.checks) | set(state.incidents)):
        check = state.checks.get(key, Check())
        finding = failing.get(key)
        if finding is None and not observable(snapshot, key):
            checks[key] = check  # no news (its broker or Celery is down): neither failure nor recovery
            continue
        if finding is not None:
            check = Check(check.failing + 1, 0, check.since or now)
            failing_now = Failing(key, check, finding, muted(state, key, now), now)
            incident, found = _on_failure(incidents.get(key), failing_now, policy.alert_after)
        else:
            check = Check(0, check.passing + 1, None)
            incident, found = _on_success(incidents.get(key), check, now, policy.resolve_after)
        effects += found
        if incident is None:
            incidents.pop(key, None)
        else:
            incidents[key] = incident
        if check.failing or key in incidents:
            checks[key] = check  # a passing check with nothing open is forgotten
    incidents, reminders = _reminders(incidents, now, policy)
    effects += reminders
    new_state = replace(state, checks=checks, incidents=incidents,
                        known_workers=remembered_workers(snapshot, state.known_workers, now),
                        backlog_since=backlog_starts(snapshot, state.backlog_since, now, policy),
                        mutes={s: u for s, u in state.mutes.items() if u > now})
    effects += _unsilence(new_state, now)
    return replace(new_state, incidents=_posted(new_state.incidents, effects, now)), effects


@dataclass(frozen=True)
class Failing:
    """A check that fails at this poll, with what the engine needs to decide on its incident."""

    key: str
    check: Check  # counting this failure
    finding: Finding
    muted: bool  # its scope is muted now
    now: float


def _on_failure(current: Incident | None, failing: Failing, alert_after: int
                ) -> tuple[Incident | None, list[Effect]]:
    """The check's incident after this failure (None: still pending), and what to post."""
    finding, now = failing.finding, failing.now
    if current is None:
        if failing.check.failing < alert_after:
            return None, []  # pending: one bad poll does not wake anybody
        since = failing.check.since or now
        incident = Incident(incident_id(failing.key, since), failing.key, finding.level, finding.text,
                            finding.impact, since, now, silenced=failing.muted, **_task_fields(finding))
        return incident, [] if incident.silenced else [Post(incident)]
    fresh = replace(current, level=finding.level, text=finding.text, impact=finding.impact,
                    **_task_fields(finding))
    if fresh == current or fresh.silenced:
        return fresh, []
    # Texts that only count time ("last seen 12 s ago") change every poll: redraw, keep the thread quiet.
    worse = fresh.level != current.level
    return fresh, [Refresh(fresh)] + ([Timeline(fresh, f"Now: {finding.text}")] if worse else [])


def _task_fields(finding: Finding) -> dict[str, tuple[str, ...]]:
    """What a task-level finding (bot.health) adds to its incident: detail lines and task ids."""
    return {name: tuple(getattr(finding, name, ())) for name in ("details", "targets", "retryable")}


def _on_success(current: Incident | None, check: Check, now: float, resolve_after: int
                ) -> tuple[Incident | None, list[Effect]]:
    """The check's incident after this success (None: resolved, or there was none), and what to post."""
    if current is None or check.passing < resolve_after:
        return current, []
    resolved = replace(current, resolved_at=now)
    if current.silenced:
        return None, []
    return None, [Refresh(resolved), Timeline(resolved, f"Resolved after {assess.duration(now - current.started_at)}.")]


def _reminders(incidents: dict[str, Incident], now: float, policy: Policy
               ) -> tuple[dict[str, Incident], list[Effect]]:
    """The incidents with their reminder times updated, and the reminders to post."""
    effects: list[Effect] = []
    updated = dict(incidents)
    for key, incident in incidents.items():
        if incident.silenced or incident.acked_by or (incident.snoozed_until or 0) > now:
            continue
        last = max(incident.last_reminded_at or incident.fired_at, incident.snoozed_until or 0)
        if now - last >= policy.remind_seconds:
            updated[key] = replace(incident, last_reminded_at=now)
            effects.append(Timeline(updated[key], f"Still not resolved after "
                                                  f"{assess.duration(now - incident.started_at)}: {incident.text}"))
    return updated, effects


def _unsilence(state: AlertState, now: float) -> list[Effect]:
    """Incidents that fired during a mute and still fire once it is over get posted then."""
    return [Post(i) for i in state.incidents.values() if i.silenced and not muted(state, i.key, now)]


def _posted(incidents: dict[str, Incident], effects: list[Effect], now: float) -> dict[str, Incident]:
    """Mark what was just posted; reminders count from the post (a muted incident posts late)."""
    posted = {e.incident.key for e in effects if isinstance(e, Post)}
    return {k: replace(i, silenced=False, last_reminded_at=now) if k in posted else i for k, i in incidents.items()}


def unsettled(state: AlertState) -> bool:
    """A failure not yet confirmed, or a recovery not yet confirmed: worth a quick second look."""
    return any((check.failing and key not in state.incidents) or (check.passing and key in state.incidents)
               for key, check in state.checks.items())


# --- What people do to incidents --------------------------------------------------------------


def find(state: AlertState, incident_id_: str) -> Incident | None:
    return next((i for i in state.incidents.values() if i.id == incident_id_), None)


def acknowledge(state: AlertState, incident_id_: str, user: str, now: float) -> tuple[AlertState, list[Effect]]:
    incident = find(state, incident_id_)
    if incident is None or incident.acked_by:
        return state, []
    acked = replace(incident, acked_by=user, acked_at=now)
    return _with(state, acked), [Refresh(acked), Timeline(acked, phrase("Acknowledged by {}.", user))]


def snooze(state: AlertState, incident_id_: str, until: float, user: str, now: float
           ) -> tuple[AlertState, list[Effect]]:
    incident = find(state, incident_id_)
    if incident is None or until <= now:
        return state, []
    snoozed = replace(incident, snoozed_until=until, snoozed_by=user)
    return _with(state, snoozed), [Refresh(snoozed), Timeline(snoozed, phrase("Snoozed by {}.", user))]


def mute(state: AlertState, scope: MuteScope, until: float) -> AlertState:
    return replace(state, mutes={**state.mutes, scope: until})


def unmute(state: AlertState) -> AlertState:
    return replace(state, mutes={})


def _with(state: AlertState, incident: Incident) -> AlertState:
    return replace(state, incidents={**state.incidents, incident.key: incident})
