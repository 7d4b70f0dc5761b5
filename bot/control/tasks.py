"""Task control: terminate a running task, purge a waiting queue. For admins only, and audited.

`TaskControl` holds the rules (who, which ids, which queues, what to say); the functions at the top
talk to the stack. Every attempt, allowed or not, ends in exactly one audit entry.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import amqp.exceptions
import kombu
import redis
import requests
from celery import Celery

from bot.config import Settings, http_endpoint
from bot.control.access import AUDIT, CONTROL, HOW_TO_CONFIGURE, Access, AccessUnknown, Actor, not_allowed
from bot.control.audit import AuditEntry, AuditLog, Termination
from bot.markup import mention, phrase
from bot.probes.broker import amqp_connection, redis_client, redis_queue_keys
from bot.probes.celery_probe import active_tasks, ask_active, pool_name
from bot.redact import redact
from bot.status.assess import time_of_day
from bot.status.snapshot import Level, TaskInfo, short_id

log = logging.getLogger(__name__)

# Celery ids are UUIDs by default; custom ids are allowed, within a safe alphabet.
TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,199}$")
# These pools run tasks in the worker's own process or threads: there is no child to signal.
POOLS_WITHOUT_TERMINATE = {"solo", "threads"}
REPLY_TIMEOUT = 1.0
# How long the answer waits to see the signalled process leave the pool. Usually 50 ms; but an exited
# pool child can stay listed (a zombie) until Celery's 4-second liveness timer reaps it, later still on
# a busy machine: the verdict "signalled" (it may ignore the signal) is given only after that, and a
# last look comes later (`follow_up_delay`). The answer goes through response_url, not the 3-s ack.
GONE_WAIT = 7.0
REAP_DELAY = 5.0
GONE_POLL = 0.02


class BrokerUnreachable(Exception):
    pass


@dataclass(frozen=True)
class Outcome:
    """What happened, for the person who asked. `changed` is False whenever nothing was done."""

    level: Level
    message: str
    changed: bool = False
    label: str = ""  # the audit's word for it ("done", "denied", "already", ...; bot.control.views)


# --- Talking to the stack ---------------------------------------------------------------------


def broker_connection(app: Celery) -> kombu.Connection:
    """A connection for remote control, or BrokerUnreachable at once: someone is waiting, no retries."""
    conn = app.connection_for_write()
    try:
        conn.ensure_connection(max_retries=0)
    except Exception as exc:
        conn.release()
        raise BrokerUnreachable() from exc
    return conn


class Stack:
    """The calls task control makes to the broker, the workers and Flower."""

    def __init__(self, settings: Settings, app: Celery, expected_workers: Callable[[], set[str]]) -> None:
        self.settings = settings
        self.app = app
        self.expected_workers = expected_workers
        self.session = requests.Session()

    def _connection(self) -> kombu.Connection:
        return broker_connection(self.app)

    def find_active(self, task_id: str) -> TaskInfo | None:
        with self._connection() as conn:
            replies = ask_active(self.app, conn, self.expected_workers(), time.monotonic() + REPLY_TIMEOUT)
        running = (task for tasks in active_tasks(replies).values() for task in tasks)
        return next((task for task in running if task.id == task_id), None)

    def _stats(self, worker: str) -> dict:
        with self._connection() as conn:
            inspector = self.app.control.inspect(destination=[worker], timeout=REPLY_TIMEOUT, limit=1,
                                                 connection=conn)
            return (inspector.stats() or {}).get(worker) or {}

    def pool_of(self, worker: str) -> str | None:
        stats = self._stats(worker)
        return pool_name(stats) if stats else None

    def process_alive(self, worker: str, pid: int) -> bool:
        """Is this pool child still among the worker's processes? (A killed child is replaced.)"""
        return pid in ((self._stats(worker).get("pool") or {}).get("processes") or [])

    def revoke(self, task: TaskInfo, signal: str) -> bool:
        """Signal the task on its own worker and wait for that worker to confirm."""
        with self._connection() as conn:
            replies = self.app.control.revoke(task.id, destination=[task.worker], terminate=True, signal=signal,
                                              reply=True, timeout=REPLY_TIMEOUT, limit=1, connection=conn)
        return any("ok" in (reply.get(task.worker) or {}) for reply in replies or [])

    def wait_gone(self, task: TaskInfo, seconds: float) -> bool:
        """Wait for the task's process to die.

        Celery drops a task from `active` as soon as it sends the signal, whether or not the process
        obeys, so the only proof is the pool child itself disappearing from the worker's pool.
        """
        if task.worker_pid is None:  # no child process to watch (not prefork): trust the worker's reply
            return True
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.process_alive(task.worker, task.worker_pid):
                return True
            time.sleep(GONE_POLL)
        return not self.process_alive(task.worker, task.worker_pid)

    def purge(self, queue: str) -> int | None:
        """Empty one queue; the number of messages removed, or None when the queue does not exist."""
        if self.settings.broker_kind == "redis":
            return self._purge_redis(queue)
        try:
            with amqp_connection(self.settings.broker_url, self.settings.probe_timeout) as conn:
                conn.ensure_connection(max_retries=0)
                channel = conn.channel()
                try:
                    channel.queue_declare(queue=queue, passive=True)
                except amqp.exceptions.NotFound:
                    return None
                return int(channel.queue_purge(queue) or 0)
        except (OSError, kombu.exceptions.OperationalError, amqp.exceptions.ConnectionError) as exc:
            raise BrokerUnreachable() from exc

    def _purge_redis(self, queue: str) -> int:
        client = redis_client(self.settings.broker_url, self.settings.probe_timeout)
        try:
            pipe = client.pipeline(transaction=True)  # count and delete atomically
            keys = redis_queue_keys(queue)
            for key in keys:
                pipe.llen(key)
            pipe.delete(*keys)
            results = pipe.execute()
        except redis.exceptions.ConnectionError as exc:
            raise BrokerUnreachable() from exc
        finally:
            client.close()
        return int(sum(results[: len(keys)]))

    def final_state(self, task_id: str) -> str | None:
        """What Flower knows of a finished task (SUCCESS, FAILURE, REVOKED, ...), if anything."""
        base, auth = http_endpoint(self.settings.flower_url)
        try:
            response = self.session.get(f"{base}/api/task/info/{task_id}", timeout=1.0, auth=auth)
            if response.ok:
                return str(response.json().get("state") or "") or None
        except (requests.RequestException, ValueError):
            pass
        return None


# --- The rules --------------------------------------------------------------------------------

CHECK_AFTER = {"purge": "/tasks queues", "terminate": "/tasks active", "kill": "/tasks active"}


def is_refusal(exc: BaseException) -> bool:
    """The broker said no to opsbot's user (a missing permission), as opposed to breaking down."""
    return isinstance(exc, (redis.exceptions.NoPermissionError, amqp.exceptions.AccessRefused)) or \
        "NOPERM" in str(exc)


def failed(action: str, exc: BaseException) -> Outcome:
    """An attempt that broke part-way: what is known, and never that nothing changed."""
    detail = redact(str(exc)).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    where = CHECK_AFTER.get(action, "/tasks")
    if is_refusal(exc):
        return Outcome(Level.DOWN, f"The broker refused the {action}: opsbot's broker user lacks a permission "
                                   f"({detail}). Part of it may have happened: check {where}.", changed=True)
    return Outcome(Level.DOWN, f"The {action} failed part-way ({type(exc).__name__}: {detail}); part of it may "
                               f"have happened: check {where}.", changed=True)


class TaskControl:
    def __init__(self, settings: Settings, stack: Stack, audit_log: AuditLog, access: Access,
                 announce: Callable[[str], None] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.stack = stack
        self.audit_log = audit_log
        self.access = access
        self.announce = announce or (lambda text: None)
        self.clock = clock

    def _audit(self, actor: Actor, action: str, target: str, outcome: str, message: str) -> None:
        entry = AuditEntry(self.clock(), actor.id, action, redact(target)[:255], outcome, message)
        try:
            self.audit_log.record(entry)
        except Exception as exc:  # the attempt happened all the same: keep it in the log at least
            log.error("could not store the audit entry (%s): %s %s %s: %s", type(exc).__name__, actor.id,
                      action, entry.target, outcome)
        try:
            self.announce(phrase("{} {} {}: {}. {}", actor.mention, action, entry.target, outcome, message))
        except Exception:
            log.warning("could not post the audit entry to the audit channel")

    def reject(self, actor: Actor, action: str, target: str, reason: str) -> None:
        """Record an attempt that did not even parse (a forged or mangled button)."""
        self._audit(actor, action, target or "(empty)", "forged", reason)

    def refusal(self, actor: Actor, what: str = CONTROL) -> Outcome | None:
        """None when the actor may act; otherwise the refusal to show, naming `what` was refused."""
        if not self.access.configured:
            return Outcome(Level.WARN, HOW_TO_CONFIGURE, label="denied")
        try:
            allowed = self.access.allows(actor)
        except AccessUnknown as problem:
            return Outcome(Level.WARN, f"Could not check your permissions ({problem}); nothing was done.",
                           label="denied")
        return None if allowed else Outcome(Level.WARN, not_allowed(what), label="denied")

    def record(self, actor: Actor, action: str, target: str, outcome: str, message: str) -> None:
        """Audit an action ruled elsewhere (acknowledge, snooze, mute, unmute; retry; worker control)."""
        self._audit(actor, action, target, outcome, message)

    def _attempt(self, actor: Actor, action: str, target: str,
                 run: Callable[[], Outcome]) -> Outcome:
        """Run one attempt and audit it whatever happens, with what really happened: an error part-way
        (a refusal by the broker, a store failure) may leave something done, and is reported so."""
        outcome = Outcome(Level.DOWN, f"The {action} was interrupted; it may have partly happened.",
                          changed=True, label="interrupted")
        try:
            outcome = run()
        except Exception as exc:
            log.exception("%s %s failed", action, redact(target)[:60])
            outcome = replace(failed(action, exc), label="refused" if is_refusal(exc) else "error")
        finally:
            self._audit(actor, action, target or "(empty)", outcome.label, outcome.message)
        return outcome

    def terminate(self, actor: Actor, task_id: str, signal: str = "SIGTERM") -> Outcome:
        action = "kill" if signal == "SIGKILL" else "terminate"
        return self._attempt(actor, action, task_id.strip(), lambda: self._terminate(actor, task_id.strip(), signal))

    def _terminate(self, actor: Actor, task_id: str, signal: str) -> Outcome:
        refusal = self.refusal(actor)
        if refusal:
            return refusal
        if not TASK_ID.match(task_id):
            return Outcome(Level.WARN, "That is not a valid task id; nothing was done.", label="invalid")
        try:
            return self._terminate_checked(actor, task_id, signal)
        except BrokerUnreachable:
            return Outcome(Level.DOWN, "The broker is unreachable, so no worker can be told; nothing was done.",
                           label="broker_down")

    def _terminate_checked(self, actor: Actor, task_id: str, signal: str) -> Outcome:
        previous = self.audit_log.termination(task_id)
        task = self.stack.find_active(task_id)
        if task is None:
            if previous:
                lingering = self._lingering(previous)
                if lingering:
                    return replace(lingering, label="lingering")
                return Outcome(Level.OK, phrase("Already terminated by {} at {}; nothing else was done.",
                                                mention(previous.user_id), time_of_day(previous.at)), label="already")
            state = self.stack.final_state(task_id)
            known = f" (final state: {state})" if state else ""
            return Outcome(Level.WARN, f"Task `{short_id(task_id)}` is not running{known}; nothing was done.",
                           label="not_running")
        pool = self.stack.pool_of(task.worker)
        if pool in POOLS_WITHOUT_TERMINATE:
            return Outcome(Level.WARN, f"{task.worker} runs the {pool} pool, which cannot terminate a single "
                                       "task (it would have to stop the whole worker). Nothing was done.",
                           label="unsupported")
        if not self.stack.revoke(task, signal):
            return Outcome(Level.DOWN, f"{task.worker} did not confirm the {signal}; the task may still run.",
                           label="no_reply")
        done = phrase("Terminated {} `{}` on {} ({}), by {}", task.name, short_id(task.id), task.worker, signal,
                      actor.mention)
        try:
            self.audit_log.save_termination(Termination(task.id, task.name, task.worker, actor.id, signal, self.clock(),
                                                    task.worker_pid))
        except Exception as exc:  # the signal is out: say so, and that it is not on record
            log.exception("could not record the termination of %s", task.id)
            done = phrase("{} (not on record: the store failed with {})", done, type(exc).__name__)
        if self.stack.wait_gone(task, GONE_WAIT):
            return Outcome(Level.OK, phrase("{}.", done), changed=True, label="done")
        return Outcome(Level.WARN, phrase("{}; its process (pid {}) has not left the pool yet: checking again in "
                                          "{} s.", done, task.worker_pid, f"{self.follow_up_delay:g}"),
                       changed=True, label="signalled")

    @property
    def follow_up_delay(self) -> float:
        """When to look again whether a signalled process stopped: OPSBOT_KILL_AFTER, but not before
        Celery has had time to reap a child that did exit."""
        return max(self.settings.kill_after, REAP_DELAY)

    def _lingering(self, termination: Termination) -> Outcome | None:
        """If a terminated task's process outlived its signal, say what can still be done."""
        if termination.worker_pid is None or termination.signal == "SIGKILL":
            return None
        if self.clock() - termination.at < REAP_DELAY:
            return None  # an exited child stays listed until Celery reaps it: too early to tell
        if not self.stack.process_alive(termination.worker, termination.worker_pid):
            return None
        host = termination.worker.split("@", 1)[-1]
        return Outcome(Level.DOWN, (
            f"{termination.task_name} `{short_id(termination.task_id)}` on {termination.worker} still runs after "
            f"{termination.signal}: it ignores the signal. Celery stops tracking a task once it has been "
            f"terminated, so no second signal can reach it through the broker. To stop it now, run "
            f"`kill -9 {termination.worker_pid}` on {host}, or restart {termination.worker}. For a task known to "
            "ignore SIGTERM, use `/tasks kill <task-id>` (SIGKILL) first."))

    def follow_up(self, task_id: str) -> Outcome:
        """A while after SIGTERM: did the process stop?"""
        termination = self.audit_log.termination(task_id)
        if termination is None:
            return Outcome(Level.WARN, f"No termination of `{short_id(task_id)}` is on record.")
        try:
            lingering = self._lingering(termination)
        except BrokerUnreachable:
            return Outcome(Level.DOWN, "The broker is unreachable: cannot check whether the task stopped.")
        if lingering:
            return lingering
        return Outcome(Level.OK, f"{termination.task_name} `{short_id(task_id)}` has stopped after "
                                 f"{termination.signal}.", changed=True)

    def purge(self, actor: Actor, queue: str) -> Outcome:
        return self._attempt(actor, "purge", queue.strip(), lambda: self._purge(actor, queue.strip()))

    def _purge(self, actor: Actor, queue: str) -> Outcome:
        refusal = self.refusal(actor)
        if refusal:
            return refusal
        if queue not in self.settings.queues:
            watched = ", ".join(self.settings.queues)
            return Outcome(Level.WARN, f"'{redact(queue)[:60]}' is not a watched queue ({watched}); "
                                       "nothing was done.", label="invalid")
        try:
            removed = self.stack.purge(queue)
        except BrokerUnreachable:
            return Outcome(Level.DOWN, "The broker is unreachable; nothing was purged.", label="broker_down")
        if removed is None:
            return Outcome(Level.OK, f"Queue {queue} does not exist yet: nothing to purge.", label="empty")
        noun = "task" if removed == 1 else "tasks"
        return Outcome(Level.OK, phrase("Purged {} waiting {} from {}, by {}.", removed, noun, queue, actor.mention),
                       changed=bool(removed), label="done")

    def audit(self, actor: Actor, limit: int = 20) -> list[AuditEntry] | Outcome:
        refusal = self.refusal(actor, AUDIT)
        return refusal if refusal else self.audit_log.latest(limit)
