"""Benchmark `scale`: `/tasks`, `/tasks active` and `/tasks workers` against 10, 500 and 2,000 workers.

The workers are a synthetic fleet (tests/support/fleet.py) on a private RabbitMQ node: kombu pidbox nodes that
answer Celery's remote control as distinct workers, with M active tasks each (default M = 10, so
5,000 active tasks at N = 500; 2 reserved each; prefork pool of M processes) and worker heartbeats
every 2 s, as real workers send them, and the task events a worker started with -E sends (received,
started; revoked after a terminate). Flower runs on the same node (it sees the same events) and the
Slack stand-in plays Slack.

One `opsbot run` (Socket Mode, bot defaults: no admins, so no Terminate buttons, unless
--scale-admins) serves every size, so its resident memory can be followed across them. Per size:
start the fleet; send `/tasks workers` until the answer counts all N workers (how long that takes is
reported); a few untimed commands; sit quiet for --scale-quiet seconds (the bot's CPU share while it
only follows heartbeats); then K rounds of `/tasks`, `/tasks active`, `/tasks workers`, one after the
other, each timed from the envelope leaving the stand-in to the ack (the bot answers in the ack); then
--scale-flower-k rounds of what a Flower user waits for on the same fleet (`/api/workers?refresh=1`,
then `/api/tasks`, timed apart); finally stop the fleet (each fake worker sends worker-offline).

Variants: --scale-no-heartbeats (no fake worker sends events) and --scale-without-heartbeat COUNT
(that many do not, as `celery worker --without-heartbeat`): the bot's probe waits for as many replies
as it sees heartbeats (bot.probes.celery_probe.CeleryProbe.expected), so these show what it does when that count
is zero or short. --scale-admins: OPSBOT_ADMINS set, so every active task row carries a button.

Every answer is checked against Slack's limits and for completeness (bench/scale_answers.py).
Memory is the bot process's VmRSS, read before each fleet starts, after the warm-up and after the
timed commands (and after every command, for the trend); per worker, the growth from before the fleet
to after the timed commands divided by N.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    Stack,
    Target,
    Timings,
    cpu_seconds,
    group_cpu_seconds,
    load_average,
    log,
    mib,
    print_rows,
    print_table,
    print_targets,
    rss_bytes,
    running_bot,
    write_json,
)
from bench.scale_answers import MAX_BLOCKS, MAX_SECTION_TEXT, Answer, complete, examine
from bench.status import measure_flower
from tests.support.bot import BotProcess
from tests.support.fleet import Fleet, FleetSpec
from tests.support.flower import FlowerProcess
from tests.support.rabbit import RabbitNode
from tests.support.slack import SlackStandIn
from tests.support.slack.rules import ACK_SECONDS

NAME = "scale"
HELP = "/tasks, /tasks active, /tasks workers against a synthetic fleet of 10, 500, 2,000 workers, and Flower"
COMMANDS = (("/tasks", ""), ("/tasks active", "active"), ("/tasks workers", "workers"))
ACK_TIMEOUT = 10.0
SEEN_TIMEOUT = 60.0  # for the bot to count the whole fleet after it started


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--scale-sizes", default="10,500,2000", metavar="LIST",
                       help="fleet sizes, comma-separated (default: 10,500,2000)")
    group.add_argument("--scale-flower-k", type=int, default=10,
                       help="rounds of Flower's /api/workers?refresh=1 and /api/tasks per size (default: 10)")
    group.add_argument("--scale-k", type=int, default=30,
                       help="timed rounds per size; each round sends the three commands (default: 30)")
    group.add_argument("--scale-tasks", type=int, default=10, help="active tasks per fake worker (default: 10)")
    group.add_argument("--scale-reserved", type=int, default=2, help="reserved tasks per fake worker (default: 2)")
    group.add_argument("--scale-processes", type=int, default=2,
                       help="processes hosting the fake workers (default: 2)")
    group.add_argument("--scale-no-heartbeats", action="store_true",
                       help="fake workers send no worker events (the bot then cannot know how many to expect)")
    group.add_argument("--scale-without-heartbeat", type=int, default=0, metavar="COUNT",
                       help="this many fake workers send no events, as with `celery worker --without-heartbeat` "
                            "(default: 0)")
    group.add_argument("--scale-admins", action="store_true",
                       help="OPSBOT_ADMINS=U_ADMIN: Terminate buttons, one block per active task")
    group.add_argument("--scale-quiet", type=float, default=10.0, metavar="SECONDS",
                       help="quiet time per size to measure the bot's CPU share while idle (default: 10)")
    group.add_argument("--scale-warmup", type=int, default=2, help="untimed rounds per size (default: 2)")


# --------------------------------------------------------------------------- the services


@contextlib.contextmanager
def fleet_stack() -> Iterator[Stack]:
    """A private RabbitMQ node, Flower on it and the Slack stand-in; no real worker (the fleet comes later)."""
    with contextlib.ExitStack() as cleanup:
        tmp = Path(tempfile.mkdtemp(prefix="opsbot-bench-scale-"))
        cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        log("starting RabbitMQ node")
        rabbit = RabbitNode(name_prefix="opsbot-bench-scale")
        cleanup.callback(rabbit.cleanup)
        rabbit.start()
        log("starting Flower")
        flower = FlowerProcess(rabbit.amqp_url)
        cleanup.callback(flower.cleanup)
        flower.start()
        slack = cleanup.enter_context(SlackStandIn())
        cleanup.callback(log, "stopping the stack")
        # bench.common's bot helpers use the broker, Flower, the stand-in and tmp; there is no worker.
        yield Stack(rabbit, None, flower, slack, tmp)  # type: ignore[arg-type]


def ask(slack: SlackStandIn, text: str) -> tuple[float | None, dict[str, Any] | None]:
    """One slash command: its ack latency and payload, or (None, None) without an ack in time."""
    envelope = slack.send_slash_command(text)
    try:
        payload = slack.wait_ack(envelope, ACK_TIMEOUT)
    except TimeoutError:
        return None, None
    return slack.ack_latency(envelope), payload


# --------------------------------------------------------------------------- one size


@dataclass
class CommandResult:
    timings: Timings = field(default_factory=Timings)
    answers: list[Answer] = field(default_factory=list)
    last_payload: dict[str, Any] | None = None  # kept in the JSON: what a user saw

    def summary(self, spec: FleetSpec) -> dict[str, Any]:
        answers = self.answers
        probe = sorted(a.probe_ms for a in answers if a.probe_ms is not None)
        stats = self.timings.stats()
        return {
            "answers": len(answers),
            "complete": sum(1 for a in answers if complete(a, spec)),
            "max_bytes": max((a.bytes for a in answers), default=0),
            "max_blocks": max((a.blocks for a in answers), default=0),
            "longest_section_text": max((a.longest_section for a in answers), default=0),
            "answers_with_cut_sections": sum(1 for a in answers if a.cut_sections),
            "fewest_page_rows": min((a.page_rows for a in answers if a.page_rows is not None), default=None),
            "violations": sorted({v for a in answers for v in a.violations}),
            "probe_ms_p50": probe[len(probe) // 2] if probe else None,
            "probe_ms_max": probe[-1] if probe else None,
            "all_within_3s": self.timings.failed == 0 and stats.max < ACK_SECONDS,
            "seen": sorted({(a.workers, a.active, a.reserved, a.silent) for a in answers
                            if not complete(a, spec)}, key=str)[:10],
        }


@dataclass
class SizeResult:
    spec: FleetSpec
    commands: dict[str, CommandResult]
    rss: dict[str, int | None]
    rss_trend: list[int | None]
    cpu_share: dict[str, float | None]
    seen_after: float | None
    fleet_start_seconds: float
    flower: dict[str, Timings]  # Flower's /api/workers?refresh=1 ("workers"), /api/tasks ("tasks"), both ("total")

    @property
    def kib_per_worker(self) -> float | None:
        """The bot's resident memory growth with this fleet, per worker (after the timed rounds)."""
        before, after = self.rss.get("before_fleet"), self.rss.get("after_timed")
        return None if before is None or after is None else round((after - before) / 1024 / self.spec.workers, 1)


def share(before: float | None, after: float | None, wall: float) -> float | None:
    if before is None or after is None or wall <= 0:
        return None
    return round((after - before) / wall, 4)


def wait_counted(stack: Stack, spec: FleetSpec) -> float | None:
    """Send `/tasks workers` until the answer counts the whole fleet: how long that took, None if never."""
    seen_at = time.monotonic()
    # Without everyone's heartbeats the bot may never count everyone: do not wait as long.
    seen_timeout = SEEN_TIMEOUT if not spec.without_heartbeat else 15.0
    while time.monotonic() - seen_at < seen_timeout:
        _, payload = ask(stack.slack, "workers")
        if payload is not None and complete(examine(payload), spec):
            return time.monotonic() - seen_at
        time.sleep(0.5)
    log(f"N={spec.workers}: the bot never counted the whole fleet within {seen_timeout:.0f} s")
    return None


def timed_rounds(stack: Stack, pid: int, k: int) -> tuple[dict[str, CommandResult], list[int | None]]:
    results = {name: CommandResult() for name, _ in COMMANDS}
    trend: list[int | None] = []
    for _ in range(k):
        for name, text in COMMANDS:
            latency, payload = ask(stack.slack, text)
            if latency is None or payload is None:
                results[name].timings.failed += 1
            else:
                results[name].timings.samples.append(latency)
                results[name].answers.append(examine(payload))
                results[name].last_payload = payload
            trend.append(rss_bytes(pid))
    return results, trend


def measure_size(stack: Stack, bot: BotProcess, spec: FleetSpec, args: argparse.Namespace) -> SizeResult:
    pid = bot.process.pid
    rss: dict[str, int | None] = {"before_fleet": rss_bytes(pid)}
    log(f"N={spec.workers}: starting the fleet ({spec.workers} x {spec.tasks} active, {spec.processes} processes)")
    started = time.monotonic()
    with Fleet(stack.rabbit.amqp_url, spec, stack.tmp) as fleet:
        fleet_start = time.monotonic() - started
        seen_after = wait_counted(stack, spec)
        for _ in range(args.scale_warmup):
            for _, text in COMMANDS:
                ask(stack.slack, text)
        rss["after_warmup"] = rss_bytes(pid)
        log(f"N={spec.workers}: {args.scale_quiet:.0f} s quiet")
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.scale_quiet)
        cpu_quiet = share(cpu0, cpu_seconds(pid), time.monotonic() - t0)
        log(f"N={spec.workers}: {args.scale_k} timed rounds of {', '.join(name for name, _ in COMMANDS)}")
        groups = {"fleet": fleet.pids, "rabbitmq": [stack.rabbit.pid], "flower": [stack.flower.pid]}
        before = {name: sum(group_cpu_seconds(p) for p in pids if p) for name, pids in groups.items()}
        bench_before = cpu_seconds_self()
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
        results, trend = timed_rounds(stack, pid, args.scale_k)
        wall = time.monotonic() - t1
        cpu_timed = share(cpu1, cpu_seconds(pid), wall)
        after = {name: sum(group_cpu_seconds(p) for p in pids if p) for name, pids in groups.items()}
        rss["after_timed"] = rss_bytes(pid)
        cpu = {"bot_quiet": cpu_quiet, "bot_timed": cpu_timed,
               **{f"{name}_timed": share(before[name], after[name], wall) for name in groups},
               "bench_and_standin_timed": share(bench_before, cpu_seconds_self(), wall)}
        log(f"N={spec.workers}: {args.scale_flower_k} rounds of Flower's /api/workers?refresh=1 and /api/tasks")
        flower = measure_flower(stack.flower, args.scale_flower_k, 1)
    if not bot.running():
        raise RuntimeError(f"the bot exited during N={spec.workers}:\n{bot.output_tail()}")
    return SizeResult(spec, results, rss, trend, cpu, seen_after, fleet_start, flower)


def cpu_seconds_self() -> float:
    return cpu_seconds(os.getpid()) or 0.0


# --------------------------------------------------------------------------- the benchmark


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s) for s in args.scale_sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1 or args.scale_k < 1:
        raise ValueError("--scale-sizes needs positive sizes and --scale-k at least 1")
    load_at_start = load_average()
    extra_env = {"OPSBOT_ADMINS": "U_ADMIN"} if args.scale_admins else {}
    results: list[SizeResult] = []
    with fleet_stack() as stack, running_bot(stack, "scale", log_level=args.bot_log_level,
                                             extra_env=extra_env) as bot:
        rss_start = rss_bytes(bot.process.pid)
        for size in sizes:
            spec = FleetSpec(workers=size, tasks=args.scale_tasks, reserved=args.scale_reserved,
                             heartbeats=not args.scale_no_heartbeats, processes=args.scale_processes,
                             without_heartbeat=min(size, args.scale_without_heartbeat))
            results.append(measure_size(stack, bot, spec, args))
        time.sleep(3)  # the last fleet's offline events handled
        rss_end = rss_bytes(bot.process.pid)
        info = {"rabbitmq": stack.rabbitmq_version(), "bot_pid": bot.process.pid}
    return report(results, {
        "config": {"sizes": sizes, "k": args.scale_k, "tasks_per_worker": args.scale_tasks,
                   "reserved_per_worker": args.scale_reserved, "fleet_processes": args.scale_processes,
                   "heartbeats": not args.scale_no_heartbeats, "admins": args.scale_admins,
                   "without_heartbeat": args.scale_without_heartbeat,
                   "quiet_seconds": args.scale_quiet, "warmup_rounds": args.scale_warmup,
                   "bot_log_level": args.bot_log_level},
        "load_average_at_start": load_at_start,
        "stack": info,
        "bot_rss_mib": {"start": mib(rss_start), "end": mib(rss_end)},
    })


# Issue 20's targets for `/tasks` on this 2-core machine: p50 by fleet size (p99 at 500), memory and idle CPU.
P50_TARGETS = {10: 0.020, 500: 0.060, 2000: 0.250}
P99_TARGETS = {500: 0.150}
KIB_PER_WORKER = 10.0
IDLE_CPU_AT_500 = 0.01


def report(results: list[SizeResult], extra: dict[str, Any]) -> dict[str, Any]:
    rows = [(f"N={r.spec.workers:<4} {name}", r.commands[name].timings.stats())
            for r in results for name, _ in COMMANDS]
    rows += [(f"N={r.spec.workers:<4} Flower {label}", r.flower[key].stats())
             for r in results for key, label in (("workers", "/api/workers?refresh=1"), ("tasks", "/api/tasks"))]
    print_table("Answer time (ack) against the fleet; Flower on the same fleet", rows)
    summaries = {r.spec.workers: {name: r.commands[name].summary(r.spec) for name, _ in COMMANDS} for r in results}
    print_answers(summaries)
    print_resources(results, extra)
    targets, limits = targets_of(results, summaries)
    print_targets(targets)
    print_targets(limits, "Slack limits, completeness, memory and idle CPU (reported, not asserted)")
    return {
        "benchmark": NAME, **extra,
        "sizes": [{
            "workers": r.spec.workers, "active_tasks": r.spec.workers * r.spec.tasks,
            "reserved_tasks": r.spec.workers * r.spec.reserved, "fleet_start_seconds": round(r.fleet_start_seconds, 2),
            "bot_counted_whole_fleet_after_seconds": None if r.seen_after is None else round(r.seen_after, 2),
            "commands": {name: {**r.commands[name].timings.as_json(), **summaries[r.spec.workers][name],
                                "last_answer": r.commands[name].last_payload} for name, _ in COMMANDS},
            "flower": {key: timings.as_json() for key, timings in r.flower.items()},
            "bot_rss_mib": {key: mib(value) for key, value in r.rss.items()},
            "bot_rss_kib_per_worker": r.kib_per_worker,
            "bot_rss_trend_mib": [mib(v) for v in r.rss_trend],
            "cpu_share_of_one_core": r.cpu_share,
        } for r in results],
        "targets": [t.as_json() for t in targets] + [t.as_json() for t in limits],
    }


def print_answers(summaries: dict[int, dict[str, dict[str, Any]]]) -> None:
    print_rows("Answers", ("size / command", "answers", "complete", "bytes max", "blocks max", "longest text",
                           "cut", "page rows", "violations", "probe ms p50", "probe ms max", "all < 3 s"), [
        (f"N={n:<4} {name}", s["answers"], s["complete"], s["max_bytes"], s["max_blocks"], s["longest_section_text"],
         s["answers_with_cut_sections"], s["fewest_page_rows"], len(s["violations"]),
         s["probe_ms_p50"], s["probe_ms_max"],
         "yes" if s["all_within_3s"] else "NO")
        for n, by_name in summaries.items() for name, s in by_name.items()])
    for n, by_name in summaries.items():
        for name, s in by_name.items():
            for v in s["violations"]:
                print(f"  N={n} {name}: {v}")
            if s["seen"]:
                print(f"  N={n} {name}: incomplete answers (workers, active, reserved, silent): {s['seen']}")


def print_resources(results: list[SizeResult], extra: dict[str, Any]) -> None:
    print_rows("Bot memory (VmRSS, MiB; KiB per worker) and CPU (share of one core)", (
        "size", "rss before fleet", "after warm-up", "after timed", "KiB/worker", "trend max", "seen after s",
        "bot cpu quiet", "bot cpu timed", "fleet cpu", "rabbit cpu", "flower cpu"), [
        (f"N={r.spec.workers}", mib(r.rss["before_fleet"]), mib(r.rss["after_warmup"]), mib(r.rss["after_timed"]),
         r.kib_per_worker, mib(max((v for v in r.rss_trend if v), default=None)),
         None if r.seen_after is None else round(r.seen_after, 1), r.cpu_share["bot_quiet"],
         r.cpu_share["bot_timed"], r.cpu_share["fleet_timed"], r.cpu_share["rabbitmq_timed"],
         r.cpu_share["flower_timed"])
        for r in results])
    print(f"\n  bot RSS at start {extra['bot_rss_mib']['start']} MiB, at end {extra['bot_rss_mib']['end']} MiB")
    print(f"  load average (1/5/15 min) at start: {extra['load_average_at_start']}")


def targets_of(results: list[SizeResult], summaries: dict[int, dict[str, dict[str, Any]]]
               ) -> tuple[list[Target], list[Target]]:
    targets, limits = [], []
    for r in results:
        n = r.spec.workers
        overview = r.commands["/tasks"].timings.stats()
        if n in P50_TARGETS:
            targets.append(Target(f"N={n} /tasks p50", overview.p50, P50_TARGETS[n]))
        if n in P99_TARGETS:
            targets.append(Target(f"N={n} /tasks p99", overview.p99, P99_TARGETS[n]))
        if r.kib_per_worker is not None:
            limits.append(Target(f"N={n} bot memory per worker", r.kib_per_worker, KIB_PER_WORKER, "KiB",
                                inclusive=True))
        if n == 500 and r.cpu_share["bot_quiet"] is not None:
            limits.append(Target("N=500 bot CPU while quiet", r.cpu_share["bot_quiet"], IDLE_CPU_AT_500, "of a core",
                                inclusive=True))
        for name, _ in COMMANDS:
            res, s = r.commands[name], summaries[n][name]
            worst = res.timings.stats().max if res.timings.failed == 0 else math.inf
            targets.append(Target(f"N={n} {name}: every ack within Slack's 3 s (max)", worst, ACK_SECONDS))
            limits.append(Target(f"N={n} {name}: blocks", s["max_blocks"], MAX_BLOCKS, "blocks", inclusive=True))
            limits.append(Target(f"N={n} {name}: longest section text", s["longest_section_text"],
                                MAX_SECTION_TEXT, "chars", inclusive=True))
            limits.append(Target(f"N={n} {name}: answers with a section cut at 3000",
                                s["answers_with_cut_sections"], 0, "", inclusive=True))
            limits.append(Target(f"N={n} {name}: incomplete answers", s["answers"] - s["complete"]
                                + res.timings.failed, 0, "", inclusive=True))
    return targets, limits


def main(args: argparse.Namespace) -> None:
    path = write_json(NAME, run(args))
    print(f"\n  results: {path}")

