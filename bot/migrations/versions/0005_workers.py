"""Worker control (issue 15): which queue an admin paused on which worker, and when.

Revision ID: workers
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "workers"
down_revision = "charts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queue_pauses",
        sa.Column("queue", sa.String(255), primary_key=True),
        sa.Column("worker", sa.String(255), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("queue_pauses")
