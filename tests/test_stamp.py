"""The stamp action: adopting Alembic on a database it never ran on, through approval and a worker."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from django.core.management import CommandError, call_command
from sqlalchemy.pool import NullPool

from dashboard import audit, runner
from dashboard.config import Project
from dashboard.models import Action, AuditEvent, SchemaCheck, Snapshot
from dashboard.selectors import targets
from dashboard.services import actions, status
from dashboard.services.actions import pinning
from tests.actions_support import (
    HEAD,
    SAMPLE_INI,
    heads_of,
    insert_heads,
    run_worker,
    schema_of,
    touch_sqlite,
    write_config,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("keep_roles")]
BLOG = Project(name="blog", script_location=SAMPLE_INI.parent, alembic_ini=SAMPLE_INI)
POSTS = "a71e5c0d2f39"  # the sample's second revision: users and posts
# Verbs of one action that ran, in the order they happen.
RAN = [
    "action.requested",
    "action.prepared",
    "action.approved",
    "action.queued",
    "action.started",
    "action.succeeded",
]


@pytest.fixture
def config_for(tmp_path: Path, settings: Any) -> Any:
    """Return a function that writes a one-environment config and makes it current."""

    def write(url: str, **values: Any) -> Path:
        # No periodic schema check: only the one queued after the action runs.
        values = {"downgrade_approvals_required": 1, "schema_check_interval": 0, **values}
        path = write_config(tmp_path / "dashboard.toml", {"staging": {"url": url, **values}})
        settings.DASHBOARD_CONFIG = str(path)
        return path

    return write


def _adoptable(url: str, *, version_table: str = "drop") -> str:
    """Give url the sample's tables at POSTS; then drop its version table, or empty it."""
    result = runner.upgrade(BLOG, url, POSTS, time_limit=60)
    assert result.succeeded, result.output_tail
    statement = (
        "DROP TABLE alembic_version" if version_table == "drop" else "DELETE FROM alembic_version"
    )
    _execute(url, statement)
    return url


def _execute(url: str, statement: str) -> None:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def _tables(url: str) -> dict[str, Any]:
    """Return every table but the version table, with its columns and indexes."""
    return {k: v for k, v in schema_of(url)["tables"].items() if k != "alembic_version"}


def _cli(*argv: str) -> str:
    out = StringIO()
    call_command("action", *argv, stdout=out)
    return out.getvalue()


def _request_stamp(target: str = POSTS, user: str = "olga") -> dict[str, Any]:
    out = _cli("request", "--env", "staging", "--stamp", target, "--user", user, "--json")
    return dict(json.loads(out))


def _verbs(action_id: int) -> list[str]:
    return list(
        AuditEvent.objects.filter(action_id=action_id).order_by("id").values_list("verb", flat=True)
    )


def test_a_create_all_database_is_stamped_through_approval_and_is_then_behind(
    people: dict[str, Any], config_for: Any, sqlite_url: str
) -> None:
    config = config_for(_adoptable(sqlite_url))
    before = _tables(sqlite_url)
    assert "posts" in before and "alembic_version" not in schema_of(sqlite_url)["tables"]

    created = _request_stamp(user="root")
    action_id = created["id"]
    # Nothing runs but the version table's rows, and the approver sees that SQL.
    assert created["status"] == "requested"
    assert (created["plan"], created["from_heads"], created["target_heads"]) == ([], [], [POSTS])
    # stamp_approvals_required defaults to the environment's downgrade count.
    assert created["approvals_required"] == 1
    action = Action.objects.get(pk=action_id)
    assert "CREATE TABLE alembic_version" in action.sql
    assert "INSERT INTO alembic_version (version_num) VALUES ('a71e5c0d2f39')" in action.sql
    assert "posts" not in action.sql and "users" not in action.sql
    assert action.plan_hash == pinning.action_plan_hash(action)
    requested = AuditEvent.objects.get(action_id=action_id, verb="action.requested")
    assert requested.payload["version_table_exists"] is False

    with pytest.raises(CommandError, match="you requested action"):
        _cli("approve", str(action_id), "--user", "root")
    _cli("approve", str(action_id), "--user", "alan")
    run_worker(config)

    action.refresh_from_db()
    assert action.status == Action.Status.SUCCEEDED, action.error
    assert action.after_heads == [POSTS]
    assert heads_of(sqlite_url) == (POSTS,)
    assert _tables(sqlite_url) == before  # no DDL ran on the application's tables
    assert "Running stamp_revision" in action.log
    # Like any other environment at an older revision.
    assert Snapshot.objects.filter(environment="staging").first().state == Snapshot.State.BEHIND
    assert _verbs(action_id) == RAN
    # The check queued after the action ran in the worker: the tables are what POSTS made.
    check = SchemaCheck.objects.get(environment="staging", trigger=SchemaCheck.Trigger.ACTION)
    assert (check.state, check.heads) == (SchemaCheck.State.IN_SYNC, [POSTS]), check.reason
    assert audit.verify().broken_at is None


def test_an_empty_version_table_on_postgresql_gets_its_row_and_nothing_else(
    people: dict[str, Any], config_for: Any, postgres_url: str
) -> None:
    config = config_for(_adoptable(postgres_url, version_table="empty"))
    before = _tables(postgres_url)
    # The web path: the worker prepares the SQL, then runs the approved stamp.
    action = actions.action_request(
        user=people["olga"], environment="staging", direction="stamp", target="a71e"
    )
    assert action.target_heads == [POSTS]
    run_worker(config)
    action.refresh_from_db()
    # Alembic does not create a table that exists, so the SQL shown does not either.
    assert "CREATE TABLE" not in action.sql
    assert "alembic_version exists and is empty" in action.sql
    assert f"VALUES ('{POSTS}')" in action.sql
    actions.action_approve(user=people["bea"], action_id=action.pk, plan_hash=action.plan_hash)
    run_worker(config)

    action.refresh_from_db()
    assert action.status == Action.Status.SUCCEEDED, action.error
    assert heads_of(postgres_url) == (POSTS,)
    assert _tables(postgres_url) == before
    assert schema_of(postgres_url)["versions"] == [POSTS]
    assert SchemaCheck.objects.filter(
        environment="staging", trigger=SchemaCheck.Trigger.ACTION
    ).exists()


def test_an_initialised_environment_is_not_stamped(
    people: dict[str, Any], config_for: Any, sqlite_url: str
) -> None:
    config_for(sqlite_url)
    insert_heads(sqlite_url, [POSTS])
    with pytest.raises(actions.StampRefused, match=f"staging is at {POSTS}: a stamp is only for"):
        actions.action_request(
            user=people["olga"], environment="staging", direction="stamp", target=HEAD
        )
    with pytest.raises(CommandError, match="version table is missing or empty") as refused:
        _request_stamp(HEAD)
    assert refused.value.returncode == 1
    assert not Action.objects.exists()
    assert schema_of(sqlite_url)["versions"] == [POSTS]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("0123456789ab", "No such revision"),
        ("+1", "is relative"),
        ("base", "nothing to do"),
    ],
)
def test_a_stamp_to_no_known_revision_is_refused(
    people: dict[str, Any], config_for: Any, sqlite_url: str, target: str, message: str
) -> None:
    config_for(touch_sqlite(sqlite_url))
    with pytest.raises(actions.ActionRefused, match=message):
        actions.action_request(
            user=people["olga"], environment="staging", direction="stamp", target=target
        )
    assert not Action.objects.exists()


def test_a_stamp_is_not_queued_behind_another_action(
    people: dict[str, Any], config_for: Any, sqlite_url: str
) -> None:
    config_for(touch_sqlite(sqlite_url))
    first = actions.action_request(
        user=people["olga"], environment="staging", direction="stamp", target=POSTS
    )
    with pytest.raises(actions.WouldBeStale, match=f"queue this request behind #{first.pk}"):
        actions.action_request(
            user=people["otto"], environment="staging", direction="stamp", target=POSTS
        )
    with pytest.raises(actions.StampRefused, match="cannot be queued behind"):
        actions.action_request(
            user=people["otto"],
            environment="staging",
            direction="stamp",
            target=POSTS,
            queue_behind=first.pk,
        )


@pytest.mark.parametrize("change", ["a row", "an empty table"])
def test_a_stamp_whose_environment_got_a_version_table_since_fails_as_stale(
    people: dict[str, Any], config_for: Any, sqlite_url: str, change: str
) -> None:
    config = config_for(_adoptable(sqlite_url))
    action_id = _request_stamp()["id"]
    _cli("approve", str(action_id), "--user", "alan")
    # Someone ran Alembic by hand meanwhile, or created the table.
    insert_heads(sqlite_url, [POSTS] if change == "a row" else [])
    before = schema_of(sqlite_url)
    run_worker(config)

    action = Action.objects.get(pk=action_id)
    assert action.status == Action.Status.FAILED
    assert action.error.startswith("stale plan: staging") and action.error.endswith("nothing ran")
    if change == "an empty table":
        assert "version table alembic_version was created since" in action.error
    assert schema_of(sqlite_url) == before  # nothing was written, not even the version row
    assert "action.started" in _verbs(action_id) and "action.failed" in _verbs(action_id)
    # A failed ending queues a schema check too.
    assert SchemaCheck.objects.filter(
        environment="staging", trigger=SchemaCheck.Trigger.ACTION
    ).exists()


@pytest.mark.parametrize("required", [0, 2])
def test_the_stamp_needs_stamp_approvals_required(
    people: dict[str, Any], config_for: Any, sqlite_url: str, required: int
) -> None:
    # Upgrades need none and downgrades one here: only the stamp's own count applies.
    config_for(touch_sqlite(sqlite_url), approvals_required=0, stamp_approvals_required=required)
    created = _request_stamp()
    assert created["approvals_required"] == required
    if required == 0:
        assert created["status"] == "queued"  # prepared and queued without anyone's approval
        return
    _cli("approve", str(created["id"]), "--user", "alan")
    assert Action.objects.get(pk=created["id"]).status == Action.Status.REQUESTED
    _cli("approve", str(created["id"]), "--user", "bea")
    assert Action.objects.get(pk=created["id"]).status == Action.Status.QUEUED


def test_the_request_page_offers_a_stamp_only_without_version_rows(
    people: dict[str, Any], config_for: Any, sqlite_url: str
) -> None:
    config_for(_adoptable(sqlite_url))
    status.status_refresh(environments=["staging"])
    page = targets.request_page(user=people["olga"], environment="staging", direction="stamp")
    assert page is not None and "stamp" in [tab.value for tab in page.tabs]
    assert POSTS in [choice.value for choice in page.targets]
    assert page.approvals_required == 1
    assert "no revision runs" in page.note

    insert_heads(sqlite_url, [POSTS])
    status.status_refresh(environments=["staging"])
    upgrade = targets.request_page(user=people["olga"], environment="staging", direction="upgrade")
    assert upgrade is not None and "stamp" not in [tab.value for tab in upgrade.tabs]
    stamp = targets.request_page(user=people["olga"], environment="staging", direction="stamp")
    assert stamp is not None and stamp.targets == []
    assert "cannot be stamped" in stamp.note
