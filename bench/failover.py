"""Benchmark `failover`: the alerting leader SIGKILLed mid-incident, to the next alert action taken by
another replica.

One stack (private RabbitMQ node, worker w1, Flower, the Slack stand-in), a fresh database on the
machine's PostgreSQL (CREATE DATABASE on PG_ADMIN, dropped afterwards) and two `opsbot run` replicas
in Socket Mode on it, OPSBOT_REPLICA_ID r1 and r2, OPSBOT_ALERT_CHANNEL=C_ALERTS, every other alert
setting at its default (poll 10 s, alert after 2 failures, resolve after 2 passes); as in
tests/test_replicas.py. Each round:

1. SIGKILL Flower and wait for the alert: a new top-level message in C_ALERTS mentioning Flower;
2. read the leader from the `leader` table (its row names the replica and when it last said so),
   SIGKILL that replica's process group and start the clock;
3. restart Flower (in a thread, so the watching starts at once) and, every ~20 ms, look at the
   `leader` row and at the alert message, until the row names the other replica and the message
   reads "Resolved". The dead replica cannot have done either, so both are the survivor's work;
4. check that the round left exactly one top-level alert (the survivor did not post it again);
5. start a replacement replica with the killed one's id; it stands by for the next round, in which
   the leader is whichever replica holds the lock then.

Figures: leader killed to the alert updated to "Resolved" (the target, under 15 s), leader killed to
the `leader` row naming the other replica, leader killed to Flower answering again, Flower back to
"Resolved", and Flower killed to the alert (background: up to one 10 s poll plus a confirmation).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bench.common import (
    Stack,
    Target,
    Timings,
    load_average,
    log,
    ms,
    print_table,
    print_targets,
    running_bot,
    running_stack,
    write_json,
)
from tests.support.bot import BotProcess
from tests.support.net import wait_until
from tests.support.postgres import LEADER_FRESH, LeaderRow, fresh_database
from tests.support.slack import Message, SlackStandIn

NAME = "failover"
HELP = "leader replica SIGKILLed mid-incident to another replica resolving the alert (2 replicas, PostgreSQL)"
CHANNEL = "C_ALERTS"
ABOUT = "Flower"  # what the alert's text must mention
REPLICA_IDS = ("r1", "r2")
LIMIT = 15.0  # leader killed -> "Resolved" by the other replica
WATCH = 0.02
ALERT_TIMEOUT = 60.0
FAILOVER_TIMEOUT = 90.0
SETTLE = 3.0  # after "Resolved", how long to keep looking for a second post about the same incident


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    # `--rounds` is shared with bench.alerts: whichever benchmark is registered first defines it.
    with contextlib.suppress(argparse.ArgumentError):
        group.add_argument("--rounds", type=int, default=3,
                           help="rounds (default: 3; a failover round takes 20-40 s)")


# --------------------------------------------------------------------------- the replicas


class Replicas:
    """`opsbot run` replicas on one database; each lives in a running_bot context on `cleanup`."""

    def __init__(self, stack: Stack, db_url: str, cleanup: contextlib.ExitStack, log_level: str) -> None:
        self.stack = stack
        self.db_url = db_url
        self.cleanup = cleanup
        self.log_level = log_level
        self.live: dict[str, BotProcess] = {}
        self.started = 0

    def start(self, replica: str) -> BotProcess:
        env = {"OPSBOT_DB_URL": self.db_url, "OPSBOT_REPLICA_ID": replica, "OPSBOT_ALERT_CHANNEL": CHANNEL}
        name = f"bot-failover-{replica}-{self.started}"
        self.started += 1
        log(f"starting replica {replica} ({name})")
        bot = self.cleanup.enter_context(running_bot(self.stack, name, log_level=self.log_level, extra_env=env))
        self.check(replica, bot)
        self.live[replica] = bot
        return bot

    def check(self, replica: str, bot: BotProcess | None = None) -> None:
        bot = bot or self.live[replica]
        if not bot.running():
            raise RuntimeError(f"replica {replica} exited with {bot.process.returncode}:\n{bot.output_tail()}")

    def kill(self, replica: str) -> None:
        """SIGKILL the replica's process group (no goodbye: its lock goes with its connection); reap it."""
        bot = self.live.pop(replica)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(bot.process.pid, signal.SIGKILL)
        bot.process.wait(timeout=10)

    def stop_all(self) -> None:
        """Stop every replica at once, so each running_bot exit finds the stand-in without connections."""
        for bot in self.live.values():
            with contextlib.suppress(Exception):
                bot.stop()
        self.live.clear()


# --------------------------------------------------------------------------- the stand-in's side


def top_level(slack: SlackStandIn, since: set[str]) -> list[Message]:
    """Top-level messages in the alert channel that were not there before (thread replies are not alerts)."""
    return [m for m in slack.messages if m.channel == CHANNEL and not m.thread_ts and m.ts not in since]


def about_flower(messages: list[Message]) -> list[Message]:
    return [m for m in messages if ABOUT in (m.text or "")]


def channel_ts(slack: SlackStandIn) -> set[str]:
    return {m.ts for m in slack.messages if m.channel == CHANNEL}


def is_resolved(slack: SlackStandIn, alert: Message) -> bool:
    current = slack.message(alert.channel, alert.ts)
    return current is not None and (current.text or "").startswith("Resolved")


def updates_after(slack: SlackStandIn, alert: Message, since_wall: float) -> int:
    return sum(1 for c in slack.calls_to("chat.update")
               if c.time >= since_wall and c.params.get("ts") == alert.ts and c.response and c.response.get("ok"))


def thread_replies(slack: SlackStandIn, alert: Message) -> list[str]:
    return [m.text or "" for m in slack.messages if m.channel == CHANNEL and m.thread_ts == alert.ts]


# --------------------------------------------------------------------------- one round


@dataclass
class Round:
    index: int
    leader: str = ""
    survivor: str = ""
    fault_to_alert: float | None = None  # Flower killed -> alert seen
    new_leader: float | None = None  # leader killed -> the row names the survivor
    flower_back: float | None = None  # leader killed -> Flower answers /healthcheck again
    resolved: float | None = None  # leader killed -> the alert reads "Resolved" (the target)
    updates_after_kill: int = 0  # chat.update calls on the alert after the kill (by the survivor)
    alert_text: str = ""
    resolved_text: str = ""
    top_level_alerts: list[str] = field(default_factory=list)  # top-level messages of this round about Flower
    other_top_level: list[str] = field(default_factory=list)  # any other top-level message of this round
    thread: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def flower_back_to_resolved(self) -> float | None:
        return self.resolved - self.flower_back if self.resolved is not None and self.flower_back is not None else None

    def as_json(self) -> dict[str, Any]:
        def m(v: float | None) -> float | None:
            return ms(v) if v is not None else None

        return {"round": self.index, "killed_leader": self.leader, "survivor": self.survivor,
                "fault_to_alert_ms": m(self.fault_to_alert), "killed_to_new_leader_ms": m(self.new_leader),
                "killed_to_flower_back_ms": m(self.flower_back), "killed_to_resolved_ms": m(self.resolved),
                "flower_back_to_resolved_ms": m(self.flower_back_to_resolved),
                "updates_after_kill": self.updates_after_kill, "alert_text": self.alert_text,
                "resolved_text": self.resolved_text, "top_level_alerts": self.top_level_alerts,
                "other_top_level": self.other_top_level, "thread_replies": self.thread,
                "duplicate_thread_replies": sorted(t for t, n in Counter(self.thread).items() if n > 1),
                "ok": self.ok, "problems": self.problems}


def wait_for_alert(slack: SlackStandIn, before: set[str]) -> tuple[Message | None, float]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < ALERT_TIMEOUT:
        fresh = about_flower(top_level(slack, before))
        if fresh:
            return fresh[0], time.monotonic() - t0
        time.sleep(WATCH)
    return None, time.monotonic() - t0


def one_round(stack: Stack, replicas: Replicas, leader_row: LeaderRow, index: int) -> Round:
    slack, flower = stack.slack, stack.flower
    result = Round(index)
    for replica in list(replicas.live):
        replicas.check(replica)
    before = channel_ts(slack)

    flower.kill()
    alert, waited = wait_for_alert(slack, before)
    if alert is None:
        raise RuntimeError(f"round {index}: no alert about {ABOUT} within {ALERT_TIMEOUT:g} s of killing it")
    result.fault_to_alert = waited
    result.alert_text = alert.text or ""

    leader = leader_row.current()
    if leader not in replicas.live:
        raise RuntimeError(f"round {index}: the leader row names {leader!r}, not a live replica "
                           f"({', '.join(replicas.live)}): {leader_row.read()}")
    survivor = next(r for r in replicas.live if r != leader)
    result.leader, result.survivor = leader, survivor

    def restart_flower() -> float:
        flower.restart()
        return time.monotonic() - t0

    kill_wall, t0 = time.time(), time.monotonic()
    replicas.kill(leader)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flower-restart") as pool:
        restarting = pool.submit(restart_flower)
        deadline = t0 + FAILOVER_TIMEOUT
        while (result.new_leader is None or result.resolved is None) and time.monotonic() < deadline:
            if result.new_leader is None and leader_row.current() == survivor:
                result.new_leader = time.monotonic() - t0
            if result.resolved is None and is_resolved(slack, alert):
                result.resolved = time.monotonic() - t0
            time.sleep(WATCH)
        result.flower_back = restarting.result()
    if result.new_leader is None:
        result.problems.append(f"the leader row never named {survivor} within {FAILOVER_TIMEOUT:g} s: "
                               f"{leader_row.read()}")
    if result.resolved is None:
        result.problems.append(f"the alert never read 'Resolved' within {FAILOVER_TIMEOUT:g} s of the kill")
    else:
        current = slack.message(alert.channel, alert.ts)
        result.resolved_text = (current.text or "") if current else ""

    time.sleep(SETTLE)  # a duplicate post would come now, if at all
    replicas.check(survivor)
    result.updates_after_kill = updates_after(slack, alert, kill_wall)
    mine = top_level(slack, before)
    result.top_level_alerts = [m.text or "" for m in about_flower(mine)]
    result.other_top_level = [m.text or "" for m in mine if ABOUT not in (m.text or "")]
    result.thread = thread_replies(slack, alert)
    if len(result.top_level_alerts) != 1:
        result.problems.append(f"{len(result.top_level_alerts)} top-level alerts about {ABOUT} (expected 1)")
    if result.other_top_level:
        result.problems.append(f"other top-level messages: {result.other_top_level}")
    return result


# --------------------------------------------------------------------------- the benchmark


@dataclass
class Results:
    resolved: Timings = field(default_factory=Timings)
    new_leader: Timings = field(default_factory=Timings)
    flower_back: Timings = field(default_factory=Timings)
    flower_back_to_resolved: Timings = field(default_factory=Timings)
    fault_to_alert: Timings = field(default_factory=Timings)
    rounds: list[Round] = field(default_factory=list)

    def add(self, r: Round) -> None:
        self.rounds.append(r)
        for timings, value in ((self.resolved, r.resolved), (self.new_leader, r.new_leader),
                               (self.flower_back, r.flower_back),
                               (self.flower_back_to_resolved, r.flower_back_to_resolved),
                               (self.fault_to_alert, r.fault_to_alert)):
            if value is None:
                timings.failed += 1
            else:
                timings.samples.append(value)


def run(args: argparse.Namespace) -> dict[str, Any]:
    rounds = getattr(args, "rounds", 3)
    if rounds < 1:
        raise ValueError("--rounds must be at least 1")
    log_level = getattr(args, "bot_log_level", "INFO")
    load_at_start = load_average()
    results = Results()
    total_top_level = 0
    with running_stack(concurrency=2) as stack, fresh_database("opsbot_bench") as db_url, \
            contextlib.ExitStack() as cleanup:
        log(f"created database {db_url.rsplit('/', 1)[1]}")
        leader_row = LeaderRow(db_url)
        cleanup.callback(leader_row.close)
        replicas = Replicas(stack, db_url, cleanup, log_level)
        before_all = channel_ts(stack.slack)
        try:
            for replica in REPLICA_IDS:
                replicas.start(replica)
            if not wait_until(lambda: leader_row.current() in replicas.live, 15):
                raise RuntimeError(f"no replica took the lead: {leader_row.read()}")
            log(f"replicas {', '.join(REPLICA_IDS)} up; leader {leader_row.current()}")
            for i in range(rounds):
                r = one_round(stack, replicas, leader_row, i)
                results.add(r)
                log(f"round {i}: alert {fmt_s(r.fault_to_alert)} after Flower died; killed leader {r.leader}: "
                    f"{r.survivor} named leader after {fmt_s(r.new_leader)}, Flower back after "
                    f"{fmt_s(r.flower_back)}, 'Resolved' after {fmt_s(r.resolved)}"
                    + (f"; {'; '.join(r.problems)}" if r.problems else ""))
                replicas.start(r.leader)  # the replacement, with the killed one's id
            total_top_level = len(top_level(stack.slack, before_all))
        finally:
            replicas.stop_all()
        stack_info = {"rabbitmq": stack.rabbitmq_version(), "worker": stack.worker.name,
                      "flower": stack.flower.bare_url, "database": db_url}
    return report(results, total_top_level, {
        "config": {"rounds": rounds, "replicas": list(REPLICA_IDS), "bot_log_level": log_level,
                   "alert_channel": CHANNEL,
                   "alert_settings": "defaults (OPSBOT_POLL_SECONDS, OPSBOT_ALERT_AFTER, OPSBOT_RESOLVE_AFTER unset)",
                   "leader_kill": "SIGKILL to the leader replica's process group",
                   "watch_ms": WATCH * 1000, "alert_timeout_s": ALERT_TIMEOUT,
                   "failover_timeout_s": FAILOVER_TIMEOUT, "settle_s": SETTLE, "leader_row_fresh_s": LEADER_FRESH},
        "load_average_at_start": load_at_start,
        "stack": stack_info,
    })


def fmt_s(value: float | None) -> str:
    return f"{value:.2f} s" if value is not None else "never"


def report(results: Results, total_top_level: int, extra: dict[str, Any]) -> dict[str, Any]:
    print_table("Leader replica SIGKILLed mid-incident (2 replicas, default alert settings)", [
        ("killed -> 'Resolved' by the other", results.resolved.stats()),
        ("killed -> leader row names other", results.new_leader.stats()),
        ("  killed -> Flower back", results.flower_back.stats()),
        ("  Flower back -> 'Resolved'", results.flower_back_to_resolved.stats()),
        ("Flower killed -> alert (before)", results.fault_to_alert.stats()),
    ])
    print("\n  rounds")
    for r in results.rounds:
        print(f"    #{r.index}  killed {r.leader}, survivor {r.survivor}: leader row {fmt_s(r.new_leader)}, "
              f"Flower back {fmt_s(r.flower_back)}, Resolved {fmt_s(r.resolved)}; "
              f"{len(r.top_level_alerts)} top-level alert(s), {r.updates_after_kill} update(s) after the kill"
              + (f"  PROBLEMS: {'; '.join(r.problems)}" if r.problems else ""))
    first = next((r for r in results.rounds if r.alert_text), None)
    if first is not None:
        print(f"  alert text: {first.alert_text!r}")
        print(f"  resolved text: {first.resolved_text!r}")
    print(f"  top-level messages in {CHANNEL}: {total_top_level} over {len(results.rounds)} round(s)")
    print(f"  load average (1/5/15 min) at start: {extra['load_average_at_start']}")
    worst = results.resolved.stats().max if results.resolved.failed == 0 else float("inf")
    targets = [Target(f"leader killed -> 'Resolved' by another replica, every round (max) < {LIMIT:g} s",
                      worst, LIMIT)]
    print_targets(targets)
    not_one = sum(1 for r in results.rounds if len(r.top_level_alerts) != 1)
    limits = [Target("rounds without exactly one top-level alert", not_one, 0, "rounds", inclusive=True),
              Target(f"top-level messages in {CHANNEL} beyond one per round",
                    total_top_level - len(results.rounds), 0, "msgs", inclusive=True)]
    print_targets(limits, "Checks (nothing posted twice)")
    return {
        "benchmark": NAME, **extra,
        "killed_to_resolved": results.resolved.as_json(),
        "killed_to_new_leader": results.new_leader.as_json(),
        "killed_to_flower_back": results.flower_back.as_json(),
        "flower_back_to_resolved": results.flower_back_to_resolved.as_json(),
        "fault_to_alert": results.fault_to_alert.as_json(),
        "rounds": [r.as_json() for r in results.rounds],
        "failed_rounds": sum(1 for r in results.rounds if not r.ok),
        "top_level_messages": total_top_level,
        "targets": [t.as_json() for t in targets],
        "checks": [c.as_json() for c in limits],
    }


def main(args: argparse.Namespace) -> None:
    path = write_json(NAME, run(args))
    print(f"\n  results: {path}")

