"""What the task-level rules read from the task history in the store (SQLAlchemy Core)."""

from __future__ import annotations

from sqlalchemy import delete, func, insert, select, update

from bot.db import Database
from bot.health.rules import Failed, Outcomes
from bot.tables import task_history_table

T = task_history_table
MAX_FAILED = 5_000  # failed runs read per poll; more than this in one window is one big incident anyway


def outcomes(db: Database, now: float, longest_window: float, window: float) -> Outcomes:
    """Failed runs within the longest rule window, and finished runs per name within the default one."""
    with db.engine.connect() as conn:
        failed = conn.execute(
            select(T.c.task_id, T.c.name, T.c.finished_at, T.c.worker, T.c.exception)
            .where(T.c.state == "FAILURE", T.c.finished_at >= now - longest_window)
            .order_by(T.c.finished_at.desc()).limit(MAX_FAILED)).all()
        runs = conn.execute(select(T.c.name, func.count())
                            .where(T.c.state.in_(("SUCCESS", "FAILURE")), T.c.finished_at >= now - window)
                            .group_by(T.c.name)).all()
    return Outcomes(tuple(Failed(r.task_id, r.name or "?", r.finished_at, r.worker or "", r.exception or "")
                          for r in failed),
                    {str(name): int(count) for name, count in runs})


def nth_newest_pending(db: Database, queue: str, nth: int) -> tuple[float | None, bool]:
    """When the n-th newest task still waiting in `queue` was sent, and whether we know that many.

    A queue is first in, first out: when it holds n ready messages, they are the n newest tasks sent
    to it that no worker has received yet, so the n-th newest is its head. Tasks purged or lost stay
    "pending" in the history, but they are older than the n newest and never counted.
    """
    where = (T.c.queue == queue, T.c.state == "PENDING", T.c.sent_at.is_not(None))
    with db.engine.connect() as conn:
        head = conn.execute(select(T.c.sent_at).where(*where).order_by(T.c.sent_at.desc())
                            .offset(nth - 1).limit(1)).scalar()
        if head is not None:
            return float(head), True
        oldest = conn.execute(select(func.min(T.c.sent_at)).where(*where)).scalar()
    return (float(oldest) if oldest is not None else None), False


def sent_at(db: Database, task_id: str) -> float | None:
    with db.engine.connect() as conn:
        value = conn.execute(select(T.c.sent_at).where(T.c.task_id == task_id)).scalar()
    return float(value) if value is not None else None


def link_retry(db: Database, original: str, new_id: str, name: str, now: float) -> None:
    """Before the retry is sent: its row (so its events fold into it) and the link both ways."""
    with db.engine.begin() as conn:
        conn.execute(insert(T).values(task_id=new_id, name=name[:255], state="PENDING", retries=0,
                                      retry_of=original, updated_at=now))
        conn.execute(update(T).where(T.c.task_id == original).values(retried_as=new_id))


def failed_ids(db: Database, name: str, since: float, limit: int = 500) -> list[str]:
    with db.engine.connect() as conn:
        # A task already retried is not counted again: its retry stands for it.
        rows = conn.execute(select(T.c.task_id).where(T.c.name == name, T.c.state == "FAILURE",
                                                      T.c.finished_at >= since, T.c.retried_as.is_(None))
                            .order_by(T.c.finished_at.desc()).limit(limit))
        return [r.task_id for r in rows]


def unlink_retry(db: Database, original: str, new_id: str) -> None:
    """The retry could not be sent: no link, no row for a task that does not exist."""
    with db.engine.begin() as conn:
        conn.execute(delete(T).where(T.c.task_id == new_id))
        conn.execute(update(T).where(T.c.task_id == original, T.c.retried_as == new_id).values(retried_as=None))
