"""Task control's records in the store: the audit of every attempt, and which tasks were terminated
by whom (so a second click can say "already terminated by @x at 14:02")."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Row, insert, select, update

from bot.db import Database
from bot.tables import audit_table, terminations_table


@dataclass(frozen=True)
class AuditEntry:
    at: float
    user_id: str
    action: str
    target: str
    outcome: str
    detail: str = ""


@dataclass(frozen=True)
class Termination:
    task_id: str
    task_name: str
    worker: str
    user_id: str
    signal: str
    at: float
    worker_pid: int | None = None


def _termination(row: Row) -> Termination:
    return Termination(row.task_id, row.task_name, row.worker, row.user_id, row.signal, row.at, row.worker_pid)


class AuditLog:
    """The audit and the terminations, over the shared engine."""

    def __init__(self, db: Database) -> None:
        self.engine = db.engine

    def record(self, entry: AuditEntry) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(audit_table).values(
                at=entry.at, user_id=entry.user_id, action=entry.action, target=entry.target[:255],
                outcome=entry.outcome, detail=entry.detail))

    def latest(self, limit: int = 20) -> list[AuditEntry]:
        query = select(audit_table).order_by(audit_table.c.at.desc(), audit_table.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [AuditEntry(r.at, r.user_id, r.action, r.target, r.outcome, r.detail)
                    for r in conn.execute(query)]

    def termination(self, task_id: str) -> Termination | None:
        query = select(terminations_table).where(terminations_table.c.task_id == task_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _termination(row) if row else None

    def save_termination(self, termination: Termination) -> None:
        values = {"task_name": termination.task_name[:255], "worker": termination.worker[:255],
                  "user_id": termination.user_id, "signal": termination.signal, "at": termination.at,
                  "worker_pid": termination.worker_pid}
        with self.engine.begin() as conn:
            changed = conn.execute(update(terminations_table)
                                   .where(terminations_table.c.task_id == termination.task_id)
                                   .values(**values)).rowcount
            if not changed:
                conn.execute(insert(terminations_table).values(task_id=termination.task_id, **values))
