"""The steady load during the soak: tasks for the workers, and `/tasks` typed in Slack every few seconds.

Both keep plain records (what was sent, when, what came back) for the checks; neither judges anything.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from celery import Celery

from tests.support.slack import Rejected, SlackStandIn

ACK_LIMIT = 3.0  # Slack shows the user an error past this
ACK_WAIT = 10.0  # how long a /tasks is watched for its ack before it counts as never acked


class TaskKind(Enum):
    """What the generator sends: quick successes, failures, and long tasks that span faults."""

    QUICK = "stackapp.add"
    FAILING = "stackapp.fail"
    LONG = "stackapp.sleep"


MIX = ((TaskKind.QUICK, 0.6), (TaskKind.FAILING, 0.25), (TaskKind.LONG, 0.15))
LONG_SECONDS = (2.0, 8.0)
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 1.0}


@dataclass(frozen=True)
class SentTask:
    task_id: str
    kind: TaskKind
    at: float  # wall clock
    confirmed: bool  # the broker confirmed the publish; False: it raised (the task may still exist)
    error: str = ""


class Stoppable:
    """A named daemon thread running `step` until stopped; `step` returns how long to wait."""

    def __init__(self, name: str) -> None:
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.crash: BaseException | None = None

    def step(self) -> float:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.stopping.wait(self.step())
        except BaseException as exc:  # kept for the report: a dead load thread voids the figures
            self.crash = exc
            raise

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        self.thread.join(timeout)


class TaskLoad(Stoppable):
    """Publishes `rate` tasks a second by name, with publisher confirms, each with its own id."""

    def __init__(self, app: Celery, rate: float, seed: int) -> None:
        super().__init__("soak-load")
        self.app = app
        self.gap = 1.0 / rate
        self.rng = random.Random(seed)
        self.sent: list[SentTask] = []

    def step(self) -> float:
        started = time.monotonic()
        kind = self.rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
        args: list[object] = {
            TaskKind.QUICK: lambda: [self.rng.randint(0, 99), 1],
            TaskKind.FAILING: lambda: ["soak failure, as planned"],
            TaskKind.LONG: lambda: [round(self.rng.uniform(*LONG_SECONDS), 1)],
        }[kind]()
        task_id, at = str(uuid.uuid4()), time.time()
        try:
            self.app.send_task(kind.value, args=args, task_id=task_id, retry=True, retry_policy=PUBLISH_RETRY)
        except Exception as exc:  # the broker is down: the task may or may not exist
            self.sent.append(SentTask(task_id, kind, at, False, f"{type(exc).__name__}: {exc}"[:200]))
        else:
            self.sent.append(SentTask(task_id, kind, at, True))
        return max(0.0, self.gap - (time.monotonic() - started))


class AckOutcome(Enum):
    IN_TIME = "acked within 3 s"
    LATE = "acked late"
    NEVER = "never acked"
    REFUSED = "ack refused by Slack"
    CONNECTION_LOST = "its connection closed before the ack"
    UNSENT = "no connection to send it on"


@dataclass(frozen=True)
class Ping:
    at: float  # wall clock
    outcome: AckOutcome
    latency: float | None = None
    connection: int | None = None


class SlashLoad(Stoppable):
    """`/tasks` every `every` seconds, one at a time, through the stand-in's Socket Mode."""

    def __init__(self, slack: SlackStandIn, every: float) -> None:
        super().__init__("soak-slash")
        self.slack = slack
        self.every = every
        self.pings: list[Ping] = []

    def step(self) -> float:
        started = time.monotonic()
        self.pings.append(self.ping())
        return max(0.0, self.every - (time.monotonic() - started))

    def ping(self) -> Ping:
        at, opened, open_now = time.time(), self.slack.total_connections, self.slack.connections
        try:
            envelope = self.slack.send_slash_command("")
        except (TimeoutError, RuntimeError):
            return Ping(at, AckOutcome.UNSENT)
        connection = self.slack.envelopes[envelope].connection_id
        try:
            self.slack.wait_ack(envelope, ACK_WAIT)
        except Rejected:
            return Ping(at, AckOutcome.REFUSED, self.slack.ack_latency(envelope), connection)
        except TimeoutError:
            # A connection closed (or was replaced) meanwhile: the envelope may have gone down with it.
            dropped = self.slack.total_connections > opened or self.slack.connections < open_now
            return Ping(at, AckOutcome.CONNECTION_LOST if dropped else AckOutcome.NEVER, None, connection)
        latency = self.slack.ack_latency(envelope)
        in_time = latency is not None and latency < ACK_LIMIT
        return Ping(at, AckOutcome.IN_TIME if in_time else AckOutcome.LATE, latency, connection)


def every(seconds: float, action: Callable[[], None], name: str) -> Stoppable:
    """A Stoppable that calls `action` every `seconds` (the samplers)."""

    class Every(Stoppable):
        def step(self) -> float:
            action()
            return seconds

    return Every(name)
