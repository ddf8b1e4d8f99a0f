"""create plans

Revision ID: 4d5e6f7a8b9c
Revises: "3c4d5e6f7a8b"
Create Date: 2024-05-01 10:00:00

"""

revision = "4d5e6f7a8b9c"
down_revision = "3c4d5e6f7a8b"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
