"""The machine's PostgreSQL, for tests and benchmarks that share a store between replicas."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

import sqlalchemy

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_PORT = 5432
LEADER_FRESH = 3.0  # seconds: a leader row older than this is stale (its replica no longer leads)


@contextlib.contextmanager
def fresh_database(prefix: str = "opsbot_test") -> Iterator[str]:
    """A new database on the machine's PostgreSQL (dropped afterwards); yields the bot's OPSBOT_DB_URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        try:
            yield f"postgresql://postgres@127.0.0.1:{PG_PORT}/{name}"
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        admin.dispose()


class LeaderRow:
    """Reads the `leader` table's row: (replica, seen_at), or None before the schema or the row exists."""

    def __init__(self, db_url: str) -> None:
        self.engine = sqlalchemy.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))

    def read(self) -> tuple[str, float] | None:
        try:
            with self.engine.connect() as conn:
                row = conn.exec_driver_sql("SELECT replica, seen_at FROM leader WHERE id = 1").first()
        except sqlalchemy.exc.ProgrammingError:
            return None  # no schema yet
        return (str(row[0]), float(row[1])) if row else None

    def current(self) -> str | None:
        """The replica named by a fresh row (its leader said so within LEADER_FRESH seconds)."""
        row = self.read()
        return row[0] if row and time.time() - row[1] < LEADER_FRESH else None

    def close(self) -> None:
        self.engine.dispose()
