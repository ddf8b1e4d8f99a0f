"""create posts

Revision ID: b2
Revises: a1
Create Date: 2026-01-02 00:00:00

"""

import os
import subprocess
import time
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "b2"
down_revision = "a1"
branch_labels = None
depends_on = None


def report_pids() -> None:
    """Write this process's pid (and a grandchild's, when asked) where the test looks."""
    pids = [os.getpid()]
    if os.environ.get("RUNNER_TEST_GRANDCHILD"):
        pids.append(subprocess.Popen(["sleep", "60"]).pid)
    target = Path(os.environ["RUNNER_TEST_PID_FILE"])
    partial = target.with_suffix(".partial")
    partial.write_text(" ".join(map(str, pids)))
    partial.rename(target)


def upgrade() -> None:
    if os.environ.get("RUNNER_TEST_PID_FILE"):
        report_pids()
    if os.environ.get("RUNNER_TEST_SLEEP"):
        time.sleep(float(os.environ["RUNNER_TEST_SLEEP"]))
    op.create_table(
        "posts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("title", sa.String(100)),
    )


def downgrade() -> None:
    op.drop_table("posts")
