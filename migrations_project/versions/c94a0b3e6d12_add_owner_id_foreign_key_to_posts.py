"""add owner_id foreign key to posts

Revision ID: c94a0b3e6d12
Revises: 5b2d9e7f1c86
Create Date: 2024-03-06 10:21:09.337645

"""

import os
import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "c94a0b3e6d12"
down_revision: str | Sequence[str] | None = "5b2d9e7f1c86"
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
        sa.Column("published", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_posts"),
    )


def posts_after() -> sa.Table:
    """Describe posts as this revision leaves it, for SQLite's batch copy offline."""
    table = posts_before()
    table.append_column(sa.Column("owner_id", sa.Integer(), nullable=False))
    table.append_constraint(
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name="fk_posts_owner_id_users", ondelete="CASCADE"
        )
    )
    return table


def upgrade() -> None:
    """Upgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    with op.batch_alter_table("posts", copy_from=posts_before()) as batch_op:
        batch_op.add_column(sa.Column("owner_id", sa.Integer(), nullable=False))
        batch_op.create_foreign_key(
            op.f("fk_posts_owner_id_users"),
            "users",
            ["owner_id"],
            ["id"],
            ondelete="CASCADE",
        )
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")


def downgrade() -> None:
    """Downgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    with op.batch_alter_table("posts", copy_from=posts_after()) as batch_op:
        batch_op.drop_constraint(op.f("fk_posts_owner_id_users"), type_="foreignkey")
        batch_op.drop_column("owner_id")
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")
