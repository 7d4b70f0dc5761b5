"""Celery app used by the integration tests: real workers run it as `celery -A tests.stackapp worker`.

The broker comes from the environment so every test can point a worker (or Flower) at its own
private RabbitMQ node. Task names are explicit so the bot and `send_task` can refer to them by
string without importing this module.
"""

from __future__ import annotations

import os
import signal
import time

from celery import Celery, Task

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


app = Celery("stackapp", broker=os.environ.get("STACK_BROKER_URL", DEFAULT_BROKER_URL))
app.conf.update(
    # A result backend only where a test asks for one (Retry reads exact arguments from it).
    result_backend=os.environ.get("STACK_RESULT_BACKEND") or None,
    result_extended=_env_flag("STACK_RESULT_EXTENDED", False),
    # Task events feed Flower and the bot's event listener; tests can turn them off
    # (CeleryWorker(events=False)) because the worker's -E flag can only switch them on.
    worker_send_task_events=_env_flag("STACK_TASK_EVENTS", True),
    task_send_sent_event=True,
    task_track_started=True,
    task_default_queue="celery",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="stackapp.sleep")
def sleep(seconds: float, **details: object) -> float:
    """Sleep in short slices so a revoke(terminate=True) lands promptly.

    Extra keyword arguments are ignored: tests pass look-alike secrets to check their redaction.
    """
    deadline = time.monotonic() + float(seconds)
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(0.1, left))
    return float(seconds)


@app.task(name="stackapp.add")
def add(x: float, y: float) -> float:
    return x + y


@app.task(name="stackapp.fail")
def fail(message: str) -> None:
    raise ValueError(message)


@app.task(name="stackapp.stubborn")
def stubborn(seconds: float) -> float:
    """Ignore SIGTERM, so only SIGKILL can stop it: exercises the bot's escalation path.

    The previous handler is restored afterwards: prefork children are reused, and a later
    plain task in the same child must still be terminable with SIGTERM.
    """
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        return sleep(seconds)
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.task(name="stackapp.record", bind=True)
def record(self: Task, path: str, *args: object, fail: bool = False, pause: float = 0.0, **kwargs: object) -> None:
    """Append what this run received (id, args, kwargs) as a JSON line to `path`; then fail if asked.

    Tests compare these lines with what they sent: exact arguments for Retry, order and count for
    the waiting-time reads.
    """
    import json

    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps({"id": self.request.id, "args": args, "kwargs": kwargs, "fail": fail}) + "\n")
    time.sleep(pause)
    if fail:
        raise ValueError(f"recorded and failed as asked: {len(args)} args")
