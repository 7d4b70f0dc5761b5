"""Retry a failed or revoked task: the same name, exact arguments and routing, sent as a new task.

Only exact arguments are ever re-sent. Celery's events carry cut-short reprs (`argsrepr`), never
the arguments, so they come from the result backend, which holds them when the app stores extended
results (`result_extended=True`); opsbot reads it at `CELERY_RESULT_BACKEND`. The routing (queue,
exchange, routing key) comes from the task-sent event, which names them exactly, else from the
result (the routing key it was delivered with). Celery records a task's priority in neither, so a
retry goes at the queue's default priority (the confirmation says so).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from celery import Celery

from bot.config import Settings
from bot.control.access import Actor
from bot.control.tasks import TASK_ID, Outcome, TaskControl
from bot.db import Database
from bot.health import queries
from bot.history.store import HistoryStore, TaskRecord
from bot.markup import phrase
from bot.status.snapshot import Level, short_id

log = logging.getLogger(__name__)

RETRYABLE_STATES = ("FAILURE", "REVOKED")
NO_BACKEND = ("opsbot cannot know this task's exact arguments: set CELERY_RESULT_BACKEND to the app's "
              "result backend (and result_extended=True in the app) to enable Retry. Nothing was done.")
NOT_EXTENDED = ("The result backend holds no arguments for `{}`: the app must store extended results "
                "(result_extended=True), and the result must not have expired. Nothing was done.")
MAX_BULK = 500
BACKEND_TIMEOUT = 0.5


@dataclass(frozen=True)
class Call:
    """Everything needed to send a task again exactly."""

    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None


def make_results_app(settings: Settings) -> Celery | None:
    if not settings.result_backend:
        return None
    app = Celery("opsbot-retry", broker=settings.broker_url, backend=settings.result_backend, set_as_current=False)
    # Reads for showing Retry run inside Slack's 3 s (a history page): a stalled backend must not stall it.
    timeout = min(BACKEND_TIMEOUT, settings.probe_timeout)
    app.conf.update(
        result_extended=True,
        task_send_sent_event=True,  # the retry is recorded and its waiting time known like any task
        redis_socket_timeout=timeout, redis_socket_connect_timeout=timeout, redis_retry_on_timeout=False,
        broker_connection_timeout=timeout, broker_connection_retry=False, broker_connection_max_retries=0,
        worker_hijack_root_logger=False,
    )
    return app


def call_from(meta: dict[str, Any] | None, row: TaskRecord | None) -> Call | None:
    """The exact call, from an extended result and the recorded routing; None when the result lacks it."""
    if not meta or not meta.get("name") or not isinstance(meta.get("args"), list | tuple) \
            or not isinstance(meta.get("kwargs"), dict):
        return None
    sent = row or TaskRecord("", "")  # no task-sent event on record: the routing it was delivered with
    return Call(str(meta["name"]), list(meta["args"]), dict(meta["kwargs"]), sent.queue or meta.get("queue"),
                sent.exchange or None, sent.routing_key or meta.get("queue"))


class Retrier:
    def __init__(self, settings: Settings, store: Callable[[], Database], control: TaskControl,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.control = control
        self.clock = clock
        self.app = make_results_app(settings)

    @property
    def enabled(self) -> bool:
        return self.app is not None

    def _meta(self, task_id: str) -> dict[str, Any] | None:
        assert self.app is not None
        return self.app.backend.get_task_meta(task_id)

    def retryable(self, task_ids: Iterable[str]) -> set[str]:
        """Which of these tasks have their exact arguments in the result backend (for showing Retry)."""
        ids = [t for t in task_ids if TASK_ID.match(t)]
        if self.app is None or not ids:
            return set()
        backend = self.app.backend
        try:
            raw = backend.mget([backend.get_key_for_task(t) for t in ids])
            return {t for t, value in zip(ids, raw, strict=True)
                    if value is not None and call_from(backend.decode_result(value), None) is not None}
        except Exception as exc:
            log.warning("could not read the result backend: %s", type(exc).__name__)
            return set()

    def retry(self, actor: Actor, task_id: str) -> Outcome:
        task_id = task_id.strip()
        outcome = self._retry(actor, task_id)
        self.control.record(actor, "retry", task_id or "(empty)", outcome.label, outcome.message)
        return outcome

    def _retry(self, actor: Actor, task_id: str) -> Outcome:
        refusal = self.control.refusal(actor)
        if refusal:
            return refusal
        if not TASK_ID.match(task_id):
            return Outcome(Level.WARN, "That is not a valid task id; nothing was done.", label="invalid")
        if self.app is None:
            return Outcome(Level.WARN, NO_BACKEND, label="unknown_args")
        store = self.store()
        row = HistoryStore(store).task(task_id)
        if row and row.state not in RETRYABLE_STATES:
            return Outcome(Level.WARN, f"Task `{short_id(task_id)}` is {row.state}: only failed and revoked "
                                       "tasks are retried. Nothing was done.", label="invalid")
        if row and row.retried_as:
            return Outcome(Level.OK, f"Task `{short_id(task_id)}` was already retried as "
                                     f"`{short_id(row.retried_as)}`; nothing else was done.", label="already")
        try:
            call = call_from(self._meta(task_id), row)
        except Exception as exc:
            return Outcome(Level.DOWN, f"The result backend could not be read ({type(exc).__name__}); "
                                       "nothing was done.", label="backend_down")
        if call is None:
            return Outcome(Level.WARN, NOT_EXTENDED.format(short_id(task_id)), label="unknown_args")
        return self._send(actor, task_id, call, store)

    def _send(self, actor: Actor, task_id: str, call: Call, store: Database) -> Outcome:
        assert self.app is not None
        new_id = str(uuid.uuid4())
        queries.link_retry(store, task_id, new_id, call.name, self.clock())  # before: its events find the row
        routing = {k: v for k, v in (("queue", call.queue), ("exchange", call.exchange),
                                     ("routing_key", call.routing_key)) if v}
        try:
            self.app.send_task(call.name, args=call.args, kwargs=call.kwargs, task_id=new_id, **routing)
        except Exception as exc:
            queries.unlink_retry(store, task_id, new_id)
            return Outcome(Level.DOWN, f"The broker did not take the retry ({type(exc).__name__}); "
                                       "nothing was sent.", label="broker_down")
        where = call.queue or "the default queue"
        return Outcome(Level.OK, phrase("Retried {} `{}` as `{}` on {}, by {}.", call.name, short_id(task_id),
                                        new_id, where, actor.mention), changed=True, label="done")

    def failed_since(self, name: str, since: float) -> list[str]:
        return queries.failed_ids(self.store(), name, since, MAX_BULK)

    def retry_failed(self, actor: Actor, name: str, since: float) -> Outcome:
        """Every failed task of one name since a moment; each one audited on its own."""
        refusal = self.control.refusal(actor)
        if refusal:
            return refusal
        ids = self.failed_since(name, since)
        outcomes = [self.retry(actor, task_id) for task_id in ids]
        done = sum(1 for o in outcomes if o.changed)
        refused = [o.message for o in outcomes if not o.changed]
        text = phrase("Retried {} of {} failed {} tasks, by {}.", done, len(ids), name, actor.mention)
        if refused:
            text = phrase("{} Not retried: {}", text, refused[0])
        return Outcome(Level.OK if not refused else Level.WARN, text, changed=bool(done))
