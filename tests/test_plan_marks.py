"""Plan marks: steps outside a transaction and a revision's own limits, read statically and shown."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from django.test import Client
from django.urls import reverse
from sqlalchemy.pool import NullPool

from dashboard import scripts
from dashboard.config import load_config
from dashboard.databases.indexes import invalid_indexes
from dashboard.models import Action
from dashboard.runner import review
from dashboard.scripts import parse_revision_file
from dashboard.scripts.parse import read_marks
from dashboard.services import actions, status
from dashboard.services.actions import pinning
from tests.actions_support import (
    ALL_REVISIONS,
    BRANCH_POINT,
    HEAD,
    SAMPLE_INI,
    insert_heads,
    make_people,
    touch_sqlite,
    write_config,
)

pytestmark = pytest.mark.django_db

INDEXED = "7a3c2e8b5f01"  # the sample's "index posts by created_at"
# The sample's revision, rewritten to build its index without blocking writes.
CONCURRENT = '''"""index posts by created_at

Revision ID: 7a3c2e8b5f01
Revises: c94a0b3e6d12
Create Date: 2024-03-12 11:05:40.629153

"""

from alembic import op

revision = "7a3c2e8b5f01"
down_revision = "c94a0b3e6d12"
branch_labels = ("reporting",)
depends_on = None
dashboard_limits = {"lock_timeout": "10min", "statement_timeout": "2h"}


def upgrade() -> None:
    """Build the index with CREATE INDEX CONCURRENTLY, which a docstring does not run."""
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_posts_created_at", "posts", ["created_at"], postgresql_concurrently=True
        )


def downgrade() -> None:
    op.drop_index("ix_posts_created_at", table_name="posts", postgresql_concurrently=True)
'''


def line_of(text: str, snippet: str) -> int:
    """Return the 1-based line of text where snippet first appears."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if snippet in line)


BLOCK_LINE = line_of(CONCURRENT, "autocommit_block()")
CREATE_LINE = line_of(CONCURRENT, "op.create_index(")
DROP_LINE = line_of(CONCURRENT, "op.drop_index(")
UPGRADE_WHY = [
    f"autocommit_block at line {BLOCK_LINE}",
    f"CREATE INDEX CONCURRENTLY (postgresql_concurrently=True) at line {CREATE_LINE}",
]
DOWNGRADE_WHY = [f"DROP INDEX CONCURRENTLY (postgresql_concurrently=True) at line {DROP_LINE}"]
LIMITS = {"lock_timeout": "10min", "statement_timeout": "2h"}


def parsed(text: str, name: str = "abc_rev.py") -> Any:
    return parse_revision_file(f"/versions/{name}", text.encode())


def concurrent_sample(folder: Path, text: str = CONCURRENT) -> Path:
    """Copy the sample project with the index revision rewritten; return the copy's alembic.ini."""
    copy = folder / "blog"
    shutil.copytree(SAMPLE_INI.parent, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (copy / "versions" / f"{INDEXED}_index_posts_by_created_at.py").write_text(text)
    return copy / "alembic.ini"


@pytest.fixture
def concurrent(tmp_path: Path, settings: Any, sqlite_url: str) -> str:
    """Configure staging (no approvals) on an empty SQLite file, for the rewritten sample."""
    ini = concurrent_sample(tmp_path)
    settings.DASHBOARD_CONFIG = str(
        write_config(
            tmp_path / "dashboard.toml",
            {"staging": {"url": touch_sqlite(sqlite_url), "approvals_required": 0}},
            alembic_ini=ini,
        )
    )
    return sqlite_url


def test_steps_outside_a_transaction_are_read_per_direction_without_running_the_file() -> None:
    revision = parsed(CONCURRENT)
    assert list(revision.upgrade_outside_transaction) == UPGRADE_WHY
    assert list(revision.downgrade_outside_transaction) == DOWNGRADE_WHY
    assert revision.outside_transaction("downgrade") == revision.downgrade_outside_transaction
    assert dict(revision.limits) == LIMITS and revision.problems == ()

    # What a helper the function calls runs counts too; raw SQL is read; a false flag is not.
    helper = CONCURRENT.replace(
        '    op.drop_index("ix_posts_created_at", table_name="posts", postgresql_concurrently=True)',
        "    _drop()\n\n\ndef _drop() -> None:\n"
        '    op.execute("DROP INDEX CONCURRENTLY ix_posts_created_at")\n'
        '    op.create_index("ix_other", "posts", ["id"], postgresql_concurrently=False)',
    )
    line = line_of(helper, "op.execute(")
    assert parsed(helper).downgrade_outside_transaction == (
        f"DROP INDEX CONCURRENTLY in SQL at line {line}",
    )

    # Every revision of the sample runs in Alembic's transaction and sets no limits.
    for path in sorted((SAMPLE_INI.parent / "versions").glob("*.py")):
        plain = parse_revision_file(str(path), path.read_bytes())
        assert not isinstance(plain, str)
        assert plain.upgrade_outside_transaction == plain.downgrade_outside_transaction == ()
        assert plain.limits == ()


HEADER = 'from alembic import op\nimport sqlalchemy as sa\nrevision = "a1"\ndown_revision = None\n'
COMMITTED = "what ran before it stays applied"


@pytest.mark.parametrize(
    ("body", "upgrade"),
    [
        # The pre-autocommit_block idiom: DDL before the COMMIT persists, so a retry reruns it.
        (
            "def upgrade():\n    op.execute('COMMIT')\n"
            "    op.execute('CREATE INDEX CONCURRENTLY_X ON posts (id)')\n"
            "    op.execute('ALTER TABLE posts ADD COLUMN z int')\n",
            [f"COMMIT in op.execute at line 6: {COMMITTED}"],
        ),
        (
            "def upgrade():\n    op.execute('commit;')\n",
            [f"COMMIT in op.execute at line 6: {COMMITTED}"],
        ),
        (
            "def upgrade():\n    op.execute(' End ')\n",
            [f"END in op.execute at line 6: {COMMITTED}"],
        ),
        (
            "def upgrade():\n    op.execute(sa.text('COMMIT'))\n",
            [f"COMMIT in op.execute at line 6: {COMMITTED}"],
        ),
        (
            "def upgrade():\n    _finish()\n\n\ndef _finish():\n"
            "    op.execute('ALTER TABLE posts ADD z int; COMMIT; ALTER TABLE posts ADD y int')\n",
            [f"COMMIT in op.execute at line 10: {COMMITTED}"],
        ),
        # An alias of autocommit_block, and SQL that concatenation or a module constant hides.
        (
            "def upgrade():\n    block = op.get_context().autocommit_block\n"
            "    with block():\n        op.execute(sql)\n"
            "sql = 'CREATE INDEX ' 'CONCURRENTLY ix ON posts (id)'\n",
            ["autocommit_block at line 6", "CREATE INDEX CONCURRENTLY in SQL at line 8"],
        ),
        (
            "def upgrade():\n    op.execute('CREATE INDEX ' + 'CONCURRENTLY ix ON posts (id)')\n",
            ["CREATE INDEX CONCURRENTLY in SQL at line 6"],
        ),
        (
            "def upgrade():\n    op.execute('CREATE INDEX %s ix ON posts (id)' % 'concurrently')\n",
            ["CONCURRENTLY in SQL at line 6"],
        ),
        (
            "SQL = 'CREATE INDEX CONCURRENTLY ix ON posts (id)'\ndef upgrade():\n    op.execute(SQL)\n",
            ["CREATE INDEX CONCURRENTLY in SQL at line 7"],
        ),
        # Keyword arguments passed as a dict: read when literal, flagged as unknown when not.
        (
            "def upgrade():\n"
            "    op.create_index('ix', 'posts', ['id'], **{'postgresql_concurrently': True})\n",
            ["CREATE INDEX CONCURRENTLY (postgresql_concurrently=True) at line 6"],
        ),
        (
            "def upgrade():\n    op.drop_index('ix', table_name='posts', **OPTIONS)\n",
            ["DROP INDEX maybe CONCURRENTLY (keyword arguments not read) at line 6"],
        ),
        # Not flagged: a word that only starts with CONCURRENTLY, END closing a DO block,
        # a literal dict without the flag, and a COMMIT that is not executed.
        ("def upgrade():\n    op.execute('CREATE INDEX CONCURRENTLY_X ON posts (id)')\n", []),
        ("def upgrade():\n    op.execute('DO $$ BEGIN PERFORM 1; END; $$')\n", []),
        ("def upgrade():\n    op.create_index('ix', 'posts', ['id'], **{'unique': True})\n", []),
        ("def upgrade():\n    print('COMMIT')\n    op.execute('SELECT 1')\n", []),
    ],
)
def test_steps_that_end_or_leave_the_transaction_are_flagged_however_written(
    body: str, upgrade: list[str]
) -> None:
    marks = read_marks("/versions/a1.py", (HEADER + body).encode())
    assert not isinstance(marks, str)
    assert list(marks.upgrade_outside_transaction) == upgrade
    assert marks.downgrade_outside_transaction == ()


@pytest.mark.parametrize(
    ("marker", "problem"),
    [
        ("dashboard_limits = LIMITS", "dashboard_limits is not a literal: LIMITS"),
        (
            'dashboard_limits = {"lock_timout": "10min"}',
            "dashboard_limits has an unknown key 'lock_timout': it takes lock_timeout and"
            " statement_timeout",
        ),
        (
            'dashboard_limits = {"lock_timeout": 600}',
            'dashboard_limits["lock_timeout"] must be a duration such as "10min" or "2h"'
            " (ms, s, min or h), not 600",
        ),
        (
            'dashboard_limits = {"lock_timeout": "10 minutes"}',
            'dashboard_limits["lock_timeout"] must be a duration such as "10min" or "2h"'
            " (ms, s, min or h), not '10 minutes'",
        ),
        (
            'dashboard_limits = {"statement_timeout": "0s"}',
            'dashboard_limits["statement_timeout"] must be at least 1ms and at most 168h',
        ),
        (
            'if True:\n    dashboard_limits = {"lock_timeout": "1min"}',
            "dashboard_limits is assigned inside a block (line 16); its value depends on running"
            " the file",
        ),
    ],
)
def test_a_limit_marker_the_dashboard_cannot_read_is_a_problem_on_its_revision(
    tmp_path: Path, marker: str, problem: str
) -> None:
    text = CONCURRENT.replace(
        'dashboard_limits = {"lock_timeout": "10min", "statement_timeout": "2h"}', marker
    )
    assert problem in parsed(text).problems
    # On the graph the revision is flagged, and nothing is planned on a guess of its limits.
    ini = concurrent_sample(tmp_path, text)
    graph = scripts.load_history(alembic_ini=ini).graph
    assert problem in graph.revisions[INDEXED].problems
    assert any(problem in p for p in graph.blocking_problems)


def test_the_marker_is_read_after_the_functions_too() -> None:
    moved = CONCURRENT.replace(
        'dashboard_limits = {"lock_timeout": "10min", "statement_timeout": "2h"}\n', ""
    )
    moved += '\n\ndashboard_limits = {"lock_timeout": "90s"}\n'
    assert parsed(moved).limits == (("lock_timeout", "90s"),)


def test_a_requested_action_carries_its_plans_marks_by_direction(
    concurrent: str, settings: Any
) -> None:
    people = make_people()
    upgrade = actions.action_request(
        user=people["olga"], environment="staging", direction="upgrade", target="heads"
    )
    assert upgrade.plan == ALL_REVISIONS
    assert upgrade.plan_marks == {INDEXED: {"non_transactional": UPGRADE_WHY, "limits": LIMITS}}
    # The hash covers the marks (the run takes its limits from them): edited, it no longer holds.
    assert upgrade.plan_hash == pinning.action_plan_hash(upgrade)
    upgrade.plan_marks = {INDEXED: {"non_transactional": [], "limits": {"lock_timeout": "1h"}}}
    assert pinning.action_plan_hash(upgrade) != upgrade.plan_hash
    upgrade.plan_marks = {}
    assert pinning.action_plan_hash(upgrade) == pinning.plan_hash(
        environment="staging",
        direction="upgrade",
        target="heads",
        from_heads=[],
        plan=ALL_REVISIONS,
        sql_sha256="",
        fingerprint=upgrade.fingerprint,
        target_heads=[HEAD],
    )
    Action.objects.filter(pk=upgrade.pk).update(status=Action.Status.CANCELLED)

    insert_heads(concurrent, [HEAD])
    downgrade = actions.action_request(
        user=people["olga"], environment="staging", direction="downgrade", target=BRANCH_POINT
    )
    assert INDEXED in downgrade.plan
    assert downgrade.plan_marks == {INDEXED: {"non_transactional": DOWNGRADE_WHY, "limits": LIMITS}}


def test_the_request_form_and_the_action_page_show_the_marks(concurrent: str) -> None:
    people = make_people()
    client = Client()
    assert client.login(username="olga", password="correct-horse-9")
    create = (
        f"runs outside a transaction: CREATE INDEX CONCURRENTLY (postgresql_concurrently=True)"
        f" at line {CREATE_LINE} — if it fails it can leave an invalid index"
    )
    block = f"runs outside a transaction: autocommit_block at line {BLOCK_LINE} — Alembic commits"
    drop = f"runs outside a transaction: {DOWNGRADE_WHY[0]} — if it fails it can leave the index"
    limit = "raises lock_timeout to 10min for this run"  # staging keeps the default 5s
    request_url = reverse("action-request", args=["staging"])

    def shown(url: str) -> str:
        return client.get(url).content.decode()

    form = shown(request_url)
    assert "The heads are not known yet" in form
    assert create in form and block in form and limit in form
    assert "sets statement_timeout to 2h for this run" in form
    assert drop not in form
    rollback = shown(f"{request_url}?direction=downgrade")
    assert drop in rollback and create not in rollback

    action = actions.action_request(
        user=people["olga"], environment="staging", direction="upgrade", target="heads"
    )
    page = shown(reverse("action-detail", args=[action.pk]))
    assert create in page and block in page and limit in page
    assert "left behind" not in page

    Action.objects.filter(pk=action.pk).update(
        status=Action.Status.FAILED,
        invalid_indexes=[
            {
                "table": "posts",
                "index": "ix_posts_created_at",
                "definition": "CREATE INDEX ix_posts_created_at ON public.posts USING btree"
                " (created_at)",
            }
        ],
    )
    page = shown(reverse("action-detail", args=[action.pk]))
    assert (
        "left behind: invalid index ix_posts_created_at on posts — drop it and build it again"
        in page
    )
    assert "CREATE INDEX ix_posts_created_at ON public.posts USING btree (created_at)" in page

    # Once staging is read at the head, an upgrade from there runs no marked revision.
    insert_heads(concurrent, [HEAD])
    status.status_refresh(environments=["staging"])
    assert 'id="plan-marks"' not in shown(request_url)
    rollback = shown(f"{request_url}?direction=downgrade")
    assert "Of the revisions a rollback from here may run" in rollback and drop in rollback


def test_an_action_without_marks_shows_no_marks_section(settings: Any, tmp_path: Path) -> None:
    url = touch_sqlite(f"sqlite:///{tmp_path / 'plain.db'}")
    settings.DASHBOARD_CONFIG = str(
        write_config(tmp_path / "dashboard.toml", {"staging": {"url": url}})
    )
    people = make_people()
    action = actions.action_request(
        user=people["olga"], environment="staging", direction="upgrade", target="heads"
    )
    assert action.plan_marks == {}
    client = Client()
    assert client.login(username="olga", password="correct-horse-9")
    page = client.get(reverse("action-detail", args=[action.pk])).content.decode()
    assert 'id="plan-marks"' not in page


@pytest.mark.postgres
def test_invalid_indexes_lists_what_a_failed_concurrent_build_left(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT)"))
            conn.execute(sa.text("INSERT INTO posts VALUES (1, 'same'), (2, 'same')"))
            conn.execute(sa.text("CREATE INDEX ix_posts_id_title ON posts (id, title)"))
            with pytest.raises(sa.exc.IntegrityError):
                conn.execute(
                    sa.text("CREATE UNIQUE INDEX CONCURRENTLY ix_posts_title ON posts (title)")
                )
    finally:
        engine.dispose()

    assert invalid_indexes(postgres_url) == [
        {
            "table": "posts",
            "index": "ix_posts_title",
            "definition": "CREATE UNIQUE INDEX ix_posts_title ON public.posts USING btree (title)",
        }
    ]


def test_invalid_indexes_is_empty_elsewhere_and_never_raises(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert invalid_indexes(touch_sqlite(sqlite_url)) == []
    assert invalid_indexes("not a url") == []
    with caplog.at_level(logging.WARNING, logger="dashboard.databases.indexes"):
        found = invalid_indexes(
            "postgresql://someone:hunter2-secret@127.0.0.1:1/nowhere", timeout=2.0
        )
    assert found == []
    assert "could not list invalid indexes" in caplog.text
    assert "hunter2-secret" not in caplog.text


def test_squawk_sees_which_statements_run_outside_the_transaction(tmp_path: Path) -> None:
    ini = concurrent_sample(tmp_path)
    project = load_config(write_config(tmp_path / "dashboard.toml", {}, alembic_ini=ini)).projects[
        "blog"
    ]
    # From the branch point: the reporting branch's two indexes go onto tables that exist.
    prepared = review.prepare_sql(
        project,
        "postgresql://nobody@127.0.0.1/offline",
        direction="upgrade",
        from_heads=[BRANCH_POINT],
        target="1d6b9f0c4e27",
        target_heads=["1d6b9f0c4e27"],
    )
    assert prepared.sql and not prepared.failed, prepared.note
    lines = prepared.sql.splitlines()
    concurrently = line_of(prepared.sql, "CREATE INDEX CONCURRENTLY ix_posts_created_at")
    plain = line_of(prepared.sql, "CREATE INDEX ix_users_created_at")
    # Alembic wrote COMMIT; before the autocommit block and BEGIN; after it.
    assert lines[concurrently - 3] == "COMMIT;" and lines[concurrently + 1] == "BEGIN;"
    rules = {(item["line"], item["rule"]) for item in prepared.lint}
    assert not [rule for _, rule in rules if rule == "transaction-nesting"], prepared.lint
    assert (concurrently, "ban-concurrent-index-creation-in-transaction") not in rules
    assert (concurrently, "require-concurrent-index-creation") not in rules
    # Outside the transaction a failure is not rolled back: squawk asks for IF NOT EXISTS.
    assert (concurrently, "prefer-robust-stmts") in rules
    assert (plain, "require-concurrent-index-creation") in rules

    # The same CONCURRENTLY inside the transaction (no autocommit_block) is what PostgreSQL refuses.
    inside = review.squawk_lint(
        "BEGIN;\n\nCREATE INDEX CONCURRENTLY ix_posts_created_at ON posts (created_at);\n\nCOMMIT;\n"
    )
    assert (3, "ban-concurrent-index-creation-in-transaction") in {
        (item["line"], item["rule"]) for item in inside
    }


def test_marks_are_read_from_the_approved_bytes_with_alembics_loader_too(
    concurrent: str, settings: Any
) -> None:
    config = Path(settings.DASHBOARD_CONFIG)
    config.write_text(
        config.read_text().replace(
            "[projects.blog]\n",
            f'[projects.blog]\nloader = "alembic"\npython = "{sys.executable}"\n',
        )
    )
    action = actions.action_request(
        user=make_people()["olga"],
        environment="staging",
        direction="upgrade",
        target="heads",
        prepare=True,  # Alembic's loader runs the project's code: the command line's way
    )
    assert action.plan_marks == {INDEXED: {"non_transactional": UPGRADE_WHY, "limits": LIMITS}}
    Action.objects.filter(pk=action.pk).update(status=Action.Status.CANCELLED)

    # Alembic loads a misspelt marker happily; the plan is refused as the static parser's is.
    revision = next(Path(settings.DASHBOARD_CONFIG).parent.glob(f"blog/versions/{INDEXED}_*.py"))
    revision.write_text(CONCURRENT.replace('"lock_timeout"', '"lock_timout"'))
    with pytest.raises(actions.ActionRefused, match="unknown key 'lock_timout'"):
        actions.action_request(
            user=action.requested_by,
            environment="staging",
            direction="upgrade",
            target="heads",
            prepare=True,
        )
