"""Actions end to end: the command line, a real worker process, real target databases."""

from __future__ import annotations

import json
import os
import signal
import time
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.tasks import TaskResultStatus
from django_tasks_db.models import DBTaskResult

from dashboard import audit, runner
from dashboard.config import Project
from dashboard.models import Action, AuditEvent, Snapshot
from dashboard.services import actions
from dashboard.tasks import keep_house
from dashboard.worker import Housekeeping
from tests.actions_support import (
    ALL_REVISIONS,
    BRANCH_POINT,
    HEAD,
    SAMPLE_INI,
    heads_of,
    run_worker,
    schema_of,
    start_worker,
    stop_worker,
    touch_sqlite,
    wait_for,
    write_config,
)

# Worker processes share the test database, so every test commits for real.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("keep_roles")]
BLOG = Project(name="blog", script_location=SAMPLE_INI.parent, alembic_ini=SAMPLE_INI)


@pytest.fixture
def config_for(tmp_path: Path, settings: Any) -> Any:
    """Return a function that writes a one-environment config and makes it current."""

    def write(url: str, **values: Any) -> Path:
        path = write_config(tmp_path / "dashboard.toml", {"staging": {"url": url, **values}})
        settings.DASHBOARD_CONFIG = str(path)
        return path

    return write


def _cli(*argv: str) -> str:
    out = StringIO()
    call_command("action", *argv, stdout=out)
    return out.getvalue()


def _show(action_id: int) -> dict[str, Any]:
    return json.loads(_cli("show", str(action_id), "--json"))


def _ran(action: Action) -> list[str]:
    """Return the revisions Alembic itself announced, in the order it ran them."""
    steps = [runner.parse_progress(line, set(ALL_REVISIONS)) for line in action.log.splitlines()]
    return [
        (s.to_revisions if s.direction == "upgrade" else s.from_revisions)[0]
        for s in steps
        if s is not None
    ]


def test_done_when_requested_approved_by_another_and_run_by_the_worker(
    people: dict[str, Any], config_for: Any, sqlite_url: str
) -> None:
    config = config_for(touch_sqlite(sqlite_url), approvals_required=1)
    created = json.loads(
        _cli("request", "--env", "staging", "--upgrade", "heads", "--user", "root", "--json")
    )
    action_id = created["id"]
    assert (created["status"], created["plan"]) == ("requested", ALL_REVISIONS)
    with pytest.raises(CommandError, match="you requested action") as refused:
        _cli("approve", str(action_id), "--user", "root")
    assert refused.value.returncode == 1
    _cli("approve", str(action_id), "--user", "alan", "--comment", "go")

    run_worker(config, command="worker")

    shown = _show(action_id)
    assert shown["status"] == "succeeded", shown["error"]
    assert shown["plan"] == ALL_REVISIONS
    assert (shown["from_heads"], shown["after_heads"]) == ([], [HEAD])
    assert shown["requested_by"] == "root"
    assert [(a["user"], a["decision"]) for a in shown["approvals"]] == [("alan", "approve")]
    assert heads_of(sqlite_url) == (HEAD,)
    assert "phone_number" in schema_of(sqlite_url)["tables"]["users"][0]
    action = Action.objects.get(pk=action_id)
    assert _ran(action) == ALL_REVISIONS  # Alembic ran exactly the plan, in its order
    assert action.progress_done == action.progress_total == 9
    # The overview sees the new revision without waiting for the periodic refresh.
    assert Snapshot.objects.filter(environment="staging").first().heads == [HEAD]
    # `manage.py worker` recorded the config it started with and scheduled its housekeeping.
    assert AuditEvent.objects.filter(verb="config.changed").count() == 1
    assert DBTaskResult.objects.filter(
        task_path=keep_house.module_path, status=TaskResultStatus.READY
    ).exists()
    assert audit.verify().broken_at is None


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "mariadb"])
def test_upgrade_through_the_branch_and_downgrade_across_the_merge(
    kind: str, people: dict[str, Any], config_for: Any, request: pytest.FixtureRequest
) -> None:
    url = touch_sqlite(request.getfixturevalue(f"{kind}_url"))
    config = config_for(url)
    # The web path: the SQL is prepared by the worker, which then runs the action.
    up = actions.action_request(
        user=people["olga"], environment="staging", direction="upgrade", target="heads"
    )
    run_worker(config)
    up.refresh_from_db()
    assert up.status == Action.Status.SUCCEEDED, up.error
    assert up.sql_sha256 and _ran(up) == up.plan == ALL_REVISIONS
    assert heads_of(url) == (HEAD,)

    down = actions.action_request(
        user=people["olga"],
        environment="staging",
        direction="downgrade",
        target=BRANCH_POINT,
        prepare=True,
    )
    assert down.plan == list(reversed(ALL_REVISIONS[4:]))
    run_worker(config)
    down.refresh_from_db()
    assert down.status == Action.Status.SUCCEEDED, down.error
    assert _ran(down) == down.plan
    assert down.after_heads == [BRANCH_POINT] == list(heads_of(url))
    tables = schema_of(url)["tables"]
    assert "votes" not in tables and "ix_posts_created_at" not in tables["posts"][1]
    assert audit.verify().broken_at is None


@pytest.mark.postgres
def test_failing_revision_on_postgresql_is_rolled_back(
    people: dict[str, Any], config_for: Any, postgres_url: str
) -> None:
    config = config_for(postgres_url)
    action = actions.action_request(
        user=people["olga"],
        environment="staging",
        direction="upgrade",
        target="heads",
        prepare=True,
    )
    run_worker(config, MIGRATIONS_PROJECT_FAIL="7a3c2e8b5f01")
    action.refresh_from_db()
    assert action.status == Action.Status.FAILED
    assert action.after_heads == action.from_heads == []
    assert "MIGRATIONS_PROJECT_FAIL requested" in action.error
    assert "staging is still at base: nothing stayed applied" in action.error
    assert schema_of(postgres_url) == {"tables": {}, "versions": []}


def test_failing_revision_on_sqlite_leaves_partial_heads_said(
    people: dict[str, Any], config_for: Any, sqlite_url: str
) -> None:
    config = config_for(touch_sqlite(sqlite_url))
    action = actions.action_request(
        user=people["olga"],
        environment="staging",
        direction="upgrade",
        target="heads",
        prepare=True,
    )
    run_worker(config, MIGRATIONS_PROJECT_FAIL="7a3c2e8b5f01")
    action.refresh_from_db()
    assert action.status == Action.Status.FAILED
    assert action.after_heads == list(heads_of(sqlite_url)) == ["e0d7f4a19b53"]
    assert "staging is now at e0d7f4a19b53, partly applied" in action.error
    # SQLite kept the failed step's DDL without its version row: the heads say so.
    assert "ix_posts_created_at" in schema_of(sqlite_url)["tables"]["posts"][1]
    assert AuditEvent.objects.filter(action_id=action.pk, verb="action.failed").exists()


def test_stale_plan_fails_and_leaves_the_database_untouched(
    people: dict[str, Any], config_for: Any, sqlite_url: str
) -> None:
    config = config_for(touch_sqlite(sqlite_url))
    action = actions.action_request(
        user=people["olga"],
        environment="staging",
        direction="upgrade",
        target="heads",
        prepare=True,
    )
    assert action.status == Action.Status.QUEUED
    moved = runner.upgrade(BLOG, sqlite_url, "a71e5c0d2f39")  # someone ran Alembic by hand
    assert moved.succeeded
    before = schema_of(sqlite_url)
    run_worker(config)
    action.refresh_from_db()
    assert action.status == Action.Status.FAILED
    assert action.error == ("stale plan: staging moved from base to a71e5c0d2f39; nothing ran")
    assert action.log == "" and schema_of(sqlite_url) == before


def test_a_run_past_the_environments_time_limit_is_stopped(
    people: dict[str, Any], config_for: Any, sqlite_url: str
) -> None:
    # Five 2 s steps cannot finish in 6 s, and the first one lands even when a loaded
    # machine takes 3 s to start Alembic.
    config = config_for(touch_sqlite(sqlite_url), time_limit=6)
    action = actions.action_request(
        user=people["olga"],
        environment="staging",
        direction="upgrade",
        target="heads",
        prepare=True,
    )
    run_worker(config, MIGRATIONS_PROJECT_SLEEP="2")
    action.refresh_from_db()
    assert action.status == Action.Status.FAILED
    assert action.error.startswith("stopped at the time limit of 6 s; staging is now at")
    assert action.after_heads == list(heads_of(sqlite_url)) != [HEAD]


def test_cancel_while_running_stops_alembic_and_reads_the_heads(
    people: dict[str, Any], config_for: Any, sqlite_url: str
) -> None:
    config = config_for(touch_sqlite(sqlite_url))
    action = actions.action_request(
        user=people["olga"],
        environment="staging",
        direction="upgrade",
        target="heads",
        prepare=True,
    )
    worker = start_worker(config, MIGRATIONS_PROJECT_SLEEP="0.4")
    try:
        wait_for(lambda: Action.objects.filter(pk=action.pk, progress_done__gte=2).exists())
        actions.action_cancel(user=people["olga"], action_id=action.pk)
        wait_for(lambda: Action.objects.get(pk=action.pk).is_finished, within=30)
    finally:
        stop_worker(worker)
    action.refresh_from_db()
    assert action.status == Action.Status.CANCELLED
    assert action.error.startswith("cancelled by olga while running; staging is now at")
    assert action.after_heads == list(heads_of(sqlite_url))
    assert action.after_heads not in ([], [HEAD])
    verbs = AuditEvent.objects.filter(action_id=action.pk).values_list("verb", flat=True)
    assert list(verbs)[-2:] == ["action.cancel_requested", "action.cancelled"]


def test_two_workers_never_run_two_actions_of_one_environment_at_once(
    people: dict[str, Any], config_for: Any, sqlite_url: str
) -> None:
    config = config_for(touch_sqlite(sqlite_url))
    done: list[Action] = []
    # Each queued behind the one before: it plans from where that one ends.
    for direction, target in (
        ("upgrade", BRANCH_POINT),
        ("upgrade", "heads"),
        ("downgrade", "e0d7"),
    ):
        done.append(
            actions.action_request(
                user=people["olga"],
                environment="staging",
                direction=direction,
                target=target,
                prepare=True,
                queue_behind=done[-1].pk if done else None,
            )
        )
    ids = [a.pk for a in done]
    workers = [start_worker(config, MIGRATIONS_PROJECT_SLEEP="0.3") for _ in range(2)]
    try:
        wait_for(lambda: all(a.is_finished for a in Action.objects.filter(pk__in=ids)), within=90)
    finally:
        for worker in workers:
            stop_worker(worker)
    ran = list(Action.objects.order_by("started_at"))
    assert [a.pk for a in ran] == ids  # in request order
    for earlier, later in zip(ran, ran[1:], strict=False):
        assert earlier.finished_at <= later.started_at
    assert [a.status for a in ran] == [Action.Status.SUCCEEDED] * 3, [a.error for a in ran]
    assert heads_of(sqlite_url) == tuple(ran[-1].target_heads) != (BRANCH_POINT,)


def test_a_killed_worker_takes_alembic_with_it_and_the_run_becomes_interrupted(
    people: dict[str, Any], config_for: Any, sqlite_url: str
) -> None:
    config = config_for(touch_sqlite(sqlite_url))
    action = actions.action_request(
        user=people["olga"],
        environment="staging",
        direction="upgrade",
        target="heads",
        prepare=True,
    )
    worker = start_worker(config, MIGRATIONS_PROJECT_SLEEP="0.5")
    try:
        wait_for(lambda: Action.objects.filter(pk=action.pk, progress_done__gte=1).exists())
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        stop_worker(worker)
    time.sleep(0.2)  # the parent-death signal reaches Alembic's child
    at_kill = heads_of(sqlite_url)
    time.sleep(1.5)  # three more steps' worth, had Alembic survived its worker
    assert heads_of(sqlite_url) == at_kill
    assert Housekeeping(limit=60).run_once().interrupted == []  # not silent for long yet
    report = Housekeeping(limit=1).run_once()
    assert report.interrupted == [action.pk]
    action.refresh_from_db()
    assert action.status == Action.Status.INTERRUPTED
    assert action.after_heads == list(at_kill)
    assert "stopped heartbeating" in action.error
    event = AuditEvent.objects.get(action_id=action.pk, verb="action.interrupted")
    assert event.payload["after_heads"] == list(at_kill)
    assert audit.verify().broken_at is None
