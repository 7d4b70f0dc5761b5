"""The store's tables, in one place: every feature's repository and the migrations share these definitions.

The schema itself is made by the Alembic migrations (`bot/migrations`); these are what the queries name.
Two features keep their own tables next to their repositories: `bot.workers.store` (pauses) and
`bot.charts.series` (time series), on the same `metadata`.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text

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
)
HISTORY_COLUMNS = [c.name for c in task_history_table.columns]
