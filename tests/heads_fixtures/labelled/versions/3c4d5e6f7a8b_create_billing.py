"""create billing

Revision ID: 3c4d5e6f7a8b
Revises: None
Create Date: 2024-05-01 10:00:00

"""

revision = "3c4d5e6f7a8b"
down_revision = None
branch_labels = ("billing",)
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
