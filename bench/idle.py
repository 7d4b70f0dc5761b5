"""Benchmark `idle`: what `opsbot run` costs while nobody talks to it, with default polling.

One healthy stack (private RabbitMQ node, one prefork worker with concurrency 2, Flower, the Slack
stand-in) and `opsbot run` in Socket Mode with OPSBOT_ALERT_CHANNEL=C_ALERTS, so the alert scheduler
polls the whole stack every 10 s (OPSBOT_POLL_SECONDS' default) besides following the worker's
heartbeats and keeping the Socket Mode connection alive. After the bot's start-up and heartbeat
warm-up, for --seconds (default 60): every second, read the bot process's utime+stime
(/proc/PID/stat, all threads) and VmRSS (/proc/PID/status).

Figures: resident memory (start, max, end; MiB) and the CPU share of one core (CPU seconds over wall
seconds: on average, the busiest second and per 10 s poll cycle). Targets: under 120 MiB resident
and under 2% of a core on average. A healthy stack posts no alert: any message in C_ALERTS is counted.
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any

from bench.common import (
    MIB,
    Target,
    cpu_seconds,
    load_average,
    log,
    mib,
    print_rows,
    print_targets,
    rss_bytes,
    running_bot,
    running_stack,
    write_json,
)

NAME = "idle"
HELP = "the bot idle with default polling (alerts on): resident memory and CPU share of one core"
CHANNEL = "C_ALERTS"
RSS_LIMIT_MIB = 120.0
CPU_LIMIT = 0.02  # share of one core
SAMPLE_SECONDS = 1.0
CYCLE_SECONDS = 10.0  # the alert scheduler's default poll interval


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--seconds", type=float, default=60.0, help="idle time sampled (default: 60)")


def sample(pid: int, seconds: float) -> list[tuple[float, float | None, int | None]]:
    """(monotonic time, CPU seconds, RSS bytes) every second for `seconds`, on a fixed grid."""
    samples = []
    start = time.monotonic()
    for i in range(int(seconds / SAMPLE_SECONDS) + 1):
        time.sleep(max(0.0, start + i * SAMPLE_SECONDS - time.monotonic()))
        samples.append((time.monotonic(), cpu_seconds(pid), rss_bytes(pid)))
    return samples


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.seconds < 2:
        raise ValueError("--seconds must be at least 2")
    load_at_start = load_average()
    with running_stack(concurrency=2) as stack, running_bot(
            stack, "idle", log_level=args.bot_log_level, extra_env={"OPSBOT_ALERT_CHANNEL": CHANNEL}) as bot:
        pid = bot.process.pid
        log(f"sampling the idle bot (pid {pid}) every second for {args.seconds:.0f} s")
        samples = sample(pid, args.seconds)
        if not bot.running():
            raise RuntimeError(f"the bot exited while idle:\n{bot.output_tail()}")
        alerts = [m for m in stack.slack.messages if m.channel == CHANNEL]
    return report(samples, {
        "config": {"seconds": args.seconds, "alert_channel": CHANNEL, "poll_seconds": CYCLE_SECONDS,
                   "bot_log_level": args.bot_log_level, "worker": "prefork x2, no tasks"},
        "load_average_at_start": load_at_start,
        "alert_messages_posted": len(alerts),
    })


def report(samples: list[tuple[float, float | None, int | None]], extra: dict[str, Any]) -> dict[str, Any]:
    good = [(t, c, r) for t, c, r in samples if c is not None and r is not None]
    if len(good) < 2:
        raise RuntimeError("fewer than two samples of the bot process")
    (t0, c0, _), (t1, c1, _) = good[0], good[-1]
    average = (c1 - c0) / (t1 - t0)
    per_second = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(good)]
    per_cycle = []
    step = int(CYCLE_SECONDS / SAMPLE_SECONDS)
    for i in range(0, len(good) - step, step):
        a, b = good[i], good[i + step]
        per_cycle.append(round((b[1] - a[1]) / (b[0] - a[0]), 4))
    rss = [r for _, _, r in good]
    figures = {
        "seconds_sampled": round(t1 - t0, 1),
        "cpu_seconds": round(c1 - c0, 3),
        "cpu_share_average": round(average, 4),
        "cpu_share_busiest_second": round(max(per_second), 4),
        "cpu_share_per_10s_cycle": per_cycle,
        "rss_mib_start": mib(rss[0]),
        "rss_mib_max": mib(max(rss)),
        "rss_mib_end": mib(rss[-1]),
        "rss_mib_growth": mib(rss[-1] - rss[0]),
    }
    print_rows("Idle bot (default polling, alerts on)", ("figure", "value"), [
        ("sampled (s)", figures["seconds_sampled"]),
        ("CPU used (s)", figures["cpu_seconds"]),
        ("CPU share of one core, average", f"{average * 100:.2f}%"),
        ("CPU share, busiest second", f"{figures['cpu_share_busiest_second'] * 100:.1f}%"),
        ("CPU share per 10 s cycle", " ".join(f"{v * 100:.2f}%" for v in per_cycle)),
        ("resident memory start (MiB)", figures["rss_mib_start"]),
        ("resident memory max (MiB)", figures["rss_mib_max"]),
        ("resident memory end (MiB)", figures["rss_mib_end"]),
        ("alert messages posted", extra["alert_messages_posted"]),
    ])
    print(f"\n  load average (1/5/15 min) at start: {extra['load_average_at_start']}")
    limits = [
        Target("resident memory max < 120 MiB", round(max(rss) / MIB, 1), RSS_LIMIT_MIB, "MiB"),
        Target("CPU share of one core (average) < 2%", round(average * 100, 2), CPU_LIMIT * 100, "%"),
    ]
    print_targets(limits)
    return {
        "benchmark": NAME, **extra, **figures,
        "samples": [{"t": round(t - t0, 3), "cpu_s": c, "rss_mib": mib(r)} for t, c, r in samples],
        "targets": [t.as_json() for t in limits],
    }


def main(args: argparse.Namespace) -> None:
    path = write_json(NAME, run(args))
    print(f"\n  results: {path}")
