"""index posts by created_at

Start of the reporting branch: indexes the monthly activity report reads.

Revision ID: 7a3c2e8b5f01
Revises: c94a0b3e6d12
Create Date: 2024-03-12 11:05:40.629153

"""

import os
import time
from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "7a3c2e8b5f01"
down_revision: str | Sequence[str] | None = "c94a0b3e6d12"
branch_labels: str | Sequence[str] | None = ("reporting",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    op.create_index(op.f("ix_posts_created_at"), "posts", ["created_at"], unique=False)
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")


def downgrade() -> None:
    """Downgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    op.drop_index(op.f("ix_posts_created_at"), table_name="posts")
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")
