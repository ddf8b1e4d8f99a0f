"""name things

Revision ID: 2c3d4e5f6a7b
Revises: 1b2c3d4e5f6a
Create Date: 2024-05-02 10:00:00

"""

import not_installed_pkg_h4  # noqa: F401
import sqlalchemy as sa
from alembic import op

revision = "2c3d4e5f6a7b"
down_revision = "1b2c3d4e5f6a"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("things", sa.Column("name", sa.String(50)))


def downgrade() -> None:
    op.drop_column("things", "name")
