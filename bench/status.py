"""Benchmark `status`: how long a user waits for the task status, in Slack (`/tasks`) and in Flower.

One stack (private RabbitMQ node, one prefork worker with concurrency 2, Flower, the Slack stand-in)
with work in flight: two long `stackapp.sleep` tasks running and three `stackapp.add` waiting on
queue "other", which nobody consumes. On it, one after the other:

1. `opsbot run` (Socket Mode): n sequential `/tasks`, each timed from the envelope leaving the
   stand-in to the ack (the bot answers in the ack) arriving back.
2. Flower: n sequential rounds of `GET /api/workers?refresh=1` then `GET /api/tasks` (basic auth),
   the requests a Flower user's page makes for the same information.
3. `opsbot run` again with FLOWER_URL pointing at a port that accepts and never answers.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import requests

from bench.common import (
    Stack,
    Target,
    Timings,
    load_average,
    log,
    print_table,
    print_targets,
    running_bot,
    running_stack,
    time_slash_commands,
    write_json,
)
from tests.support.celery_procs import control_app, publish_tasks
from tests.support.flower import FlowerProcess
from tests.support.net import HungServer, wait_until
from tests.support.rabbit import queue_counts
from tests.support.slack.rules import ACK_SECONDS

NAME = "status"
HELP = "/tasks answer time vs Flower's API, healthy and with a hung Flower"
BOT_P50_LIMIT = 0.050
HUNG_MAX_LIMIT = 2.5
LONG_TASK_SECONDS = 3600.0  # outlives any run; the worker is killed at the end
RUNNING_TASKS = 2
WAITING_TASKS = 3
WAITING_QUEUE = "other"
HTTP_TIMEOUT = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--n-hung", type=int, default=None,
                       help="/tasks samples with a hung Flower (default: --n; each takes ~2 s)")
    group.add_argument("--warmup", type=int, default=5, help="untimed /tasks (and Flower rounds) first")
    group.add_argument("--bot-log-level", default="INFO",
                       help="OPSBOT_LOG_LEVEL of the bot under test (the tests use DEBUG)")


# --------------------------------------------------------------------------- work in flight


def put_work_in_flight(stack: Stack) -> dict[str, list[str]]:
    """Two long tasks running on the worker, three waiting on a queue without consumers."""
    amqp = stack.rabbit.amqp_url
    running = publish_tasks(amqp, "stackapp.sleep", RUNNING_TASKS, args=(LONG_TASK_SECONDS,))
    waiting = publish_tasks(amqp, "stackapp.add", WAITING_TASKS, queue=WAITING_QUEUE, args=(1, 2))
    if not wait_until(lambda: set(running) <= active_task_ids(stack), 20, 0.2):
        raise RuntimeError(f"the long tasks never showed as active on {stack.worker.name}")
    if queue_counts(amqp, WAITING_QUEUE) != (WAITING_TASKS, 0):
        raise RuntimeError(f"queue {WAITING_QUEUE!r} holds {queue_counts(amqp, WAITING_QUEUE)}, not {WAITING_TASKS}")
    return {"running": running, "waiting": waiting}


def active_task_ids(stack: Stack) -> set[str]:
    inspect = control_app(stack.rabbit.amqp_url).control.inspect(
        destination=[stack.worker.name], timeout=1.0, limit=1)
    replies = inspect.active() or {}
    return {task["id"] for tasks in replies.values() for task in tasks}


# --------------------------------------------------------------------------- measurements


def measure_bot(stack: Stack, name: str, n: int, warmup: int, log_level: str,
                flower_url: str | None = None) -> tuple[Timings, str]:
    """Timed `/tasks` against a fresh bot; also returns what the first answer said."""
    with running_bot(stack, name, flower_url=flower_url, log_level=log_level):
        first = stack.slack.wait_ack(stack.slack.send_slash_command(""), timeout=10)
        time_slash_commands(stack.slack, "", max(warmup - 1, 0))
        log(f"{name}: {n} timed /tasks")
        return time_slash_commands(stack.slack, "", n), message_text(first)


def message_text(payload: dict[str, Any]) -> str:
    """What a user can read in an ack: fallback text plus the blocks."""
    return f"{payload.get('text', '')}\n{json.dumps(payload.get('blocks', []))}"


def measure_flower(flower: FlowerProcess, n: int, warmup: int) -> dict[str, Timings]:
    """n rounds of /api/workers?refresh=1 then /api/tasks; 'total' is the round, the others its parts."""
    timings = {"total": Timings(), "workers": Timings(), "tasks": Timings()}
    with requests.Session() as session:
        session.auth = flower.auth
        for i in range(warmup + n):
            try:
                workers = timed_get(session, f"{flower.bare_url}/api/workers", {"refresh": "1"})
                tasks = timed_get(session, f"{flower.bare_url}/api/tasks", {})
            except requests.RequestException:
                if i >= warmup:
                    timings["total"].failed += 1
                continue
            if i >= warmup:
                for key, value in (("total", workers + tasks), ("workers", workers), ("tasks", tasks)):
                    timings[key].samples.append(value)
    return timings


def timed_get(session: requests.Session, url: str, params: dict[str, str]) -> float:
    started = time.perf_counter()
    resp = session.get(url, params=params, timeout=HTTP_TIMEOUT)
    resp.raise_for_status()
    resp.json()  # a user's page needs the body too
    return time.perf_counter() - started


# --------------------------------------------------------------------------- the benchmark


def run(args: argparse.Namespace) -> dict[str, Any]:
    n, n_hung = args.n, args.n if args.n_hung is None else args.n_hung
    load_at_start = load_average()
    with running_stack(concurrency=2) as stack:
        tasks = put_work_in_flight(stack)
        bot, status_text = measure_bot(stack, "bot", n, args.warmup, args.bot_log_level)
        log(f"Flower: {n} timed rounds")
        flower = measure_flower(stack.flower, n, min(args.warmup, 2))
        with HungServer() as hung:
            hung_url = hung.url(userinfo=stack.flower.basic_auth)
            hung_bot, hung_text = measure_bot(stack, "bot-hung-flower", n_hung, args.warmup,
                                              args.bot_log_level, flower_url=hung_url)
        stack_info = {"rabbitmq": stack.rabbitmq_version(), "worker": stack.worker.name, "tasks": tasks}
    return report(bot, flower, hung_bot, {
        "config": {"n": n, "n_hung": n_hung, "warmup": args.warmup, "bot_log_level": args.bot_log_level,
                   "worker": "prefork x2", "running_tasks": RUNNING_TASKS, "waiting_tasks": WAITING_TASKS},
        "load_average_at_start": load_at_start,
        "stack": stack_info,
        "content": content_checks(status_text, stack_info),
        "status_text": status_text,
        "hung_flower_status_text": hung_text,
    })


def content_checks(text: str, stack_info: dict[str, Any]) -> dict[str, bool]:
    """Whether the timed answer carried the work in flight (a fast empty answer would prove nothing)."""
    return {
        "worker_listed": stack_info["worker"] in text,
        "running_tasks_listed": all(task_id in text for task_id in stack_info["tasks"]["running"]),
        "waiting_counted": f"{WAITING_TASKS} tasks waiting" in text,
    }


def report(bot: Timings, flower: dict[str, Timings], hung: Timings, extra: dict[str, Any]) -> dict[str, Any]:
    bot_s, flower_s, hung_s = bot.stats(), flower["total"].stats(), hung.stats()
    ratio = flower_s.p50 / bot_s.p50 if bot_s.p50 else float("nan")
    print_table("/tasks answer time vs Flower", [
        ("opsbot /tasks (ack)", bot_s),
        ("Flower workers?refresh=1 + tasks", flower_s),
        ("  Flower /api/workers?refresh=1", flower["workers"].stats()),
        ("  Flower /api/tasks", flower["tasks"].stats()),
        ("opsbot /tasks, Flower hung", hung_s),
    ])
    print(f"\n  Flower p50 / opsbot p50 = {ratio:.1f}x")
    print(f"  answer content: {extra['content']}")
    print(f"  load average (1/5/15 min) at start: {extra['load_average_at_start']}")
    hung_max = hung_s.max if hung.failed == 0 else float("inf")  # a missing ack is past any limit
    targets = [
        Target("opsbot /tasks p50 < 50 ms", bot_s.p50, BOT_P50_LIMIT),
        Target("hung Flower: /tasks never past 2.5 s (max)", hung_max, HUNG_MAX_LIMIT),
        Target("every /tasks ack within Slack's 3 s", max(bot_s.max, hung_max), ACK_SECONDS),
    ]
    print_targets(targets)
    return {
        "benchmark": NAME, **extra,
        "scenarios": {"bot": bot.as_json(), "flower": flower["total"].as_json(),
                      "flower_workers_refresh": flower["workers"].as_json(),
                      "flower_tasks": flower["tasks"].as_json(), "bot_hung_flower": hung.as_json()},
        "ratio_p50_flower_over_bot": round(ratio, 2),
        "targets": [t.as_json() for t in targets],
    }


def main(args: argparse.Namespace) -> None:
    path = write_json(NAME, run(args))
    print(f"\n  results: {path}")
