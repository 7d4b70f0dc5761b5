"""The soak's checks: pure functions of what was recorded (faults, alert messages, tasks, acks, memory).

Each check yields a figure and its limit; the soak fails (exit status 1) when any figure is past it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from statistics import mean

from bench.soak.evidence import AlertMessage
from bench.soak.faults import FaultRecord
from bench.soak.load import AckOutcome, Ping, SentTask, TaskKind
from bench.soak.plan import Track
from bench.soak.replicas import ALERT_AFTER, POLL_SECONDS, Life

# A fault outlasts the alert threshold when it lasted longer than the bot needs to see it and confirm
# it: ALERT_AFTER polls, the confirming re-poll (1 s), a worker's heartbeats going quiet (4 s) and a
# probe timing out (2 s). Time without any leading replica does not count: nobody polls then.
ALERT_THRESHOLD = POLL_SECONDS * ALERT_AFTER + 1 + 4 + 2
ATTRIBUTION_SLACK = 2.0  # an incident's first failed poll may precede our clock's "injected" by this
EARLY_SLACK = 5.0  # a resolution this long before our "repaired" is the bot seeing the service back first
CONSEQUENCE_WINDOW = 45.0  # after a repair, other alerts (Celery waiting for its workers) are its consequences
FINAL = ("SUCCESS", "FAILURE")
EXPECTED_STATE = {TaskKind.QUICK: "SUCCESS", TaskKind.LONG: "SUCCESS", TaskKind.FAILING: "FAILURE"}
MEMORY_DRIFT = 0.10
WARM_LEVEL_SPAN = 20.0  # the level after warm-up: the mean of the samples in this many seconds


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    limit: float
    unit: str = ""
    details: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.value <= self.limit


# --------------------------------------------------------------------------- leaders


def leaderless(timeline: Sequence[tuple[float, str | None]], lo: float, hi: float) -> float:
    """Seconds within [lo, hi] in which no replica led (from the sampled leader row)."""
    total = 0.0
    for (at, leader), (after, _) in pairwise(timeline):
        start, end = max(at, lo), min(after, hi)
        if leader is None and end > start:
            total += end - start
    return total


def leader_changes(timeline: Sequence[tuple[float, str | None]], lo: float, hi: float) -> int:
    """How often the lead passed to another replica (or to nobody) within [lo, hi]."""
    inside = [leader for at, leader in timeline if lo <= at <= hi]
    return sum(1 for a, b in pairwise(inside) if a != b)


# --------------------------------------------------------------------------- incidents


@dataclass
class FaultVerdict:
    record: FaultRecord
    expected: bool = False  # it outlasted the alert threshold
    messages: list[AlertMessage] = field(default_factory=list)  # its alerts (the key it must open)
    leader_changes: int = 0
    problems: list[str] = field(default_factory=list)


def outage(record: FaultRecord, end: float) -> tuple[float, float]:
    started = record.started or end
    return started, record.repaired or end


def judge_faults(records: Sequence[FaultRecord], messages: Sequence[AlertMessage],
                 timeline: Sequence[tuple[float, str | None]], end: float) -> list[FaultVerdict]:
    verdicts = []
    for record in records:
        if record.started is None:
            continue
        verdict = FaultVerdict(record)
        lo, hi = outage(record, end)
        verdict.leader_changes = leader_changes(timeline, lo, record.settled or end)
        if record.kind.track is Track.STACK:
            verdict.expected = hi - lo - leaderless(timeline, lo, hi) >= ALERT_THRESHOLD
            verdict.messages = [m for m in messages if m.key == record.expect_key
                                and lo - ATTRIBUTION_SLACK <= m.started_at <= hi + ATTRIBUTION_SLACK]
            judge_messages(verdict, hi)
        verdicts.append(verdict)
    return verdicts


def judge_messages(verdict: FaultVerdict, repaired: float) -> None:
    if verdict.expected and not verdict.messages:
        verdict.problems.append("missed: no alert")
    if len(verdict.messages) > 1:
        verdict.problems.append(f"{len(verdict.messages)} alerts for one fault")
    for m in verdict.messages:
        if m.resolved_at is None:
            verdict.problems.append(f"alert {m.incident_id} never resolved")
        elif m.resolved_at < repaired - EARLY_SLACK:
            verdict.problems.append(f"alert {m.incident_id} resolved {repaired - m.resolved_at:.0f} s "
                                    "before the service was back")
    if verdict.leader_changes and any("missed" in p or "never" in p for p in verdict.problems):
        verdict.problems.append("alert lost across a leader change")


def consequence_of(m: AlertMessage, records: Sequence[FaultRecord], end: float) -> FaultRecord | None:
    """The fault whose window (injected .. repaired + CONSEQUENCE_WINDOW) holds this incident's start."""
    for record in records:
        lo, hi = outage(record, end)
        if record.started is not None and lo - ATTRIBUTION_SLACK <= m.started_at <= hi + CONSEQUENCE_WINDOW:
            return record
    return None


def incident_checks(verdicts: Sequence[FaultVerdict], messages: Sequence[AlertMessage], end: float) -> list[Check]:
    primary = {m.ts: i for i, v in enumerate(verdicts) for m in v.messages}
    groups = Counter(("fault", primary[m.ts]) if m.ts in primary else ("incident", m.incident_id or m.ts)
                     for m in messages)
    duplicates = sum(n - 1 for n in groups.values())
    missed = [v for v in verdicts if v.expected and not v.messages]
    unresolved = [m for m in messages if m.key and m.resolved_at is None]
    early = [p for v in verdicts for p in v.problems if "before the service was back" in p]
    after = [f"{m.incident_id}: {line}" for m in messages for line in m.after_resolved]
    lost = [v for v in verdicts if "alert lost across a leader change" in v.problems]
    records = [v.record for v in verdicts]
    unexplained = [m for m in messages if m.ts not in primary and consequence_of(m, records, end) is None]
    return [
        Check("duplicate alerts", duplicates, 0, "msgs",
              tuple(f"{k}: {n} messages" for k, n in groups.items() if n > 1)),
        Check("missed alerts", len(missed), 0, "faults",
              tuple(f"{v.record.kind.value} {v.record.target}" for v in missed)),
        Check("alerts not resolved after recovery", len(unresolved) + len(early), 0, "msgs",
              tuple([f"{m.incident_id}: {m.text[:80]}" for m in unresolved] + early)),
        Check("posted after resolved", len(after), 0, "posts", tuple(after)),
        Check("alerts lost across leader changes", len(lost), 0, "faults",
              tuple(f"{v.record.kind.value} {v.record.target}" for v in lost)),
        Check("alerts no fault explains (reported)", len(unexplained), float("inf"), "msgs",
              tuple(f"{m.incident_id or m.ts}: {m.text[:80]}" for m in unexplained)),
    ]


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class TaskTally:
    sent: int  # publishes the broker confirmed
    unconfirmed: int  # publishes that raised (broker down); reported, not counted against the history
    finished: int  # SUCCESS or FAILURE in the result backend
    recorded: int  # finished, and in the history with that same state
    lost: int  # finished, and no history row
    wrong_state: int  # finished, and the history says otherwise
    extra_rows: int  # more than one history row for a task
    unfinished: int  # started or queued per the backend and never finished (killed with their worker)
    never_ran: int  # confirmed, and not a trace in the backend
    unexpected_outcome: int  # a quick task failed, a failing one succeeded: a broken load, not the bot
    samples: tuple[str, ...] = ()


def tally_tasks(sent: Sequence[SentTask], backend: dict[str, str],
                history: dict[str, tuple[str, int]]) -> TaskTally:
    confirmed = [t for t in sent if t.confirmed]
    finished = [t for t in confirmed if backend.get(t.task_id) in FINAL]
    lost = [t for t in finished if t.task_id not in history]
    wrong = [t for t in finished if t.task_id in history and history[t.task_id][0] != backend[t.task_id]]
    samples = [f"lost {t.task_id} ({t.kind.value}, {backend[t.task_id]})" for t in lost[:5]]
    samples += [f"wrong {t.task_id}: history {history[t.task_id][0]}, backend {backend[t.task_id]}"
                for t in wrong[:5]]
    return TaskTally(
        sent=len(confirmed), unconfirmed=len(sent) - len(confirmed), finished=len(finished),
        recorded=len(finished) - len(lost) - len(wrong), lost=len(lost), wrong_state=len(wrong),
        extra_rows=sum(1 for state_count in history.values() if state_count[1] > 1),
        unfinished=sum(1 for t in confirmed if t.task_id in backend and backend[t.task_id] not in FINAL),
        never_ran=sum(1 for t in confirmed if t.task_id not in backend),
        unexpected_outcome=sum(1 for t in finished if backend[t.task_id] != EXPECTED_STATE[t.kind]),
        samples=tuple(samples),
    )  # fmt: skip


def task_checks(tally: TaskTally) -> list[Check]:
    return [
        Check("history rows lost", tally.lost, 0, "tasks", tally.samples),
        Check("history rows with a wrong final state", tally.wrong_state, 0, "tasks"),
        Check("tasks with more than one history row", tally.extra_rows, 0, "tasks"),
    ]


# --------------------------------------------------------------------------- acks, memory, threads


def ack_checks(pings: Sequence[Ping]) -> list[Check]:
    outcomes = Counter(p.outcome for p in pings)
    misses = outcomes[AckOutcome.LATE] + outcomes[AckOutcome.NEVER] + outcomes[AckOutcome.REFUSED]
    lost = outcomes[AckOutcome.CONNECTION_LOST] + outcomes[AckOutcome.UNSENT]
    return [Check("/tasks not acked within 3 s", misses, 0, f"of {len(pings)}",
                  tuple(f"{o.value}: {n}" for o, n in outcomes.items())),
            Check("/tasks lost with a connection (reported)", lost, float("inf"), f"of {len(pings)}")]


@dataclass(frozen=True)
class Drift:
    life: str
    warm: float  # bytes: the level after warm-up
    end: float  # bytes: the level at the end of its life (or of the soak)

    @property
    def ratio(self) -> float:
        return (self.end - self.warm) / self.warm


def drifts(lives: Sequence[Life], warm_up: float, min_span: float) -> tuple[list[Drift], list[str]]:
    """Each process that lived at least `min_span` past its warm-up, its level then and at its end;
    and the names of those too short-lived to judge."""
    judged, skipped = [], []
    for life in lives:
        mark = life.started + warm_up
        warm = [rss for at, rss in life.rss if mark <= at <= mark + WARM_LEVEL_SPAN]
        if not warm or not life.rss or life.rss[-1][0] < mark + min_span:
            skipped.append(life.name)
            continue
        judged.append(Drift(life.name, mean(warm), mean(rss for _, rss in life.rss[-3:])))
    return judged, skipped


def memory_checks(judged: Sequence[Drift]) -> list[Check]:
    worst = max((d.ratio for d in judged), default=0.0)
    return [Check("worst memory drift after warm-up", round(worst * 100, 1), MEMORY_DRIFT * 100, "%",
                  tuple(f"{d.life}: {d.warm / 2**20:.1f} -> {d.end / 2**20:.1f} MiB ({d.ratio:+.1%})"
                        for d in judged))]


def thread_checks(deaths: dict[str, list[str]], lives: Sequence[Life]) -> list[Check]:
    dead = defaultdict(list, {name: list(lines) for name, lines in deaths.items() if lines})
    for life in lives:
        dead[life.name] += [f"/healthz: thread {name} dead" for name in sorted(life.dead_threads)]
    lines = tuple(f"{name}: {line}" for name, found in dead.items() for line in found)
    return [Check("threads died", len(lines), 0, "", lines)]
