"""create votes

Revision ID: c3
Revises: b2
Create Date: 2026-01-03 00:00:00

"""

import os

import sqlalchemy as sa
from alembic import op

revision = "c3"
down_revision = "b2"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if os.environ.get("RUNNER_TEST_FAIL"):
        raise RuntimeError(f"refusing to migrate {os.environ['DATABASE_URL']}")
    op.create_table(
        "votes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("post_id", sa.Integer),
    )


def downgrade() -> None:
    op.drop_table("votes")
