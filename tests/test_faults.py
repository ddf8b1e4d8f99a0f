"""Faults on PostgreSQL with real workers: a killed worker, two workers, a target that goes away."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from dashboard import audit, runner
from dashboard.config import Project
from dashboard.models import Action, AuditEvent
from dashboard.services import actions
from tests.actions_support import (
    ALL_REVISIONS,
    SAMPLE_INI,
    make_people,
    schema_of,
    stop_worker,
    wait_for,
    write_config,
)
from tests.faults_support import (
    TARGET_PASSWORD,
    alembic_processes,
    backends_since,
    database_name,
    drop_database,
    keep_roles,
    start_logged_worker,
    target_databases,
    terminate_backends,
    version_rows,
    worker_pid,
)

__all__ = ["keep_roles", "target_databases"]  # fixtures, used by name

# Worker processes share the test database, so every test commits for real.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

BLOG = Project(name="blog", script_location=SAMPLE_INI.parent, alembic_ini=SAMPLE_INI)
START = ALL_REVISIONS[1]  # environments start two revisions in, so a version row exists
HEARTBEAT_LIMIT = 3.0
HOUSEKEEPING_INTERVAL = 1.0
# Workers that give up on a silent run quickly (the heartbeat comes every 2 s).
FAST_HOUSEKEEPING = {
    "DASHBOARD_HEARTBEAT_LIMIT": f"{HEARTBEAT_LIMIT:g}",
    "DASHBOARD_HOUSEKEEPING_INTERVAL": f"{HOUSEKEEPING_INTERVAL:g}",
}
# What detection may take beyond limit + interval: a worker's poll, a loaded machine.
DETECTION_SLACK = 3.0
KILL_TRIALS = 10


@pytest.fixture
def people() -> dict[str, Any]:
    return make_people()


def _configure(settings: Any, tmp_path: Path, urls: dict[str, str], **values: Any) -> Path:
    """Write a config with these environments and make it the test process's config too."""
    path = write_config(
        tmp_path / "dashboard.toml", {name: {"url": url, **values} for name, url in urls.items()}
    )
    settings.DASHBOARD_CONFIG = str(path)
    return path


def _running_with_progress(action_id: int, steps: int = 1) -> Action | None:
    """Return the action once it runs and Alembic announced `steps` steps in its log."""
    action = Action.objects.filter(
        pk=action_id, status=Action.Status.RUNNING, progress_done__gte=steps
    ).first()
    if action is None or action.log.count("Running upgrade") < steps:
        return None
    return action


def _finished(action_id: int) -> Action | None:
    """Return the action once it has ended, whichever way."""
    return Action.objects.filter(pk=action_id, finished_at__isnull=False).first()


def _no_alembic_left(marker: str) -> bool:
    """Say whether no Alembic process works for marker any more."""
    return not alembic_processes(marker)


def _report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    """Print a summary line to the terminal even while pytest captures output."""
    with capsys.disabled():
        print(f"\n{line}")


@dataclass
class KillTrial:
    """One worker killed in the middle of a run, and what the test saw around it."""

    number: int
    environment: str
    url: str
    action_id: int = 0
    killed_at: datetime | None = None
    detected_after: float | None = None
    problems: list[str] = field(default_factory=list)


def _kill_mid_run(
    trial: KillTrial, pool: list[subprocess.Popen[str]], user: Any, start: Any
) -> None:
    """Request an upgrade, kill the worker running it mid-migration, and replace the worker."""
    action = actions.action_request(
        user=user, environment=trial.environment, direction="upgrade", target="heads", prepare=True
    )
    trial.action_id = action.pk
    running = wait_for(lambda: _running_with_progress(action.pk), within=30)
    pid = worker_pid(running)
    victim = next((w for w in pool if w.pid == pid), None)
    assert victim is not None, f"action #{action.pk} ran in {running.worker}, not one of ours"
    marker = database_name(trial.url)
    if not alembic_processes(marker):
        trial.problems.append("no Alembic process was found before the kill: the scan is blind")
    os.kill(pid, signal.SIGKILL)
    trial.killed_at = timezone.now()
    victim.wait(timeout=10)
    pool.remove(victim)
    pool.append(start())
    try:
        wait_for(partial(_no_alembic_left, marker), within=3)
    except AssertionError:
        left = alembic_processes(marker)
        trial.problems.append(f"Alembic outlived its worker: pids {left}")
        for orphan in left:  # started by our worker: do not leak it into later tests
            os.kill(orphan, signal.SIGKILL)


def _judge_kill(trial: KillTrial, schema_before: dict[str, Any]) -> None:
    """Check the killed run became interrupted in time and left the database as it was."""
    if trial.killed_at is None:
        return  # never killed: already counted
    deadline = HEARTBEAT_LIMIT + HOUSEKEEPING_INTERVAL + DETECTION_SLACK
    try:
        action = wait_for(
            partial(_finished, trial.action_id),
            within=max(0.1, deadline - (timezone.now() - trial.killed_at).total_seconds()),
        )
    except AssertionError:
        trial.problems.append(f"still running {deadline:g} s after the kill")
        return
    if action.status != Action.Status.INTERRUPTED:
        trial.problems.append(f"became {action.status}, not interrupted: {action.error}")
        return
    took = trial.detected_after = (action.finished_at - trial.killed_at).total_seconds()
    silent = (action.finished_at - action.heartbeat_at).total_seconds()
    if silent < HEARTBEAT_LIMIT:
        trial.problems.append(f"interrupted after only {silent:.1f} s without a heartbeat")
    rows = version_rows(trial.url)
    if not (rows == action.after_heads == action.from_heads == [START]):
        trial.problems.append(
            f"heads moved: table {rows}, after {action.after_heads}, from {action.from_heads}"
        )
    if schema_of(trial.url) != schema_before:
        trial.problems.append("the schema changed although the run was killed")
    stale = backends_since(trial.url, trial.killed_at)
    if stale:
        trial.problems.append(f"server backends from before the kill remain: {stale}")
    if "stopped heartbeating" not in action.error:
        trial.problems.append(f"unclear error: {action.error}")
    event = AuditEvent.objects.filter(action_id=action.pk, verb="action.interrupted").first()
    if event is None or event.payload.get("after_heads") != [START]:
        trial.problems.append("no action.interrupted event with the heads after")
    if took > deadline:
        trial.problems.append(f"interrupted {took:.1f} s after the kill")


def test_a_killed_worker_leaves_an_interrupted_run_and_an_untouched_database_ten_times(
    people: dict[str, Any],
    target_databases: Any,
    settings: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    urls = dict(zip(["kill0", "kill1", "kill2"], target_databases(3), strict=True))
    config = _configure(settings, tmp_path, urls)
    for url in urls.values():
        assert runner.upgrade(BLOG, url, START).succeeded
    schemas = {name: schema_of(url) for name, url in urls.items()}
    log = tmp_path / "workers.log"

    def start() -> subprocess.Popen[str]:
        return start_logged_worker(config, log, MIGRATIONS_PROJECT_SLEEP="0.5", **FAST_HOUSEKEEPING)

    # Whichever worker claims a run is killed; the other, or its replacement, notices.
    pool = [start(), start()]
    trials = [
        KillTrial(number=n, environment=f"kill{n % len(urls)}", url=urls[f"kill{n % len(urls)}"])
        for n in range(KILL_TRIALS)
    ]
    try:
        for trial in trials:
            # The environment's previous trial must have ended before the next can run there.
            if trial.number >= len(urls):
                earlier = trials[trial.number - len(urls)]
                if earlier.action_id:
                    _judge_kill(earlier, schemas[earlier.environment])
            try:
                _kill_mid_run(trial, pool, people["olga"], start)
            except AssertionError as exc:
                trial.problems.append(f"could not kill mid-run: {exc}")
        for trial in trials[-len(urls) :]:
            if trial.action_id:
                _judge_kill(trial, schemas[trial.environment])
    finally:
        for worker in pool:
            stop_worker(worker)
    failures = [t for t in trials if t.problems]
    delays = [t.detected_after for t in trials if t.detected_after is not None]
    _report(
        capsys,
        f"killed-worker: {len(trials)} trials, {len(failures)} failures"
        f" (interrupted {min(delays, default=0):.1f}-{max(delays, default=0):.1f} s after the kill,"
        f" heartbeat limit {HEARTBEAT_LIMIT:g} s, housekeeping every {HOUSEKEEPING_INTERVAL:g} s)",
    )
    assert not failures, (
        "\n".join(
            f"trial {t.number} ({t.environment}, action #{t.action_id}): {'; '.join(t.problems)}"
            for t in failures
        )
        + "\n"
        + log.read_text()[-3000:]
    )
    assert audit.verify().broken_at is None


# One revision at a time, up three and down again: every action is small and ends at base.
ROUND_TRIP = [
    ("upgrade", ALL_REVISIONS[0]),
    ("upgrade", ALL_REVISIONS[1]),
    ("upgrade", ALL_REVISIONS[2]),
    ("downgrade", ALL_REVISIONS[1]),
    ("downgrade", ALL_REVISIONS[0]),
    ("downgrade", "base"),
]


def _max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """Return the most intervals open at one moment."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_two_workers_run_thirty_actions_on_five_environments_once_each_one_at_a_time(
    people: dict[str, Any],
    target_databases: Any,
    settings: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    urls = {f"env{i}": url for i, url in enumerate(target_databases(5))}
    config = _configure(settings, tmp_path, urls)
    log = tmp_path / "workers.log"
    workers = [start_logged_worker(config, log) for _ in range(2)]
    # A plan is pinned to the heads it was made from, so an environment's next action is
    # requested (through the web path: the worker prepares its SQL) once the last one ended.
    requested: dict[str, list[int]] = {name: [] for name in urls}
    deadline = time.monotonic() + 90
    try:
        while True:
            last = {ids[-1] for ids in requested.values() if ids}
            ended = dict(
                Action.objects.filter(pk__in=last, finished_at__isnull=False).values_list(
                    "pk", "status"
                )
            )
            refused = {pk: status for pk, status in ended.items() if status != "succeeded"}
            assert not refused, f"actions that did not succeed: {refused}\n{log.read_text()}"
            for name, ids in requested.items():
                if len(ids) < len(ROUND_TRIP) and (not ids or ids[-1] in ended):
                    direction, target = ROUND_TRIP[len(ids)]
                    action = actions.action_request(
                        user=people["olga"], environment=name, direction=direction, target=target
                    )
                    ids.append(action.pk)
            if all(len(ids) == len(ROUND_TRIP) and ids[-1] in ended for ids in requested.values()):
                break
            assert time.monotonic() < deadline, f"not done in time\n{log.read_text()[-3000:]}"
            time.sleep(0.05)
    finally:
        for worker in workers:
            stop_worker(worker)

    done = list(Action.objects.order_by("pk"))
    assert len(done) == len(urls) * len(ROUND_TRIP) == 30
    assert {a.status for a in done} == {Action.Status.SUCCEEDED}
    assert all(len(a.plan) == 1 and a.progress_done == 1 for a in done)
    started = AuditEvent.objects.filter(verb="action.started")
    runs = {a.pk: started.filter(action_id=a.pk).count() for a in done}
    assert set(runs.values()) == {1}, runs  # each ran exactly once
    overlaps = 0
    for name in urls:
        mine = sorted((a for a in done if a.environment == name), key=lambda a: a.started_at)
        assert [a.pk for a in mine] == requested[name]
        overlaps += sum(
            1
            for earlier, later in zip(mine, mine[1:], strict=False)
            if later.started_at < earlier.finished_at
        )
        assert version_rows(urls[name]) == [] == mine[-1].after_heads
    assert overlaps == 0
    pids = {w.pid for w in workers}
    by_worker = {pid: sum(1 for a in done if worker_pid(a) == pid) for pid in pids}
    assert all(count > 0 for count in by_worker.values()), by_worker  # both workers did work
    parallel = _max_overlap([(a.started_at, a.finished_at) for a in done])
    assert audit.verify().broken_at is None
    _report(
        capsys,
        f"two-workers: {len(done)} actions on {len(urls)} environments,"
        f" {sum(a.status == 'succeeded' for a in done)} succeeded,"
        f" {sum(runs.values())} started events, {overlaps} overlaps on one environment,"
        f" runs per worker {sorted(by_worker.values())}, at most {parallel} at once",
    )


def _ended_by_the_cut(error: str, environment: str) -> None:
    """Assert the error says the run ended because its database went away.

    Every session on the database goes at once, the worker's run lock connection too, so
    whichever the worker notices first tells: Alembic's failure, or the lost run lock.
    """
    if error.startswith(f"the run lock of {environment} was lost during the run"):
        assert "(its connection ended); the run was stopped" in error
        return
    assert error.startswith("alembic exited with status 1 ("), error
    # psycopg2 says one or the other, depending on when it notices.
    assert re.search(
        r"terminating connection due to administrator command|server closed the connection"
        r"|does not exist",
        error,
    ), error


def test_a_target_database_that_goes_away_mid_run_fails_the_action_clearly(
    people: dict[str, Any],
    target_databases: Any,
    settings: Any,
    tmp_path: Path,
    client: Client,
    capsys: pytest.CaptureFixture[str],
) -> None:
    staging, qa = target_databases(2)
    assert runner.upgrade(BLOG, staging, START).succeeded
    config = _configure(settings, tmp_path, {"staging": staging, "qa": qa}, time_limit=60)
    log = tmp_path / "worker.log"
    worker = start_logged_worker(config, log, MIGRATIONS_PROJECT_SLEEP="0.7")
    outcomes: dict[str, tuple[Action, float]] = {}
    try:
        for name, url in (("staging", staging), ("qa", qa)):
            action = actions.action_request(
                user=people["olga"],
                environment=name,
                direction="upgrade",
                target="heads",
                prepare=True,
            )
            # The second step has begun: the first one's DDL is in the open transaction.
            wait_for(partial(_running_with_progress, action.pk, steps=2), within=30)
            assert alembic_processes(database_name(url))
            cut_at = timezone.now()
            if name == "staging":
                assert terminate_backends(url) >= 1  # Alembic's backend
            else:
                drop_database(url)
            ended = wait_for(partial(_finished, action.pk), within=20)
            outcomes[name] = (ended, (ended.finished_at - cut_at).total_seconds())
            wait_for(partial(_no_alembic_left, database_name(url)), within=5)
            if name == "staging":
                assert backends_since(url, cut_at) == []
        assert worker.poll() is None  # the worker itself carries on
    finally:
        stop_worker(worker)

    terminated, terminated_after = outcomes["staging"]
    assert terminated.status == Action.Status.FAILED
    _ended_by_the_cut(terminated.error, "staging")
    # Read again afterwards: PostgreSQL rolled the whole run back.
    assert terminated.after_heads == version_rows(staging) == terminated.from_heads == [START]
    assert terminated.error.endswith(f"staging is still at {START}: nothing stayed applied")

    dropped, dropped_after = outcomes["qa"]
    assert dropped.status == Action.Status.FAILED
    _ended_by_the_cut(dropped.error, "qa")
    assert dropped.after_heads is None
    assert "qa's heads could not be read afterwards" in dropped.error
    # The reading's error, and the attempt to stop its sessions, both say why.
    assert re.search(rf"database .{database_name(qa)}. does not exist\)", dropped.error)

    for action, took in outcomes.values():
        assert took < 10, f"{action.environment} took {took:.1f} s to fail"
        assert "time limit" not in action.error
        assert TARGET_PASSWORD not in action.error + action.log
        assert AuditEvent.objects.filter(action_id=action.pk, verb="action.failed").exists()
    assert client.login(username="vic", password="correct-horse-9")
    for action, said in ((terminated, "nothing stayed applied"), (dropped, "afterwards (database")):
        page = client.get(f"/actions/{action.pk}/")
        assert page.status_code == 200
        html = page.content.decode()
        assert said in html and TARGET_PASSWORD not in html
    # The environment whose database vanished shows as a problem, not a server error.
    assert client.get("/actions/").status_code == 200
    for path in ("/", "/environments/qa"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert "unreachable" in page.content.decode(), path
    _report(
        capsys,
        f"target-gone: terminated backend failed the action in {terminated_after:.1f} s"
        f" (heads read again: {terminated.after_heads}); dropped database failed it in"
        f" {dropped_after:.1f} s (heads unknown, page renders)",
    )
