"""Scheduled actions: approved ones wait for their environment's window and start inside it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import time_machine
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse
from django_tasks_db.models import DBTaskResult

from dashboard.config import load_config
from dashboard.databases import runlock
from dashboard.models import Action, AuditEvent, RevisionRun, Rollout
from dashboard.services import actions, rollouts
from dashboard.services.actions import scheduling
from dashboard.tasks import run_action
from dashboard.worker import Housekeeping
from tests.actions_support import (
    HEAD,
    heads_of,
    make_people,
    schema_of,
    touch_sqlite,
    wait_for,
    write_config,
)
from tests.lock_support import connect, run_cli, run_lock_held, table_blocked
from tests.test_rollouts import fleet_config, member_url

# Deferred runs are enqueued when the approval commits, so every test commits for real.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("keep_roles")]

# Berlin is on CET (UTC+1) in January: the window is 01:00-03:00 UTC on Saturdays.
WINDOW = "Sat 02:00-04:00 Europe/Berlin"
FRIDAY_NOON = datetime(2027, 1, 8, 12, 0, tzinfo=UTC)
SATURDAY_OPEN = datetime(2027, 1, 9, 1, 0, tzinfo=UTC)
NEXT_SATURDAY_OPEN = datetime(2027, 1, 16, 1, 0, tzinfo=UTC)
LAST_MINUTE = SATURDAY_OPEN + timedelta(minutes=119)  # 03:59 in Berlin
CLOSED = SATURDAY_OPEN + timedelta(minutes=121)  # 04:01 in Berlin
POSTS = "a71e5c0d2f39"  # creates posts; the next revision alters it


@pytest.fixture
def people() -> dict[str, Any]:
    return make_people()


@pytest.fixture
def staging(tmp_path: Path, settings: Any, sqlite_url: str) -> str:
    """An empty SQLite environment, one approval, open only on Saturday nights in Berlin."""
    path = write_config(
        tmp_path / "dashboard.toml",
        {
            "staging": {
                "url": touch_sqlite(sqlite_url),
                "approvals_required": 1,
                "windows": [WINDOW],
            }
        },
    )
    settings.DASHBOARD_CONFIG = str(path)
    return sqlite_url


def _approved(people: dict[str, Any], **request: Any) -> Action:
    action = actions.action_request(
        user=people["olga"],
        environment="staging",
        direction="upgrade",
        target="heads",
        prepare=True,
        **request,
    )
    actions.action_approve(user=people["alan"], action_id=action.pk, plan_hash=action.plan_hash)
    return Action.objects.get(pk=action.pk)  # as the approval's commit left it


def test_approved_outside_its_window_it_is_scheduled_and_starts_when_the_window_opens(
    people: dict[str, Any], staging: str
) -> None:
    with time_machine.travel(FRIDAY_NOON, tick=False) as clock:
        action = _approved(people)
        assert action.status == Action.Status.SCHEDULED
        assert action.scheduled_for == SATURDAY_OPEN
        assert "windows are closed now" in action.schedule_note
        assert "Sat 02:00 Europe/Berlin" in action.schedule_note
        event = AuditEvent.objects.get(action_id=action.pk, verb="action.scheduled")
        assert event.payload["scheduled_for"] == SATURDAY_OPEN.isoformat()
        assert event.payload["reason"] == action.schedule_note
        # The queue holds a run deferred to the window's start (django.tasks' run_after).
        deferred = DBTaskResult.objects.get(id=action.task_id)
        assert (deferred.task_path, deferred.run_after) == (run_action.module_path, SATURDAY_OPEN)

        # A worker that claims it early (the deferred run, or any other) does not start it.
        clock.move_to(SATURDAY_OPEN - timedelta(seconds=1))
        assert actions.action_run(action_id=action.pk, worker="test").status == "scheduled"
        assert Housekeeping().run_once().released == []
        assert heads_of(staging) == ()

        clock.move_to(SATURDAY_OPEN + timedelta(minutes=5))
        assert Housekeeping().run_once().released == [action.pk]
        assert Action.objects.get(pk=action.pk).status == Action.Status.QUEUED
        done = actions.action_run(action_id=action.pk, worker="test")

    assert done.status == Action.Status.SUCCEEDED, done.error
    assert done.started_at >= SATURDAY_OPEN
    assert heads_of(staging) == (HEAD,)


def test_a_queued_action_claimed_outside_its_window_goes_back_to_scheduled(
    people: dict[str, Any], staging: str
) -> None:
    with time_machine.travel(SATURDAY_OPEN + timedelta(minutes=10), tick=False) as clock:
        action = _approved(people)
        assert action.status == Action.Status.QUEUED  # the window is open: straight to the queue
        # The worker only gets to it after the window closed (a busy queue, a worker restart).
        clock.move_to(SATURDAY_OPEN + timedelta(hours=2, minutes=1))
        claimed = actions.action_run(action_id=action.pk, worker="test")
        assert claimed.status == Action.Status.SCHEDULED
        assert claimed.scheduled_for == NEXT_SATURDAY_OPEN
        assert claimed.started_at is None
    assert heads_of(staging) == ()


def test_an_action_whose_forecast_exceeds_the_window_left_starts_in_the_next_one(
    people: dict[str, Any], staging: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduling, "plan_forecast_seconds", lambda action: 3600.0)
    with time_machine.travel(SATURDAY_OPEN + timedelta(minutes=90), tick=False):
        action = _approved(people)
    assert action.status == Action.Status.SCHEDULED
    assert action.scheduled_for == NEXT_SATURDAY_OPEN
    assert "forecast (1 h) exceeds the 30 min left in the window open now" in action.schedule_note
    assert "next window that fits" in action.schedule_note


def test_an_unknown_forecast_starts_in_the_window_open_now(
    people: dict[str, Any], staging: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduling, "plan_forecast_seconds", lambda action: None)
    with time_machine.travel(SATURDAY_OPEN + timedelta(minutes=119), tick=False):
        assert _approved(people).status == Action.Status.QUEUED


def test_run_at_must_be_in_the_future_and_inside_a_window(
    people: dict[str, Any], staging: str
) -> None:
    with time_machine.travel(FRIDAY_NOON, tick=False):
        request = {
            "user": people["olga"],
            "environment": "staging",
            "direction": "upgrade",
            "target": "heads",
            "prepare": True,
        }
        with pytest.raises(actions.ActionRefused, match="is not in the future"):
            actions.action_request(**request, run_at=FRIDAY_NOON - timedelta(hours=1))
        with pytest.raises(actions.ActionRefused) as outside:
            actions.action_request(**request, run_at=SATURDAY_OPEN + timedelta(hours=3))
        assert str(outside.value) == (
            "run at 2027-01-09 05:00 Europe/Berlin is outside staging's windows"
            f" ({WINDOW}); the next one after it opens Sat 02:00 Europe/Berlin"
        )
        assert not Action.objects.exists()

        chosen = SATURDAY_OPEN + timedelta(minutes=45)
        action = _approved(people, run_at=chosen)
        assert (action.status, action.run_at, action.scheduled_for) == ("scheduled", chosen, chosen)
        assert action.schedule_note.startswith("run at 2027-01-09 02:45 Europe/Berlin as requested")


def test_run_at_from_the_command_line_is_checked_and_shown(
    people: dict[str, Any], staging: str
) -> None:
    with time_machine.travel(FRIDAY_NOON, tick=False):
        argv = ["request", "--env", "staging", "--upgrade", "heads", "--user", "olga"]
        with pytest.raises(CommandError, match="outside staging's windows"):
            call_command("action", *argv, "--run-at", "2027-01-09T05:00:00Z", stdout=StringIO())
        with pytest.raises(CommandError, match="run-at"):
            call_command("action", *argv, "--run-at", "Saturday", stdout=StringIO())
        out = StringIO()
        call_command("action", *argv, "--run-at", "2027-01-09T02:30+01:00", stdout=out)
    action = Action.objects.get()
    assert action.run_at == datetime(2027, 1, 9, 1, 30, tzinfo=UTC)


def test_a_scheduled_action_can_be_cancelled(people: dict[str, Any], staging: str) -> None:
    with time_machine.travel(FRIDAY_NOON, tick=False) as clock:
        action = _approved(people)
        cancelled = actions.action_cancel(user=people["olga"], action_id=action.pk)
        assert cancelled.status == Action.Status.CANCELLED
        clock.move_to(SATURDAY_OPEN + timedelta(minutes=1))
        assert Housekeeping().run_once().released == []
        assert actions.action_run(action_id=action.pk, worker="test").status == "cancelled"
    assert heads_of(staging) == ()


def test_a_malformed_window_is_a_config_error_of_its_environment_alone(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "dashboard.toml",
        {
            "prod": {"url": "sqlite:///prod.db", "windows": ["Sat 2am-4am Europe/Berlin"]},
            "qa": {"url": "sqlite:///qa.db", "windows": ["Sun 25:00-26:00 UTC"]},
            "dev": {"url": "sqlite:///dev.db", "windows": [WINDOW]},
        },
    )
    config = load_config(path)
    assert config.environments["dev"].windows[0].zone == "Europe/Berlin"
    assert config.environment_problems() == [
        f"invalid window in {path} [environments.prod] windows: 'Sat 2am-4am Europe/Berlin' is"
        ' not a window: write days, start-end and a zone, like "Sat 02:00-04:00 Europe/Berlin"'
        ' or "Mon-Fri 22:00-01:00 UTC"',
        f"invalid window in {path} [environments.qa] windows: 'Sun 25:00-26:00 UTC': 25:00 is not"
        " a time of day (00:00 to 23:59, or 24:00 to end)",
    ]
    # No window can be trusted, so none opens: its actions wait, saying why.
    prod = config.environments["prod"]
    hold = scheduling.hold_for(Action(environment="prod", plan=[]), prod, now=FRIDAY_NOON)
    assert hold is not None and hold.until is None
    assert hold.note.startswith("invalid window in")


def test_pages_show_the_next_window_the_schedule_and_take_a_run_at_time(
    people: dict[str, Any], staging: str, client: Any
) -> None:
    with time_machine.travel(datetime(2027, 1, 6, 22, 0, tzinfo=UTC), tick=False):
        client.force_login(people["olga"])
        overview = client.get("/").content.decode()
        assert "window next: Sat 02:00 Europe/Berlin, in 2 d 3 h" in overview
        page = client.get("/environments/staging").content.decode()
        assert WINDOW in page and "next: Sat 02:00 Europe/Berlin, in 2 d 3 h" in page

        form = client.get("/environments/staging/request?direction=upgrade").content.decode()
        assert 'name="run_at"' in form and "in Europe/Berlin unless you give an offset" in form
        posted = {"direction": "upgrade", "target": "heads", "reason": "release 7"}
        refused = client.post(
            "/environments/staging/request", {**posted, "run_at": "2027-01-09T05:00"}
        )
        assert refused.status_code == 200
        assert "is outside staging&#x27;s windows" in refused.content.decode()
        assert not Action.objects.exists()
        made = client.post(
            "/environments/staging/request", {**posted, "run_at": "2027-01-09T02:30"}
        )
        assert made.status_code == 302, made.content.decode()
        action = Action.objects.get()
        assert action.run_at == datetime(2027, 1, 9, 1, 30, tzinfo=UTC)  # 02:30 CET

        actions.action_prepare(action_id=action.pk)
        client.force_login(people["alan"])
        review = client.get(reverse("action-detail", args=[action.pk])).content.decode()
        assert "Run at" in review and "Sat 2027-01-09 02:30 Europe/Berlin" in review
        action = Action.objects.get(pk=action.pk)
        actions.action_approve(user=people["alan"], action_id=action.pk, plan_hash=action.plan_hash)
        shown = client.get(reverse("action-detail", args=[action.pk])).content.decode()
        assert "Scheduled for" in shown
        assert "Sat 2027-01-09 02:30 Europe/Berlin</time> — run at 2027-01-09 02:30" in shown
        assert "state-scheduled" in shown


def test_rollout_members_wait_for_the_fleets_window_and_do_not_fail(
    people: dict[str, Any], tmp_path: Path, settings: Any
) -> None:
    names = ["t1", "t2", "t3"]
    config = fleet_config(
        tmp_path, names, approvals_required=1, waves=[1, "100%"], parallel=2, windows=[WINDOW]
    )
    settings.DASHBOARD_CONFIG = str(config)
    with time_machine.travel(FRIDAY_NOON, tick=False) as clock:
        rollout = rollouts.rollout_request(
            user=people["root"], fleet="tenants", direction="upgrade", target="heads", prepare=True
        )
        rollouts.rollout_approve(
            user=people["alan"], rollout_id=rollout.pk, rollout_hash=rollout.rollout_hash
        )
        members = Action.objects.filter(rollout=rollout)
        canary = members.get(wave=1)
        # The canary's claim finds the window closed: it waits, scheduled, in its slot.
        assert actions.action_run(action_id=canary.pk, worker="test").status == "scheduled"
        Housekeeping().run_once()
        rollout.refresh_from_db()
        assert rollout.status == Rollout.Status.RUNNING
        assert sorted(members.values_list("status", flat=True)) == [
            "approved",
            "approved",
            "scheduled",
        ]

        clock.move_to(SATURDAY_OPEN + timedelta(minutes=1))
        for _round in range(10):
            Housekeeping().run_once()  # releases the due ones, advances the rollout
            for member in members.filter(status=Action.Status.QUEUED):
                ran = actions.action_run(action_id=member.pk, worker="test")
                assert ran.status == Action.Status.SUCCEEDED, ran.error
            rollout.refresh_from_db()
            if rollout.is_finished:
                break
    assert rollout.status == Rollout.Status.SUCCEEDED, rollout.error
    assert all(m.started_at >= SATURDAY_OPEN for m in members)
    for name in names:
        assert heads_of(member_url(tmp_path, name)) == (HEAD,)


def test_a_plan_longer_than_any_window_waits_for_a_whole_one_like_a_shorter_one(
    people: dict[str, Any], staging: str, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    last_minute = SATURDAY_OPEN + timedelta(minutes=119)  # 03:59 in Berlin
    forecast = {"seconds": 3 * 3600.0}
    monkeypatch.setattr(scheduling, "plan_forecast_seconds", lambda action: forecast["seconds"])
    with time_machine.travel(last_minute, tick=False) as clock:
        action = _approved(people)
        assert (action.status, action.scheduled_for) == ("scheduled", NEXT_SATURDAY_OPEN)
        assert "forecast (3 h) is longer than any window of staging" in action.schedule_note
        assert "may run past its end (starts Sat 02:00 Europe/Berlin)" in action.schedule_note
        env = load_config(Path(settings.DASHBOARD_CONFIG)).environments["staging"]
        forecast["seconds"] = 1800.0  # a shorter plan waits for the same window
        shorter = scheduling.hold_for(action, env, now=last_minute)
        assert shorter is not None and shorter.until == NEXT_SATURDAY_OPEN
        forecast["seconds"] = 3 * 3600.0
        # Ten minutes into a window is no longer all of it: the one after is.
        later = scheduling.hold_for(action, env, now=NEXT_SATURDAY_OPEN + timedelta(minutes=10))
        assert later is not None and later.until == NEXT_SATURDAY_OPEN + timedelta(days=7)
        # Its deferred run comes a moment after the opening: that is the whole window, it starts.
        clock.move_to(NEXT_SATURDAY_OPEN + timedelta(seconds=3))
        done = actions.action_run(action_id=action.pk, worker="test")
    assert done.status == Action.Status.SUCCEEDED, done.error
    assert heads_of(staging) == (HEAD,)


def test_the_overview_shows_the_next_window_as_of_now_and_the_config_as_it_is(
    people: dict[str, Any], staging: str, client: Any, settings: Any, tmp_path: Path
) -> None:
    with time_machine.travel(datetime(2027, 1, 6, 22, 0, tzinfo=UTC), tick=False) as clock:
        client.force_login(people["olga"])
        assert "window next: Sat 02:00 Europe/Berlin, in 2 d 3 h" in client.get("/").text
        # The matrix is the same (nothing read yet): the window line moves on all the same.
        clock.move_to(datetime(2027, 1, 6, 23, 0, tzinfo=UTC))
        assert "window next: Sat 02:00 Europe/Berlin, in 2 d 2 h" in client.get("/").text
        clock.move_to(SATURDAY_OPEN + timedelta(minutes=30))
        assert "window open now until Sat 04:00 CET" in client.get("/").text
        # The same environment without windows (its URL unchanged) shows none.
        path = write_config(
            tmp_path / "other.toml", {"staging": {"url": staging, "approvals_required": 1}}
        )
        settings.DASHBOARD_CONFIG = str(path)
        assert "next-window" not in client.get("/").text


def _meanwhile(until: Callable[[], object], then: Callable[[], None]) -> threading.Thread:
    """Start a thread that waits until `until()` holds (read on its own connection), then `then()`."""

    def watch() -> None:
        try:
            wait_for(until, within=60)
        finally:
            then()
            connection.close()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _postgres_staging(settings: Any, tmp_path: Path, url: str, **values: Any) -> None:
    env = {"url": url, "approvals_required": 1, "windows": [WINDOW], **values}
    settings.DASHBOARD_CONFIG = str(write_config(tmp_path / "dashboard.toml", {"staging": env}))


@pytest.mark.postgres
def test_an_action_whose_window_closes_while_it_waits_for_the_run_lock_is_scheduled_again(
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scheduling, "plan_forecast_seconds", lambda action: None)
    _postgres_staging(settings, tmp_path, postgres_url, run_lock_wait=120)
    lock = connect(postgres_url)
    key = runlock.postgresql_key("public", "alembic_version")
    assert lock.scalar(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
    with time_machine.travel(LAST_MINUTE, tick=False) as clock:
        action = _approved(people)
        assert action.status == Action.Status.QUEUED  # claimed inside the window

        def close_window_then_release() -> None:
            clock.move_to(CLOSED)
            lock.close()

        waiting = Action.objects.filter(pk=action.pk, blockers__0__kind="run_lock")
        helper = _meanwhile(waiting.exists, close_window_then_release)
        back = actions.action_run(action_id=action.pk, worker="test")
        helper.join(10)
    assert back.status == Action.Status.SCHEDULED, back.error
    assert (back.scheduled_for, back.started_at, back.worker) == (NEXT_SATURDAY_OPEN, None, "")
    assert back.schedule_note == (
        "its windows no longer let it start after its wait for the run lock (nothing ran);"
        " staging's windows are closed now (starts Sat 02:00 Europe/Berlin)"
    )
    event = AuditEvent.objects.filter(action_id=action.pk, verb="action.scheduled").last()
    assert event is not None and event.payload["from_status"] == "running"
    assert not AuditEvent.objects.filter(action_id=action.pk, verb__in=["action.failed"]).exists()
    assert schema_of(postgres_url) == {"tables": {}, "versions": []}
    assert not RevisionRun.objects.filter(action_id=action.pk).exists()
    assert not Action.objects.running().exists()  # the environment is free for its next run
    with run_lock_held(postgres_url):  # and so is its run lock
        pass
    assert DBTaskResult.objects.get(id=back.task_id).run_after == NEXT_SATURDAY_OPEN

    with time_machine.travel(NEXT_SATURDAY_OPEN + timedelta(seconds=2), tick=False):
        done = actions.action_run(action_id=action.pk, worker="test")
    assert done.status == Action.Status.SUCCEEDED, done.error
    assert done.retries == 0


@pytest.mark.postgres
def test_a_lock_timeout_retry_after_the_window_closed_waits_for_the_next_window(
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scheduling, "plan_forecast_seconds", lambda action: None)
    done = run_cli(postgres_url, "upgrade", POSTS)
    assert done.returncode == 0, done.stdout + done.stderr
    _postgres_staging(settings, tmp_path, postgres_url, lock_timeout="1s", lock_retries=3)
    with time_machine.travel(LAST_MINUTE, tick=False) as clock, table_blocked(postgres_url):
        action = _approved(people)
        assert action.status == Action.Status.QUEUED and action.from_heads == [POSTS]
        retrying = Action.objects.filter(pk=action.pk, retries=1)  # counted before its backoff
        helper = _meanwhile(retrying.exists, lambda: clock.move_to(CLOSED))
        back = actions.action_run(action_id=action.pk, worker="test")
        helper.join(10)
    assert back.status == Action.Status.SCHEDULED, back.error
    assert back.scheduled_for == NEXT_SATURDAY_OPEN
    assert back.schedule_note.startswith(
        "its windows no longer let it start after a lock timeout, before its retry"
        f" (staging is still at {POSTS}: nothing stayed applied); staging's windows are closed"
    ), back.schedule_note
    assert back.retries == 1  # the one retry it announced; the second attempt never began
    assert heads_of(postgres_url) == (POSTS,)
    outcomes = set(
        RevisionRun.objects.filter(action_id=action.pk).values_list("outcome", flat=True)
    )
    assert outcomes <= {RevisionRun.Outcome.RETRIED}  # no attempt counted as failed
    assert not AuditEvent.objects.filter(action_id=action.pk, verb="action.failed").exists()
    assert not Action.objects.running().exists()
