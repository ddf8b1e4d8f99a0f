"""add email

Revision ID: 2b3c4d5e6f7a
Revises: "1a2b3c4d5e6f"
Create Date: 2024-05-01 10:00:00

"""

revision = "2b3c4d5e6f7a"
down_revision = "1a2b3c4d5e6f"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
