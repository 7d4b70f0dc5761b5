"""The bot's store, with SQLAlchemy Core: SQLite by default, PostgreSQL for shared deployments.

Holds what must outlive a restart: the audit of every task-control attempt, and which tasks were
terminated by whom (so a second click can say "already terminated by @x at 14:02").
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError

log = logging.getLogger(__name__)
T = TypeVar("T")

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
    Column("stack", String(30), nullable=False, server_default=""),  # several stacks: whose (issue 14)
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


alert_state_table = Table(
    "alert_state", metadata,
    Column("id", Integer, primary_key=True),
    Column("data", Text, nullable=False),
    Column("version", Integer, nullable=False, server_default="0"),  # compare-and-set between replicas
)

incident_messages_table = Table(
    "incident_messages", metadata,
    Column("incident_id", String(255), primary_key=True),
    Column("channel", String(64), nullable=False),
    Column("ts", String(32), nullable=False),
)

outbox_table = Table(
    "outbox", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", String(255), nullable=False, index=True),
    Column("kind", String(16), nullable=False),  # post, refresh, thread
    Column("payload", Text, nullable=False),  # JSON: text and blocks
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_try_at", Float, nullable=False, default=0.0),
    Column("claimed_by", String(128), nullable=True),  # the replica sending it, until claimed_until
    Column("claimed_until", Float, nullable=True),
)

leader_table = Table(
    "leader", metadata,
    Column("id", Integer, primary_key=True),
    Column("replica", String(128), nullable=False),
    Column("seen_at", Float, nullable=False),
)


task_history_table = Table(
    "task_history", metadata,
    Column("task_id", String(255), primary_key=True),
    Column("name", String(255), nullable=True, index=True),
    Column("state", String(16), nullable=False, index=True),
    Column("worker", String(255), nullable=True),
    Column("args", Text, nullable=True),
    Column("result", Text, nullable=True),
    Column("exception", Text, nullable=True),
    Column("traceback", Text, nullable=True),
    Column("retries", Integer, nullable=False, default=0),
    Column("runtime", Float, nullable=True),
    Column("received_at", Float, nullable=True),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True, index=True),
    Column("updated_at", Float, nullable=False, index=True),
    # issue 13 (migration 0003_health): routing from the task-sent event, and retry links
    Column("queue", String(255), nullable=True),
    Column("exchange", String(255), nullable=True),
    Column("routing_key", String(255), nullable=True),
    Column("sent_at", Float, nullable=True),
    Column("retry_of", String(255), nullable=True),
    Column("retried_as", String(255), nullable=True),
    Column("stack", String(30), nullable=False, server_default="", index=True),  # several stacks (issue 14)
)
HISTORY_COLUMNS = [c.name for c in task_history_table.columns]


@dataclass(frozen=True)
class OutboxItem:
    id: int
    incident_id: str
    kind: str
    payload: dict[str, Any]
    attempts: int
    due: bool  # False: waiting out a retry delay


@dataclass(frozen=True)
class AuditEntry:
    at: float
    user_id: str
    action: str
    target: str
    outcome: str
    detail: str = ""
    stack: str = ""  # several stacks (bot.stacks): the stack acted on


@dataclass(frozen=True)
class Termination:
    task_id: str
    task_name: str
    worker: str
    user_id: str
    signal: str
    at: float
    worker_pid: int | None = None


# Every PostgreSQL connection is bounded: a database host that dies or drops off the network costs a
# few seconds, never a thread forever. The client side (libpq) times out connecting, probes an idle
# socket with keepalives and gives up on unacknowledged data; the server side gets the same keepalives
# (so it drops the session of a dead replica, and its locks) and never lets one statement, or a
# transaction left open by a replica that vanished, hold rows for long.
CONNECT_TIMEOUT = 5  # seconds
STATEMENT_TIMEOUT = 10  # seconds; migrations take their own
IDLE_IN_TRANSACTION_TIMEOUT = 15  # seconds
TCP_USER_TIMEOUT = 15  # seconds of unacknowledged data before the socket is dropped
KEEPALIVES = {"keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}
POOL_TIMEOUT = 5  # seconds to wait for a free connection from the pool


def postgres_connect_args() -> dict[str, Any]:
    server = {"statement_timeout": STATEMENT_TIMEOUT * 1000,
              "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_TIMEOUT * 1000,
              "tcp_keepalives_idle": KEEPALIVES["keepalives_idle"],
              "tcp_keepalives_interval": KEEPALIVES["keepalives_interval"],
              "tcp_keepalives_count": KEEPALIVES["keepalives_count"],
              "tcp_user_timeout": TCP_USER_TIMEOUT * 1000}
    return {"connect_timeout": CONNECT_TIMEOUT, "keepalives": 1, **KEEPALIVES,
            "tcp_user_timeout": TCP_USER_TIMEOUT * 1000,
            "options": " ".join(f"-c {name}={value}" for name, value in server.items())}


def make_engine(db_url: str) -> Engine:
    url = make_url(db_url)
    if url.drivername.startswith("sqlite") and url.database and url.database != ":memory:":
        create_private_file(Path(url.database).expanduser())
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True, pool_timeout=POOL_TIMEOUT,
                             connect_args=postgres_connect_args())
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        # WAL: readers (Slack answers) never wait for the history writer, nor it for them.
        event.listen(engine, "connect", lambda dbapi_conn, _: dbapi_conn.execute("PRAGMA journal_mode=WAL"))
    return engine


def create_private_file(path: Path) -> None:
    """The SQLite file holds the audit and task history: readable by its owner only, whatever the umask.
    SQLite gives its -wal and -shm files the same permissions."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _termination(row: Any) -> Termination:
    return Termination(row.task_id, row.task_name, row.worker, row.user_id, row.signal, row.at, row.worker_pid)


MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK = 0x6F7073626F74  # "opsbot": replicas starting together migrate one at a time


class StateConflict(Exception):
    """Another replica changed the alert state first; our step is void."""


def migrate(engine: Engine) -> None:
    """Create or upgrade the schema with Alembic, under a lock so that replicas never race."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL statement_timeout = '120s'"))  # a migration may take a while
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


class Store:
    def __init__(self, db_url: str) -> None:
        self.engine = make_engine(db_url)
        migrate(self.engine)

    @property
    def shared(self) -> bool:
        """A database several replicas can share (PostgreSQL), as opposed to a local SQLite file."""
        return self.engine.dialect.name == "postgresql"

    def record(self, entry: AuditEntry) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(audit_table).values(
                at=entry.at, user_id=entry.user_id, action=entry.action, target=entry.target[:255],
                outcome=entry.outcome, detail=entry.detail, stack=entry.stack))

    def latest_audit(self, limit: int = 20, stack: str = "") -> list[AuditEntry]:
        query = select(audit_table).order_by(audit_table.c.at.desc(), audit_table.c.id.desc()).limit(limit)
        if stack:
            query = query.where(audit_table.c.stack == stack)
        with self.engine.connect() as conn:
            return [AuditEntry(r.at, r.user_id, r.action, r.target, r.outcome, r.detail, r.stack)
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

    # --- alerting ---

    def load_alert_state(self) -> tuple[dict[str, Any], int]:
        """The engine's state and its version (0: none saved yet)."""
        query = select(alert_state_table.c.data, alert_state_table.c.version).where(alert_state_table.c.id == 1)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return (json.loads(row.data), int(row.version)) if row else ({}, 0)

    def save_alert_state(self, data: dict[str, Any], version: int,
                         outbox: list[tuple[str, str, dict[str, Any]]]) -> None:
        """The engine's new state and the Slack posts it calls for, in one transaction: a crash in
        between can neither lose a post nor queue one for a state that was never saved. The update is
        conditional on the version we read, so two replicas stepping at once cannot both post."""
        state_json = json.dumps(data)
        table = alert_state_table
        with self.engine.begin() as conn:
            if version == 0:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(table).values(id=1, data=state_json, version=1))
                except IntegrityError:
                    raise StateConflict() from None
            elif not conn.execute(update(table).where(table.c.id == 1, table.c.version == version)
                                  .values(data=state_json, version=version + 1)).rowcount:
                raise StateConflict()
            for incident_id, kind, payload in outbox:
                conn.execute(insert(outbox_table).values(incident_id=incident_id, kind=kind,
                                                         payload=json.dumps(payload), attempts=0, next_try_at=0.0))

    def enqueue_outbox(self, incident_id: str, kind: str, payload: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(outbox_table).values(incident_id=incident_id, kind=kind,
                                                     payload=json.dumps(payload), attempts=0, next_try_at=0.0))

    def pending_outbox(self, now: float) -> list[OutboxItem]:
        """Every item, due or not, in order: the sender keeps each incident's posts in sequence."""
        query = select(outbox_table).order_by(outbox_table.c.id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).fetchall()
        return [OutboxItem(r.id, r.incident_id, r.kind, json.loads(r.payload), r.attempts, r.next_try_at <= now)
                for r in rows]

    def claim_outbox(self, item_id: int, replica: str, now: float, lease: float) -> bool:
        """Take an item for sending, atomically: whoever's update matches first sends it."""
        table = outbox_table
        free = or_(table.c.claimed_until.is_(None), table.c.claimed_until < now, table.c.claimed_by == replica)
        with self.engine.begin() as conn:
            return bool(conn.execute(update(table).where(table.c.id == item_id, free)
                                     .values(claimed_by=replica, claimed_until=now + lease)).rowcount)

    def release_claims(self, replica: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(outbox_table).where(outbox_table.c.claimed_by == replica)
                         .values(claimed_by=None, claimed_until=None))

    def outbox_done(self, item_id: int, message: tuple[str, str, str] | None = None) -> None:
        """Drop a sent item; for a first post, remember the message in the same transaction."""
        with self.engine.begin() as conn:
            if message is not None:
                incident_id, channel, ts = message
                conn.execute(insert(incident_messages_table).values(incident_id=incident_id, channel=channel, ts=ts))
            conn.execute(delete(outbox_table).where(outbox_table.c.id == item_id))

    def outbox_retry(self, item_id: int, attempts: int, next_try_at: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(outbox_table).where(outbox_table.c.id == item_id)
                         .values(attempts=attempts, next_try_at=next_try_at, claimed_by=None, claimed_until=None))

    # --- replicas ---

    def note_leader(self, replica: str, now: float, conn: Connection | None = None) -> None:
        """Say who leads; on the leader's own connection when given (the caller commits)."""
        if conn is None:
            with self.engine.begin() as own:
                self.note_leader(replica, now, own)
            return
        if not conn.execute(update(leader_table).where(leader_table.c.id == 1)
                            .values(replica=replica, seen_at=now)).rowcount:
            conn.execute(insert(leader_table).values(id=1, replica=replica, seen_at=now))

    def leader(self) -> tuple[str, float] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(leader_table).where(leader_table.c.id == 1)).first()
        return (row.replica, row.seen_at) if row else None

    def incident_message(self, incident_id: str) -> tuple[str, str] | None:
        query = select(incident_messages_table).where(incident_messages_table.c.incident_id == incident_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return (row.channel, row.ts) if row else None

    # --- task history ---

    def record_task_events(self, events: list[dict[str, Any]],
                           fold: Callable[[dict[str, Any] | None, dict[str, Any]], dict[str, Any]],
                           stack: str = "") -> None:
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
            return {k: v for k, v in {**(row or {}), "stack": stack}.items() if k in HISTORY_COLUMNS}

        with self.engine.begin() as conn:
            found = conn.execute(select(table).where(table.c.task_id.in_(list(by_task))).with_for_update())
            existing = {r.task_id: dict(r._mapping) for r in found}
            for task_id, task_events in by_task.items():
                row = existing.get(task_id)
                if row is None:
                    if conn.execute(self._insert_new(folded(None, task_events))).rowcount:
                        continue
                    row = dict(conn.execute(select(table).where(table.c.task_id == task_id)
                                            .with_for_update()).one()._mapping)
                conn.execute(update(table).where(table.c.task_id == task_id).values(**folded(row, task_events)))

    def _insert_new(self, values: dict[str, Any]) -> Any:
        """An insert that does nothing when the row exists already."""
        dialect_insert = postgresql_insert if self.shared else sqlite_insert
        return dialect_insert(task_history_table).values(**values).on_conflict_do_nothing(index_elements=["task_id"])

    def prune_history(self, older_than: float, max_rows: int) -> int:
        table = task_history_table
        with self.engine.begin() as conn:
            removed = conn.execute(delete(table).where(table.c.updated_at < older_than)).rowcount
            count = conn.execute(select(func.count()).select_from(table)).scalar_one()
            if count > max_rows:
                cutoff = conn.execute(select(table.c.updated_at).order_by(table.c.updated_at.desc())
                                      .offset(max_rows - 1).limit(1)).scalar_one()
                removed += conn.execute(delete(table).where(table.c.updated_at < cutoff)).rowcount
        return removed

    def finished_tasks(self, state: str | None, name: str | None, offset: int, limit: int, stack: str = ""
                       ) -> tuple[list[dict[str, Any]], int]:
        """Finished tasks, newest first, optionally of one final state and with a name containing `name`."""
        table = task_history_table
        where = [table.c.finished_at.is_not(None)]
        if stack:  # several stacks: one stack's
            where.append(table.c.stack == stack)
        if state:
            where.append(table.c.state == state)
        if name:
            where.append(table.c.name.contains(name, autoescape=True))
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
            rows = conn.execute(select(table).where(*where).order_by(table.c.finished_at.desc())
                                .offset(offset).limit(limit))
            return [dict(r._mapping) for r in rows], int(total)

    def task(self, task_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(task_history_table).where(task_history_table.c.task_id == task_id)).first()
        return dict(row._mapping) if row else None

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

    def close(self) -> None:
        self.engine.dispose()


class BoundedRead:
    """Store reads that may not hold up an answer: each waits at most `seconds`, then the caller goes
    on without it. A read stuck on a dead database is not started again until it ends, so a store
    that is down costs no more than one thread."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._stuck: tuple[threading.Thread, float] | None = None  # the oldest read still running

    def __call__(self, read: Callable[[], T]) -> T | None:
        """The read's value, or None when the store did not answer in time (or failed)."""
        with self._lock:
            if self._stuck and self._stuck[0].is_alive() and time.monotonic() - self._stuck[1] > self.seconds:
                return None
            box: dict[str, Any] = {}
            thread = threading.Thread(target=self._run, args=(read, box), name="store-read", daemon=True)
            if not (self._stuck and self._stuck[0].is_alive()):
                self._stuck = (thread, time.monotonic())
            thread.start()
        thread.join(self.seconds)
        if thread.is_alive():
            log.warning("the store did not answer within %.1f s", self.seconds)
            return None
        return box.get("value")

    @staticmethod
    def _run(read: Callable[[], T], box: dict[str, Any]) -> None:
        try:
            box["value"] = read()
        except Exception as exc:
            log.warning("store read failed: %s", type(exc).__name__)
