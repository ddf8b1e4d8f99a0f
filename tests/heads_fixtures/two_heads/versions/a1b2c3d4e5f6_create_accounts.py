"""create accounts

Revision ID: a1b2c3d4e5f6
Revises: None
Create Date: 2024-05-01 10:00:00

"""

revision = "a1b2c3d4e5f6"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
