"""drop users.name

Revision ID: d4
Revises: c3
Create Date: 2026-01-04 00:00:00

"""

import sqlalchemy as sa
from alembic import op

revision = "d4"
down_revision = "c3"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # On SQLite, batch mode recreates the table, which needs reflection: no offline SQL.
    with op.batch_alter_table("users") as batch:
        batch.drop_column("name")


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("name", sa.String(50)))
