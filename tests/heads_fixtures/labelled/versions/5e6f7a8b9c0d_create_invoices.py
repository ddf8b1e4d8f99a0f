"""create invoices

Revision ID: 5e6f7a8b9c0d
Revises: "3c4d5e6f7a8b"
Create Date: 2024-05-01 10:00:00

"""

revision = "5e6f7a8b9c0d"
down_revision = "3c4d5e6f7a8b"
branch_labels = ("invoices",)
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
