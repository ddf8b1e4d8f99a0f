"""`manage.py action show` and `action list` tell a silent run as the pages do: interrupted."""

from __future__ import annotations

import json
from datetime import UTC, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from dashboard.models import Action

LIMIT = 20.0

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _limit(settings: Any) -> None:
    settings.DASHBOARD_HEARTBEAT_LIMIT = LIMIT


def _running(heartbeat_age: float, environment: str = "staging") -> Action:
    now = timezone.now()
    return Action.objects.create(
        project="blog",
        environment=environment,
        direction="upgrade",
        target="heads",
        from_heads=[],
        target_heads=["6c0a8d3f5e94"],
        plan=["3f8c1a2b9d04"],
        fingerprint="f",
        plan_hash="h",
        requested_by_name="olga",
        worker="gone:1",
        status=Action.Status.RUNNING,
        started_at=now - timedelta(seconds=heartbeat_age + 5),
        heartbeat_at=now - timedelta(seconds=heartbeat_age),
    )


def _action(*argv: str) -> str:
    out = StringIO()
    call_command("action", *argv, stdout=out)
    return out.getvalue()


def _since(action: Action) -> str:
    assert action.heartbeat_at is not None
    return f"worker silent since {action.heartbeat_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def test_show_calls_a_run_silent_past_the_limit_interrupted() -> None:
    silent = _running(600)  # the review's case: a heartbeat 10 minutes old

    shown = json.loads(_action("show", str(silent.pk), "--json"))
    assert shown["status"] == "interrupted"
    assert shown["recorded_status"] == "running"
    assert shown["status_label"] == f"interrupted — {_since(silent)}"
    assert shown["worker_silent_since"] == silent.heartbeat_at.isoformat()

    text = _action("show", str(silent.pk))
    assert f"status:        interrupted — {_since(silent)} (recorded: running)" in text
    # Computed on read, as on the pages: nothing is recorded until housekeeping runs.
    silent.refresh_from_db()
    assert silent.status == Action.Status.RUNNING


def test_show_keeps_a_run_that_beats_running() -> None:
    alive = _running(1)
    shown = json.loads(_action("show", str(alive.pk), "--json"))
    assert shown["status"] == shown["recorded_status"] == "running"
    assert shown["worker_silent_since"] is None
    assert "status:        running" in _action("show", str(alive.pk))


def test_list_and_its_status_filter_count_a_silent_run_as_interrupted() -> None:
    silent = _running(600)
    alive = _running(1, environment="dev")

    listed = {item["id"]: item for item in json.loads(_action("list", "--json"))}
    assert listed[silent.pk]["status"] == "interrupted"
    assert listed[silent.pk]["recorded_status"] == "running"
    assert listed[alive.pk]["status"] == "running"

    interrupted = [
        item["id"] for item in json.loads(_action("list", "--status=interrupted", "--json"))
    ]
    running = [item["id"] for item in json.loads(_action("list", "--status=running", "--json"))]
    assert interrupted == [silent.pk]
    assert running == [alive.pk]

    line = next(row for row in _action("list").splitlines() if row.startswith(f"#{silent.pk} "))
    assert "interrupted" in line and _since(silent) in line
