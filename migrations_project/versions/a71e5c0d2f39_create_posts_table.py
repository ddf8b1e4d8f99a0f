"""create posts table

Revision ID: a71e5c0d2f39
Revises: 3f8c1a2b9d04
Create Date: 2024-03-04 09:40:02.551870

"""

import os
import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "a71e5c0d2f39"
down_revision: str | Sequence[str] | None = "3f8c1a2b9d04"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    op.create_table(
        "posts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_posts")),
    )
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")


def downgrade() -> None:
    """Downgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    op.drop_table("posts")
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")
