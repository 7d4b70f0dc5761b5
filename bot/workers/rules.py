"""The rules of worker control, as plain functions: what each subcommand takes, which pools can do what,
and what the workers' replies mean. Nothing here does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from bot.markup import cut
from bot.redact import defang, redact
from bot.status.snapshot import TaskLimits, WorkerInfo

# Subcommands that change workers (admins only, audited) and those that only read.
ACTIONS = ("pool", "autoscale", "pause", "resume", "ratelimit", "timelimit", "shutdown", "restart-pool")
READS = ("scheduled", "reserved", "revoked", "registered", "detail")

USAGE = {
    "pool": "/tasks pool <worker> +N|-N",
    "autoscale": "/tasks autoscale <worker> <max> <min>",
    "pause": "/tasks pause <queue> [worker]",
    "resume": "/tasks resume <queue> [worker]",
    "ratelimit": "/tasks ratelimit <task-name> <rate like 10/m, or off>",
    "timelimit": "/tasks timelimit <task-name> <soft> <hard> (seconds, or 30s, 5m, 1h; off for none)",
    "shutdown": "/tasks shutdown <worker>",
    "restart-pool": "/tasks restart-pool <worker>",
    "registered": "/tasks registered [worker]",
    "detail": "/tasks workers <worker>",
}

# Celery's pools: only these can change their size while running (celery.concurrency.*: prefork and
# eventlet implement grow/shrink; solo has one slot, threads a fixed executor, and gevent is kept out
# as the issue asks: its grow only resizes a greenlet pool's cap).
GROWABLE = frozenset({"prefork", "eventlet"})
# pool_restart replaces the pool's processes: only prefork has processes to replace.
RESTARTABLE = frozenset({"prefork"})

MAX_DELTA = 100
MAX_POOL = 1000
MAX_LIMIT = 7 * 86400.0
NAME = re.compile(r"^[^\s|]{1,255}$")  # a worker, queue or task as typed: one word, no separator
TASK_NAME = re.compile(r"^[A-Za-z_][\w.:\-]{0,199}$")
DELTA = re.compile(r"^([+-])(\d{1,3})$")
RATE = re.compile(r"^(\d{1,6}(?:\.\d{1,3})?)(/[smh])?$")
SECONDS = re.compile(r"^(\d{1,6}(?:\.\d{1,3})?)([smh]?)$")
UNIT = {"": 1, "s": 1, "m": 60, "h": 3600}
OFF = ("off", "none")


class BadInput(ValueError):
    """Input that cannot be acted on; the message is safe to show and says how to write it."""


def echo(text: str, limit: int = 40) -> str:
    """What the user typed, echoed in a message: short, nothing secret, never markup."""
    text = defang(redact(text))
    return cut(text, limit)


@dataclass(frozen=True)
class Request:
    """One worker-control subcommand, parsed and checked for shape (not yet against the stack)."""

    action: str
    worker: str = ""
    queue: str = ""
    task: str = ""
    delta: int = 0
    rate: str | None = None  # None: no limit
    soft: float | None = None
    hard: float | None = None
    maximum: int = 0
    minimum: int = 0


# --- Reading what was typed --------------------------------------------------------------------


def words_to_args(action: str, words: list[str]) -> tuple[str, str]:
    """The typed words as (target, worker), the form a command carries; raises BadInput on a wrong count."""
    shapes = {"pool": (2, 2), "autoscale": (3, 3), "pause": (1, 2), "resume": (1, 2), "ratelimit": (2, 2),
              "timelimit": (3, 3), "shutdown": (1, 1), "restart-pool": (1, 1), "registered": (0, 1)}
    low, high = shapes.get(action, (0, 0))
    if not low <= len(words) <= high:
        raise BadInput(f"Usage: {USAGE.get(action, '/tasks ' + action)}")
    if action in ("pool", "autoscale"):
        return " ".join(words[1:]), words[0]
    if action in ("pause", "resume"):
        return words[0], words[1] if len(words) > 1 else ""
    if action in ("shutdown", "restart-pool", "registered"):
        return "", words[0] if words else ""
    return " ".join(words), ""


def parse_request(action: str, target: str, worker: str) -> Request:
    """A command's arguments as a Request; raises BadInput with a clear message."""
    words = target.split()
    if worker and not NAME.match(worker):
        raise BadInput("That is not a worker name (one word, like w1@host).")
    if action == "pool":
        return Request(action, worker=worker, delta=parse_delta(words[0] if words else ""))
    if action == "autoscale":
        maximum, minimum = parse_bounds(words)
        return Request(action, worker=worker, maximum=maximum, minimum=minimum)
    if action in ("pause", "resume"):
        if len(words) != 1 or not NAME.match(words[0]):
            raise BadInput(f"Usage: {USAGE[action]}")
        return Request(action, worker=worker, queue=words[0])
    if action == "ratelimit":
        return Request(action, task=parse_task(words[0]), rate=parse_rate(words[1]))
    if action == "timelimit":
        soft, hard = parse_seconds(words[1], "soft"), parse_seconds(words[2], "hard")
        if soft is not None and hard is not None and soft >= hard:
            raise BadInput("The soft time limit must be shorter than the hard one; nothing was changed.")
        return Request(action, task=parse_task(words[0]), soft=soft, hard=hard)
    return Request(action, worker=worker)


def parse_delta(word: str) -> int:
    match = DELTA.match(word.replace("\u2212", "-"))  # a typographic minus, as phones type it
    if not match or not 0 < int(match[2]) <= MAX_DELTA:
        raise BadInput(f"'{echo(word, 20)}' is not a change of pool size: write +N or -N (1 to {MAX_DELTA}), "
                       "e.g. /tasks pool w1@host +2")
    return int(match[2]) * (1 if match[1] == "+" else -1)


def parse_bounds(words: list[str]) -> tuple[int, int]:
    if len(words) != 2 or not all(w.isascii() and w.isdigit() and len(w) <= 4 for w in words):
        raise BadInput(f"Usage: {USAGE['autoscale']} (two whole numbers)")
    maximum, minimum = int(words[0]), int(words[1])
    if not 1 <= maximum <= MAX_POOL or not 0 <= minimum <= maximum:
        raise BadInput(f"Autoscale bounds need 1 <= max <= {MAX_POOL} and 0 <= min <= max; nothing was changed.")
    return maximum, minimum


def parse_task(word: str) -> str:
    if not TASK_NAME.match(word):
        raise BadInput("That is not a task name (like proj.tasks.send_mail).")
    return word


def parse_rate(word: str) -> str | None:
    """Celery's rate strings: 10/s, 100/m, 1000/h, or a plain number per second; off removes the limit."""
    if word.lower() in (*OFF, "0"):
        return None
    match = RATE.match(word.lower())
    if not match or float(match[1]) <= 0:
        raise BadInput(f"'{echo(word, 20)}' is not a rate: write e.g. 10/s, 100/m or 1000/h, or off.")
    return word.lower()


def parse_seconds(word: str, which: str) -> float | None:
    if word.lower() in OFF:
        return None
    match = SECONDS.match(word.lower())
    seconds = float(match[1]) * UNIT[match[2]] if match else 0.0
    if not 0 < seconds <= MAX_LIMIT:
        raise BadInput(f"'{echo(word, 20)}' is not a {which} time limit: write seconds (30), or 30s, 5m, 1h "
                       "(at most 7 days), or off.")
    return seconds


# --- What a pool can do ------------------------------------------------------------------------


def unsupported(action: str, pool: str | None, autoscale: tuple[int, int] | None,
                pool_restarts: bool | None) -> str:
    """Why a worker cannot do `action` ("" when it can): said plainly, nothing is pretended."""
    pool_name = pool or "unknown"
    if action == "pool":
        if autoscale is not None:
            return (f"runs with --autoscale ({autoscale[0]} to {autoscale[1]}): Celery refuses pool_grow and "
                    "pool_shrink there; change the bounds with /tasks autoscale")
        if pool not in GROWABLE:
            return f"runs the {pool_name} pool, which cannot grow or shrink (only prefork and eventlet can)"
    if action == "autoscale" and autoscale is None:
        return "was not started with --autoscale; Celery cannot turn autoscaling on remotely"
    if action == "restart-pool":
        if pool not in RESTARTABLE:
            return f"runs the {pool_name} pool, which has no processes to restart"
        if not pool_restarts:
            return "does not allow pool restarts (its worker_pool_restarts setting is off)"
    return ""


# --- What the workers answered -----------------------------------------------------------------


class Result(StrEnum):
    DONE = "done"
    ERROR = "error"
    NO_REPLY = "no reply"
    UNCONFIRMED = "not confirmed"  # the worker said yes, its state does not show it (yet)
    SKIPPED = "not supported"


@dataclass(frozen=True)
class WorkerResult:
    worker: str
    result: Result
    detail: str = ""


def by_worker(replies: list[dict] | None) -> dict[str, dict]:
    """Celery's reply list ([{name: {"ok": ...}}, ...]) as one dict; a malformed entry is ignored."""
    merged: dict[str, dict] = {}
    for reply in replies or []:
        if isinstance(reply, dict):
            merged.update({str(k): v for k, v in reply.items() if isinstance(v, dict)})
    return merged


def answer_of(worker: str, replies: dict[str, dict]) -> WorkerResult:
    """One targeted worker's answer: done, its error, or no reply within the timeout."""
    reply = replies.get(worker)
    if reply is None:
        return WorkerResult(worker, Result.NO_REPLY, "did not reply in time")
    if "error" in reply:
        return WorkerResult(worker, Result.ERROR, str(reply["error"])[:200])
    return WorkerResult(worker, Result.DONE, str(reply.get("ok") or "ok")[:200])


def outcome_label(results: list[WorkerResult]) -> str:
    """The audit's outcome for a whole action."""
    kinds = {r.result for r in results}
    if kinds == {Result.DONE}:
        return "done"
    if Result.DONE in kinds:
        return "partial"
    if kinds <= {Result.SKIPPED}:
        return "unsupported"
    if kinds <= {Result.NO_REPLY, Result.SKIPPED}:
        return "no_reply"
    return "error"


# --- Registered tasks and their limits ---------------------------------------------------------

LIMIT_ITEMS = ("rate_limit", "soft_time_limit", "time_limit")
REGISTERED = re.compile(r"^(?P<name>\S+)(?: \[(?P<fields>.*)\])?$")


def task_limits(line: str) -> TaskLimits:
    """A line of `inspect registered rate_limit soft_time_limit time_limit`: "name [rate_limit=10/m ...]"."""
    match = REGISTERED.match(str(line))
    if not match:
        return TaskLimits(str(line))
    fields = dict(part.split("=", 1) for part in (match["fields"] or "").split() if "=" in part)
    return TaskLimits(match["name"], fields.get("rate_limit") or None, _number(fields.get("soft_time_limit")),
                      _number(fields.get("time_limit")))


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "None") else None
    except ValueError:
        return None


def limited(limits: tuple[TaskLimits, ...]) -> tuple[TaskLimits, ...]:
    return tuple(t for t in limits if t.rate or t.soft is not None or t.hard is not None)


def seconds_text(seconds: float | None) -> str:
    return "none" if seconds is None else f"{seconds:g} s"


def limits_text(limit: TaskLimits) -> str:
    parts = []
    if limit.rate:
        parts.append(f"rate {limit.rate}")
    if limit.soft is not None or limit.hard is not None:
        parts.append(f"time limits soft {seconds_text(limit.soft)}, hard {seconds_text(limit.hard)}")
    return "; ".join(parts) or "no limits"


def worker_extras(worker: WorkerInfo) -> str:
    """What `/tasks workers` adds for worker control: autoscale bounds, consumed queues, limits in force."""
    parts = []
    if worker.autoscale:
        parts.append(f"autoscale {worker.autoscale[0]} to {worker.autoscale[1]}")
    if worker.queues is not None:
        parts.append(f"consumes {', '.join(worker.queues)}" if worker.queues else "consumes no queue")
    if worker.limits is not None:
        shown = [f"{t.task} {limits_text(t)}" for t in limited(worker.limits)]
        parts.append(f"limits: {'; '.join(shown)}" if shown else "no rate or time limits")
    return ", ".join(parts)
