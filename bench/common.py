"""Shared helpers for the benchmarks: statistics, reporting, and the services a benchmark runs against.

Services come from the test suite (tests/support/) and the bot is started
exactly as the tests start it (tests/support/bot.py), so a benchmark measures what the tests exercise.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import requests

from bot.status.heartbeats import WARM_UP_SECONDS
from tests.support.bot import BotProcess, stack_env, start_socket_mode
from tests.support.celery_procs import CeleryWorker
from tests.support.flower import FlowerProcess
from tests.support.net import wait_until
from tests.support.procs import stat_fields
from tests.support.rabbit import RabbitNode
from tests.support.slack import SlackStandIn

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), linear between closest ranks (numpy's default method)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Stats:
    """Summary of a latency sample, in seconds; `failed` counts attempts that gave no figure."""

    n: int
    failed: int
    min: float
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float], failed: int = 0) -> Stats:
        mean = sum(samples) / len(samples) if samples else math.nan
        return cls(
            n=len(samples), failed=failed, min=min(samples, default=math.nan), mean=mean,
            p50=percentile(samples, 50), p95=percentile(samples, 95), p99=percentile(samples, 99),
            max=max(samples, default=math.nan),
        )  # fmt: skip

    def as_ms(self) -> dict[str, float | int | None]:
        """The figures in milliseconds (counts unchanged), rounded for JSON."""
        return {k: v if k in ("n", "failed") else ms(v) for k, v in asdict(self).items()}


def ms(seconds: float) -> float | None:
    """Milliseconds for JSON; None for NaN or infinity (no figure), which JSON cannot hold."""
    return round(seconds * 1000, 3) if math.isfinite(seconds) else None


@dataclass
class Timings:
    """Raw samples (seconds) of one scenario plus the number of attempts that failed."""

    samples: list[float] = field(default_factory=list)
    failed: int = 0

    def stats(self) -> Stats:
        return Stats.of(self.samples, self.failed)

    def as_json(self) -> dict[str, Any]:
        return {**self.stats().as_ms(), "samples_ms": [ms(s) for s in self.samples]}


@dataclass(frozen=True)
class Target:
    """A target, reported, never asserted: `value` must stay below `limit`, or at most `limit` when
    `inclusive`. Without a `unit` both are seconds (a timing, shown in milliseconds); with one, a quantity."""

    name: str
    value: float
    limit: float
    unit: str | None = None
    inclusive: bool = False

    @property
    def met(self) -> bool:
        return self.value <= self.limit if self.inclusive else self.value < self.limit

    def as_json(self) -> dict[str, Any]:
        if self.unit is None:
            return {"target": self.name, "value_ms": ms(self.value), "limit_ms": ms(self.limit), "met": self.met}
        return {"target": self.name, "value": self.value, "limit": self.limit, "unit": self.unit, "met": self.met}

    def line(self, width: int) -> str:
        verdict = "met" if self.met else "NOT MET"
        if self.unit is None:
            return f"  {self.name:<{width}}  {fmt_ms(self.value):>8} ms  (limit {fmt_ms(self.limit)} ms)  {verdict}"
        value = f"{self.value:g}" if isinstance(self.value, float) else str(self.value)
        return f"  {self.name:<{width}}  {value:>10} {self.unit:<6} (limit {self.limit:g} {self.unit})  {verdict}"


# --------------------------------------------------------------------------- reporting


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if math.isfinite(seconds) else "-"


def print_table(title: str, rows: Sequence[tuple[str, Stats]]) -> None:
    """One row per scenario: n, failures, and the latency figures in milliseconds."""
    header = ("scenario", "n", "failed", "min", "p50", "p95", "p99", "max")
    print_rows(f"{title} (milliseconds)", header, [
        (name, s.n, s.failed, *(fmt_ms(v) for v in (s.min, s.p50, s.p95, s.p99, s.max))) for name, s in rows])


def print_rows(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain table: the first column left-aligned, the others right-aligned."""
    lines = [tuple(header)] + [tuple("-" if cell is None else str(cell) for cell in row) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print(f"\n{title}")
    for i, line in enumerate(lines):
        cells = [line[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(line[1:], widths[1:], strict=True))]
        print("  " + "  ".join(cells))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def print_targets(targets: Sequence[Target], title: str = "Targets (reported, not asserted)") -> None:
    print(f"\n{title}")
    width = max((len(t.name) for t in targets), default=0)
    for t in targets:
        print(t.line(width))


def write_json(name: str, data: dict[str, Any]) -> Path:
    """bench/results/<name>.json (git-ignored), with where and on what code it ran."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({**run_info(), **data}, indent=2, default=str) + "\n")
    return path


def run_info() -> dict[str, Any]:
    return {
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_average_at_end": load_average(),
        "python": platform.python_version(),
        "git": git_state(),
        "versions": {pkg: _version(pkg) for pkg in ("celery", "kombu", "flower", "slack-bolt", "slack-sdk")},
    }


def load_average() -> list[float]:
    """1, 5 and 15 minute load: other work on the machine (a test run, say) skews the figures."""
    return [round(x, 2) for x in os.getloadavg()]


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False).stdout

    return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(git("status", "--porcelain").strip())}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """A private RabbitMQ node, one worker, Flower and the Slack stand-in; `tmp` is thrown away after."""

    rabbit: RabbitNode
    worker: CeleryWorker
    flower: FlowerProcess
    slack: SlackStandIn
    tmp: Path

    def rabbitmq_version(self) -> str | None:
        with contextlib.suppress(Exception):
            resp = requests.get(f"{self.rabbit.management_url}/api/overview", auth=("guest", "guest"), timeout=2)
            return str(resp.json().get("rabbitmq_version"))
        return None


@contextlib.contextmanager
def running_stack(concurrency: int = 2, pool: str = "prefork") -> Iterator[Stack]:
    """Start the stack (broker first); every started service is killed on the way out, whatever happened."""
    with contextlib.ExitStack() as cleanup:
        tmp = Path(tempfile.mkdtemp(prefix="opsbot-bench-"))
        cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        log("starting RabbitMQ node")
        rabbit = RabbitNode(name_prefix="opsbot-bench")
        cleanup.callback(rabbit.cleanup)
        rabbit.start()
        log(f"starting worker ({pool}, concurrency {concurrency}) and Flower")
        worker = CeleryWorker(rabbit.amqp_url, hostname="w1@%h", pool=pool, concurrency=concurrency)
        cleanup.callback(worker.cleanup)  # SIGKILL: its long tasks need no warm shutdown
        flower = FlowerProcess(rabbit.amqp_url)
        cleanup.callback(flower.cleanup)
        worker.start()
        flower.start()
        slack = cleanup.enter_context(SlackStandIn())
        cleanup.callback(log, "stopping the stack")  # runs first: the log line precedes the kills
        yield Stack(rabbit, worker, flower, slack, tmp)


# --------------------------------------------------------------------------- the bot


def bot_env(stack: Stack, flower_url: str | None, log_level: str, db_name: str) -> dict[str, str]:
    """The socket_bot fixture's settings (stack_env; start_socket_mode adds the stand-in's tokens and URL)."""
    env = stack_env(stack.rabbit, stack.flower, stack.tmp)
    env.update(OPSBOT_DB_URL=f"sqlite:///{stack.tmp / db_name}", OPSBOT_LOG_LEVEL=log_level)
    if flower_url is not None:
        env["FLOWER_URL"] = flower_url
    return env


@contextlib.contextmanager
def running_bot(stack: Stack, name: str, flower_url: str | None = None, log_level: str = "INFO",
                extra_env: dict[str, str] | None = None) -> Iterator[BotProcess]:
    """`opsbot run` in Socket Mode, connected to the stand-in and past its heartbeat warm-up.

    `extra_env` adds or overrides settings (OPSBOT_ADMINS, say). On the way out the bot is stopped
    and its connection gone, so the next bot gets every envelope.
    """
    env = bot_env(stack, flower_url, log_level, f"{name}.sqlite3") | (extra_env or {})
    started: list[BotProcess] = []

    def run(args: list[str], env: dict[str, str], program: str) -> BotProcess:
        started.append(BotProcess(args, env, stack.tmp / f"{name}.log", program))
        return started[-1]

    try:
        bot = start_socket_mode(stack.slack, run, env)
        time.sleep(WARM_UP_SECONDS + 0.5)  # the monitor's view is partial before its warm-up
        yield bot
    except Exception:
        for bot in started:
            print(f"--- log tail of bot {name!r} ({bot.log_path}) ---\n{bot.output_tail()}", file=sys.stderr)
        raise
    finally:
        for bot in started:
            bot.stop()
        wait_until(lambda: stack.slack.connections == 0, 10)


def time_slash_commands(slack: SlackStandIn, text: str, n: int, timeout: float = 10.0) -> Timings:
    """Send n `/tasks <text>` one after the other; each sample is the ack latency seen by Slack."""
    timings = Timings()
    for _ in range(n):
        envelope = slack.send_slash_command(text)
        try:
            slack.wait_ack(envelope, timeout)
        except TimeoutError:
            timings.failed += 1
            continue
        latency = slack.ack_latency(envelope)
        if latency is not None:
            timings.samples.append(latency)
    return timings


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes (Linux /proc)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time the process has used so far, all its threads included."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14 and 15 of stat


def rss_bytes(pid: int) -> int | None:
    """Resident memory (VmRSS of /proc/PID/status); None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # reported in kB (KiB)
    except OSError:
        return None
    return None


def group_cpu_seconds(pgid: int) -> float:
    """CPU time used so far by the live processes of one process group (a service and its helpers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields is not None and int(fields[2]) == pgid:  # pgrp: field 5 of stat
                total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def mib(value: float | None) -> float | None:
    """Bytes as MiB for JSON and tables, rounded; None stays None."""
    return None if value is None else round(value / MIB, 1)
