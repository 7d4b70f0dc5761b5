"""The machine's PostgreSQL, for tests and benchmarks that share a store between replicas."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import sqlalchemy

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_PORT = 5432


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
