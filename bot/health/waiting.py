"""How long the oldest waiting task of each watched queue has waited, measured without touching a message.

Looking at a queue's head must never harm it. A get-and-requeue "peek" on RabbitMQ is a delivery: it
sets the redelivered flag and counts against a quorum queue's delivery limit. So:

- **Redis**: kombu pushes with LPUSH and takes with BRPOP, so a list's head (the next message to be
  delivered) is its right end; `LINDEX key -1` reads it without taking it. The message carries the
  task's id (its `headers.id`), and the task-sent event recorded for that id says when it was sent:
  exact, for that very message. Every priority list's head is read; the oldest counts.
- **RabbitMQ** (and Redis when the head's event is unknown): from task-sent events
  (`task_send_sent_event = True` in the producers). A queue holding n ready messages holds the n
  newest tasks sent to it that no worker has received yet, so the n-th newest of those is the head.

Celery messages carry no send time of their own, so without task-sent events the age is unknown
and nothing is shown.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace

from bot.config import Settings
from bot.db import Database
from bot.health import queries
from bot.probes.broker import redis_client, redis_queue_keys
from bot.status.snapshot import QueueInfo, Snapshot

log = logging.getLogger(__name__)
HEAD_TIMEOUT = 0.3


def head_ids(settings: Settings, names: list[str]) -> dict[str, list[str]]:
    """Per queue, the task ids at the head of each of its non-empty Redis lists (read, never taken)."""
    # Called after the probes, inside Slack's 3 s: a broker that stalls now only loses us the age.
    timeout = min(HEAD_TIMEOUT, settings.probe_timeout)
    client = redis_client(settings.broker_url, timeout)
    try:
        pipe = client.pipeline(transaction=False)
        for name in names:
            for key in redis_queue_keys(name):
                pipe.lindex(key, -1)
        heads = pipe.execute()
    finally:
        client.close()
    per_queue = len(heads) // max(1, len(names))
    found: dict[str, list[str]] = {}
    for i, name in enumerate(names):
        ids = [task_id_of(raw) for raw in heads[i * per_queue:(i + 1) * per_queue] if raw is not None]
        found[name] = [task_id for task_id in ids if task_id]
    return found


def task_id_of(raw: bytes | str) -> str | None:
    """The task id in a kombu Redis message (JSON with headers and properties), or None."""
    try:
        message = json.loads(raw)
        return str(message["headers"]["id"])
    except (ValueError, KeyError, TypeError):
        return None


class WaitingTime:
    """Adds the oldest waiting task to each queue of a snapshot."""

    def __init__(self, settings: Settings, store: Callable[[], Database]) -> None:
        self.settings = settings
        self.store = store

    def enrich(self, snapshot: Snapshot) -> Snapshot:
        waiting = [q for q in snapshot.broker.queues if q.ready]
        if not snapshot.broker.up or not waiting:
            return snapshot
        try:
            heads = head_ids(self.settings, [q.name for q in waiting]) if self.settings.broker_kind == "redis" else {}
            measured = {q.name: self._oldest(q, heads.get(q.name, []), snapshot.taken_at) for q in waiting}
        except Exception as exc:  # a measure we cannot take is left out, never a failed status
            log.debug("waiting time not measured: %s", type(exc).__name__)
            return snapshot
        queues = tuple(measured.get(q.name, q) for q in snapshot.broker.queues)
        return replace(snapshot, broker=replace(snapshot.broker, queues=queues))

    def _oldest(self, queue: QueueInfo, heads: list[str], now: float) -> QueueInfo:
        store = self.store()
        sent = [queries.sent_at(store, task_id) for task_id in heads]
        if heads and all(at is not None for at in sent):
            since, exact = min(at for at in sent if at is not None), True
        else:
            since, exact = queries.nth_newest_pending(store, queue.name, queue.ready)
        if since is None:
            return queue
        return replace(queue, oldest_sent_at=since, oldest_age=max(0.0, now - since), oldest_exact=exact)
