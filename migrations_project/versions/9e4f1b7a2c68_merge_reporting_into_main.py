"""merge reporting into main

Revision ID: 9e4f1b7a2c68
Revises: e0d7f4a19b53, 1d6b9f0c4e27
Create Date: 2024-03-18 13:30:06.215437

"""

import os
import time
from collections.abc import Sequence

# revision identifiers, used by Alembic.
revision: str = "9e4f1b7a2c68"
down_revision: str | Sequence[str] | None = ("e0d7f4a19b53", "1d6b9f0c4e27")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")


def downgrade() -> None:
    """Downgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")
