"""Requests whose plan no longer holds become superseded; a request may queue behind another."""

from __future__ import annotations

import shutil
import threading
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from dashboard.models import Action, AuditEvent
from dashboard.services import actions, queue, status
from dashboard.services.actions import queueing
from dashboard.worker import Housekeeping
from tests.actions_support import (
    BRANCH_POINT,
    HEAD,
    ROOT,
    heads_of,
    insert_heads,
    make_people,
    touch_sqlite,
    write_config,
)

pytestmark = pytest.mark.django_db
EARLY = "a71e5c0d2f39"


@pytest.fixture
def people() -> dict[str, Any]:
    return make_people()


@pytest.fixture
def project(tmp_path: Path, settings: Any, sqlite_url: str) -> Path:
    """Copy the sample project; staging on it needs one approval to upgrade, none to roll back."""
    copy = tmp_path / "project"
    shutil.copytree(ROOT / "migrations_project", copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = write_config(
        tmp_path / "dashboard.toml",
        {
            "staging": {
                "url": touch_sqlite(sqlite_url),
                "approvals_required": 1,
                "downgrade_approvals_required": 0,
            }
        },
        alembic_ini=copy / "alembic.ini",
    )
    settings.DASHBOARD_CONFIG = str(path)
    return copy


def request(user: Any, target: str = "heads", direction: str = "upgrade", **kw: Any) -> Action:
    return actions.action_request(
        user=user, environment="staging", direction=direction, target=target, prepare=True, **kw
    )


def approve(user: Any, action: Action) -> Action:
    action.refresh_from_db()
    return actions.action_approve(user=user, action_id=action.pk, plan_hash=action.plan_hash)


def superseded(action: Action) -> str:
    """Return the reason an action was superseded, checking its audit event."""
    action.refresh_from_db()
    assert action.status == Action.Status.SUPERSEDED, (action.status, action.error)
    assert action.finished_at is not None and action.started_at is None
    event = AuditEvent.objects.get(action_id=action.pk, verb="action.superseded")
    assert event.actor_name == "system"
    assert action.error.startswith(f"superseded: {event.payload['reason']}")
    return str(event.payload["reason"])


def edit(project: Path) -> None:
    revision = next((project / "versions").glob(f"{HEAD}_*.py"))
    revision.write_text(revision.read_text() + "\n# edited after the request\n")


def test_a_request_behind_an_unfinished_one_is_refused_unless_queued_behind_it(
    people: dict[str, Any], project: Path
) -> None:
    first = request(people["olga"], target=BRANCH_POINT)
    with pytest.raises(actions.WouldBeStale) as refused:
        request(people["otto"])
    message = str(refused.value)
    assert f"action #{first.pk}" in message and f"queue this request behind #{first.pk}" in message
    assert refused.value.ahead_id == first.pk
    assert Action.objects.count() == 1

    second = request(people["otto"], queue_behind=first.pk)
    assert second.queued_behind_id == first.pk
    assert second.from_heads == [BRANCH_POINT] == first.target_heads  # where the first ends
    assert second.plan[0] == "e0d7f4a19b53" and second.target_heads == [HEAD]
    requested = AuditEvent.objects.get(action_id=second.pk, verb="action.requested")
    assert requested.payload["queued_behind"] == first.pk

    # Only behind the last unfinished one: two plans from one place cannot both run.
    with pytest.raises(actions.WouldBeStale, match=f"queue behind #{second.pk}"):
        request(people["otto"], target=BRANCH_POINT, direction="downgrade", queue_behind=first.pk)


def run_tasks(action: Action) -> int:
    """Return how many run tasks the queue holds for the action."""
    path = queue.task_named("run_action").module_path
    rows = DBTaskResult.objects.filter(task_path=path).values_list("args_kwargs", flat=True)
    return sum(1 for row in rows if row["args"] == [action.pk])


# Committed as it goes, as in the worker: the run's monitor writes from its own connection.
@pytest.mark.django_db(transaction=True)
def test_the_one_behind_runs_only_after_the_one_ahead_succeeded(
    people: dict[str, Any], project: Path, sqlite_url: str
) -> None:
    first = request(people["olga"], target=BRANCH_POINT)  # waits for an approval
    behind = request(people["otto"], target=EARLY, direction="downgrade", queue_behind=first.pk)
    assert behind.status == Action.Status.APPROVED  # rollbacks need no approval here
    waited = actions.action_run(action_id=behind.pk, worker="test")
    assert waited.status == Action.Status.APPROVED and heads_of(sqlite_url) == ()

    approve(people["alan"], first)
    assert actions.action_run(action_id=first.pk, worker="test").status == "succeeded"
    done = actions.action_run(action_id=behind.pk, worker="test")
    assert done.status == Action.Status.SUCCEEDED, done.error
    assert heads_of(sqlite_url) == (EARLY,)


@pytest.mark.parametrize("ending", ["cancelled", "rejected", "failed"])
def test_when_the_one_ahead_does_not_succeed_the_ones_behind_are_superseded(
    people: dict[str, Any], project: Path, sqlite_url: str, ending: str
) -> None:
    first = request(people["olga"], target=BRANCH_POINT)
    behind = request(people["otto"], target=HEAD, queue_behind=first.pk)
    last = request(people["otto"], target=EARLY, direction="downgrade", queue_behind=behind.pk)
    if ending == "cancelled":
        actions.action_cancel(user=people["olga"], action_id=first.pk)
    elif ending == "rejected":
        actions.action_reject(user=people["alan"], action_id=first.pk, reason="not now")
    else:
        approve(people["alan"], first)
        insert_heads(sqlite_url, [EARLY])  # moved behind the dashboard's back: stale
        assert actions.action_run(action_id=first.pk, worker="test").status == "failed"
    assert superseded(behind).startswith(f"action #{first.pk}, which it was queued behind, ended")
    assert f"#{behind.pk}" in superseded(last)
    # Nothing more to wait for: a new request plans from the current heads.
    assert request(people["olga"], target=HEAD).queued_behind_id is None


def test_a_success_supersedes_the_plans_it_made_stale(
    people: dict[str, Any], project: Path, sqlite_url: str
) -> None:
    first = request(people["olga"], target=BRANCH_POINT)
    # A request from before requests were refused here: planned from the same heads.
    conflicting = Action.objects.get(pk=first.pk)
    conflicting.pk = None
    conflicting.target = "heads"
    conflicting.save()
    approve(people["alan"], first)
    assert actions.action_run(action_id=first.pk, worker="test").status == "succeeded"
    assert (
        superseded(conflicting)
        == f"staging moved from base to {BRANCH_POINT} since this plan was made"
    )


def test_a_snapshot_showing_moved_heads_supersedes_open_requests(
    people: dict[str, Any], project: Path, sqlite_url: str
) -> None:
    pending = request(people["olga"], target=BRANCH_POINT)
    insert_heads(sqlite_url, [EARLY])  # someone ran Alembic by hand
    status.status_refresh(environments=["staging"])
    assert superseded(pending) == f"staging moved from base to {EARLY} since this plan was made"
    with pytest.raises(actions.WrongState, match="superseded"):
        approve(people["alan"], pending)


def test_an_edited_script_supersedes_at_approval_and_at_housekeeping(
    people: dict[str, Any], project: Path
) -> None:
    first = request(people["olga"], target=BRANCH_POINT)
    edit(project)
    with pytest.raises(actions.PlanChanged, match="script directory changed"):
        approve(people["alan"], first)
    assert superseded(first) == "the script directory changed since this plan was made"

    second = request(people["otto"], target=BRANCH_POINT)
    edit(project)
    report = Housekeeping(limit=60).run_once()
    assert report.superseded == [second.pk]
    assert superseded(second) == "the script directory changed since this plan was made"


def test_the_command_line_queues_behind(people: dict[str, Any], project: Path) -> None:
    first = request(people["olga"], target=BRANCH_POINT)
    argv = ["request", "--env", "staging", "--upgrade", "heads", "--user", "otto"]
    with pytest.raises(CommandError, match=f"queue this request behind #{first.pk}"):
        call_command("action", *argv)
    out = StringIO()
    call_command("action", *argv, "--queue-behind", str(first.pk), stdout=out)
    behind = Action.objects.get(queued_behind=first)
    assert f"action #{behind.pk}" in out.getvalue()
    assert f"queued behind #{first.pk}" in out.getvalue()
    assert behind.from_heads == [BRANCH_POINT]


@pytest.mark.django_db(transaction=True)
def test_two_requests_at_once_cannot_both_plan_from_the_same_heads(
    people: dict[str, Any], project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both have looked for unfinished actions before either records its own: the race, made sure.
    looked = threading.Barrier(2)
    real_start = queueing.request_start

    def start_then_wait(**kw: Any) -> queueing.RequestStart:
        found = real_start(**kw)
        looked.wait(timeout=30)
        return found

    monkeypatch.setattr(queueing, "request_start", start_then_wait)
    made: list[Action] = []
    refused: list[actions.WouldBeStale] = []
    errors: list[BaseException] = []

    def one(user: Any) -> None:
        # Two web processes share nothing but the database: each thread has its own connection.
        try:
            made.append(
                actions.action_request(
                    user=user, environment="staging", direction="upgrade", target=BRANCH_POINT
                )
            )
        except actions.WouldBeStale as exc:
            refused.append(exc)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(people[name],)) for name in ("olga", "otto")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(made) == 1 and len(refused) == 1, (made, refused)
    assert refused[0].ahead_id == made[0].pk
    assert f"queue this request behind #{made[0].pk}" in str(refused[0])
    assert list(Action.objects.values_list("pk", flat=True)) == [made[0].pk]


def test_the_ones_queued_behind_a_superseded_request_are_superseded_too(
    people: dict[str, Any], project: Path, sqlite_url: str
) -> None:
    first = request(people["olga"], target=BRANCH_POINT)
    behind = request(people["otto"], target=HEAD, queue_behind=first.pk)
    last = request(people["otto"], target=EARLY, direction="downgrade", queue_behind=behind.pk)
    insert_heads(sqlite_url, [EARLY])  # someone ran Alembic by hand
    status.status_refresh(environments=["staging"])
    assert superseded(first) == f"staging moved from base to {EARLY} since this plan was made"
    assert superseded(behind).startswith(f"action #{first.pk}, which it was queued behind, ended")
    assert superseded(last).startswith(f"action #{behind.pk}, which it was queued behind, ended")
    with pytest.raises(actions.WrongState, match="superseded"):
        approve(people["alan"], behind)


def test_approval_is_refused_when_the_one_ahead_ended_without_succeeding(
    people: dict[str, Any], project: Path
) -> None:
    first = request(people["olga"], target=BRANCH_POINT)
    behind = request(people["otto"], target=HEAD, queue_behind=first.pk)
    # Ended without carrying on to the one behind (a row from before they were carried along).
    Action.objects.filter(pk=first.pk).update(
        status=Action.Status.SUPERSEDED, finished_at=timezone.now()
    )
    with pytest.raises(actions.PlanChanged) as refused:
        approve(people["alan"], behind)
    assert str(refused.value).startswith(
        f"action #{first.pk}, which it was queued behind, ended superseded"
    )
    assert superseded(behind).startswith(f"action #{first.pk}, which it was queued behind")
    assert not behind.approvals.exists()


@pytest.mark.django_db(transaction=True)  # committed, so its commit hooks enqueue as they would
def test_the_one_behind_waits_off_the_task_queue_until_the_one_ahead_succeeded(
    people: dict[str, Any], project: Path, sqlite_url: str
) -> None:
    first = request(people["olga"], target=BRANCH_POINT)  # waits for an approval
    behind = request(people["otto"], target=HEAD, queue_behind=first.pk)
    approve(people["alan"], behind)
    behind.refresh_from_db()
    # Approved, and nothing on the queue to poll while the one ahead waits for its approver.
    assert behind.status == Action.Status.APPROVED and run_tasks(behind) == 0
    for _ in range(3):
        Housekeeping(limit=60).run_once()
    behind.refresh_from_db()
    assert behind.status == Action.Status.APPROVED and run_tasks(behind) == 0

    approve(people["alan"], first)
    assert actions.action_run(action_id=first.pk, worker="test").status == "succeeded"
    behind.refresh_from_db()
    assert behind.status == Action.Status.QUEUED and run_tasks(behind) == 1
    verbs = AuditEvent.objects.filter(action_id=behind.pk).values_list("verb", flat=True)
    assert list(verbs)[-2:] == ["action.approved", "action.queued"]
    assert actions.action_run(action_id=behind.pk, worker="test").status == "succeeded"
    assert heads_of(sqlite_url) == (HEAD,)


def test_housekeeping_queues_a_waiting_one_whose_ahead_succeeded(
    people: dict[str, Any], project: Path, sqlite_url: str
) -> None:
    first = request(people["olga"], target=BRANCH_POINT)
    behind = request(people["otto"], target=EARLY, direction="downgrade", queue_behind=first.pk)
    assert behind.status == Action.Status.APPROVED
    # The run's ending could not queue it (the hook broke off): housekeeping does.
    Action.objects.filter(pk=first.pk).update(
        status=Action.Status.SUCCEEDED, finished_at=timezone.now(), after_heads=[BRANCH_POINT]
    )
    report = Housekeeping(limit=60).run_once()
    behind.refresh_from_db()
    assert behind.status == Action.Status.QUEUED and run_tasks(behind) == 1
    assert behind.pk in report.requeued
    Housekeeping(limit=60).run_once()
    assert run_tasks(behind) == 1  # its task is alive: not enqueued again
