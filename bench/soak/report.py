"""The soak's verdict: the checks over the evidence, printed as tables and written as JSON."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from bench.common import percentile, print_rows
from bench.soak import checks
from bench.soak.checks import Check, Drift, FaultVerdict, TaskTally
from bench.soak.load import AckOutcome
from bench.soak.plan import Kind, Track
from bench.soak.run import Evidence


@dataclass(frozen=True)
class Verdict:
    verdicts: list[FaultVerdict]
    tally: TaskTally
    drifts: list[Drift]
    unjudged_lives: list[str]
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def judge(ev: Evidence) -> Verdict:
    verdicts = checks.judge_faults(ev.records, ev.messages, ev.timeline, ev.ended)
    tally = checks.tally_tasks(ev.sent, ev.backend, ev.history)
    drifts, unjudged = checks.drifts(ev.lives, ev.config.warm_up, ev.config.min_span)
    found = (checks.incident_checks(verdicts, ev.messages, ev.ended) + checks.task_checks(tally)
             + checks.ack_checks(ev.pings) + checks.memory_checks(drifts)
             + checks.thread_checks(ev.deaths, ev.lives)
             + [Check("soak threads crashed", len(ev.crashed), 0, "", tuple(ev.crashed))])
    return Verdict(verdicts, tally, drifts, unjudged, found)


def by_kind(verdicts: list[FaultVerdict], ev: Evidence) -> list[tuple[Any, ...]]:
    """Per kind: injected, skipped, outlasted the threshold, alerts, duplicates, missed, problems."""
    rows = []
    for kind in Kind:
        mine = [v for v in verdicts if v.record.kind is kind]
        skipped = sum(1 for r in ev.records if r.kind is kind and r.skipped)
        if not mine and not skipped:
            continue
        stack = kind.track is Track.STACK
        rows.append((kind.value, len(mine), skipped,
                     sum(v.expected for v in mine) if stack else "-",
                     sum(len(v.messages) for v in mine) if stack else "-",
                     sum(max(0, len(v.messages) - 1) for v in mine) if stack else "-",
                     sum(1 for v in mine if v.expected and not v.messages) if stack else "-",
                     sum(len(v.problems) for v in mine)))
    return rows


def print_report(ev: Evidence, verdict: Verdict) -> None:
    cfg = ev.config
    print(f"\nSoak: {cfg.minutes:g} min, seed {cfg.seed} (rerun with --seed {cfg.seed}), {cfg.rate:g} task/s, "
          f"/tasks every {cfg.ping_every:g} s; alert threshold {checks.ALERT_THRESHOLD:g} s; "
          f"load average at start {ev.load_at_start}")
    print_rows("Faults", ("#", "at s", "kind", "target", "hold s", "down s", "alerts", "leader changes", "problems"),
               [(i, round((v.record.started or ev.started) - ev.started), v.record.kind.value, v.record.target[:40],
                 v.record.planned.hold, round((v.record.repaired or ev.ended) - (v.record.started or ev.ended)),
                 len(v.messages) if v.record.kind.track is Track.STACK else "-", v.leader_changes,
                 "; ".join(v.record.problems + v.problems) or "-")
                for i, v in enumerate(verdict.verdicts)])
    skipped = [f"{r.kind.value} at {r.planned.at:g} s: {r.skipped}" for r in ev.records if r.skipped]
    if skipped:
        print("  skipped: " + "; ".join(skipped))
    print_rows("Faults by kind", ("kind", "injected", "skipped", "outlasted threshold", "alerts", "duplicates",
                                  "missed", "problems"), by_kind(verdict.verdicts, ev))
    t = verdict.tally
    print_rows("Tasks (result backend against the bot's history)", ("sent", "unconfirmed", "finished", "recorded",
               "lost", "wrong state", "unfinished", "never ran", "unexpected outcome"),
               [(t.sent, t.unconfirmed, t.finished, t.recorded, t.lost, t.wrong_state, t.unfinished, t.never_ran,
                 t.unexpected_outcome)])
    print_acks(ev)
    print_rows("Replica memory (RSS, MiB)", ("process", "after warm-up", "at end", "drift"),
               [(d.life, round(d.warm / 2**20, 1), round(d.end / 2**20, 1), f"{d.ratio:+.1%}") for d in verdict.drifts]
               + [(name, "-", "-", "too short-lived to judge") for name in verdict.unjudged_lives])
    print_checks(verdict.checks)


def print_acks(ev: Evidence) -> None:
    latencies = [p.latency for p in ev.pings if p.latency is not None]
    outcomes = Counter(p.outcome for p in ev.pings)
    print_rows("/tasks acks", ("sent", *(o.value for o in AckOutcome), "p50 ms", "p99 ms", "max ms"),
               [(len(ev.pings), *(outcomes[o] for o in AckOutcome),
                 *(round(x * 1000) if latencies else "-" for x in (percentile(latencies, 50),
                   percentile(latencies, 99), max(latencies, default=0.0))))])


def print_checks(found: list[Check]) -> None:
    print("\nChecks")
    width = max(len(c.name) for c in found)
    for c in found:
        limit = "" if c.limit == float("inf") else f"(limit {c.limit:g})"
        verdict = "" if c.limit == float("inf") else ("ok" if c.ok else "FAILED")
        print(f"  {c.name:<{width}}  {c.value:>6g} {c.unit:<8} {limit:<12} {verdict}")
        for line in c.details[:12]:
            print(f"      {line}")


def as_json(ev: Evidence, verdict: Verdict) -> dict[str, Any]:
    return {
        "benchmark": "soak", "config": {**asdict(ev.config), "kinds": [k.value for k in ev.config.kinds]},
        "alert_threshold_s": checks.ALERT_THRESHOLD, "load_average_at_start": ev.load_at_start,
        "started": ev.started, "ended": ev.ended,
        "faults": [{"kind": v.record.kind.value, "target": v.record.target, "planned_at": v.record.planned.at,
                    "hold": v.record.planned.hold, "started": v.record.started, "repaired": v.record.repaired,
                    "settled": v.record.settled, "expected_alert": v.expected,
                    "alerts": [m.incident_id for m in v.messages], "leader_changes": v.leader_changes,
                    "problems": v.record.problems + v.problems} for v in verdict.verdicts],
        "skipped": [{"kind": r.kind.value, "planned_at": r.planned.at, "why": r.skipped}
                    for r in ev.records if r.skipped],
        "by_kind": by_kind(verdict.verdicts, ev),
        "alerts": [asdict(m) for m in ev.messages],
        "tasks": asdict(verdict.tally),
        "acks": [{"at": p.at, "outcome": p.outcome.value, "latency": p.latency} for p in ev.pings],
        "memory": [{"process": d.life, "warm": d.warm, "end": d.end, "drift": d.ratio} for d in verdict.drifts],
        "rss": {life.name: [(round(at - ev.started, 1), rss) for at, rss in life.rss] for life in ev.lives},
        "checks": [{**asdict(c), "ok": c.ok} for c in verdict.checks],
        "ok": verdict.ok,
    }
