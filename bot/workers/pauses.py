"""Paused queues: the store's records reconciled with what the workers consume now. Pure.

Celery does not remember a cancelled consumer: a restarted worker consumes its queues again. So a
record counts only while its worker does not consume the queue; "of N" counts the paused workers and
those consuming it now ("paused on 2 of 3 workers by @ana at 14:02").
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.markup import mention, phrase
from bot.status import assess
from bot.status.assess import Finding
from bot.status.snapshot import Level, Pause, Snapshot, WorkerInfo


@dataclass(frozen=True)
class QueuePause:
    queue: str
    workers: tuple[str, ...]  # paused there now
    of: int  # paused plus consuming
    user_id: str  # who paused it last
    at: float  # when, last
    since: float  # the oldest pause still in force


def in_force(pause: Pause, workers: dict[str, WorkerInfo]) -> bool:
    """A record holds unless its worker answered and consumes the queue again (e.g. after a restart)."""
    worker = workers.get(pause.worker)
    return worker is None or worker.queues is None or pause.queue not in worker.queues


def queue_pauses(pauses: tuple[Pause, ...], workers: tuple[WorkerInfo, ...]) -> dict[str, QueuePause]:
    answering = {w.name: w for w in workers if w.answered}
    held: dict[str, list[Pause]] = {}
    for pause in pauses:
        if in_force(pause, answering):
            held.setdefault(pause.queue, []).append(pause)
    found = {}
    for queue, records in held.items():
        consuming = sum(1 for w in answering.values() if w.queues and queue in w.queues)
        last = max(records, key=lambda p: p.at)
        found[queue] = QueuePause(queue, tuple(sorted(p.worker for p in records)), len(records) + consuming,
                                  last.user_id, last.at, min(p.at for p in records))
    return found


def pause_text(pause: QueuePause) -> str:
    noun = "worker" if pause.of == 1 else "workers"
    return phrase("paused on {} of {} {} by {} at {}", len(pause.workers), pause.of, noun, mention(pause.user_id),
                  assess.time_of_day(pause.at))


def overdue(snapshot: Snapshot, now: float, remind_seconds: float) -> list[Finding]:
    """Queues paused longer than OPSBOT_PAUSE_REMIND: findings for the alert engine, which posts and
    reminds them like any other. The wording holds no running time, so it does not change every poll."""
    if not snapshot.broker.up:
        return []
    found = []
    for pause in queue_pauses(snapshot.pauses, snapshot.celery.workers).values():
        if now - pause.since >= remind_seconds:
            # Plain text (incidents are stored as data): the user id, not a live mention.
            found.append(Finding(f"queue:{pause.queue}:paused", Level.WARN,
                                 f"Queue {pause.queue} is paused on {len(pause.workers)} of {pause.of} workers "
                                 f"since {assess.time_of_day(pause.since)} (by {pause.user_id}); "
                                 f"resume it with /tasks resume {pause.queue}"))
    return found
