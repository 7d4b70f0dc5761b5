"""The snapshot: plain, immutable data describing the task stack at one moment.

Probes produce it; renderers and the alert engine consume it. Nothing here does I/O, and every
string in it is already safe to show (URLs carry no credentials).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from bot.beat.model import BeatReport


class Level(IntEnum):
    """How bad a state is; ordered so that `max()` gives the worst."""

    OK = 0
    UNKNOWN = 1  # cannot tell, because something it depends on is down
    WARN = 2
    DOWN = 3


class Failure(StrEnum):
    """Why a service could not be read. Kept apart because each calls for a different fix."""

    REFUSED = "refused"  # nothing listens there (or the host is unreachable)
    TIMEOUT = "timeout"  # it accepted the connection and never answered in time
    UNAUTHORIZED = "unauthorized"  # it answered 401/403: wrong credentials
    NO_MANAGEMENT = "no_management"  # AMQP answers, the management API does not
    UNEXPECTED = "unexpected"  # it answered something we do not understand


@dataclass(frozen=True)
class Problem:
    kind: Failure
    target: str  # where we looked, credentials removed: "127.0.0.1:5672", "http://host:5555"
    detail: str = ""  # a short, redacted reason from the library, for the curious
    cause: str = ""  # the exception's class and redacted message, for the log


@dataclass(frozen=True)
class QueueInfo:
    name: str
    ready: int  # messages waiting to be delivered, exact at the moment of asking
    consumers: int | None = None  # None: the broker cannot tell us (Redis, or no management API)
    unacked: int | None = None  # delivered to a worker, not yet acknowledged
    exists: bool = True
    # The oldest waiting task (bot.health.waiting): when it was sent, and how long it had waited when
    # measured. `oldest_exact` False: only a lower bound (some waiting tasks were sent unseen).
    oldest_sent_at: float | None = None
    oldest_age: float | None = None
    oldest_exact: bool = True


@dataclass(frozen=True)
class BrokerStatus:
    kind: str  # "rabbitmq" or "redis"
    target: str
    problem: Problem | None = None  # set when the broker itself cannot be reached
    queues: tuple[QueueInfo, ...] = ()
    alarms: tuple[str, ...] = ()  # RabbitMQ resource alarms: publishers are blocked
    management_problem: Problem | None = None  # RabbitMQ only: the HTTP API could not be read

    @property
    def up(self) -> bool:
        return self.problem is None

    @property
    def waiting(self) -> int:
        return sum(q.ready for q in self.queues)


def short_id(task_id: str) -> str:
    """The start of a task id, enough for a person to tell tasks apart in a line of text."""
    return task_id[:8]


@dataclass(frozen=True)
class TaskInfo:
    id: str
    name: str
    worker: str
    started_at: float | None  # epoch seconds, from the worker
    args_summary: str = ""  # short and redacted
    worker_pid: int | None = None


@dataclass(frozen=True)
class TaskLimits:
    """The rate and time limits a worker applies to one task type (None: no limit)."""

    task: str
    rate: str | None = None  # Celery's rate string: "10/m"
    soft: float | None = None  # seconds
    hard: float | None = None


@dataclass(frozen=True)
class Pause:
    """An admin's pause of a queue on one worker (cancel_consumer), as the bot's store remembers it."""

    queue: str
    worker: str
    user_id: str
    at: float  # epoch seconds


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    pool: str | None = None  # prefork, solo, threads, eventlet, gevent
    concurrency: int | None = None
    active: tuple[TaskInfo, ...] = ()
    reserved: int = 0  # prefetched: taken from the broker, not yet running
    answered: bool = True  # False: seen by its heartbeats, but it did not answer our request
    processed: int | None = None  # tasks run since the worker started
    uptime: float | None = None  # seconds
    loadavg: tuple[float, ...] | None = None  # the host's, from the heartbeats
    heartbeat_age: float | None = None  # seconds since its last heartbeat
    queues: tuple[str, ...] | None = None  # the queues it consumes now (active_queues); None: not known
    autoscale: tuple[int, int] | None = None  # (min, max) when started with --autoscale
    limits: tuple[TaskLimits, ...] | None = None  # rate and time limits in force; None: not asked


@dataclass(frozen=True)
class LiveAges:
    """How old the figures are that came from the workers' events (bot.live) rather than from an answer now."""

    workers: int  # workers shown from their events, not asked
    heard_age: float  # seconds since the least recently heard of them: their active tasks are as of then
    facts_age: float  # seconds since the oldest reading of their pools (size, queues), by inspect


class CeleryState(StrEnum):
    UNKNOWN = "unknown"  # the broker is down, so nobody can tell
    NOT_RUNNING = "not_running"  # the broker is up and no worker answered
    RUNNING = "running"


@dataclass(frozen=True)
class CeleryStatus:
    state: CeleryState
    workers: tuple[WorkerInfo, ...] = ()
    # UNKNOWN with a problem: asking the workers failed while the broker runs; without: the broker is down.
    problem: Problem | None = None
    lost: tuple[WorkerInfo, ...] = ()  # heartbeats stopped recently: shown, not judged
    heartbeats_silent: bool = False  # no worker has sent a heartbeat for longer than the interval
    live: LiveAges | None = None  # some workers are shown from their events: how old that is

    @property
    def active_tasks(self) -> tuple[TaskInfo, ...]:
        return tuple(task for worker in self.workers for task in worker.active)


@dataclass(frozen=True)
class FlowerStatus:
    target: str
    problem: Problem | None = None

    @property
    def up(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class Snapshot:
    taken_at: float  # epoch seconds
    broker: BrokerStatus
    celery: CeleryStatus
    flower: FlowerStatus
    elapsed: float = 0.0  # seconds the probes took
    notes: tuple[str, ...] = field(default=())  # operator hints, e.g. how to configure admins
    durations: dict[str, float] = field(default_factory=dict)  # seconds each probe took: broker, celery, flower
    pauses: tuple[Pause, ...] = ()  # queues paused by admins (from the store, not the probes)
    beat: BeatReport | None = None  # the beat schedule's runs, when the app is known (issue 14)
