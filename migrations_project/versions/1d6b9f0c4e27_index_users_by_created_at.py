"""index users by created_at

The activity report joins votes, so `upgrade reporting@head` must bring the
votes table along: hence depends_on.

Revision ID: 1d6b9f0c4e27
Revises: 7a3c2e8b5f01
Create Date: 2024-03-13 09:57:18.840276

"""

import os
import time
from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "1d6b9f0c4e27"
down_revision: str | Sequence[str] | None = "7a3c2e8b5f01"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = "e0d7f4a19b53"


def upgrade() -> None:
    """Upgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    op.create_index(op.f("ix_users_created_at"), "users", ["created_at"], unique=False)
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")


def downgrade() -> None:
    """Downgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    op.drop_index(op.f("ix_users_created_at"), table_name="users")
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")
