"""The worker's housekeeping: interrupted runs, lost queue entries, config changes, secrets."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.tasks import TaskResultStatus
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from dashboard import runner, worker
from dashboard.config import Project, current_config, load_config
from dashboard.models import Action, AuditEvent
from dashboard.runner.monitor import RunMonitor
from dashboard.services import workers
from dashboard.services.actions import pinning as plans
from dashboard.tasks import keep_house, prepare_action, run_action
from tests.actions_support import SAMPLE_INI, insert_heads, touch_sqlite, write_config

pytestmark = pytest.mark.django_db


def _action(status: str, **fields: Any) -> Action:
    values: dict[str, Any] = {
        "environment": "staging",
        "project": "blog",
        "direction": "upgrade",
        "target": "heads",
        "from_heads": [],
        "target_heads": ["6c0a8d3f5e94"],
        "plan": ["3f8c1a2b9d04"],
        "fingerprint": "f",
        "plan_hash": "h",
        "requested_by_name": "olga",
        "status": status,
    }
    return Action.objects.create(**{**values, **fields})


def test_silent_runs_become_interrupted_after_the_configured_limit(
    tmp_path: Path, settings: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'staging.db'}"
    insert_heads(url, ["3f8c1a2b9d04"])
    settings.DASHBOARD_CONFIG = str(write_config(tmp_path / "d.toml", {"staging": {"url": url}}))
    settings.DASHBOARD_HEARTBEAT_LIMIT = 5
    now = timezone.now()
    silent = _action(
        Action.Status.RUNNING,
        started_at=now - timedelta(seconds=30),
        heartbeat_at=now - timedelta(seconds=10),
        worker="gone:1",
    )
    _action(Action.Status.QUEUED)

    report = worker.Housekeeping().run_once()

    assert report.interrupted == [silent.pk]
    silent.refresh_from_db()
    assert silent.status == Action.Status.INTERRUPTED and silent.finished_at is not None
    assert silent.after_heads == ["3f8c1a2b9d04"]
    assert silent.error.startswith("the worker gone:1 stopped heartbeating at")
    assert "staging is now at 3f8c1a2b9d04, partly applied" in silent.error
    event = AuditEvent.objects.get(verb="action.interrupted")
    assert (event.action_id, event.environment) == (silent.pk, "staging")


def test_a_recent_heartbeat_is_left_alone(settings: Any) -> None:
    settings.DASHBOARD_HEARTBEAT_LIMIT = 5
    alive = _action(Action.Status.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now())
    assert worker.Housekeeping().run_once().interrupted == []
    alive.refresh_from_db()
    assert alive.status == Action.Status.RUNNING


def test_queued_actions_whose_queue_entry_was_lost_are_queued_again() -> None:
    lost = _action(Action.Status.QUEUED, task_id="00000000-0000-0000-0000-000000000000")
    assert worker.Housekeeping().run_once().requeued == [lost.pk]
    lost.refresh_from_db()
    entry = DBTaskResult.objects.get(id=lost.task_id)
    assert (entry.task_path, entry.args_kwargs["args"]) == (run_action.module_path, [lost.pk])
    assert worker.Housekeeping().run_once().requeued == []


def test_requests_whose_sql_preparation_was_lost_are_prepared_again() -> None:
    lost = _action(Action.Status.REQUESTED)
    young = _action(Action.Status.REQUESTED)
    Action.objects.filter(pk=lost.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    assert worker.Housekeeping().run_once().requeued == [lost.pk]
    entry = DBTaskResult.objects.get(task_path=prepare_action.module_path)
    assert entry.args_kwargs["args"] == [lost.pk] != [young.pk]
    assert worker.Housekeeping().run_once().requeued == []


def test_a_preparation_whose_worker_died_mid_run_is_prepared_again() -> None:
    # Planned from the project as it is: housekeeping would set aside a plan of other code.
    fingerprint = plans.current_fingerprint(current_config().projects["blog"])
    stuck = _action(Action.Status.REQUESTED, fingerprint=fingerprint)
    Action.objects.filter(pk=stuck.pk).update(created_at=timezone.now() - timedelta(minutes=30))
    entry = DBTaskResult.objects.get(id=prepare_action.enqueue(stuck.pk).id)
    # The worker claimed it, then was killed: django-tasks-db leaves the row "running".
    DBTaskResult.objects.filter(id=entry.id).update(
        status=TaskResultStatus.RUNNING, started_at=timezone.now() - timedelta(seconds=30)
    )
    assert worker.Housekeeping().run_once().requeued == []  # still within its time
    DBTaskResult.objects.filter(id=entry.id).update(
        started_at=timezone.now() - timedelta(minutes=10)
    )
    assert worker.Housekeeping().run_once().requeued == [stuck.pk]


def test_housekeeping_is_scheduled_once_however_often_it_is_asked() -> None:
    assert worker.schedule_housekeeping(delay=30) is True
    assert worker.schedule_housekeeping(delay=30) is False
    waiting = DBTaskResult.objects.filter(
        task_path=keep_house.module_path, status=TaskResultStatus.READY
    )
    assert waiting.count() == 1
    assert waiting.get().run_after > timezone.now() + timedelta(seconds=20)


def test_config_changes_are_recorded_without_urls(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.toml"
    secret_url = "postgresql://deploy:s3cret-pw@db.internal/prod"
    write_config(path, {"staging": {"url": "sqlite:///s.db"}, "prod": {"url": secret_url}})
    first = worker.config_changes_record(load_config(path))
    assert first is not None
    assert first.payload["appeared"] == {"projects": ["blog"], "environments": ["prod", "staging"]}
    assert worker.config_changes_record(load_config(path)) is None  # nothing changed

    write_config(
        path,
        {
            "prod": {"url": secret_url.replace("s3cret-pw", "n3w-pw"), "approvals_required": 2},
            "dev": {"url": "sqlite:///d.db"},
        },
    )
    second = worker.config_changes_record(load_config(path))
    assert second is not None
    assert second.payload["appeared"]["environments"] == ["dev"]
    assert second.payload["vanished"]["environments"] == ["staging"]
    assert second.payload["changed"] == {"projects": [], "environments": ["prod"]}
    for event in (first, second):
        text = json.dumps(event.payload)
        assert "s3cret" not in text and "n3w-pw" not in text and "db.internal" not in text


def test_workers_that_see_different_values_report_their_own_changes_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path / "dashboard.toml", {"staging": {"url_env": "FLIP_TEST_URL"}})
    views = {"host-a:11": "sqlite:///a.db", "host-b:22": "sqlite:///b.db"}

    def housekeeping_round(name: str) -> AuditEvent | None:
        # Each worker runs with its own environment variables, as two machines would.
        monkeypatch.setattr(workers, "worker_name", lambda: name)
        monkeypatch.setenv("FLIP_TEST_URL", views[name])
        return worker.config_changes_record(load_config(path))

    first = housekeeping_round("host-a:11")
    assert first is not None and first.payload["worker"] == "host-a:11"
    second = housekeeping_round("host-b:22")  # its view differs from the last record: say so
    assert second is not None and second.payload["worker"] == "host-b:22"
    assert second.payload["database_changed"] == ["staging"]
    for _ in range(3):
        assert housekeeping_round("host-a:11") is None
        assert housekeeping_round("host-b:22") is None
    assert AuditEvent.objects.filter(verb=worker.CONFIG_VERB).count() == 2

    # A change each worker sees is reported by each, once.
    views = {name: url.replace(".db", "-new.db") for name, url in views.items()}
    for name in views:
        changed = housekeeping_round(name)
        assert changed is not None and changed.payload["database_changed"] == ["staging"]
    assert housekeeping_round("host-a:11") is None
    assert housekeeping_round("host-b:22") is None
    assert AuditEvent.objects.filter(verb=worker.CONFIG_VERB).count() == 4


def test_child_does_not_inherit_dropped_variables(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dump = tmp_path / "child-environment.txt"
    python = tmp_path / "python"
    # The project's interpreter, wrapped to write down the environment it was started with.
    python.write_text(f'#!/bin/sh\nenv > "{dump}"\nexec "{sys.executable}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("SECRET_KEY", "dashboard-secret")
    monkeypatch.setenv("PROD_DATABASE_URL", "postgresql://u:pw@prod/db")
    monkeypatch.setenv("KEPT_FOR_THE_PROJECT", "1")
    # The wrapper sees what an exec'd child starts with; a fork server's runs get their
    # environment per request instead (tests/test_runner_zygote.py checks those).
    monkeypatch.setenv("DASHBOARD_ALEMBIC_ZYGOTE", "0")
    project = Project(
        name="blog", script_location=SAMPLE_INI.parent, alembic_ini=SAMPLE_INI, python=str(python)
    )
    result = runner.run_alembic(
        project,
        touch_sqlite(sqlite_url),
        ["current"],
        drop_env={"SECRET_KEY", "PROD_DATABASE_URL"},
    )
    assert result.returncode == 0, result.output_tail
    names = {line.split("=", 1)[0] for line in dump.read_text().splitlines() if "=" in line}
    assert {"KEPT_FOR_THE_PROJECT", "DATABASE_URL"} <= names
    assert not names & {"SECRET_KEY", "PROD_DATABASE_URL"}
    assert os.environ["SECRET_KEY"] == "dashboard-secret"  # only the child went without


@pytest.mark.django_db(transaction=True)
def test_a_run_declared_interrupted_under_its_worker_is_stopped() -> None:
    action = _action(Action.Status.RUNNING, started_at=timezone.now())
    monitor = RunMonitor(action.pk, known_revisions=[], flush_interval=0.05)
    monitor.start()
    try:
        monitor.line("still running")
        # Housekeeping elsewhere decided the worker went silent and freed the environment.
        Action.objects.filter(pk=action.pk).update(status=Action.Status.INTERRUPTED)
        assert monitor.cancel.wait(5), "the monitor kept the run going"
        assert monitor.lost.is_set() and monitor.should_cancel()
    finally:
        monitor.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_worker_makes_itself_undumpable_so_its_children_cannot_read_its_environment() -> None:
    # As root (CI) /proc is readable anyway; for any other user this is what keeps a
    # migration's code out of /proc/<worker>/environ, which holds every environment's URL.
    probe = (
        "import ctypes; from dashboard.worker import keep_memory_private;"
        "libc = ctypes.CDLL(None); before = libc.prctl(3, 0, 0, 0, 0);"
        "keep_memory_private(); print(before, libc.prctl(3, 0, 0, 0, 0))"
    )
    done = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {probe}"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
    )
    assert done.stdout.split() == ["1", "0"]


def test_a_heartbeat_limit_shorter_than_the_heartbeat_is_refused(settings: Any) -> None:
    from dashboard.checks import check_heartbeat_limit

    settings.DASHBOARD_HEARTBEAT_LIMIT = 2
    assert [m.id for m in check_heartbeat_limit(None)] == ["dashboard.E002"]
    settings.DASHBOARD_HEARTBEAT_LIMIT = 60
    assert check_heartbeat_limit(None) == []


def test_housekeeping_prunes_old_unchanged_snapshots(settings: Any, tmp_path: Path) -> None:
    from dashboard.models import Snapshot

    settings.DASHBOARD_RETENTION_DAYS = 30
    now = timezone.now()

    def snap(days: int, changed: bool) -> Snapshot:
        return Snapshot.objects.create(
            environment="staging",
            project="blog",
            state="behind",
            changed=changed,
            read_at=now - timedelta(days=days),
        )

    old_change, old_same, recent = snap(40, True), snap(39, False), snap(1, False)
    report = worker.Housekeeping().run_once()
    assert report.pruned == 1
    assert set(Snapshot.objects.values_list("pk", flat=True)) == {old_change.pk, recent.pk}
    assert old_same.pk not in set(Snapshot.objects.values_list("pk", flat=True))


def test_start_up_sweeps_config_folders_that_killed_workers_left(
    tmp_path: Path, settings: Any
) -> None:
    import tempfile

    from dashboard.runner.process import CONFIG_PREFIX

    settings.DASHBOARD_CONFIG = str(
        write_config(tmp_path / "d.toml", {"staging": {"url": f"sqlite:///{tmp_path / 's.db'}"}})
    )
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(gone.stdout)  # exited: the pid of a worker that was SIGKILLed
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    folders: dict[str, Path] = {}
    try:
        for name, pid in (("dead", dead_pid), ("alive", alive.pid), ("no pid", 2**64)):
            folders[name] = Path(tempfile.mkdtemp(prefix=f"{CONFIG_PREFIX}{pid}-"))
            ini = folders[name] / "alembic.ini"
            ini.write_text("[alembic]\nsqlalchemy.url = postgresql://u:s3cret@db/app\n")
            ini.chmod(0o600)

        report = worker.Housekeeping().start_up()

        assert not folders["dead"].exists(), report
        assert (folders["alive"] / "alembic.ini").exists()  # a running worker's run goes on
        assert report.problems == []  # a name no worker could have made is left, not a crash
    finally:
        alive.kill()
        alive.wait()
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)


def test_repointing_an_environment_is_audited_without_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    path = tmp_path / "dashboard.toml"
    words = ["deployer", "s3cret-pw", "alpha-db", "gamma-db", "shopmain", "shopother", "postgres"]
    words += ["stager", "hunter2-pw", "beta-db", "delta-db", "shopstaging", "admin", "rotated"]
    prod = "postgresql://deployer:s3cret-pw@alpha-db.example:5432/shopmain?sslmode=require"
    staging = "postgresql://stager:hunter2-pw@beta-db.example/shopstaging"
    monkeypatch.setenv("REPOINT_TEST_STAGING_URL", staging)
    events = []

    def record(prod_url: str) -> AuditEvent | None:
        write_config(
            path, {"prod": {"url": prod_url}, "staging": {"url_env": "REPOINT_TEST_STAGING_URL"}}
        )
        event = worker.config_changes_record(load_config(path))
        events.append(event)
        return event

    assert record(prod) is not None  # the first record
    assert record(prod) is None
    for repointed in (
        prod.replace("alpha-db", "gamma-db"),  # another host
        prod.replace("shopmain", "shopother"),  # another database on the same server
        prod.replace("deployer", "admin"),  # another role: other rights on the same database
    ):
        event = record(repointed)
        assert event is not None, repointed
        assert event.payload["database_changed"] == ["prod"]
        assert event.payload["changed"]["environments"] == ["prod"]
        assert record(prod) is not None  # and back again
    # A rotated password is the same database: nothing to audit.
    assert record(prod.replace("s3cret-pw", "rotated-pw")) is None
    assert (
        record(
            prod.replace("s3cret-pw", "rotated-pw").replace("postgresql:", "postgresql+psycopg2:")
        )
        is None
    )

    # For url_env, the variable's value as the worker sees it, and whether it is set.
    monkeypatch.setenv("REPOINT_TEST_STAGING_URL", staging.replace("beta-db", "delta-db"))
    assert record(prod).payload["database_changed"] == ["staging"]
    monkeypatch.setenv("REPOINT_TEST_STAGING_URL", staging.replace("hunter2-pw", "rotated-pw"))
    assert record(prod).payload["database_changed"] == ["staging"]  # back to beta-db
    monkeypatch.delenv("REPOINT_TEST_STAGING_URL")
    assert record(prod).payload["database_changed"] == ["staging"]
    assert record(prod) is None

    # A new secret key changes every digest; that is no repoint, and says so.
    settings.SECRET_KEY = "another-key-" + "x" * 50
    rekeyed = record(prod)
    assert rekeyed is not None
    assert rekeyed.payload["database_changed"] == []
    assert rekeyed.payload["database_rekeyed"] == ["prod", "staging"]

    for event in filter(None, events):
        text = json.dumps(event.payload)
        assert not [word for word in words if word in text], text


def test_the_first_record_after_an_upgrade_notes_the_databases_once(tmp_path: Path) -> None:
    from dashboard import audit

    path = write_config(tmp_path / "dashboard.toml", {"prod": {"url": "sqlite:///p.db"}})
    config = load_config(path)
    # As recorded before database digests existed, when Environment had no url_error.
    fields = {**asdict(config.environments["prod"]), "url": True}
    del fields["url_error"]
    old = {
        "projects": worker.config_digests(config)["projects"],
        "environments": {"prod": worker._digest(fields)},
    }
    audit.record(worker.CONFIG_VERB, actor_name=audit.SYSTEM, payload={"digests": old})

    event = worker.config_changes_record(config)

    assert event is not None
    assert event.payload["changed"] == {"projects": [], "environments": []}
    assert (event.payload["database_changed"], event.payload["database_rekeyed"]) == ([], ["prod"])
    assert worker.config_changes_record(config) is None
