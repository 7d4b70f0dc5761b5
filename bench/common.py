"""Shared helpers for the benchmarks: statistics, reporting, and the services a benchmark runs against.

Services come from the test suite (tests/support/) and the bot is started
exactly as the tests start it (tests/support/bot.py), so a benchmark measures what the tests exercise.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import platform
import shutil
import signal
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

from tests.support.bot import OPSBOT, clean_env, stack_env
from tests.support.celery_procs import CeleryWorker
from tests.support.flower import FlowerProcess
from tests.support.net import wait_until
from tests.support.procs import log_tail
from tests.support.rabbit import RabbitNode
from tests.support.slack import SlackStandIn

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SLACK_ACK_LIMIT = 3.0  # Slack shows the user an error past this
HEARTBEAT_WARM_UP = 2.5  # bot.status.heartbeats.WARM_UP_SECONDS: the monitor's view is partial before this

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
    """A timing target: `value` must stay below `limit` (both in seconds)."""

    name: str
    value: float
    limit: float

    @property
    def met(self) -> bool:
        return self.value < self.limit

    def as_json(self) -> dict[str, Any]:
        return {"target": self.name, "value_ms": ms(self.value), "limit_ms": ms(self.limit), "met": self.met}


# --------------------------------------------------------------------------- reporting


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if math.isfinite(seconds) else "-"


def print_table(title: str, rows: Sequence[tuple[str, Stats]]) -> None:
    """One row per scenario: n, failures, and the latency figures in milliseconds."""
    header = ("scenario", "n", "failed", "min", "p50", "p95", "p99", "max")
    lines = [header] + [
        (name, str(s.n), str(s.failed), *(fmt_ms(v) for v in (s.min, s.p50, s.p95, s.p99, s.max)))
        for name, s in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print(f"\n{title} (milliseconds)")
    for i, line in enumerate(lines):
        cells = [line[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(line[1:], widths[1:], strict=True))]
        print("  " + "  ".join(cells))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def print_targets(targets: Sequence[Target]) -> None:
    print("\nTargets (reported, not asserted)")
    width = max((len(t.name) for t in targets), default=0)
    for t in targets:
        verdict = "met" if t.met else "NOT MET"
        print(f"  {t.name:<{width}}  {fmt_ms(t.value):>8} ms  (limit {fmt_ms(t.limit)} ms)  {verdict}")


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


_bots: set[Bot] = set()


class Bot:
    """`opsbot run` in its own process group, output to a log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [OPSBOT, "run"], env=clean_env(env), cwd=log_path.parent,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        _bots.add(self)

    def running(self) -> bool:
        return self.process.poll() is None

    def output_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL the whole group if it lingers."""
        if self.running():
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        _bots.discard(self)


@atexit.register
def _kill_bots() -> None:
    for bot in list(_bots):
        with contextlib.suppress(Exception):
            bot.stop()


def bot_env(stack: Stack, flower_url: str | None, log_level: str, db_name: str) -> dict[str, str]:
    """The socket_bot fixture's settings (stack_env + the stand-in's tokens and URL)."""
    env = stack_env(stack.rabbit, stack.flower, stack.tmp)
    env.update(
        SLACK_BOT_TOKEN=stack.slack.bot_token,
        SLACK_APP_TOKEN=stack.slack.app_token,
        SLACK_API_URL=stack.slack.base_url,
        OPSBOT_DB_URL=f"sqlite:///{stack.tmp / db_name}",
        OPSBOT_LOG_LEVEL=log_level,
    )
    if flower_url is not None:
        env["FLOWER_URL"] = flower_url
    return env


@contextlib.contextmanager
def running_bot(stack: Stack, name: str, flower_url: str | None = None, log_level: str = "INFO",
                extra_env: dict[str, str] | None = None) -> Iterator[Bot]:
    """`opsbot run` in Socket Mode, connected to the stand-in and past its heartbeat warm-up.

    `extra_env` adds or overrides settings (OPSBOT_ADMINS, say). On the way out the bot is stopped
    and its connection gone, so the next bot gets every envelope.
    """
    env = bot_env(stack, flower_url, log_level, f"{name}.sqlite3") | (extra_env or {})
    bot = Bot(env, stack.tmp / f"{name}.log")
    try:
        if not wait_until(lambda: stack.slack.connections > 0 or not bot.running(), 30):
            raise RuntimeError(f"bot {name} never connected over Socket Mode:\n{bot.output_tail()}")
        if not bot.running():
            raise RuntimeError(f"bot {name} exited with {bot.process.returncode}:\n{bot.output_tail()}")
        time.sleep(HEARTBEAT_WARM_UP + 0.5)
        yield bot
    except Exception:
        print(f"--- log tail of bot {name!r} ({bot.log_path}) ---\n{bot.output_tail()}", file=sys.stderr)
        raise
    finally:
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


def proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3, the state, comes first); None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time the process has used so far, all its threads included."""
    fields = proc_stat_fields(pid)
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
            fields = proc_stat_fields(int(entry.name))
            if fields is not None and int(fields[2]) == pgid:  # pgrp: field 5 of stat
                total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def mib(value: float | None) -> float | None:
    """Bytes as MiB for JSON and tables, rounded; None stays None."""
    return None if value is None else round(value / MIB, 1)


@dataclass(frozen=True)
class Limit:
    """A target on any quantity (bytes, a share, a count): `value` must stay below `limit`, or at most
    `limit` when `inclusive`. `Target` is the timing kind; this one carries its unit."""

    name: str
    value: float
    limit: float
    unit: str = ""
    inclusive: bool = False

    @property
    def met(self) -> bool:
        return self.value <= self.limit if self.inclusive else self.value < self.limit

    def as_json(self) -> dict[str, Any]:
        return {"target": self.name, "value": self.value, "limit": self.limit, "unit": self.unit, "met": self.met}


def print_limits(limits: Sequence[Limit], title: str = "Targets (reported, not asserted)") -> None:
    print(f"\n{title}")
    width = max((len(t.name) for t in limits), default=0)
    for t in limits:
        verdict = "met" if t.met else "NOT MET"
        value = f"{t.value:g}" if isinstance(t.value, float) else str(t.value)
        print(f"  {t.name:<{width}}  {value:>10} {t.unit:<6} (limit {t.limit:g} {t.unit})  {verdict}")


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
