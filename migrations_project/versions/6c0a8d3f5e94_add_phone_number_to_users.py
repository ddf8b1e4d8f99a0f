"""add phone_number to users

Revision ID: 6c0a8d3f5e94
Revises: 9e4f1b7a2c68
Create Date: 2024-04-02 08:44:51.396580

"""

import os
import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "6c0a8d3f5e94"
down_revision: str | Sequence[str] | None = "9e4f1b7a2c68"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    op.add_column("users", sa.Column("phone_number", sa.String(length=50), nullable=True))
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")


def downgrade() -> None:
    """Downgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    # Plain DROP COLUMN: SQLite has had it since 3.35, and the column carries no constraint.
    op.drop_column("users", "phone_number")
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")
