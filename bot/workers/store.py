"""The pauses admins made, in the bot's store: who paused which queue on which worker, and when.

Celery itself forgets a cancelled consumer when the worker restarts; the status reconciles these
records with what the workers consume now (`bot.workers.pauses`).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Column, Float, String, Table, delete, insert, select

from bot.db import Database
from bot.status.snapshot import Pause
from bot.tables import metadata

pauses_table = Table(
    "queue_pauses", metadata,
    Column("queue", String(255), primary_key=True),
    Column("worker", String(255), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("at", Float, nullable=False),
)


class PauseStore:
    """The `queue_pauses` table, over the shared engine."""

    def __init__(self, db: Database) -> None:
        self.engine = db.engine

    def save(self, queue: str, workers: Iterable[str], user_id: str, at: float) -> None:
        """Record a pause on each worker; a second pause of the same pair replaces the first."""
        table = pauses_table
        with self.engine.begin() as conn:
            for worker in workers:
                conn.execute(delete(table).where(table.c.queue == queue, table.c.worker == worker))
                conn.execute(insert(table).values(queue=queue, worker=worker, user_id=user_id[:64], at=at))

    def clear(self, queue: str, workers: Iterable[str]) -> None:
        table = pauses_table
        with self.engine.begin() as conn:
            conn.execute(delete(table).where(table.c.queue == queue, table.c.worker.in_(list(workers))))

    def load(self) -> tuple[Pause, ...]:
        query = select(pauses_table).order_by(pauses_table.c.queue, pauses_table.c.worker)
        with self.engine.connect() as conn:
            return tuple(Pause(r.queue, r.worker, r.user_id, r.at) for r in conn.execute(query))
