"""The bot's store, with SQLAlchemy Core: SQLite by default, PostgreSQL for shared deployments.

Holds what must outlive a restart: the audit of every task-control attempt, and which tasks were
terminated by whom (so a second click can say "already terminated by @x at 14:02").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url

metadata = MetaData()

audit_table = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False, index=True),
    Column("user_id", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("target", String(255), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("detail", Text, nullable=False, default=""),
)

terminations_table = Table(
    "terminations", metadata,
    Column("task_id", String(255), primary_key=True),
    Column("task_name", String(255), nullable=False),
    Column("worker", String(255), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("signal", String(16), nullable=False),
    Column("at", Float, nullable=False),
    Column("worker_pid", Integer, nullable=True),
)


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


def make_engine(db_url: str) -> Engine:
    url = make_url(db_url)
    if url.drivername.startswith("sqlite") and url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return create_engine(url, pool_pre_ping=True)


def _termination(row: Any) -> Termination:
    return Termination(row.task_id, row.task_name, row.worker, row.user_id, row.signal, row.at, row.worker_pid)


class Store:
    def __init__(self, db_url: str) -> None:
        self.engine = make_engine(db_url)
        metadata.create_all(self.engine)

    def record(self, entry: AuditEntry) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(audit_table).values(
                at=entry.at, user_id=entry.user_id, action=entry.action, target=entry.target[:255],
                outcome=entry.outcome, detail=entry.detail))

    def latest_audit(self, limit: int = 20) -> list[AuditEntry]:
        query = select(audit_table).order_by(audit_table.c.at.desc(), audit_table.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [AuditEntry(r.at, r.user_id, r.action, r.target, r.outcome, r.detail)
                    for r in conn.execute(query)]

    def termination(self, task_id: str) -> Termination | None:
        query = select(terminations_table).where(terminations_table.c.task_id == task_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _termination(row) if row else None

    def terminations(self, task_ids: list[str]) -> dict[str, Termination]:
        if not task_ids:
            return {}
        query = select(terminations_table).where(terminations_table.c.task_id.in_(task_ids))
        with self.engine.connect() as conn:
            return {r.task_id: _termination(r) for r in conn.execute(query)}

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

    def close(self) -> None:
        self.engine.dispose()
