"""Run times: recorded from the runner's own lines, kept apart by outcome, forecast on the pages."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from dashboard import scripts
from dashboard.models import Action, RevisionRun
from dashboard.runner.monitor import AttemptSteps, StepMark
from dashboard.runner.process import parse_progress
from dashboard.selectors.forecasts import plan_forecast_seconds, seconds_text
from dashboard.services import actions
from dashboard.services.runtimes import runs_of
from dashboard.services.status import status_refresh
from tests.actions_support import ROOT, heads_of, touch_sqlite, write_config
from tests.lock_support import run_cli, table_blocked

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("keep_roles")]

SLOW = "3f8c1a2b9d04"  # the fixture's first revision; it sleeps SLEEP seconds in its upgrade
SECOND = "a71e5c0d2f39"
SLEEP = 1.0


@pytest.fixture
def project(tmp_path: Path, settings: Any) -> Iterator[Path]:
    """Copy the sample project and make its first revision's upgrade sleep SLEEP seconds."""
    settings.DASHBOARD_APPROVED_DIR = str(tmp_path / "approved")
    target = tmp_path / "project"
    shutil.copytree(
        ROOT / "migrations_project", target, ignore=shutil.ignore_patterns("__pycache__")
    )
    slow = next((target / "versions").glob(f"{SLOW}_*.py"))
    text = slow.read_text()
    start = '    """Upgrade schema."""\n'
    assert text.count(start) == 1
    slow.write_text(text.replace(start, f"{start}    time.sleep({SLEEP})\n"))
    scripts.clear_cache()
    yield target
    scripts.clear_cache()


@pytest.fixture
def envs(tmp_path: Path, settings: Any, project: Path) -> dict[str, str]:
    """Configure qa (no approvals) and staging (one approval) on SQLite; return their URLs."""
    urls = {name: touch_sqlite(f"sqlite:///{tmp_path / name}.db") for name in ("qa", "staging")}
    config = write_config(
        tmp_path / "dashboard.toml",
        {
            "qa": {"url": urls["qa"], "approvals_required": 0},
            "staging": {"url": urls["staging"], "approvals_required": 1},
        },
        alembic_ini=project / "alembic.ini",
    )
    settings.DASHBOARD_CONFIG = str(config)
    return urls


def _upgrade(people: dict[str, Any], env: str, target: str) -> Action:
    return actions.action_request(
        user=people["olga"], environment=env, direction="upgrade", target=target, prepare=True
    )


def _run(people: dict[str, Any], env: str, target: str, **child: str) -> Action:
    """Request an upgrade on env, approve it where needed, and run it with the real runner.

    child: variables Alembic's run (not its offline SQL) sees, such as the one that fails it.
    """
    action = _upgrade(people, env, target)
    if action.approvals_required:
        actions.action_approve(user=people["alan"], action_id=action.pk, plan_hash=action.plan_hash)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in child.items():
            patch.setenv(name, value)
        return actions.action_run(action_id=action.pk, worker="test")


def _rows(action: Action) -> list[RevisionRun]:
    return list(RevisionRun.objects.filter(action=action).order_by("started_at", "pk"))


def test_each_revision_is_timed_from_its_line_to_the_next_and_the_last_to_the_exit(
    people: dict[str, Any], envs: dict[str, str]
) -> None:
    ran = _run(people, "qa", SECOND)
    assert ran.status == Action.Status.SUCCEEDED, ran.error

    rows = _rows(ran)
    assert [(r.revision, r.direction, r.outcome, r.attempt) for r in rows] == [
        (SLOW, "upgrade", "succeeded", 1),
        (SECOND, "upgrade", "succeeded", 1),
    ]
    slow, second = rows
    assert all((r.environment, r.project) == ("qa", "blog") for r in rows)
    # The sleep is inside the first step, and nothing of it leaks into the second.
    assert SLEEP <= slow.duration_s < SLEEP + 3.0
    assert second.duration_s < SLEEP
    assert slow.finished_at == second.started_at
    assert ran.started_at <= slow.started_at and second.finished_at <= ran.finished_at
    assert abs((second.finished_at - second.started_at).total_seconds() - second.duration_s) < 0.5


def test_a_failed_run_is_kept_apart_and_left_out_of_the_forecast(
    people: dict[str, Any], envs: dict[str, str]
) -> None:
    failed = _run(people, "staging", SECOND, MIGRATIONS_PROJECT_FAIL=SECOND)
    assert failed.status == Action.Status.FAILED
    assert "MIGRATIONS_PROJECT_FAIL requested" in failed.error
    rows = _rows(failed)
    # The first step completed before the failure; the failing one carries the run's outcome.
    assert [(r.revision, r.outcome) for r in rows] == [(SLOW, "succeeded"), (SECOND, "failed")]

    asked = _upgrade(people, "qa", SECOND)
    forecast = plan_forecast_seconds(asked)
    # Only the completed step counts: the failed one's time says nothing about a success.
    assert forecast == pytest.approx(rows[0].duration_s)
    client = Client()
    client.force_login(people["vic"])
    item = client.get(f"/api/actions/{asked.pk}").json()
    assert item["forecast_s"] == pytest.approx(rows[0].duration_s, abs=0.001)
    assert item["forecast_lower_bound"] is True
    by_revision = {rev["revision"]: rev for rev in item["revisions"]}
    assert [s["environment"] for s in by_revision[SLOW]["seen"]] == ["staging"]
    assert by_revision[SECOND]["seen"] == [] and by_revision[SECOND]["never_run"] is True
    page = client.get(f"/actions/{asked.pk}/").content.decode()
    assert "Forecast: at least" in page and "1 revision never ran anywhere" in page


def test_pages_and_api_show_the_other_environments_time_and_the_timeline(
    people: dict[str, Any], envs: dict[str, str]
) -> None:
    ran = _run(people, "qa", SECOND)
    assert ran.status == Action.Status.SUCCEEDED, ran.error
    slow, second = _rows(ran)
    client = Client()

    # The request page: what an upgrade to heads runs from base, qa's times beside the first two.
    status_refresh(environments=["staging"])
    client.force_login(people["olga"])
    form = client.get("/environments/staging/request?direction=upgrade").content.decode()
    assert f"qa {seconds_text(slow.duration_s)}" in form
    assert "never run anywhere" in form and "Forecast: at least" in form

    asked = _upgrade(people, "staging", SECOND)
    assert asked.status == Action.Status.REQUESTED
    total = slow.duration_s + second.duration_s
    assert plan_forecast_seconds(asked) == pytest.approx(total)

    client.force_login(people["alan"])
    item = client.get(f"/api/actions/{asked.pk}").json()
    assert item["forecast_s"] == pytest.approx(total, abs=0.002)
    assert item["forecast_lower_bound"] is False
    seen = item["revisions"][0]["seen"]
    assert item["revisions"][0]["revision"] == SLOW
    assert [s["environment"] for s in seen] == ["qa"]
    assert seen[0]["duration_s"] == pytest.approx(slow.duration_s, abs=0.001)
    assert seen[0]["at"] == slow.finished_at.isoformat()

    # The approval page: per revision the time seen on qa, and the whole plan's forecast.
    page = client.get(f"/actions/{asked.pk}/").content.decode()
    assert f"qa {seconds_text(slow.duration_s)}" in page
    assert f"Forecast: about {seconds_text(total)}" in page

    # qa's page lists the run with each revision's time; staging's has none yet.
    qa = client.get("/environments/qa").content.decode()
    assert f'href="/actions/{ran.pk}/"' in qa
    assert f"{SLOW[:12]}</code> {seconds_text(slow.duration_s)}" in qa
    staging = client.get("/environments/staging").content.decode()
    assert "No run of a revision recorded here yet." in staging


@pytest.mark.once
@pytest.mark.postgres
def test_a_lock_timeout_retry_is_kept_apart_per_attempt_and_never_forecast(
    people: dict[str, Any], settings: Any, tmp_path: Path, project: Path, postgres_url: str
) -> None:
    config = write_config(
        tmp_path / "pg.toml",
        {"pg": {"url": postgres_url, "lock_timeout": "1s", "lock_retries": 1}},
        alembic_ini=project / "alembic.ini",
    )
    settings.DASHBOARD_CONFIG = str(config)
    assert run_cli(postgres_url, "upgrade", SECOND).returncode == 0
    with table_blocked(postgres_url):
        ran = _run(people, "pg", "heads")
    assert ran.status == Action.Status.FAILED and ran.retries == 1, ran.error
    rows = _rows(ran)
    # Each attempt reached the step that alters posts and waited there for lock_timeout.
    altering = rows[0].revision
    assert [(r.revision, r.outcome, r.attempt) for r in rows] == [
        (altering, "retried", 1),
        (altering, "failed", 2),
    ]
    assert all(r.duration_s >= 1.0 for r in rows)
    assert heads_of(postgres_url) == (SECOND,)
    again = _upgrade(people, "pg", "heads")
    assert plan_forecast_seconds(again) is None  # nothing of it ever succeeded anywhere


def test_a_retried_attempts_last_step_is_retried_and_a_downgrade_times_what_it_leaves() -> None:
    now = timezone.now()
    lines = [f"INFO  [alembic.runtime.migration] Running upgrade  -> {SLOW}, create users"]
    lines.append(f"INFO  [alembic.runtime.migration] Running upgrade {SLOW} -> {SECOND}, posts")
    marks = []
    for offset, line in enumerate(lines):
        step = parse_progress(line, {SLOW, SECOND})
        assert step is not None
        marks.append(StepMark(step, now + timedelta(seconds=offset * 2), 100.0 + offset * 2))
    taken = AttemptSteps(2, tuple(marks), now + timedelta(seconds=3), 103.0)
    action = Action(pk=7, environment="prod", project="blog", direction="upgrade")
    action.plan = [SLOW, SECOND]
    rows = runs_of(action, taken, RevisionRun.Outcome.RETRIED)
    assert [(r.revision, r.outcome, r.attempt, r.duration_s) for r in rows] == [
        (SLOW, "succeeded", 2, 2.0),
        (SECOND, "retried", 2, 1.0),
    ]
    # A downgrade's step runs the revision it leaves.
    down = parse_progress(f"Running downgrade {SECOND} -> {SLOW}, posts", {SLOW, SECOND})
    assert down is not None
    action.direction, action.plan = "downgrade", [SECOND]
    back = AttemptSteps(1, (StepMark(down, now, 5.0),), now, 5.5)
    assert [(r.revision, r.direction) for r in runs_of(action, back, "succeeded")] == [
        (SECOND, "downgrade")
    ]
