"""add published and created_at to posts

Revision ID: 5b2d9e7f1c86
Revises: a71e5c0d2f39
Create Date: 2024-03-05 14:03:27.904311

"""

import os
import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "5b2d9e7f1c86"
down_revision: str | Sequence[str] | None = "a71e5c0d2f39"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def posts_before() -> sa.Table:
    """Describe posts as the previous revision left it, for SQLite's batch copy offline."""
    return sa.Table(
        "posts",
        sa.MetaData(),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_posts"),
    )


def posts_after() -> sa.Table:
    """Describe posts as this revision leaves it, for SQLite's batch copy offline."""
    table = posts_before()
    table.append_column(
        sa.Column("published", sa.Boolean(), server_default=sa.true(), nullable=False)
    )
    table.append_column(
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        )
    )
    return table


def upgrade() -> None:
    """Upgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    # SQLite cannot ADD COLUMN with a CURRENT_TIMESTAMP default, so batch copies the table there.
    with op.batch_alter_table("posts", copy_from=posts_before()) as batch_op:
        batch_op.add_column(
            sa.Column("published", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch_op.add_column(
            sa.Column(
                "created_at",
                sa.DateTime(timezone=True),
                server_default=sa.text("CURRENT_TIMESTAMP"),
                nullable=False,
            )
        )
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")


def downgrade() -> None:
    """Downgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    with op.batch_alter_table("posts", copy_from=posts_after()) as batch_op:
        batch_op.drop_column("created_at")
        batch_op.drop_column("published")
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")
