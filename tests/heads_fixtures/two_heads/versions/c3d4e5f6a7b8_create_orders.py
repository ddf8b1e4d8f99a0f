"""create orders

Revision ID: c3d4e5f6a7b8
Revises: "a1b2c3d4e5f6"
Create Date: 2024-05-01 10:00:00

"""

revision = "c3d4e5f6a7b8"
down_revision = "a1b2c3d4e5f6"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
