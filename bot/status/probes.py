"""Probes: read the broker, the Celery workers and Flower, and return a `Snapshot`.

All probes run concurrently under one deadline (`OPSBOT_PROBE_TIMEOUT`), so a service that accepts
connections and never answers shows as *timed out* instead of delaying the answer past Slack's
3-second limit. Each probe also sets its own socket timeouts inside that budget, so no thread is left
hanging once the deadline has passed.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import amqp.exceptions
import kombu
import redis
import redis.exceptions
import requests
from celery import Celery

from bot.config import Settings, http_endpoint, strip_credentials
from bot.redact import redact, redact_url
from bot.status.snapshot import (
    BrokerStatus,
    CeleryState,
    CeleryStatus,
    Failure,
    FlowerStatus,
    Problem,
    QueueInfo,
    Snapshot,
    TaskInfo,
    WorkerInfo,
)
from bot.task_args import summarize_repr

log = logging.getLogger(__name__)

# Celery's Redis transport keeps each priority level in its own list: "celery", "celery\x06\x163", ...
REDIS_PRIORITY_SEPARATOR = "\x06\x16"
REDIS_PRIORITY_STEPS = (0, 3, 6, 9)
# With no idea how many workers to expect, wait at most this long for their replies.
DISCOVERY_TIMEOUT = 1.0
# Workers send a heartbeat every 2 s. When none has for longer than that, nobody is expected to reply:
# ask briefly all the same, for a worker started with --without-heartbeat.
HEARTBEAT_INTERVAL = 2.0
QUIET_DISCOVERY_TIMEOUT = 0.25
LOST_MEMORY = 3600.0  # a worker whose heartbeats stopped is listed as lost for an hour


def target_of(url: str) -> str:
    """host:port of a URL, for messages: enough to find the service, nothing secret."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.hostname or '?'}{port}"


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes: kombu and requests wrap the socket error we care about."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _classify_one(exc: BaseException) -> Failure | None:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return Failure.UNAUTHORIZED if exc.response.status_code in (401, 403) else Failure.UNEXPECTED
    if isinstance(exc, (amqp.exceptions.AccessRefused, redis.exceptions.AuthenticationError)):
        return Failure.UNAUTHORIZED
    text = str(exc)
    if "ACCESS_REFUSED" in text or "NOAUTH" in text or "WRONGPASS" in text:
        return Failure.UNAUTHORIZED
    if isinstance(exc, (TimeoutError, socket.timeout, requests.Timeout, redis.exceptions.TimeoutError)):
        return Failure.TIMEOUT
    if "timed out" in text.lower():
        return Failure.TIMEOUT
    if isinstance(exc, (ConnectionError, socket.gaierror)) or "refused" in text.lower():
        return Failure.REFUSED
    return None


def classify(exc: BaseException) -> Failure:
    """Sort an exception into the failure kinds a user can act on."""
    for link in _chain(exc):
        kind = _classify_one(link)
        if kind is not None:
            return kind
    if isinstance(exc, (OSError, requests.ConnectionError, redis.exceptions.ConnectionError)):
        return Failure.REFUSED
    return Failure.UNEXPECTED


# Object addresses ("<... object at 0x7f3a...>") differ on every attempt; the cause does not.
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]+\b")


def describe(exc: BaseException) -> str:
    """The exception's class and redacted message, the same text every time the same thing fails.

    Libraries wrap the real cause (requests: ConnectionError < MaxRetryError < NewConnectionError <
    ConnectionRefusedError); the innermost exception says it best, the outermost says who raised it.
    """
    root = _chain(exc)[-1]
    text = f"{type(root).__name__}: {root}"
    if root is not exc:
        text += f" (raised as {type(exc).__name__})"
    return redact(_ADDRESS.sub("0x…", text))[:300]


def problem_from(exc: BaseException, target: str) -> Problem:
    kind = classify(exc)
    cause = describe(exc)
    # The kind says it all for the usual failures; for the rest, a short redacted reason helps.
    detail = "" if kind is not Failure.UNEXPECTED else cause[:160]
    return Problem(kind=kind, target=target, detail=detail, cause=cause)


class FailureLog:
    """Logs why a probe fails, once per change of cause: a refused port polled every 10 s is one line."""

    def __init__(self) -> None:
        self._causes: dict[str, str] = {}
        self._lock = threading.Lock()

    def note(self, probe: str, problem: Problem | None) -> None:
        cause = f"at {problem.target}: {problem.cause or problem.kind}" if problem else None
        with self._lock:
            before = self._causes.pop(probe, None)
            if cause is not None:
                self._causes[probe] = cause
        if cause is not None and cause != before:
            log.warning("%s probe failed %s", probe, cause)
        elif cause is None and before is not None:
            log.info("%s probe works again", probe)


# --- Broker -----------------------------------------------------------------------------------


def amqp_connection(broker_url: str, timeout: float) -> kombu.Connection:
    """A kombu connection whose connect, read and write all give up after `timeout`."""
    return kombu.Connection(
        broker_url,
        connect_timeout=timeout,
        transport_options={"read_timeout": timeout, "write_timeout": timeout},
    )


def amqp_queue_counts(broker_url: str, names: Iterable[str], timeout: float) -> list[QueueInfo]:
    """Exact ready and consumer counts from a passive declare (the management API lags by ~5 s)."""
    queues = []
    with amqp_connection(broker_url, timeout) as conn:
        conn.ensure_connection(max_retries=0)  # kombu's default retries would outlast the deadline
        for name in names:
            channel = conn.channel()
            try:
                _, ready, consumers = channel.queue_declare(queue=name, passive=True)
                queues.append(QueueInfo(name=name, ready=ready, consumers=consumers))
            except amqp.exceptions.NotFound:
                # A queue nobody declared yet: no worker ever consumed it, nothing was ever sent.
                queues.append(QueueInfo(name=name, ready=0, consumers=0, exists=False))
            finally:
                if channel.is_open:
                    channel.close()
    return queues


class ManagementApi:
    """The RabbitMQ management HTTP API: consumers, unacked messages and resource alarms."""

    def __init__(self, settings: Settings, session: requests.Session) -> None:
        self.base = strip_credentials(settings.rabbitmq_management_url).rstrip("/")
        self.auth = settings.management_credentials()
        self.vhost = urlsplit(settings.broker_url).path[1:] or "/"
        self.session = session

    def get(self, path: str, timeout: float) -> Any:
        response = self.session.get(f"{self.base}{path}", auth=self.auth, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def details(self, queues: list[QueueInfo], timeout: float) -> tuple[list[QueueInfo], tuple[str, ...]]:
        """Fill in unacked counts and read alarms; the exact counts from AMQP are kept."""
        vhost = requests.utils.quote(self.vhost, safe="")
        enriched = []
        for queue in queues:
            if not queue.exists:
                enriched.append(queue)
                continue
            info = self.get(f"/api/queues/{vhost}/{requests.utils.quote(queue.name, safe='')}", timeout)
            enriched.append(QueueInfo(name=queue.name, ready=queue.ready, consumers=queue.consumers,
                                      unacked=info.get("messages_unacknowledged")))
        return enriched, self.alarms(timeout)

    def alarms(self, timeout: float) -> tuple[str, ...]:
        found = []
        for node in self.get("/api/nodes", timeout):
            name = node.get("name", "?")
            if node.get("mem_alarm"):
                found.append(f"memory alarm on {name}")
            if node.get("disk_free_alarm"):
                found.append(f"disk space alarm on {name}")
        return tuple(found)


def probe_rabbitmq(settings: Settings, session: requests.Session, timeout: float) -> BrokerStatus:
    target = target_of(settings.broker_url)
    try:
        queues = amqp_queue_counts(settings.broker_url, settings.queues, timeout)
    except Exception as exc:  # any failure to read the broker is a state to show, not a crash
        return BrokerStatus(kind="rabbitmq", target=target, problem=problem_from(exc, target))
    api = ManagementApi(settings, session)
    try:
        queues, alarms = api.details(queues, timeout)
    except Exception as exc:
        problem = problem_from(exc, redact_url(api.base))
        if problem.kind is Failure.REFUSED:
            # AMQP answers but HTTP does not: almost always the plugin is simply not enabled.
            problem = replace(problem, kind=Failure.NO_MANAGEMENT)
        return BrokerStatus(kind="rabbitmq", target=target, queues=tuple(queues),
                            management_problem=problem)
    return BrokerStatus(kind="rabbitmq", target=target, queues=tuple(queues), alarms=alarms)


def redis_queue_keys(name: str) -> list[str]:
    return [name if step == 0 else f"{name}{REDIS_PRIORITY_SEPARATOR}{step}" for step in REDIS_PRIORITY_STEPS]


def probe_redis(settings: Settings, timeout: float) -> BrokerStatus:
    target = target_of(settings.broker_url)
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=timeout,
                                  socket_connect_timeout=timeout)
    try:
        pipe = client.pipeline(transaction=False)
        for name in settings.queues:
            for key in redis_queue_keys(name):
                pipe.llen(key)
        lengths = pipe.execute()
    except Exception as exc:
        return BrokerStatus(kind="redis", target=target, problem=problem_from(exc, target))
    finally:
        client.close()
    per_queue = len(REDIS_PRIORITY_STEPS)
    queues = tuple(
        QueueInfo(name=name, ready=sum(lengths[i * per_queue:(i + 1) * per_queue]))
        for i, name in enumerate(settings.queues)
    )
    return BrokerStatus(kind="redis", target=target, queues=queues)


# --- Celery -----------------------------------------------------------------------------------


def make_control_app(broker_url: str, timeout: float) -> Celery:
    """A task-less Celery app used only for remote control; it never retries a dead broker."""
    app = Celery("opsbot", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_connection_timeout=timeout,
        broker_connection_retry=False,
        broker_connection_max_retries=0,
        broker_transport_options={"max_retries": 0, "socket_timeout": timeout,
                                  "socket_connect_timeout": timeout},
        worker_hijack_root_logger=False,
    )
    return app


def pool_name(stats: dict[str, Any]) -> str | None:
    implementation = (stats.get("pool") or {}).get("implementation") or ""
    # "celery.concurrency.prefork:TaskPool" -> "prefork"; "...thread:TaskPool" -> "threads"
    module = implementation.split(":")[0].rsplit(".", 1)[-1]
    return {"thread": "threads"}.get(module, module) or None


def pool_size(stats: dict[str, Any]) -> int | None:
    """The processes a pool runs now. Prefork's `max-concurrency` keeps its start value after pool_grow or
    pool_shrink; its list of processes does not."""
    pool = stats.get("pool") or {}
    processes = pool.get("processes")
    return len(processes) if isinstance(processes, list) and processes else pool.get("max-concurrency")


def autoscale_bounds(stats: dict[str, Any]) -> tuple[int, int] | None:
    """(min, max) of a worker started with --autoscale (its stats carry an `autoscaler`)."""
    scaler = stats.get("autoscaler")
    if not isinstance(scaler, dict) or scaler.get("max") is None:
        return None
    return int(scaler.get("min") or 0), int(scaler["max"])


def queue_names(active_queues: Any) -> tuple[str, ...] | None:
    """The names in a worker's `active_queues` reply; None when it gave none."""
    if not isinstance(active_queues, list):
        return None
    return tuple(str(q.get("name")) for q in active_queues if isinstance(q, dict))


def task_from(raw: dict[str, Any], worker: str) -> TaskInfo:
    return TaskInfo(
        id=str(raw.get("id", "")),
        name=str(raw.get("name") or raw.get("type") or "?"),
        worker=worker,
        started_at=raw.get("time_start"),
        args_summary=summarize_repr(raw.get("args"), raw.get("kwargs")),
        worker_pid=raw.get("worker_pid"),
    )


def ask_active(app: Celery, conn: kombu.Connection, expected: set[str], deadline: float,
               discovery: float = DISCOVERY_TIMEOUT) -> dict[str, Any]:
    """Every worker's `active` tasks, waiting only for the workers we expect.

    `limit` counts replies, not names: a worker we did not expect may take the place of one we did.
    If the limit was reached without them, the missing ones are asked again by name. With nobody to
    expect, wait at most `discovery` seconds.
    """
    limit = len(expected) or None
    remaining = max(0.05, deadline - time.monotonic())
    timeout = min(remaining, discovery) if limit is None else remaining
    # safe=True: the reprs Celery cut at send time, not full reprs of arguments of any size.
    answers = app.control.inspect(timeout=timeout, limit=limit, connection=conn).active(safe=True) or {}
    missing = sorted(expected - set(answers))
    if missing and limit is not None and len(answers) >= limit:
        timeout = max(0.05, deadline - time.monotonic())
        inspector = app.control.inspect(destination=missing, timeout=timeout, limit=len(missing), connection=conn)
        answers.update(inspector.active(safe=True) or {})
    return answers


class CeleryProbe:
    """Asks the workers, over the broker, what they run.

    `inspect(limit=N)` returns as soon as N workers replied instead of waiting the whole timeout
    (10 ms against 1 s), so we remember how many workers to expect: the ones that answered last
    time, or those whose heartbeats we see (`alive_workers`, from `bot.status.heartbeats`).
    """

    def __init__(self, settings: Settings,
                 alive_workers: Callable[[], set[str] | None] | None = None,
                 heartbeat_details: Callable[[], dict[str, dict]] | None = None,
                 heartbeat_quiet: Callable[[], float | None] | None = None) -> None:
        self.settings = settings
        self.app = make_control_app(settings.broker_url, settings.probe_timeout)
        # Heartbeats are fresher than our last answer (a dead worker drops out after ~4 s).
        self.alive_workers = alive_workers or (lambda: None)
        # What heartbeats say of each worker (age, load average); empty without a monitor.
        self.heartbeat_details = heartbeat_details or (lambda: {})
        # Seconds since any worker sent a heartbeat; None while heartbeats cannot be followed.
        self.heartbeat_quiet = heartbeat_quiet or (lambda: None)
        self._last_answered: set[str] = set()
        self._lock = threading.Lock()

    def expected(self) -> set[str]:
        """Whom to wait for: the workers whose heartbeats we see and those that answered last time
        (some workers send no heartbeats; a worker that died is dropped after one slow answer)."""
        alive = self.alive_workers() or set()
        with self._lock:
            return alive | self._last_answered

    def probe(self, deadline: float) -> CeleryStatus:
        expected = self.expected()
        quiet = self.heartbeat_quiet()
        silent = quiet is not None and quiet > HEARTBEAT_INTERVAL
        discovery = QUIET_DISCOVERY_TIMEOUT if silent else DISCOVERY_TIMEOUT
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=0)
                replies = self._ask_all(conn, expected, deadline, discovery)
        except Exception as exc:
            return CeleryStatus(state=CeleryState.UNKNOWN,
                                problem=problem_from(exc, target_of(self.settings.broker_url)))
        answered = set(replies["active"])
        with self._lock:
            self._last_answered = answered
        details = self.heartbeat_details()
        lost = tuple(WorkerInfo(name=name, answered=False, heartbeat_age=d["heartbeat_age"],
                                loadavg=tuple(d["loadavg"] or ()) or None)
                     for name, d in sorted(details.items())
                     if not d["alive"] and name not in answered and d["heartbeat_age"] < LOST_MEMORY)
        if not answered:
            return CeleryStatus(state=CeleryState.NOT_RUNNING, lost=lost, heartbeats_silent=silent)
        workers = [self._worker(name, replies, details.get(name) or {}) for name in sorted(answered)]
        heartbeating = self.alive_workers() or set()
        not_answering = [WorkerInfo(name=name, answered=False)
                         for name in sorted((expected & heartbeating) - answered)]
        return CeleryStatus(state=CeleryState.RUNNING, workers=tuple(workers + not_answering), lost=lost,
                            heartbeats_silent=silent)

    def _ask_all(self, conn: kombu.Connection, expected: set[str], deadline: float,
                 discovery: float) -> dict[str, dict]:
        """`active` from everyone, then `reserved` and `stats` from exactly the workers that answered."""
        replies = {"active": ask_active(self.app, conn, expected, deadline, discovery)}
        # Addressed by name, the others answer as soon as these have: no one else can crowd in.
        destination = sorted(replies["active"])
        for command in ("reserved", "stats", "active_queues"):
            if not destination:
                break
            timeout = max(0.05, deadline - time.monotonic())
            inspector = self.app.control.inspect(destination=destination, timeout=timeout, limit=len(destination),
                                                 connection=conn)
            replies[command] = getattr(inspector, command)() or {}
        return replies

    @staticmethod
    def _worker(name: str, replies: dict[str, dict], heartbeat: dict) -> WorkerInfo:
        stats = replies.get("stats", {}).get(name) or {}
        totals = stats.get("total") or {}
        return WorkerInfo(
            name=name,
            pool=pool_name(stats),
            concurrency=pool_size(stats),
            active=tuple(task_from(raw, name) for raw in replies["active"].get(name) or []),
            reserved=len(replies.get("reserved", {}).get(name) or []),
            processed=sum(totals.values()) if isinstance(totals, dict) else None,
            uptime=stats.get("uptime"),
            loadavg=tuple(heartbeat.get("loadavg") or ()) or None,
            heartbeat_age=heartbeat.get("heartbeat_age"),
            queues=queue_names(replies.get("active_queues", {}).get(name)),
            autoscale=autoscale_bounds(stats),
        )


# --- Flower -----------------------------------------------------------------------------------


def probe_flower(settings: Settings, session: requests.Session, timeout: float) -> FlowerStatus:
    base, auth = http_endpoint(settings.flower_url)
    target = redact_url(base)
    try:
        response = session.get(f"{base}/healthcheck", auth=auth, timeout=timeout)
        response.raise_for_status()
        if response.text.strip() != "OK":
            return FlowerStatus(target=target, problem=Problem(
                Failure.UNEXPECTED, target, f"/healthcheck answered {response.text[:40]!r}"))
        # /healthcheck is open to all; the API is what needs our credentials, so check those too.
        session.get(f"{base}/api/tasks", params={"limit": 1}, auth=auth, timeout=timeout).raise_for_status()
    except Exception as exc:
        return FlowerStatus(target=target, problem=problem_from(exc, target))
    return FlowerStatus(target=target)


# --- All together -----------------------------------------------------------------------------


def _timed(durations: dict[str, float], service: str, probe: Callable[..., Any], *args: Any) -> Any:
    """Run one probe and note how long it took (for the probe-duration metric)."""
    started = time.monotonic()
    try:
        return probe(*args)
    finally:
        durations[service] = time.monotonic() - started


class Prober:
    """Takes snapshots: every probe at once, one deadline for all."""

    def __init__(self, settings: Settings, celery_probe: CeleryProbe | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.celery = celery_probe or CeleryProbe(settings)
        self.clock = clock
        self.session = requests.Session()
        self.executor = ThreadPoolExecutor(max_workers=12, thread_name_prefix="probe")
        self.failures = FailureLog()

    def snapshot(self) -> Snapshot:
        started = time.monotonic()
        budget = self.settings.probe_timeout
        deadline = started + budget
        # Sockets give up a little before the deadline, so each probe reports its own timeout.
        socket_timeout = budget * 0.8
        durations: dict[str, float] = {}
        broker_f = self.executor.submit(_timed, durations, "broker", self._probe_broker, socket_timeout)
        celery_f = self.executor.submit(_timed, durations, "celery", self.celery.probe, started + budget * 0.9)
        flower_f = self.executor.submit(_timed, durations, "flower", probe_flower, self.settings, self.session,
                                        socket_timeout)
        wait_futures([broker_f, celery_f, flower_f], timeout=budget)
        # A probe still running at the deadline took (at least) the whole budget.
        durations = {service: durations.get(service, budget) for service in ("broker", "celery", "flower")}
        broker_target = target_of(self.settings.broker_url)
        broker = self._result(broker_f, lambda p: BrokerStatus(self.settings.broker_kind, broker_target, p),
                              broker_target)
        celery = self._result(celery_f, lambda p: CeleryStatus(CeleryState.UNKNOWN, problem=p), broker_target)
        flower_target = redact_url(strip_credentials(self.settings.flower_url))
        flower = self._result(flower_f, lambda p: FlowerStatus(flower_target, p), flower_target)
        if not broker.up:
            # With the broker down no worker can answer; that says nothing about the workers, and the
            # cause is the broker's (a Celery status without a problem: see CeleryStatus).
            celery = CeleryStatus(state=CeleryState.UNKNOWN)
        self._log_failures(broker, celery, flower)
        elapsed = time.monotonic() - started
        if elapsed > deadline - started + 0.1:
            log.warning("snapshot took %.2fs, past its %.2fs deadline", elapsed, budget)
        return Snapshot(taken_at=self.clock(), broker=broker, celery=celery, flower=flower, elapsed=elapsed,
                        durations=durations)

    def _log_failures(self, broker: BrokerStatus, celery: CeleryStatus, flower: FlowerStatus) -> None:
        name = "Redis" if broker.kind == "redis" else "RabbitMQ"
        self.failures.note(name, broker.problem)
        if broker.kind == "rabbitmq":
            self.failures.note("RabbitMQ management API", broker.management_problem)
        self.failures.note("Celery", celery.problem)
        self.failures.note("Flower", flower.problem)

    def _probe_broker(self, timeout: float) -> BrokerStatus:
        if self.settings.broker_kind == "redis":
            return probe_redis(self.settings, timeout)
        return probe_rabbitmq(self.settings, self.session, timeout)

    @staticmethod
    def _result(future: Future, on_timeout: Callable[[Problem], Any], target: str) -> Any:
        if future.done():
            return future.result()
        return on_timeout(Problem(Failure.TIMEOUT, target, "no answer within the probe deadline",
                                  cause="no answer within the probe deadline"))

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.session.close()
