"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

"""

import os
import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}

# revision identifiers, used by Alembic.
revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    """Upgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    ${upgrades if upgrades else "pass"}
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")


def downgrade() -> None:
    """Downgrade schema."""
    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))
    ${downgrades if downgrades else "pass"}
    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:
        raise RuntimeError("MIGRATIONS_PROJECT_FAIL requested")
