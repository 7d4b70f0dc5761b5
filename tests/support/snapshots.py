"""One way for tests to build a Snapshot by hand: a healthy stack (broker up with an idle "celery" queue,
worker w1@h running, Flower answering) unless a part is given.

A test module binds its own clock once: `snapshot = functools.partial(snapshots.snapshot, taken_at=NOW)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot.status.snapshot import (
    BrokerStatus,
    CeleryState,
    CeleryStatus,
    FlowerStatus,
    QueueInfo,
    Snapshot,
    TaskInfo,
    WorkerInfo,
)

BROKER = "127.0.0.1:5672"
FLOWER = "http://127.0.0.1:5555"


def queue(name: str = "celery", ready: int = 0, consumers: int | None = 1) -> QueueInfo:
    return QueueInfo(name, ready, consumers, 0)


def running(*workers: str) -> CeleryStatus:
    """Celery up with these prefork workers (concurrency 2), idle."""
    return CeleryStatus(CeleryState.RUNNING, tuple(WorkerInfo(name, "prefork", 2) for name in workers))


def busy(workers: int, tasks_each: int, started: Callable[[int, int], float], args: str) -> CeleryStatus:
    """Workers w0@host.. each running `tasks_each` exports (task t of worker n started at `started(n, t)`),
    one more task reserved each: enough rows for every list to page."""
    return CeleryStatus(CeleryState.RUNNING, tuple(
        WorkerInfo(f"w{n}@host", "prefork", tasks_each, tuple(
            TaskInfo(f"{n:08d}-0000-0000-0000-{t:012d}", "app.tasks.export", f"w{n}@host", started(n, t), args)
            for t in range(tasks_each)), reserved=1)
        for n in range(workers)))


def snapshot(broker: BrokerStatus | None = None, celery: CeleryStatus | None = None,
             flower: FlowerStatus | None = None, *, taken_at: float, **more: Any) -> Snapshot:
    """The healthy stack with the given parts instead; `more` sets the other fields (elapsed, beat...)."""
    return Snapshot(
        taken_at=taken_at,
        broker=broker or BrokerStatus("rabbitmq", BROKER, queues=(queue(),)),
        celery=celery or running("w1@h"),
        flower=flower or FlowerStatus(FLOWER),
        **more,
    )
