"""Several stacks in one bot (issue 14): which stack a task of the history, or an audited action, belongs to.

Rows written before are the single stack's: "" (the stack the environment describes, which has no name).

Revision ID: stacks
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "stacks"
down_revision = "workers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task_history") as batch:
        batch.add_column(sa.Column("stack", sa.String(30), nullable=False, server_default=""))
        batch.create_index("ix_task_history_stack", ["stack"])
    with op.batch_alter_table("audit") as batch:
        batch.add_column(sa.Column("stack", sa.String(30), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("audit") as batch:
        batch.drop_column("stack")
    with op.batch_alter_table("task_history") as batch:
        batch.drop_index("ix_task_history_stack")
        batch.drop_column("stack")
