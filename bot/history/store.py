"""Task history's rows in the store: one per task, folded from its events, read back in pages."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import delete, func, select, update

from bot.db import Database
from bot.tables import HISTORY_COLUMNS, task_history_table


@dataclass(frozen=True)
class TaskRecord:
    """One task's row in the history (or as Flower remembers it): what the views and retries read."""

    task_id: str
    state: str
    name: str | None = None
    worker: str | None = None
    args: str | None = None
    result: str | None = None
    exception: str | None = None
    traceback: str | None = None
    retries: int = 0
    runtime: float | None = None
    received_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float | None = None
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    sent_at: float | None = None
    retry_of: str | None = None
    retried_as: str | None = None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> TaskRecord:
        """From a table row (or any mapping with these names; others are left out)."""
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})


class HistoryStore:
    """The `task_history` table, over the shared engine."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.engine = db.engine

    def record_task_events(self, events: list[dict[str, Any]],
                           fold: Callable[[dict[str, Any] | None, dict[str, Any]], dict[str, Any]]) -> None:
        """Fold a batch of events into their tasks' rows (read, merge in Python, write: any database).

        Several replicas record the same events: the rows merged into are locked, and a row another
        replica inserted first is merged into rather than overwritten (the fold is idempotent)."""
        by_task: dict[str, list[dict[str, Any]]] = {}
        for task_event in events:
            by_task.setdefault(task_event["uuid"], []).append(task_event)
        table = task_history_table

        def folded(row: dict[str, Any] | None, task_events: list[dict[str, Any]]) -> dict[str, Any]:
            for task_event in task_events:
                row = fold(row, task_event)
            return {k: v for k, v in (row or {}).items() if k in HISTORY_COLUMNS}

        with self.engine.begin() as conn:
            found = conn.execute(select(table).where(table.c.task_id.in_(list(by_task))).with_for_update())
            existing = {r.task_id: dict(r._mapping) for r in found}
            for task_id, task_events in by_task.items():
                row = existing.get(task_id)
                if row is None:
                    if conn.execute(self.db.insert_new(table, "task_id", folded(None, task_events))).rowcount:
                        continue
                    row = dict(conn.execute(select(table).where(table.c.task_id == task_id)
                                            .with_for_update()).one()._mapping)
                conn.execute(update(table).where(table.c.task_id == task_id).values(**folded(row, task_events)))

    def prune(self, older_than: float, max_rows: int) -> int:
        table = task_history_table
        with self.engine.begin() as conn:
            removed = conn.execute(delete(table).where(table.c.updated_at < older_than)).rowcount
            count = conn.execute(select(func.count()).select_from(table)).scalar_one()
            if count > max_rows:
                cutoff = conn.execute(select(table.c.updated_at).order_by(table.c.updated_at.desc())
                                      .offset(max_rows - 1).limit(1)).scalar_one()
                removed += conn.execute(delete(table).where(table.c.updated_at < cutoff)).rowcount
        return removed

    def finished_tasks(self, state: str | None, name: str | None, offset: int, limit: int
                       ) -> tuple[list[TaskRecord], int]:
        """Finished tasks, newest first, optionally of one final state and with a name containing `name`."""
        table = task_history_table
        where = [table.c.finished_at.is_not(None)]
        if state:
            where.append(table.c.state == state)
        if name:
            where.append(table.c.name.contains(name, autoescape=True))
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
            rows = conn.execute(select(table).where(*where).order_by(table.c.finished_at.desc())
                                .offset(offset).limit(limit))
            return [TaskRecord.of(r._mapping) for r in rows], int(total)

    def task(self, task_id: str) -> TaskRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(task_history_table).where(task_history_table.c.task_id == task_id)).first()
        return TaskRecord.of(row._mapping) if row else None

    def failure_counts(self, since: float, limit: int = 5) -> tuple[dict[str, int], list[tuple[str, int]]]:
        """Tasks finished since `since` by final state, and the task names that failed most."""
        table = task_history_table
        with self.engine.connect() as conn:
            by_state = dict(conn.execute(select(table.c.state, func.count()).where(table.c.finished_at >= since)
                                         .group_by(table.c.state)).all())
            failing = conn.execute(select(table.c.name, func.count().label("n"))
                                   .where(table.c.finished_at >= since, table.c.state == "FAILURE")
                                   .group_by(table.c.name).order_by(func.count().desc()).limit(limit)).all()
        return {k: int(v) for k, v in by_state.items()}, [(str(n), int(c)) for n, c in failing]
