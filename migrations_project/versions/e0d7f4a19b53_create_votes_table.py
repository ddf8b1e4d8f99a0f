"""create votes table

Revision ID: e0d7f4a19b53
Revises: c94a0b3e6d12
Create Date: 2024-03-11 16:48:53.072918

"""

import os
import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "e0d7f4a19b53"
down_revision: str | Sequence[str] | None = "c94a0b3e6d12"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    op.create_table(
        "votes",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("post_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["post_id"], ["posts.id"], name=op.f("fk_votes_post_id_posts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_votes_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "post_id", name=op.f("pk_votes")),
    )
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")


def downgrade() -> None:
    """Downgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    op.drop_table("votes")
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")
