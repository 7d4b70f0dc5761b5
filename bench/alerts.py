"""Benchmark `alerts`: how long after a real fault the alert is in the Slack channel, with default settings.

One stack (private RabbitMQ node, worker w1, Flower, the Slack stand-in) and, per scenario, a fresh
`opsbot run` in Socket Mode with OPSBOT_ALERT_CHANNEL=C_ALERTS and every other alert setting left at
its default (OPSBOT_POLL_SECONDS 10, OPSBOT_ALERT_AFTER 2, OPSBOT_RESOLVE_AFTER 2, ...), so incidents
of one scenario never mix with another's. The scenarios:

1. worker: a second worker (w2, on the stack's node) is SIGKILLed (`CeleryWorker.kill()`); w1 stays
   up, so Celery still runs and the alert is about w2 alone (its text names the worker);
2. broker: the node the bot watches is SIGKILLed (`RabbitNode.kill()`): a node of the benchmark's
   own, with a worker of its own, so the stack's node (Flower's broker) is never touched;
3. flower: Flower is SIGKILLed (`FlowerProcess.kill()`).

Each round: let the bot run healthy (at least 2 s) until its 10 s poll cycle reaches the round's
phase, the rounds' phases spread evenly over the cycle starting 0.25 s after a scheduled poll (the
worst moment for a fault only the periodic poll sees); start the clock and inject the fault (in a
thread, so the watching starts at once); every ~20 ms look for a new top-level message about it in
C_ALERTS; then repair (`CeleryWorker.start()`, `RabbitNode.restart()`, `FlowerProcess.restart()`) and
wait until that message reads "Resolved" before the next round.

Why phases and not a fixed healthy time: an alert resolves 1 s after one of the bot's scheduled polls
(the second passing check is a quick re-poll), so a fixed sleep after "Resolved" lands every round's
fault at (1 s + the sleep) into the cycle, and a few rounds cover only part of it. The phase is
measured against the interval grid's origin, taken as the bot's first Slack API call after its start
(auth.test, made right after the alert scheduler starts; good to ~0.1 s, see the Flower rounds:
alert = 10 s - phase + 1 s confirmation). Without that call the fallback is a healthy time of
(3 + 2.7 * round) mod 10 s.

Figures: fault to alert seen in the stand-in (the target), fault to the bot's chat.postMessage
arriving (the stand-in's own clock; a cross-check of the 20 ms watching), and repair done to
"Resolved".
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
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
from tests.support.celery_procs import CeleryWorker
from tests.support.net import wait_until
from tests.support.rabbit import RabbitNode
from tests.support.slack import Message, SlackStandIn

NAME = "alerts"
HELP = "real fault (worker, broker, Flower killed) to the alert in Slack, default alert settings"
CHANNEL = "C_ALERTS"
POLL_SECONDS = 10.0  # bot.config's default OPSBOT_POLL_SECONDS, which the bot under test keeps
SCENARIOS = ("worker", "broker", "flower")
LIMITS = {
    "worker": 6.0,
    "broker": 5.0,
    "flower": 2 * POLL_SECONDS + 1.0,  # within two polls plus a second
}
WATCH = 0.02  # how often slack.messages is looked at
ALERT_TIMEOUT = 60.0
RESOLVE_TIMEOUT = 90.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--rounds", type=int, default=3,
                       help="faults per scenario (default: 3; each round takes 20-40 s)")
    group.add_argument("--alert-scenarios", default=",".join(SCENARIOS), metavar="LIST",
                       help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all)")


FIRST_PHASE = 0.25  # just after a scheduled poll has looked: the longest wait for the next one
MIN_HEALTHY = 2.0  # at least this long healthy (after the last round's "Resolved") before a fault


def phase_of(index: int, rounds: int) -> float:
    """Where in the bot's poll cycle round `index`'s fault lands: spread evenly over the cycle."""
    return (FIRST_PHASE + index * POLL_SECONDS / rounds) % POLL_SECONDS


def fallback_offset(index: int) -> float:
    """Healthy time before round `index`'s fault when the poll grid is unknown (3, 5.7, 8.4, 1.1, ... s)."""
    return (3.0 + index * 2.7) % POLL_SECONDS


def wait_for_phase(phase: float, origin: float | None, index: int) -> float:
    """Sleep until the bot's poll cycle is at `phase` (at least MIN_HEALTHY from now); how long it slept."""
    if origin is None:
        wait = fallback_offset(index)
    else:
        wait = (phase - (time.time() - origin)) % POLL_SECONDS
        if wait < MIN_HEALTHY:
            wait += POLL_SECONDS
    time.sleep(wait)
    return wait


# --------------------------------------------------------------------------- the scenarios


@dataclass
class Scenario:
    key: str
    title: str
    about: str  # what the alert's text must contain
    fault: Callable[[], None]
    repair: Callable[[], None]
    env: dict[str, str] = field(default_factory=dict)  # the bot's settings beyond bench.common.bot_env
    info: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def scenario(key: str, stack: Stack) -> Iterator[Scenario]:
    """The scenario's own services, started here and killed on the way out."""
    with contextlib.ExitStack() as cleanup:
        if key == "worker":
            doomed = CeleryWorker(stack.rabbit.amqp_url, hostname="w2@%h", concurrency=1)
            cleanup.callback(doomed.cleanup)
            log(f"starting the worker to kill ({doomed.name})")
            doomed.start()
            yield Scenario(key, f"worker {doomed.name} killed (SIGKILL)", doomed.name, doomed.kill, doomed.start,
                           info={"killed": doomed.name, "survivor": stack.worker.name})
        elif key == "broker":
            log("starting the RabbitMQ node to kill, and a worker on it")
            node = RabbitNode(name_prefix="opsbot-bench-broker")
            cleanup.callback(node.cleanup)
            node.start()
            worker = CeleryWorker(node.amqp_url, hostname="wb@%h", concurrency=1)
            cleanup.callback(worker.cleanup)
            worker.start()
            yield Scenario(key, "RabbitMQ node killed (SIGKILL)", "RabbitMQ", node.kill, node.restart,
                           env={"CELERY_BROKER_URL": node.amqp_url, "RABBITMQ_MANAGEMENT_URL": node.management_url},
                           info={"node": node.node_name, "worker": worker.name})
        elif key == "flower":
            flower = stack.flower
            yield Scenario(key, "Flower killed (SIGKILL)", "Flower", flower.kill, flower.restart,
                           info={"flower": flower.bare_url})
        else:
            raise ValueError(f"unknown scenario {key!r}")


# --------------------------------------------------------------------------- the stand-in's side


def top_level_alerts(slack: SlackStandIn, about: str) -> list[Message]:
    """Top-level messages in the alert channel about one thing (thread replies are not alerts)."""
    return [m for m in slack.messages if m.channel == CHANNEL and not m.thread_ts and about in (m.text or "")]


def unresolved(slack: SlackStandIn, about: str) -> list[Message]:
    return [m for m in top_level_alerts(slack, about) if not (m.text or "").startswith("Resolved")]


def channel_ts(slack: SlackStandIn) -> set[str]:
    return {m.ts for m in slack.messages if m.channel == CHANNEL}


def post_time(slack: SlackStandIn, ts: str) -> float | None:
    """When the stand-in received the chat.postMessage that created message `ts` (its wall clock)."""
    return next((c.time for c in slack.calls_to("chat.postMessage")
                 if c.response and c.response.get("ok") and c.response.get("ts") == ts
                 and c.params.get("channel") == CHANNEL), None)


def grid_origin(slack: SlackStandIn, since: float) -> float | None:
    """The bot's first Slack API call (auth.test, just after its scheduler started): the poll grid's origin."""
    return min((c.time for c in slack.calls if c.time >= since), default=None)


# --------------------------------------------------------------------------- one round


@dataclass
class Round:
    index: int
    offset: float  # healthy time before the fault (since the last round's "Resolved", or the bot's warm-up)
    phase: float | None = None  # seconds into the bot's poll cycle when the fault was injected (approx.)
    delay: float | None = None  # fault to the alert seen in slack.messages
    posted: float | None = None  # fault to the stand-in receiving chat.postMessage
    fault_call: float = 0.0  # how long the kill() call took
    repair_call: float = 0.0
    resolved: float | None = None  # repair done to the message reading "Resolved"
    alert_text: str = ""
    other_alerts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        def r3(v: float | None) -> float | None:
            return round(v, 3) if v is not None else None

        return {"round": self.index, "offset_s": r3(self.offset), "phase_s": r3(self.phase),
                "delay_ms": ms(self.delay) if self.delay is not None else None,
                "posted_ms": ms(self.posted) if self.posted is not None else None,
                "fault_call_ms": ms(self.fault_call), "repair_call_ms": ms(self.repair_call),
                "resolved_after_repair_ms": ms(self.resolved) if self.resolved is not None else None,
                "alert_text": self.alert_text, "other_alerts": self.other_alerts, "ok": self.ok,
                "problems": self.problems}


def one_round(slack: SlackStandIn, sc: Scenario, index: int, rounds: int, origin: float | None) -> Round:
    result = Round(index, offset=wait_for_phase(phase_of(index, rounds), origin, index))
    if unresolved(slack, sc.about):
        result.problems.append("an alert was still open before the fault")
    before = channel_ts(slack)
    alert: Message | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fault") as pool:
        wall0, t0 = time.time(), time.monotonic()
        injecting = pool.submit(timed, sc.fault)
        deadline = t0 + ALERT_TIMEOUT
        while True:
            fresh = [m for m in top_level_alerts(slack, sc.about) if m.ts not in before]
            now = time.monotonic()
            if fresh:
                alert = fresh[0]
                result.delay = now - t0
                break
            if now >= deadline:
                break
            time.sleep(WATCH)
        result.fault_call = injecting.result()
    if origin is not None:
        result.phase = (wall0 - origin) % POLL_SECONDS
    if alert is None:
        result.problems.append(f"no alert about {sc.about!r} within {ALERT_TIMEOUT:g} s")
    else:
        result.alert_text = alert.text or ""
        posted_at = post_time(slack, alert.ts)
        result.posted = posted_at - wall0 if posted_at is not None else None

    result.repair_call = timed(sc.repair)
    repaired = time.monotonic()
    if alert is not None:
        def resolved() -> bool:
            current = slack.message(alert.channel, alert.ts)
            return current is not None and (current.text or "").startswith("Resolved")

        if wait_until(resolved, RESOLVE_TIMEOUT, 0.05):
            result.resolved = time.monotonic() - repaired
        else:
            result.problems.append(f"the alert never read 'Resolved' within {RESOLVE_TIMEOUT:g} s of the repair")
    elif not wait_until(lambda: not unresolved(slack, sc.about), RESOLVE_TIMEOUT, 0.1):
        result.problems.append("a late alert never resolved")
    result.other_alerts = [m.text or "" for m in slack.messages
                           if m.channel == CHANNEL and not m.thread_ts and m.ts not in before
                           and (alert is None or m.ts != alert.ts)]
    return result


def timed(action: Callable[[], Any]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


# --------------------------------------------------------------------------- the benchmark


@dataclass
class Results:
    delay: Timings = field(default_factory=Timings)
    posted: Timings = field(default_factory=Timings)
    resolved: Timings = field(default_factory=Timings)
    rounds: list[Round] = field(default_factory=list)
    title: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, r: Round) -> None:
        self.rounds.append(r)
        for timings, value in ((self.delay, r.delay), (self.posted, r.posted), (self.resolved, r.resolved)):
            if value is None:
                timings.failed += 1
            else:
                timings.samples.append(value)

    def as_json(self) -> dict[str, Any]:
        return {"title": self.title, **self.info, "delay": self.delay.as_json(), "posted": self.posted.as_json(),
                "resolved_after_repair": self.resolved.as_json(), "rounds": [r.as_json() for r in self.rounds]}


def run_scenario(stack: Stack, key: str, rounds: int, log_level: str) -> Results:
    results = Results()
    with scenario(key, stack) as sc:
        results.title, results.info = sc.title, sc.info
        started = time.time()
        env = {"OPSBOT_ALERT_CHANNEL": CHANNEL, **sc.env}
        with running_bot(stack, f"bot-alerts-{key}", log_level=log_level, extra_env=env) as bot:
            origin = grid_origin(stack.slack, started)
            log(f"{key}: {rounds} rounds ({sc.title})")
            for i in range(rounds):
                check_running(bot, key)
                r = one_round(stack.slack, sc, i, rounds, origin)
                results.add(r)
                phase = f"{r.phase:.1f} s" if r.phase is not None else "?"
                delay = f"{r.delay:.2f} s" if r.delay is not None else "none"
                resolved = f"{r.resolved:.1f} s" if r.resolved is not None else "never"
                log(f"{key} round {i}: offset {r.offset:.1f} s, phase {phase}: alert after {delay}, "
                    f"resolved {resolved} after the repair" + (f"; {'; '.join(r.problems)}" if r.problems else ""))
            check_running(bot, key)
    return results


def check_running(bot: BotProcess, key: str) -> None:
    if not bot.running():
        raise RuntimeError(f"the {key} scenario's bot exited with {bot.process.returncode}:\n{bot.output_tail()}")


def parse_scenarios(value: str) -> list[str]:
    keys = [k.strip() for k in value.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SCENARIOS]
    if unknown or not keys:
        raise ValueError(f"--alert-scenarios: unknown {unknown} (choose from {', '.join(SCENARIOS)})")
    return keys


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.rounds < 1:
        raise ValueError("--rounds must be at least 1")
    keys = parse_scenarios(args.alert_scenarios)
    log_level = getattr(args, "bot_log_level", "INFO")
    load_at_start = load_average()
    results: dict[str, Results] = {}
    with running_stack(concurrency=2) as stack:
        for key in keys:
            results[key] = run_scenario(stack, key, args.rounds, log_level)
        stack_info = {"rabbitmq": stack.rabbitmq_version(), "worker": stack.worker.name}
    return report(results, {
        "config": {"rounds": args.rounds, "scenarios": keys, "bot_log_level": log_level, "alert_channel": CHANNEL,
                   "alert_settings": "defaults (OPSBOT_POLL_SECONDS, OPSBOT_ALERT_AFTER, OPSBOT_RESOLVE_AFTER unset)",
                   "poll_seconds": POLL_SECONDS,
                   "target_phases_s": [round(phase_of(i, args.rounds), 2) for i in range(args.rounds)],
                   "min_healthy_s": MIN_HEALTHY,
                   "watch_ms": WATCH * 1000, "alert_timeout_s": ALERT_TIMEOUT, "resolve_timeout_s": RESOLVE_TIMEOUT},
        "load_average_at_start": load_at_start,
        "stack": stack_info,
    })


def report(results: dict[str, Results], extra: dict[str, Any]) -> dict[str, Any]:
    print_table("Fault to alert in Slack, default settings (poll 10 s, alert after 2 failures)", [
        row for key, r in results.items() for row in (
            (f"{key}: fault -> alert seen", r.delay.stats()),
            (f"  {key}: fault -> chat.postMessage", r.posted.stats()),
        )
    ])
    print_table("Repair done to the alert reading 'Resolved'",
                [(f"{key}: repaired -> Resolved", r.resolved.stats()) for key, r in results.items()])
    print("\n  rounds (offset = healthy time before the fault; phase = where in the bot's 10 s poll cycle, approx.)")
    for key, r in results.items():
        for rd in r.rounds:
            phase = f"{rd.phase:4.1f}" if rd.phase is not None else "   ?"
            delay = f"{rd.delay * 1000:8.1f} ms" if rd.delay is not None else "    none   "
            print(f"    {key:<7} #{rd.index}  offset {rd.offset:4.1f} s  phase {phase} s  alert {delay}"
                  + (f"  also: {rd.other_alerts}" if rd.other_alerts else "")
                  + (f"  PROBLEMS: {'; '.join(rd.problems)}" if rd.problems else ""))
    for key, r in results.items():
        first = next((rd.alert_text for rd in r.rounds if rd.alert_text), "")
        print(f"  {key} alert text: {first!r}")
    print(f"  load average (1/5/15 min) at start: {extra['load_average_at_start']}")
    targets = []
    for key, r in results.items():
        # A round without an alert has no figure: it is past any limit.
        worst = r.delay.stats().max if r.delay.failed == 0 else float("inf")
        targets.append(Target(f"{key}: fault -> alert, every round (max) < {LIMITS[key]:g} s", worst, LIMITS[key]))
    print_targets(targets)
    failed = {key: [rd.as_json() for rd in r.rounds if not rd.ok] for key, r in results.items()}
    return {
        "benchmark": NAME, **extra,
        "scenarios": {key: r.as_json() for key, r in results.items()},
        "failed_rounds": {key: len(v) for key, v in failed.items()},
        "failures": {key: v for key, v in failed.items() if v},
        "targets": [t.as_json() for t in targets],
    }


def main(args: argparse.Namespace) -> None:
    path = write_json(NAME, run(args))
    print(f"\n  results: {path}")
