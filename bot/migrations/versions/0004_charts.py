"""Charts: one-minute time series of what opsbot measures (issue 19).

Revision ID: charts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "charts"
down_revision = "health"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "series",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("metric", sa.String(32), primary_key=True),
        sa.Column("at", sa.Integer, primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
    )
    op.create_index("ix_series_at", "series", ["at"])


def downgrade() -> None:
    op.drop_index("ix_series_at", "series")
    op.drop_table("series")
