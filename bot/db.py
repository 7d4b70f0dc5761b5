"""The store's engine, with SQLAlchemy Core: SQLite by default, PostgreSQL for shared deployments.

One `Database` per process: the engine (bounded PostgreSQL connections, or a private SQLite file in
WAL mode), migrated at open. Each feature reads and writes its own tables through a small repository
over it: `bot.control.audit`, `bot.alerting.state`, `bot.history.store`, `bot.leader`,
`bot.workers.store`, `bot.charts.series`. The tables are in `bot.tables`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Table, create_engine, event, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.sql.dml import Insert

log = logging.getLogger(__name__)
T = TypeVar("T")

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

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# PostgreSQL advisory lock ids: "opsbot" in ASCII, and the next one for leadership (bot.leader).
MIGRATION_LOCK = 0x6F7073626F74  # replicas starting together migrate one at a time
LEADER_LOCK = MIGRATION_LOCK + 1


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


class Database:
    """The engine every repository shares, opened and migrated once per process."""

    def __init__(self, db_url: str) -> None:
        self.engine = make_engine(db_url)
        migrate(self.engine)

    @property
    def shared(self) -> bool:
        """A database several replicas can share (PostgreSQL), as opposed to a local SQLite file."""
        return self.engine.dialect.name == "postgresql"

    def insert_new(self, table: Table, key: str, values: dict[str, Any]) -> Insert:
        """An insert that does nothing when a row with the same `key` exists already."""
        dialect_insert = postgresql_insert if self.shared else sqlite_insert
        return dialect_insert(table).values(**values).on_conflict_do_nothing(index_elements=[key])

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
