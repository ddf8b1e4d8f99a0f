"""A worker that went silent: interrupted on read, the no-worker banner, /healthz and /readyz."""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from dashboard import runner
from dashboard.config import Project
from dashboard.models import Action, WorkerBeat
from dashboard.services import actions
from dashboard.worker import WorkerBeats
from tests.actions_support import (
    ALL_REVISIONS,
    SAMPLE_INI,
    make_people,
    stop_worker,
    touch_sqlite,
    wait_for,
    write_config,
)
from tests.faults_support import alembic_processes, keep_roles, start_logged_worker

__all__ = ["keep_roles"]  # a fixture, used by name

PASSWORD = "correct-horse-9"
LIMIT = 20.0
BLOG = Project(name="blog", script_location=SAMPLE_INI.parent, alembic_ini=SAMPLE_INI)

pytestmark = pytest.mark.django_db


@pytest.fixture
def viewer(settings: Any) -> Client:
    """Return a client signed in as a viewer, with a heartbeat limit of LIMIT seconds."""
    settings.DASHBOARD_HEARTBEAT_LIMIT = LIMIT
    call_command("adduser", "vera", role="viewer", password=PASSWORD)
    client = Client()
    assert client.login(username="vera", password=PASSWORD)
    return client


def _running(heartbeat_age: float, **fields: Any) -> Action:
    now = timezone.now()
    values: dict[str, Any] = {"environment": "staging", "worker": "gone:1", **fields}
    return Action.objects.create(
        project="blog",
        direction="upgrade",
        target="heads",
        from_heads=[],
        target_heads=["6c0a8d3f5e94"],
        plan=["3f8c1a2b9d04"],
        fingerprint="f",
        plan_hash="h",
        requested_by_name="olga",
        status=Action.Status.RUNNING,
        started_at=now - timedelta(seconds=heartbeat_age + 5),
        heartbeat_at=now - timedelta(seconds=heartbeat_age),
        **values,
    )


def _beat(name: str, age: float) -> WorkerBeat:
    seen = timezone.now() - timedelta(seconds=age)
    return WorkerBeat.objects.create(name=name, started_at=seen, seen_at=seen)


# --- an action whose worker went silent -----------------------------------------------------


def test_a_running_action_silent_past_the_limit_reads_as_interrupted_at_once(
    viewer: Client,
) -> None:
    silent = _running(LIMIT + 5)
    since = f"{silent.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC"

    page = viewer.get(f"/actions/{silent.pk}/").content.decode()
    progress = viewer.get(f"/actions/{silent.pk}/progress", HTTP_HX_REQUEST="true")
    listing = viewer.get("/actions/").content.decode()

    for html in (page, progress.content.decode(), listing):
        assert f"interrupted — worker silent since {since}" in html
        assert "state-interrupted" in html and "state-running" not in html
    assert "gone:1" in page and "Cancel" not in page
    # Computed on read: the row stays as it is until housekeeping records the interruption,
    # and the page keeps polling so it shows the recorded outcome then.
    silent.refresh_from_db()
    assert silent.status == Action.Status.RUNNING
    assert 'hx-trigger="every 1s"' in progress.content.decode()


def test_a_running_action_with_a_recent_heartbeat_reads_as_running(viewer: Client) -> None:
    alive = _running(LIMIT - 5)
    page = viewer.get(f"/actions/{alive.pk}/").content.decode()
    assert "state-running" in page and "worker silent" not in page


def test_the_status_filter_counts_a_silent_run_as_interrupted(viewer: Client) -> None:
    silent = _running(LIMIT + 5)
    alive = _running(1, environment="dev")
    interrupted = viewer.get("/actions/?status=interrupted").content.decode()
    running = viewer.get("/actions/?status=running").content.decode()
    assert (
        f'id="action-{silent.pk}"' in interrupted and f'id="action-{alive.pk}"' not in interrupted
    )
    assert f'id="action-{alive.pk}"' in running and f'id="action-{silent.pk}"' not in running


# --- the overview's banner ------------------------------------------------------------------


def test_the_overview_says_when_no_worker_was_ever_seen(viewer: Client) -> None:
    html = viewer.get("/").content.decode()
    assert 'id="no-worker"' in html
    assert "No worker has been seen" in html


def test_the_overview_says_since_when_the_last_worker_is_silent(viewer: Client) -> None:
    beat = _beat("gone:1", LIMIT + 30)
    html = viewer.get("/").content.decode()
    assert 'id="no-worker"' in html
    assert f"{beat.seen_at:%Y-%m-%d %H:%M:%S} UTC" in html


def test_the_overview_has_no_banner_while_a_worker_beats(viewer: Client) -> None:
    _beat("gone:1", LIMIT + 30)
    _beat("alive:2", 1)
    assert 'id="no-worker"' not in viewer.get("/").content.decode()


def _oob_banner(html: str) -> str:
    """Return what the out-of-band banner element holds; fail when it is missing."""
    found = re.search(
        r'<div id="worker-banner" hx-swap-oob="true">(.*?)</div>', html, flags=re.DOTALL
    )
    assert found is not None, html
    return found.group(1)


def test_the_overviews_poll_carries_the_banner_out_of_band_and_clears_it(viewer: Client) -> None:
    _beat("gone:1", LIMIT + 30)
    page = viewer.get("/").content.decode()
    assert 'id="no-worker"' in _oob_banner(page)  # the element the poll swaps is on the page
    poll = viewer.get("/", HTTP_HX_REQUEST="true").content.decode()
    assert 'id="matrix"' in poll and "<html" not in poll
    assert "No worker has been seen" in _oob_banner(poll)

    _beat("alive:2", 1)
    # Still the same element, now empty: a page left open loses the banner on its next poll.
    assert _oob_banner(viewer.get("/", HTTP_HX_REQUEST="true").content.decode()).strip() == ""
    assert _oob_banner(viewer.get("/").content.decode()).strip() == ""


# --- /healthz and /readyz ------------------------------------------------------------------


def test_healthz_reports_the_workers_and_stays_200_without_any(settings: Any) -> None:
    settings.DASHBOARD_HEARTBEAT_LIMIT = LIMIT
    client = Client()  # nobody signed in
    none = client.get("/healthz")
    assert none.status_code == 200
    assert none.json()["workers"] == {"seen": 0, "newest_beat_age_s": None, "ok": False}

    _beat("gone:1", LIMIT + 30)
    silent = client.get("/healthz")
    assert silent.status_code == 200
    workers = silent.json()["workers"]
    assert workers["seen"] == 0 and workers["ok"] is False
    assert LIMIT + 29 < workers["newest_beat_age_s"] < LIMIT + 40

    _beat("alive:2", 1)
    alive = client.get("/healthz").json()
    assert alive["workers"]["seen"] == 1 and alive["workers"]["ok"] is True
    assert 0.5 < alive["workers"]["newest_beat_age_s"] < 10
    assert alive["status"] == "ok"


def test_readyz_fails_while_no_worker_is_seen_and_passes_once_one_beats(settings: Any) -> None:
    settings.DASHBOARD_HEARTBEAT_LIMIT = LIMIT
    client = Client()
    unready = client.get("/readyz")
    assert unready.status_code == 503
    assert unready.json()["ready"] is False
    assert any("worker" in problem for problem in unready.json()["problems"])
    _beat("alive:2", 1)
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.json()
    assert ready.json()["ready"] is True and ready.json()["problems"] == []
    assert client.post("/readyz").status_code == 405


# --- the worker's beat ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_worker_beats_while_it_lives_and_removes_its_row_when_it_stops() -> None:
    old = _beat("crashed:1", 3 * 24 * 3600)  # a worker SIGKILLed days ago
    recent = _beat("crashed:2", 60)
    beats = WorkerBeats(name="here:1", interval=0.05)
    beats.start()
    try:
        first = _wait_for_beat("here:1")
        time.sleep(0.3)
        later = WorkerBeat.objects.get(name="here:1")
        assert later.seen_at > first.seen_at and later.started_at == first.started_at
        assert not WorkerBeat.objects.filter(pk=old.pk).exists()  # pruned at start
        assert WorkerBeat.objects.filter(pk=recent.pk).exists()
    finally:
        beats.stop()
    assert not WorkerBeat.objects.filter(name="here:1").exists()


def _wait_for_beat(name: str) -> WorkerBeat:
    deadline = time.monotonic() + 5
    while True:
        found = WorkerBeat.objects.filter(name=name).first()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"{name} never beat"
        time.sleep(0.02)


# --- the only worker, killed mid-run (a real worker subprocess) -----------------------------

KILL_LIMIT = 4.0
# What showing it may take beyond the limit on a loaded machine: a page's own time, a poll.
SHOW_SLACK = 1.5


def _page(client: Client, url: str) -> str:
    return client.get(url).content.decode()


@pytest.mark.django_db(transaction=True)
def test_killing_the_only_worker_shows_its_run_interrupted_within_the_limit(
    settings: Any, tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings.DASHBOARD_HEARTBEAT_LIMIT = KILL_LIMIT
    url = touch_sqlite(sqlite_url)
    assert runner.upgrade(BLOG, url, ALL_REVISIONS[0]).succeeded
    config = write_config(tmp_path / "dashboard.toml", {"staging": {"url": url}})
    settings.DASHBOARD_CONFIG = str(config)
    people = make_people()
    viewer = Client()
    viewer.force_login(people["vic"])
    log = tmp_path / "worker.log"
    limits = {
        "DASHBOARD_HEARTBEAT_LIMIT": f"{KILL_LIMIT:g}",
        "DASHBOARD_HOUSEKEEPING_INTERVAL": "1",
    }
    # Each revision sleeps before its DDL: the run is mid-revision when its worker dies.
    worker = start_logged_worker(config, log, MIGRATIONS_PROJECT_SLEEP="60", **limits)
    try:
        wait_for(lambda: Client().get("/healthz").json()["workers"]["ok"], within=60)
        assert 'id="no-worker"' not in _page(viewer, "/")
        action = actions.action_request(
            user=people["olga"],
            environment="staging",
            direction="upgrade",
            target="heads",
            prepare=True,  # here, without the worker's sleeping revisions
        )
        wait_for(
            lambda: Action.objects.filter(
                pk=action.pk, status=Action.Status.RUNNING, progress_done__gte=1
            ).exists(),
            within=60,
        )
        assert "state-running" in _page(viewer, f"/actions/{action.pk}/")
        os.kill(worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        worker.wait(timeout=10)
        shown = wait_for(
            lambda: "interrupted — worker silent since" in _page(viewer, f"/actions/{action.pk}/"),
            within=KILL_LIMIT + SHOW_SLACK,
            every=0.1,
        )
        took = time.monotonic() - killed
        assert shown
        banner = wait_for(
            lambda: 'id="no-worker"' in _page(viewer, "/"),
            within=max(0.1, KILL_LIMIT + SHOW_SLACK - (time.monotonic() - killed)),
            every=0.1,
        )
        banner_after = time.monotonic() - killed
        assert banner
        wait_for(lambda: not alembic_processes(url.removeprefix("sqlite:///")), within=5)
    finally:
        stop_worker(worker)
        for orphan in alembic_processes(url.removeprefix("sqlite:///")):
            os.kill(orphan, signal.SIGKILL)

    # No worker runs: what the pages said was computed on read, nothing recorded it yet.
    assert Action.objects.get(pk=action.pk).status == Action.Status.RUNNING
    progress = _page(viewer, f"/actions/{action.pk}/progress")
    assert "interrupted — worker silent since" in progress and "state-running" not in progress
    assert "interrupted — worker silent since" in _page(viewer, "/actions/")
    health = Client().get("/healthz")
    assert health.status_code == 200
    assert health.json()["workers"]["seen"] == 0 and health.json()["workers"]["ok"] is False
    # Rounded to 0.1 s: an age of 4.04 reads 4.0.
    assert health.json()["workers"]["newest_beat_age_s"] >= KILL_LIMIT
    assert Client().get("/readyz").status_code == 503

    # The next worker's housekeeping records it; a clean stop removes that worker's beat.
    successor = start_logged_worker(config, log, **limits)
    try:
        recorded = wait_for(
            lambda: Action.objects.filter(pk=action.pk, status=Action.Status.INTERRUPTED).first(),
            within=60,
        )
        assert WorkerBeat.objects.filter(name__endswith=f":{successor.pid}").exists()
        # Stopped once it handles SIGTERM (db_worker's loop), not in its start-up.
        wait_for(lambda: log.read_text().count("Starting worker") == 2, within=30)
    finally:
        stop_worker(successor)
    assert successor.returncode == 0, log.read_text()[-3000:]
    assert "stopped heartbeating" in recorded.error
    assert recorded.after_heads == [ALL_REVISIONS[0]]
    assert not WorkerBeat.objects.filter(name__endswith=f":{successor.pid}").exists()
    with capsys.disabled():
        print(
            f"\nonly-worker-killed: page said interrupted {took:.1f} s and the overview's"
            f" banner showed {banner_after:.1f} s after the SIGKILL (limit {KILL_LIMIT:g} s)"
        )
