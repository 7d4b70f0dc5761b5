"""Task-level alerts and retry (issue 13): where each task was sent and when, and retry links.

Revision ID: health
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "health"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = (("queue", 255), ("exchange", 255), ("routing_key", 255), ("retry_of", 255), ("retried_as", 255))


def upgrade() -> None:
    with op.batch_alter_table("task_history") as batch:
        for name, length in COLUMNS:
            batch.add_column(sa.Column(name, sa.String(length), nullable=True))
        batch.add_column(sa.Column("sent_at", sa.Float, nullable=True))
    # The waiting age of a queue looks for its newest still-pending tasks.
    op.create_index("ix_task_history_queue_state_sent", "task_history", ["queue", "state", "sent_at"])


def downgrade() -> None:
    op.drop_index("ix_task_history_queue_state_sent", "task_history")
    with op.batch_alter_table("task_history") as batch:
        batch.drop_column("sent_at")
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
