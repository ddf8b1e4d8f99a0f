"""Bounded lock waits and retries: the limits reach every session of Alembic's child, a run a
lock timeout rolled back is retried with backoff on PostgreSQL (never on MariaDB), and a reader
of the table in the way never waits much longer than lock_timeout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dashboard.config import ConfigError, Environment, load_config
from dashboard.databases import sessions
from dashboard.models import Action, AuditEvent
from dashboard.services import actions
from dashboard.services.actions import attempts
from tests.actions_support import (
    HEAD,
    SAMPLE_INI,
    heads_of,
    run_worker,
    start_worker,
    stop_worker,
    touch_sqlite,
    wait_for,
    write_config,
)
from tests.lock_support import Reader, alembic_env, connect, run_cli, table_blocked

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("keep_roles")]
POSTS = "a71e5c0d2f39"  # creates posts; the next revision alters it
LOCK_TIMEOUT = 1.0


def _configure(settings: Any, tmp_path: Path, url: str, **values: Any) -> Path:
    path = write_config(tmp_path / "dashboard.toml", {"staging": {"url": url, **values}})
    settings.DASHBOARD_CONFIG = str(path)
    return path


def _at_posts(url: str) -> None:
    """Bring url to the revision that creates posts, as a command-line run would."""
    done = run_cli(url, "upgrade", POSTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert heads_of(url) == (POSTS,)


def _upgrade(people: dict[str, Any]) -> Action:
    action = actions.action_request(
        user=people["olga"], environment="staging", direction="upgrade", target="heads",
        prepare=True,
    )  # fmt: skip
    assert action.from_heads == [POSTS] and action.status == Action.Status.QUEUED
    return action


def _config_error(tmp_path: Path, **values: Any) -> str:
    path = write_config(tmp_path / "bad.toml", {"staging": {"url": "sqlite:///x.db", **values}})
    with pytest.raises(ConfigError) as error:
        load_config(path)
    return str(error.value)


def test_the_lock_keys_have_defaults_take_durations_and_refuse_nonsense(tmp_path: Path) -> None:
    path = write_config(tmp_path / "ok.toml", {"a": {"url": "sqlite:///a.db"}})
    env = load_config(path).environments["a"]
    assert (env.lock_timeout, env.statement_timeout, env.lock_retries, env.run_lock_wait) == (
        5.0, None, 3, 60.0,
    )  # fmt: skip
    path = write_config(
        tmp_path / "set.toml",
        {"a": {"url": "sqlite:///a.db", "lock_timeout": "750ms", "statement_timeout": "10min",
               "lock_retries": 0, "run_lock_wait": 0}},
    )  # fmt: skip
    env = load_config(path).environments["a"]
    assert (env.lock_timeout, env.statement_timeout, env.lock_retries, env.run_lock_wait) == (
        0.75, 600.0, 0, 0.0,
    )  # fmt: skip
    assert (
        load_config(
            write_config(tmp_path / "n.toml", {"a": {"url": "sqlite:///a.db", "lock_timeout": 2}})
        )
        .environments["a"]
        .lock_timeout
        == 2.0
    )
    assert "[environments.staging] lock_timeout: a duration is a number of seconds or text" in (
        _config_error(tmp_path, lock_timeout="5")  # PostgreSQL would read milliseconds
    )
    assert "lock_timeout must be at least 1ms and at most 1h" in _config_error(
        tmp_path, lock_timeout="2h"
    )
    assert "statement_timeout must be at least 1ms" in _config_error(tmp_path, statement_timeout=0)
    assert "lock_retries must be from 0 (never retry) to 10" in _config_error(
        tmp_path, lock_retries=11
    )
    assert "lock_retries must be an integer" in _config_error(tmp_path, lock_retries="3")
    assert "run_lock_wait must be a number of seconds from 0" in _config_error(
        tmp_path, run_lock_wait=-1
    )


def test_the_childs_limits_ride_on_pgoptions_a_urls_options_and_init_command() -> None:
    tag = sessions.action_tag(7)
    limits = sessions.Limits(1.5, 600.0)
    pg = "postgresql+psycopg2://u:pw@db.example/app"
    url, env = sessions.tag_child(pg, tag, {"PGOPTIONS": "-c lock_timeout=9s", **limits.environ()})
    assert url == pg
    assert env["PGOPTIONS"] == (
        "-c lock_timeout=9s -c lock_timeout=1500ms -c statement_timeout=600000ms"
        r" -c application_name=migration-dashboard\ action\ 7"
    )  # ours come last, and the later setting wins
    own = "postgresql+psycopg2://u:pw@db.example/app?options=-c+search_path%3Dblog"
    url, _ = sessions.tag_child(own, tag, {}, limits=limits)
    assert "options=-c+search_path%3Dblog+-c+lock_timeout%3D1500ms" in url
    my = "mysql+pymysql://u:pw@db.example/app"
    url, _ = sessions.tag_child(my, tag, limits.environ())
    assert url.endswith(
        "init_command=SET+SESSION+lock_wait_timeout+%3D+2%2C+SESSION+innodb_lock_wait_timeout"
        "+%3D+2+%2F%2AM%21%2C+SESSION+max_statement_time+%3D+600.000+%2A%2F%2C"
        "+%40migration_dashboard_tag+%3D+GET_LOCK%28CONCAT%28%27migration-dashboard+action+7+%23"
        "%27%2C+CONNECTION_ID%28%29%29%2C+0%29"
    ), url
    assert sessions.Limits.from_environ({}) is None
    assert sessions.lock_timed_out(pg, ["psycopg2.errors.LockNotAvailable: canceling statement"])
    assert sessions.lock_timed_out(my, ["(1205, 'Lock wait timeout exceeded; try restarting')"])
    assert not sessions.lock_timed_out(pg, ["psycopg2.errors.DuplicateColumn: ..."])
    assert not sessions.lock_timed_out("sqlite:///x.db", ["LockNotAvailable"])


@pytest.mark.parametrize(
    "dialect", [pytest.param("postgres", marks=pytest.mark.postgres), "mariadb"]
)
def test_every_session_of_the_child_gets_the_limits(
    dialect: str, request: pytest.FixtureRequest
) -> None:
    url = str(request.getfixturevalue(f"{dialect}_url"))
    limits = sessions.Limits(1.5, 90.0)
    child_url, env = sessions.tag_child(url, sessions.action_tag(8), limits.environ())
    ask = {
        "postgres": "SELECT current_setting('lock_timeout') || ' ' || current_setting("
        "'statement_timeout')",
        "mariadb": "SELECT CONCAT(@@lock_wait_timeout, ' ', @@innodb_lock_wait_timeout, ' ',"
        " @@max_statement_time)",
    }[dialect]
    script = (
        "import os, sqlalchemy as sa\n"
        "engine = sa.create_engine(os.environ['TARGET'])\n"
        "for _ in range(2):\n"  # two sessions, as env.py may open
        "    with engine.connect() as conn:\n"
        f"        print(conn.exec_driver_sql({ask!r}).scalar())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**alembic_env(url), **env, "TARGET": child_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    expected = {"postgres": "1500ms 90s", "mariadb": "2 2 90.000000"}[dialect]
    assert done.stdout.splitlines() == [expected, expected]


def test_a_plan_revision_raises_the_runs_limits_to_the_largest_asked() -> None:
    env = Environment(name="prod", project="blog", lock_timeout=5.0, statement_timeout=60.0)
    action = Action(
        plan=["r1", "r2", "r3"],
        plan_marks={
            "r1": {"limits": {"lock_timeout": "10min"}},
            "r2": {"limits": {"lock_timeout": "2min", "statement_timeout": "1h"}},
            "r3": {"limits": {"statement_timeout": "soon"}},
            "elsewhere": {"limits": {"lock_timeout": "5h"}},  # not in the plan
        },
    )
    limits, notes = attempts.run_limits(env, action)
    assert limits == sessions.Limits(600.0, 3600.0)
    assert notes == [
        "revision r3's statement_timeout mark is ignored: a duration is a number of seconds or"
        ' text like "500ms", "5s", "10min" or "1h", not \'soon\'',
        "revision r1 raises lock_timeout to 10min for the whole run (prod's is 5s)",
        "revision r2 raises statement_timeout to 1h for the whole run (prod's is 1min)",
    ]
    # No statement_timeout at all is larger than any a revision asks for.
    unbounded = Environment(name="dev", project="blog")
    assert attempts.run_limits(unbounded, action)[0] == sessions.Limits(600.0, None)
    delays = [attempts.backoff(n) for n in (1, 2, 3)]
    assert 1.5 <= delays[0] <= 2.5 and 3 <= delays[1] <= 5 and 6 <= delays[2] <= 10


@pytest.mark.once
@pytest.mark.postgres
def test_a_blocker_makes_the_run_retry_with_backoff_and_fail_naming_it_while_readers_go_on(
    people: dict[str, Any], settings: Any, tmp_path: Path, postgres_url: str
) -> None:
    _at_posts(postgres_url)
    config = _configure(settings, tmp_path, postgres_url, lock_timeout="1s", lock_retries=2)
    action = _upgrade(people)
    with table_blocked(postgres_url) as blocker:
        reader = Reader(postgres_url)
        reader.start()
        try:
            run_worker(config)
        finally:
            slowest = reader.stop()
    print(f"slowest reader count while the run retried: {slowest:.2f} s ({reader.counts} counts)")
    assert reader.errors == [] and reader.counts > 0
    # Without lock_timeout the reader would wait behind the ALTER until the blocker ended.
    assert slowest < LOCK_TIMEOUT + 3
    action.refresh_from_db()
    assert action.status == Action.Status.FAILED
    assert action.retries == 2
    assert "a statement waited longer than lock_timeout 1s on attempt 3 of 3" in action.error
    assert action.error.endswith(f"staging is still at {POSTS}: nothing stayed applied")
    assert "LockNotAvailable" in action.error
    in_the_way = f"in the way: pid {blocker.pid} (user postgres, application lock test blocker"
    assert in_the_way in action.error, action.error
    assert any(item["pid"] == blocker.pid for item in action.blockers)
    log = action.log
    assert "dashboard: lock_timeout 1s, statement_timeout none, up to 2 retries" in log
    assert "lock timeout on attempt 1 of 3; retrying in " in log
    assert "lock timeout on attempt 2 of 3; retrying in " in log
    retried = AuditEvent.objects.filter(action_id=action.pk, verb="action.retried")
    assert [(e.payload["attempt"], e.payload["of"]) for e in retried] == [(1, 3), (2, 3)]
    assert all(e.payload["in_the_way"] == [blocker.pid] for e in retried)
    assert heads_of(postgres_url) == (POSTS,)

    # The blocker ends while the run waits to retry: the next attempt goes through.
    again = _upgrade(people)
    with table_blocked(postgres_url) as blocker:
        worker = start_worker(config)
        try:
            wait_for(
                lambda: "lock timeout on attempt 1 of 3" in Action.objects.get(pk=again.pk).log,
                within=60,
            )
            blocker.release()
            wait_for(lambda: Action.objects.get(pk=again.pk).is_finished, within=60)
        finally:
            stop_worker(worker)
    again.refresh_from_db()
    assert again.status == Action.Status.SUCCEEDED, again.error
    assert again.retries >= 1
    assert heads_of(postgres_url) == (HEAD,)


@pytest.mark.once
def test_mariadb_does_not_retry_and_says_why_and_where_it_left_the_database(
    people: dict[str, Any], settings: Any, tmp_path: Path, mariadb_url: str
) -> None:
    _at_posts(mariadb_url)
    config = _configure(settings, tmp_path, mariadb_url, lock_timeout="1s")
    action = _upgrade(people)
    with table_blocked(mariadb_url):
        run_worker(config)
    action.refresh_from_db()
    assert action.status == Action.Status.FAILED
    assert action.retries == 0
    assert "Lock wait timeout exceeded" in action.error
    assert "a statement waited longer than lock_timeout 1s on attempt 1 of 1" in action.error
    assert "not retried: MariaDB/MySQL commits each DDL statement as it runs" in action.error
    assert action.error.endswith(f"staging is still at {POSTS}: nothing stayed applied")
    assert not AuditEvent.objects.filter(action_id=action.pk, verb="action.retried").exists()


@pytest.mark.postgres
def test_a_failed_run_lists_the_invalid_indexes_on_the_action(
    people: dict[str, Any], settings: Any, tmp_path: Path, postgres_url: str
) -> None:
    _at_posts(postgres_url)
    conn = connect(postgres_url)
    try:
        # What a failed CREATE UNIQUE INDEX CONCURRENTLY leaves: an invalid index.
        conn.exec_driver_sql("CREATE TABLE dupes (n integer)")
        conn.exec_driver_sql("INSERT INTO dupes VALUES (1), (1)")
        with pytest.raises(sa.exc.IntegrityError):
            conn.exec_driver_sql("CREATE UNIQUE INDEX CONCURRENTLY ix_dupes ON dupes (n)")
    finally:
        conn.close()
        conn.engine.dispose()
    config = _configure(settings, tmp_path, postgres_url)
    action = _upgrade(people)
    run_worker(config, MIGRATIONS_PROJECT_FAIL=HEAD)
    action.refresh_from_db()
    assert action.status == Action.Status.FAILED
    assert action.retries == 0  # not a lock timeout
    assert [(i["table"], i["index"]) for i in action.invalid_indexes] == [("dupes", "ix_dupes")]
    assert action.error.endswith("; invalid indexes left behind: ix_dupes on dupes")


def test_a_revisions_own_limits_raise_the_whole_runs_and_the_log_says_so(
    people: dict[str, Any], settings: Any, tmp_path: Path, sqlite_url: str
) -> None:
    project = tmp_path / "blog"
    shutil.copytree(SAMPLE_INI.parent, project, ignore=shutil.ignore_patterns("__pycache__"))
    (revision,) = (project / "versions").glob("5b2d9e7f1c86_*.py")
    text = revision.read_text()
    marker = "depends_on: str | Sequence[str] | None = None\n"
    revision.write_text(
        text.replace(marker, marker + 'dashboard_limits = {"lock_timeout": "10min"}\n')
    )
    path = write_config(
        tmp_path / "dashboard.toml",
        {"staging": {"url": touch_sqlite(sqlite_url)}},
        alembic_ini=project / "alembic.ini",
    )
    settings.DASHBOARD_CONFIG = str(path)
    action = actions.action_request(
        user=people["olga"], environment="staging", direction="upgrade", target="heads",
        prepare=True,
    )  # fmt: skip
    assert action.plan_marks["5b2d9e7f1c86"]["limits"] == {"lock_timeout": "10min"}
    run_worker(path)
    action.refresh_from_db()
    assert action.status == Action.Status.SUCCEEDED, action.error
    assert (
        "dashboard: revision 5b2d9e7f1c86 raises lock_timeout to 10min for the whole run"
        " (staging's is 5s)" in action.log
    )


def test_a_mariadb_url_the_limits_cannot_reach_says_so() -> None:
    assert sessions.unbounded_reason("mysql+pymysql://u:pw@db.example/app") == ""
    assert sessions.unbounded_reason("postgresql+psycopg2://u:pw@db.example/app") == ""
    assert sessions.unbounded_reason("mysql+mysqlconnector://u:pw@db.example/app") == (
        "driver mysqlconnector ignores them (only pymysql and mysqldb take an init_command)"
    )
    own = "mysql+pymysql://u:pw@db.example/app?init_command=SET+NAMES+utf8mb4"
    assert sessions.unbounded_reason(own) == "the URL has its own init_command"
    assert sessions.tag_child(own, sessions.action_tag(7), sessions.Limits(5.0).environ()) == (
        own,
        {},
    )  # the project's init_command is kept as it is


def test_a_run_whose_url_has_its_own_init_command_does_not_claim_lock_limits(
    people: dict[str, Any], settings: Any, tmp_path: Path, mariadb_url: str
) -> None:
    _at_posts(mariadb_url)
    own = f"{mariadb_url}?init_command=SET+NAMES+utf8mb4"
    config = _configure(settings, tmp_path, own)
    action = _upgrade(people)
    run_worker(config)
    action.refresh_from_db()
    assert action.status == Action.Status.SUCCEEDED, action.error
    assert (
        "dashboard: no lock limits apply to this run: the URL has its own init_command"
        in action.log.splitlines()
    )
    assert "lock_timeout" not in action.log
