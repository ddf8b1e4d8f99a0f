"""create users

Revision ID: a1
Revises:
Create Date: 2026-01-01 00:00:00

"""

import hashlib
import os
from pathlib import Path

import sqlalchemy as sa
from alembic import context, op

revision = "a1"
down_revision = None
branch_labels = None
depends_on = None


def probe() -> None:
    """Print what the child received, so tests can check it arrived intact and masked."""
    url = op.get_bind().engine.url
    password = url.password or ""
    cmdline = Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode()
    config_file = context.config.config_file_name
    assert config_file is not None
    mode = os.stat(config_file).st_mode & 0o777
    print(f"probe url={url.render_as_string(hide_password=False)}")
    print(f"probe dsn=user={url.username} password={password} host={url.host}")
    print(f"probe password-sha256={hashlib.sha256(password.encode()).hexdigest()}")
    print(f"probe password-on-command-line={bool(password) and password in cmdline}")
    print(f"probe config={config_file} mode={mode:o}")


def upgrade() -> None:
    if os.environ.get("RUNNER_TEST_PROBE"):
        probe()
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50)),
    )


def downgrade() -> None:
    op.drop_table("users")
