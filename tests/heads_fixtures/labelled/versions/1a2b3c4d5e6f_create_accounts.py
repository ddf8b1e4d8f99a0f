"""create accounts

Revision ID: 1a2b3c4d5e6f
Revises: None
Create Date: 2024-05-01 10:00:00

"""

revision = "1a2b3c4d5e6f"
down_revision = None
branch_labels = ("accounts",)
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
