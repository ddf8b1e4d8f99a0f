"""The run lock on real PostgreSQL and MariaDB: dashboard workers and command-line runs exclude
each other, a held lock is waited for and named, and a killed worker's lock dies with it."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dashboard.config import Project
from dashboard.databases import postgresql, runlock, sessions
from dashboard.models import Action, AuditEvent
from dashboard.services import actions
from dashboard.worker import Housekeeping
from tests.actions_support import (
    ALL_REVISIONS,
    HEAD,
    SAMPLE_INI,
    heads_of,
    run_worker,
    schema_of,
    start_worker,
    stop_worker,
    wait_for,
    write_config,
)
from tests.lock_support import connect, ran_steps, run_cli, run_lock_held, start_cli

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("keep_roles")]
BLOG = Project(name="blog", script_location=SAMPLE_INI.parent, alembic_ini=SAMPLE_INI)
dialects = pytest.mark.parametrize(
    "dialect", [pytest.param("postgres", marks=pytest.mark.postgres), "mariadb"]
)


def _target(request: pytest.FixtureRequest, dialect: str) -> str:
    return str(request.getfixturevalue(f"{dialect}_url"))


def _configure(settings: Any, tmp_path: Path, environments: dict[str, dict[str, Any]]) -> Path:
    path = write_config(tmp_path / "dashboard.toml", environments)
    settings.DASHBOARD_CONFIG = str(path)
    return path


def _upgrade(people: dict[str, Any], environment: str = "staging") -> Action:
    return actions.action_request(
        user=people["olga"],
        environment=environment,
        direction="upgrade",
        target="heads",
        prepare=True,
    )


def test_the_key_and_the_name_come_from_the_schema_qualified_version_table() -> None:
    # The documented derivation: the first 8 bytes of sha256, signed big-endian.
    assert runlock.postgresql_key("public", "alembic_version") == -393125886568357016
    assert runlock.postgresql_key("app", "alembic_version") != runlock.postgresql_key(
        "public", "alembic_version"
    )
    assert runlock.mysql_name("blog", "alembic_version") == "alembic-run-lock:blog.alembic_version"
    long = runlock.mysql_name("a" * 60, "alembic_version")
    assert len(long) <= 64 and long.startswith("alembic-run-lock:")
    assert long != runlock.mysql_name("b" * 60, "alembic_version")
    # The sample env.py, which a laptop's run uses, derives the same lock.
    env_py = (SAMPLE_INI.parent / "env.py").read_text()
    assert 'RUN_LOCK_PREFIX = "alembic-run-lock:"' in env_py
    assert 'digest[:8], "big", signed=True' in env_py
    assert 'os.environ.get("MIGRATION_DASHBOARD_RUN_LOCK") == "held"' in env_py
    assert runlock.describe(None) == "a session that could not be seen"
    assert runlock.describe(
        {"pid": 42, "user": "bob", "application": "psql", "client": "10.0.0.5",
         "since": "2026-12-02T13:54:28+00:00"}
    ) == "pid 42, user bob, application psql, from 10.0.0.5, since 2026-12-02 13:54:28 UTC"  # fmt: skip


def test_sqlite_has_no_run_lock(sqlite_url: str) -> None:
    with runlock.hold(sqlite_url, BLOG, wait=0) as lock:
        assert lock is None
        assert runlock.holder(sqlite_url, BLOG) is None


@dialects
def test_hold_waits_names_the_holder_and_gives_up(
    dialect: str, request: pytest.FixtureRequest
) -> None:
    url = _target(request, dialect)
    assert runlock.holder(url, BLOG) is None
    with run_lock_held(url) as ident:
        seen: list[dict[str, Any]] = []
        with (
            pytest.raises(runlock.RunLockBusy) as busy,
            runlock.hold(url, BLOG, wait=1.0, poll=0.2, on_wait=seen.append),
        ):
            pytest.fail("took a lock another session holds")
        assert busy.value.holder is not None and busy.value.holder["pid"] == ident
        assert seen and {item["pid"] for item in seen} == {ident}
        assert runlock.holder(url, BLOG)["pid"] == ident  # type: ignore[index]
    with runlock.hold(url, BLOG, wait=0) as lock:
        assert lock is not None
        mine = runlock.holder(url, BLOG)
        assert mine is not None and mine["application"] == runlock.APPLICATION_NAME
    assert runlock.holder(url, BLOG) is None  # given back at the end of the block


@pytest.mark.once
@dialects
def test_five_runners_at_once_apply_every_revision_exactly_once(
    dialect: str,
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    url = _target(request, dialect)
    # One action per environment is the dashboard's own rule: two names for one database.
    config = _configure(settings, tmp_path, {"blue": {"url": url}, "green": {"url": url}})
    queued = [_upgrade(people, "blue"), _upgrade(people, "green")]
    assert [a.status for a in queued] == [Action.Status.QUEUED] * 2
    workers = [start_worker(config, MIGRATIONS_PROJECT_SLEEP="0.3") for _ in range(2)]
    # One command-line run gives up fast: it either wins or fails naming the holder.
    clis = [
        start_cli(url, "upgrade", "heads", MIGRATIONS_PROJECT_SLEEP="0.3", ALEMBIC_RUN_LOCK_WAIT=w)
        for w in ("60", "60", "0.5")
    ]
    try:
        outputs = [cli.communicate(timeout=120)[0] for cli in clis]
        ids = [a.pk for a in queued]
        wait_for(lambda: all(a.is_finished for a in Action.objects.filter(pk__in=ids)), within=120)
    finally:
        for worker in workers:
            stop_worker(worker)
        for cli in clis:
            if cli.poll() is None:
                cli.kill()
                cli.communicate()
    done = list(Action.objects.filter(pk__in=[a.pk for a in queued]).order_by("pk"))
    runs = [ran_steps(out) for out in outputs] + [ran_steps(a.log) for a in done]
    assert Counter(step for steps in runs for step in steps) == Counter(ALL_REVISIONS)
    assert sorted(len(steps) for steps in runs) == [0, 0, 0, 0, len(ALL_REVISIONS)]  # one winner
    assert heads_of(url) == (HEAD,)
    assert schema_of(url)["versions"] == [HEAD]
    outcomes = []
    for cli, out, steps in zip(clis, outputs, runs, strict=False):
        if cli.returncode == 0:
            outcomes.append("cli ran" if steps else "cli found nothing to do")
        else:
            # Only the impatient one may give up, and it names who held the lock.
            assert "another run holds the run lock (" in out and "nothing ran" in out, out
            assert cli is clis[2]
            outcomes.append("cli gave up naming the holder")
    for action in done:
        if action.status == Action.Status.SUCCEEDED:
            assert ran_steps(action.log) == ALL_REVISIONS
            outcomes.append("action ran")
        else:
            # A loser found the heads moved once it had the lock (or before): stale, nothing ran.
            assert action.status == Action.Status.FAILED, action.error
            assert action.error.startswith(
                f"stale plan: {action.environment} moved from base to {HEAD}"
            ), action.error
            assert action.error.endswith("; nothing ran") and ran_steps(action.log) == []
            waited = "while this run waited for the run lock" in action.error
            outcomes.append("action stale after waiting" if waited else "action stale")
    print(f"{dialect}: {outcomes}")


@dialects
def test_an_action_waits_for_a_held_run_lock_names_the_holder_and_fails(
    dialect: str,
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    url = _target(request, dialect)
    config = _configure(settings, tmp_path, {"staging": {"url": url, "run_lock_wait": 3}})
    action = _upgrade(people)
    with run_lock_held(url) as ident:
        worker = start_worker(config)
        try:
            shown = wait_for(
                lambda: Action.objects.filter(pk=action.pk, blockers__0__pid=ident).first(),
                within=60,
            )
            wait_for(lambda: Action.objects.get(pk=action.pk).is_finished, within=60)
        finally:
            stop_worker(worker)
    (holder,) = shown.blockers
    assert holder["kind"] == "run_lock"
    if dialect == "postgres":  # MariaDB shows no application name
        assert holder["application"] == "lock test holder"
    print(
        f"holder shown {(shown.blockers_at - shown.started_at).total_seconds():.2f} s after start"
    )
    action.refresh_from_db()
    assert action.status == Action.Status.FAILED
    noun = "pid" if dialect == "postgres" else "connection id"
    assert action.error.startswith(
        f"another run holds the run lock of staging ({noun} {ident}, user "
    ), action.error
    assert action.error.endswith("; waited 3 s; nothing ran"), action.error
    if dialect == "postgres":
        assert "application lock test holder, from 127.0.0.1, since " in action.error
    assert f"waiting for the run lock of staging: held by {noun} {ident}" in action.log
    assert "Running upgrade" not in action.log
    assert schema_of(url) == {"tables": {}, "versions": []}


@pytest.mark.postgres
def test_a_cancel_ends_the_wait_for_the_run_lock(
    people: dict[str, Any], settings: Any, tmp_path: Path, postgres_url: str
) -> None:
    config = _configure(settings, tmp_path, {"staging": {"url": postgres_url, "run_lock_wait": 60}})
    action = _upgrade(people)
    with run_lock_held(postgres_url) as ident:
        worker = start_worker(config)
        try:
            wait_for(lambda: Action.objects.filter(pk=action.pk, blockers__0__pid=ident).exists())
            actions.action_cancel(user=people["olga"], action_id=action.pk)
            wait_for(lambda: Action.objects.get(pk=action.pk).is_finished, within=30)
        finally:
            stop_worker(worker)
    action.refresh_from_db()
    assert action.status == Action.Status.CANCELLED
    assert action.error == "cancelled by olga while waiting for the run lock; nothing ran"
    assert schema_of(postgres_url) == {"tables": {}, "versions": []}


@pytest.mark.once
@pytest.mark.postgres
def test_a_killed_worker_frees_the_run_lock_and_the_next_action_runs(
    people: dict[str, Any], settings: Any, tmp_path: Path, postgres_url: str
) -> None:
    config = _configure(settings, tmp_path, {"staging": {"url": postgres_url}})
    first = _upgrade(people)
    worker = start_worker(config, MIGRATIONS_PROJECT_SLEEP="0.5")
    try:
        held = wait_for(lambda: runlock.holder(postgres_url, BLOG), within=60)
        assert held["application"] == runlock.APPLICATION_NAME
        wait_for(lambda: Action.objects.filter(pk=first.pk, progress_done__gte=1).exists())
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        stop_worker(worker)
    # A session-level lock dies with its connection, which died with the worker.
    wait_for(lambda: runlock.holder(postgres_url, BLOG) is None, within=10)
    time.sleep(1.5)  # the parent-death signal reaches Alembic's child; the heartbeat ages
    assert heads_of(postgres_url) == ()  # its transaction rolled back
    assert Housekeeping(limit=1).run_once().interrupted == [first.pk]
    following = _upgrade(people)
    run_worker(config)
    following.refresh_from_db()
    assert following.status == Action.Status.SUCCEEDED, following.error
    assert heads_of(postgres_url) == (HEAD,)
    assert AuditEvent.objects.filter(action_id=first.pk, verb="action.interrupted").exists()


@pytest.mark.postgres
def test_an_idle_session_limit_on_the_database_does_not_end_the_run_lock(
    postgres_url: str,
) -> None:
    database = make_url(postgres_url).database
    with connect(postgres_url) as admin:
        admin.execute(sa.text(f"ALTER DATABASE \"{database}\" SET idle_session_timeout = '1500ms'"))
    with runlock.hold(postgres_url, BLOG, wait=0) as lock:
        assert lock is not None
        time.sleep(3)  # the run's DDL happens here; the lock's session says nothing meanwhile
        assert lock.still_held()
        mine = runlock.holder(postgres_url, BLOG)
        assert mine is not None and mine["application"] == runlock.APPLICATION_NAME


@dialects
def test_still_held_says_false_once_the_lock_connection_ended(
    dialect: str, request: pytest.FixtureRequest
) -> None:
    url = _target(request, dialect)
    with runlock.hold(url, BLOG, wait=0) as lock, connect(url) as admin:
        assert lock is not None and lock.still_held()
        holder = runlock.holder(url, BLOG)
        assert holder is not None
        if dialect == "postgres":
            admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": holder["pid"]})
        else:
            admin.exec_driver_sql(f"KILL {int(holder['pid'])}")
        wait_for(lambda: runlock.holder(url, BLOG) is None, within=10)
        assert not lock.still_held()


@pytest.mark.postgres
def test_a_run_whose_lock_connection_is_killed_is_stopped_and_fails(
    people: dict[str, Any], settings: Any, tmp_path: Path, postgres_url: str
) -> None:
    config = _configure(settings, tmp_path, {"staging": {"url": postgres_url}})
    action = _upgrade(people)
    worker = start_worker(config, MIGRATIONS_PROJECT_SLEEP="3")
    try:
        held = wait_for(lambda: runlock.holder(postgres_url, BLOG), within=60)
        assert held["application"] == runlock.APPLICATION_NAME
        tag = sessions.action_tag(action.pk)
        with connect(postgres_url) as admin:
            wait_for(lambda: postgresql.tagged_sessions(admin, tag), within=30)
            admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": held["pid"]})
            wait_for(lambda: Action.objects.get(pk=action.pk).is_finished, within=30)
            assert postgresql.tagged_sessions(admin, tag) == []  # the child's session is gone
    finally:
        stop_worker(worker)
    action.refresh_from_db()
    assert action.status == Action.Status.FAILED
    assert action.error.startswith(
        "the run lock of staging was lost during the run (its connection ended);"
        " the run was stopped; "
    ), action.error
    assert heads_of(postgres_url) == ()  # stopped before its first revision's DDL committed


@pytest.mark.postgres
def test_an_inherited_pgoptions_search_path_gives_the_worker_and_a_cli_run_one_lock(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with connect(postgres_url) as admin:
        admin.exec_driver_sql("CREATE SCHEMA blog")
    monkeypatch.setenv("PGOPTIONS", "-c search_path=blog,public")
    with runlock.hold(postgres_url, BLOG, wait=0) as lock:
        assert lock is not None
        assert lock.identity == {"key": runlock.postgresql_key("blog", "alembic_version")}
        # The sample env.py, under the same PGOPTIONS, tries the very same lock and waits.
        done = run_cli(postgres_url, "upgrade", "heads", ALEMBIC_RUN_LOCK_WAIT="1")
    assert done.returncode != 0
    assert "another run holds the run lock (pid " in done.stdout + done.stderr
    assert heads_of(postgres_url) == ()
