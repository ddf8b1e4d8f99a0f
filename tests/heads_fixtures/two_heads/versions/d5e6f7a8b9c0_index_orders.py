"""index orders

Revision ID: d5e6f7a8b9c0
Revises: "c3d4e5f6a7b8"
Create Date: 2024-05-01 10:00:00

"""

revision = "d5e6f7a8b9c0"
down_revision = "c3d4e5f6a7b8"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
