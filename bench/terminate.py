"""Benchmark `terminate`: how long after an admin clicks Terminate the task is really gone.

One stack (private RabbitMQ node, one prefork worker with concurrency 2, Flower, the Slack stand-in)
and `opsbot run` in Socket Mode with OPSBOT_ADMINS=U_ADMIN. Each round, one after the other:

1. publish one `stackapp.sleep` (60 s) and wait until the worker reports it active (inspect from
   this process, with destination and limit=1); note its pool child (`worker_pid`);
2. start the clock and click Terminate through the stand-in (action_id "terminate",
   value "active|<task_id>", as U_ADMIN), with a response_url of the round's own;
3. every ~5 ms, look at /proc/<pid> (the worker runs on this machine) and at the response_url.

Figures per round: click to the task's process having exited (the target: under 0.5 s on a local
stack; an exited child is a zombie until the worker reaps it, which Celery's 4 s liveness timer
sometimes leaves late), click to the pool child gone from /proc altogether, click to the
bot's answer arriving at the response_url, and the click's Socket Mode ack. A round fails when the
answer does not say Terminated (with the task's short id) or the process outlives the round.
Before the next round the pool is back to full strength, so every round starts alike.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
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
from tests.support.celery_procs import control_app, publish_tasks
from tests.support.net import wait_until
from tests.support.procs import stat_fields
from tests.support.slack import ResponseRecord
from tests.support.slack.rules import ACK_SECONDS

NAME = "terminate"
HELP = "Terminate click to the task's process gone from the worker, and to the bot's answer"
ADMIN = "U_ADMIN"  # the stand-in's default admin (DEFAULT_USERS in tests/support/slack/)
GONE_LIMIT = 0.5  # click to task gone from the worker, on a local stack
TASK_NAME = "stackapp.sleep"
TASK_SECONDS = 60.0
CONCURRENCY = 2
POLL = 0.005  # how often /proc and the response_url are looked at
ROUND_TIMEOUT = 15.0  # the bot watches the process for up to 3 s, plus its inspect/revoke round trips
ACTIVE_TIMEOUT = 15.0
POOL_REFILL_TIMEOUT = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--n-terminate", type=int, default=None,
                       help="timed Terminate rounds (default: --n; each takes about a second)")
    group.add_argument("--terminate-warmup", type=int, default=1, help="untimed Terminate rounds first")
    group.add_argument("--terminate-settle", type=float, default=0.0, metavar="SECONDS",
                       help="pause after the pool is full again, before the next round's task (default: 0)")


# --------------------------------------------------------------------------- the worker's side


def active_task(stack: Stack, task_id: str) -> dict[str, Any] | None:
    """The task as the worker reports it in `inspect active`, or None while it is not running."""
    inspect = control_app(stack.rabbit.amqp_url).control.inspect(
        destination=[stack.worker.name], timeout=1.0, limit=1)
    replies = inspect.active() or {}
    return next((task for tasks in replies.values() for task in tasks or [] if task.get("id") == task_id), None)


def proc_state(pid: int, start_time: str | None) -> str:
    """'alive', 'exited' (a zombie, not yet reaped by the worker) or 'gone' (no such /proc entry).

    A pid reused by another process (another start time) counts as gone.
    """
    fields = stat_fields(pid)
    if fields is None or (start_time is not None and fields[19] != start_time):
        return "gone"
    return "exited" if fields[0] in ("Z", "X") else "alive"


def start_time_of(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): tells a reused pid apart."""
    fields = stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def age_of(start_time: str) -> float:
    """Seconds since a process started, from its /proc start time (clock ticks after boot)."""
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - int(start_time) / os.sysconf("SC_CLK_TCK")


def pool_full(stack: Stack, killed_pid: int) -> bool:
    children = stack.worker.pool_child_pids()
    return len(children) >= CONCURRENCY and killed_pid not in children


# --------------------------------------------------------------------------- one round


@dataclass
class Round:
    task_id: str
    pid: int
    child_age: float  # how long the pool child had existed at the click (the pool replaces killed ones)
    gone: float | None = None  # seconds from the click
    exited: float | None = None
    answer: float | None = None
    ack: float | None = None
    answer_text: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def text_of(record: ResponseRecord) -> str:
    return f"{record.body.get('text', '')}\n{json.dumps(record.body.get('blocks', []))}"


def start_task(stack: Stack) -> tuple[str, int]:
    """Publish one long task and wait until a pool child runs it; its id and that child's pid."""
    (task_id,) = publish_tasks(stack.rabbit.amqp_url, TASK_NAME, 1, args=(TASK_SECONDS,))
    seen: dict[str, Any] = {}

    def running() -> bool:
        seen["task"] = active_task(stack, task_id)
        return seen["task"] is not None

    if not wait_until(running, ACTIVE_TIMEOUT, 0.02):
        raise RuntimeError(f"task {task_id} never showed as active on {stack.worker.name}")
    pid = seen["task"].get("worker_pid")
    if not isinstance(pid, int):
        raise RuntimeError(f"the worker reported no worker_pid for {task_id}: {seen['task']}")
    return task_id, pid


def terminate_round(stack: Stack, settle: float) -> Round:
    slack = stack.slack
    time.sleep(settle)
    task_id, pid = start_task(stack)
    start_time = start_time_of(pid)
    if start_time is None:
        raise RuntimeError(f"pool child {pid} running {task_id} is not in /proc: is the worker on this machine?")
    result = Round(task_id, pid, age_of(start_time))
    response_url = slack.new_response_url("C_OPS")
    url_id = response_url.rsplit("/", 1)[1]
    seen_responses = len(slack.responses)

    clicked_wall, clicked = time.time(), time.perf_counter()
    envelope = slack.send_block_action("terminate", f"active|{task_id}", user_id=ADMIN, response_url=response_url)
    answer: ResponseRecord | None = None
    deadline = clicked + ROUND_TIMEOUT
    while True:
        now = time.perf_counter()
        if result.gone is None:
            state = proc_state(pid, start_time)
            if state != "alive" and result.exited is None:
                result.exited = now - clicked
            if state == "gone":
                result.gone = now - clicked
        if answer is None:
            fresh = slack.responses[seen_responses:]
            seen_responses += len(fresh)
            answer = next((r for r in fresh if r.url_id == url_id), None)
        if (result.gone is not None and answer is not None) or now >= deadline:
            break
        time.sleep(POLL)

    result.ack = slack.ack_latency(envelope)
    if answer is None:
        result.problems.append(f"no answer at the response_url within {ROUND_TIMEOUT:g} s")
    else:
        result.answer_text = text_of(answer)
        if "Terminated" in result.answer_text and task_id[:8] in result.answer_text:
            result.answer = answer.time - clicked_wall
        else:
            result.problems.append(f"the answer does not say Terminated: {answer.body.get('text', '')[:200]!r}")
    if result.gone is None:
        result.problems.append(f"pool child {pid} still {proc_state(pid, start_time)} "
                               f"{ROUND_TIMEOUT:g} s after the click")
    elif not wait_until(lambda: pool_full(stack, pid), POOL_REFILL_TIMEOUT, 0.02):
        log(f"the pool did not get back to {CONCURRENCY} children within {POOL_REFILL_TIMEOUT:g} s")
    return result


# --------------------------------------------------------------------------- the benchmark


@dataclass
class Results:
    gone: Timings = field(default_factory=Timings)
    exited: Timings = field(default_factory=Timings)
    answer: Timings = field(default_factory=Timings)
    ack: Timings = field(default_factory=Timings)
    failures: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    first_answer: str = ""

    def add(self, index: int, r: Round) -> None:
        for timings, value in ((self.gone, r.gone), (self.exited, r.exited), (self.answer, r.answer),
                               (self.ack, r.ack)):
            if value is None:
                timings.failed += 1
            else:
                timings.samples.append(value)
        self.rounds.append({"round": index, "task_id": r.task_id, "pid": r.pid, "child_age_s": round(r.child_age, 3),
                            **{f"{k}_ms": ms(v) if v is not None else None
                               for k, v in (("gone", r.gone), ("exited", r.exited), ("answer", r.answer))},
                            "ok": r.ok})
        if not r.ok:
            self.failures.append({"round": index, "task_id": r.task_id, "pid": r.pid, "problems": r.problems})
        if not self.first_answer:
            self.first_answer = r.answer_text


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n if args.n_terminate is None else args.n_terminate
    warmup, log_level = args.terminate_warmup, getattr(args, "bot_log_level", "INFO")
    load_at_start = load_average()
    results = Results()
    with running_stack(concurrency=CONCURRENCY) as stack:
        with running_bot(stack, "bot-terminate", log_level=log_level, extra_env={"OPSBOT_ADMINS": ADMIN}):
            log(f"{warmup} untimed Terminate round(s)")
            for _ in range(warmup):
                warm = terminate_round(stack, args.terminate_settle)
                if not warm.ok:
                    log(f"warm-up round failed: {'; '.join(warm.problems)}")
            log(f"{n} timed Terminate rounds")
            for i in range(n):
                r = terminate_round(stack, args.terminate_settle)
                results.add(i, r)
                if not r.ok:
                    log(f"round {i} failed: {'; '.join(r.problems)}")
        stack_info = {"rabbitmq": stack.rabbitmq_version(), "worker": stack.worker.name}
    return report(results, {
        "config": {"n": n, "warmup": warmup, "bot_log_level": log_level, "worker": f"prefork x{CONCURRENCY}",
                   "task": f"{TASK_NAME}({TASK_SECONDS:g})", "poll_ms": POLL * 1000,
                   "round_timeout_s": ROUND_TIMEOUT, "settle_s": args.terminate_settle, "admin": ADMIN},
        "load_average_at_start": load_at_start,
        "stack": stack_info,
    })


def report(results: Results, extra: dict[str, Any]) -> dict[str, Any]:
    gone, answer, ack = results.gone.stats(), results.answer.stats(), results.ack.stats()
    print_table("Terminate click: task gone from the worker, bot's answer", [
        ("click -> task process gone (/proc)", gone),
        ("  click -> process exited (zombie or gone)", results.exited.stats()),
        ("click -> 'Terminated' at response_url", answer),
        ("click -> Socket Mode ack", ack),
    ])
    failed_rounds = len(results.failures)
    print(f"\n  rounds failed (not terminated, or no 'Terminated' answer): {failed_rounds}")
    for failure in results.failures[:5]:
        print(f"    round {failure['round']}: {'; '.join(failure['problems'])}")
    print(f"  load average (1/5/15 min) at start: {extra['load_average_at_start']}")
    # A round that failed has no figure: it is past any limit.
    exited = results.exited.stats()
    exited_max = exited.max if results.exited.failed == 0 else float("inf")
    ack_max = ack.max if results.ack.failed == 0 else float("inf")
    targets = [
        Target("click -> task process exited, p95 < 500 ms", exited.p95, GONE_LIMIT),
        Target("click -> task process exited, every round (max) < 500 ms", exited_max, GONE_LIMIT),
        Target("every click acked within Slack's 3 s", ack_max, ACK_SECONDS),
    ]
    print_targets(targets)
    return {
        "benchmark": NAME, **extra,
        "scenarios": {"gone": results.gone.as_json(), "exited": results.exited.as_json(),
                      "answer": results.answer.as_json(), "ack": results.ack.as_json()},
        "failed_rounds": failed_rounds,
        "failures": results.failures,
        "rounds": results.rounds,
        "first_answer_text": results.first_answer,
        "targets": [t.as_json() for t in targets],
    }


def main(args: argparse.Namespace) -> None:
    path = write_json(NAME, run(args))
    print(f"\n  results: {path}")
