"""An action's database sessions: tagged with its id, stopped on cancel, time limit and worker death."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import sqlalchemy as sa
from django.utils import timezone
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from dashboard.databases import sessions
from dashboard.models import Action
from dashboard.runner.process import fork_server_pids
from dashboard.services import actions
from tests.actions_support import ROOT, make_people, stop_worker, wait_for, write_config
from tests.databases import MARIADB_ADMIN_URL, PG_ADMIN_URL
from tests.faults_support import keep_roles, start_logged_worker, worker_pid

__all__ = ["keep_roles"]  # a fixture, used by name

pytestmark = pytest.mark.django_db  # keep_roles restores the role groups at the end
# Worker processes share the test database, so the tests that start one commit for real.
transactional = pytest.mark.django_db(transaction=True)
dialects = pytest.mark.parametrize(
    "dialect",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)

SLEEPER = "0f1e2d3c4b5a"
# One revision that holds the database busy for a minute: a statement no client will wait for.
SLEEPER_FILE = f'''"""hold the database busy

Revision ID: {SLEEPER}
Revises:
Create Date: 2025-01-01 00:00:00
"""

from alembic import op

revision = "{SLEEPER}"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("CREATE TABLE held (i integer)")  # its lock is held until the run ends
        op.execute("SELECT pg_sleep(60)")
    else:
        op.execute("SELECT SLEEP(60)")


def downgrade() -> None:
    pass
'''
SLEEP_SQL = {"postgres": "SELECT pg_sleep(60)", "mariadb": "SELECT SLEEP(60)"}
# From the moment a cancel is recorded: the monitor's poll, SIGTERM, the server-side stop.
STOP_WITHIN = 5.0
HEARTBEAT_LIMIT = 3.0


def tag_of(action_id: int) -> str:
    """Return the tag the README promises on every session of an action's Alembic."""
    return f"migration-dashboard action {action_id}"


class Seen(NamedTuple):
    """One session of the target database, as seen from outside it."""

    ident: int
    tag: str  # the tag it carries: application_name, or the MariaDB named lock's
    sleeping: bool  # it runs the sleeper's statement


class Probe:
    """Look at a target database's sessions from a connection of its own, outside it."""

    def __init__(self, dialect: str, url: str) -> None:
        self.dialect = dialect
        self.database = make_url(url).database
        admin = PG_ADMIN_URL if dialect == "postgres" else MARIADB_ADMIN_URL
        self.engine = sa.create_engine(admin, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        self.conn = self.engine.connect()
        self.lock = threading.Lock()

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()

    def sessions(self, tag: str) -> list[Seen]:
        """Return the database's client sessions, naming those that carry tag."""
        params = {"db": self.database, "tag": tag, "sleep": SLEEP_SQL[self.dialect] + "%"}
        if self.dialect == "postgres":
            sql = (
                "SELECT pid, application_name, state = 'active' AND query LIKE :sleep"
                " FROM pg_stat_activity WHERE datname = :db AND backend_type = 'client backend'"
            )
        else:
            # A session's own marks are invisible from here with performance_schema off
            # (MariaDB's default); the named lock the README describes is not.
            sql = (
                "SELECT ID, CASE WHEN IS_USED_LOCK(CONCAT(:prefix, ID)) = ID THEN :tag"
                " ELSE '' END, COALESCE(INFO LIKE :sleep, 0)"
                " FROM information_schema.PROCESSLIST WHERE DB = :db"
            )
            params["prefix"] = f"{tag} #"
        with self.lock:
            rows = self.conn.execute(sa.text(sql), params).all()
        return sorted(Seen(int(ident), str(name), bool(sleeping)) for ident, name, sleeping in rows)

    def tagged(self, tag: str) -> list[Seen]:
        """Return the sessions that carry tag."""
        return [seen for seen in self.sessions(tag) if seen.tag == tag]

    def busy(self, tag: str) -> list[Seen]:
        """Return the action's sessions: those with its tag, and any running the sleeper."""
        return [seen for seen in self.sessions(tag) if seen.tag == tag or seen.sleeping]

    def sleeping(self, tag: str) -> list[Seen]:
        """Return the sessions running the sleeper's statement."""
        return [seen for seen in self.sessions(tag) if seen.sleeping]


class Watcher:
    """Poll a probe in a thread and remember when the action's sessions were last seen."""

    def __init__(self, probe: Probe, tag: str) -> None:
        self.probe = probe
        self.tag = tag
        self.last_seen: datetime | None = None
        self.gone_at: datetime | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = timezone.now()
            if self.probe.busy(self.tag):
                self.last_seen, self.gone_at = now, None
            elif self.last_seen is not None and self.gone_at is None:
                self.gone_at = now
            time.sleep(0.05)


@pytest.fixture
def people() -> dict[str, Any]:
    return make_people()


@pytest.fixture
def sleeper_project(tmp_path: Path) -> Path:
    """Copy the sample project with one sleeping revision as its only history; return its ini."""
    project = tmp_path / "project"
    shutil.copytree(
        ROOT / "migrations_project",
        project,
        ignore=shutil.ignore_patterns("__pycache__", "versions"),
    )
    (project / "versions").mkdir()
    (project / "versions" / f"{SLEEPER}_hold_the_database_busy.py").write_text(SLEEPER_FILE)
    return project / "alembic.ini"


def _target(request: pytest.FixtureRequest, dialect: str) -> str:
    return str(request.getfixturevalue("postgres_url" if dialect == "postgres" else "mariadb_url"))


def _configure(settings: Any, tmp_path: Path, ini: Path, url: str, **values: Any) -> Path:
    path = write_config(
        tmp_path / "dashboard.toml", {"target": {"url": url, **values}}, alembic_ini=ini
    )
    settings.DASHBOARD_CONFIG = str(path)
    return path


def _request(user: Any) -> Action:
    return actions.action_request(
        user=user, environment="target", direction="upgrade", target="heads", prepare=True
    )


def _finished(action_id: int) -> Action | None:
    return Action.objects.filter(pk=action_id, finished_at__isnull=False).first()


@transactional
@dialects
def test_cancel_and_a_killed_worker_stop_the_actions_sessions_before_freeing_the_environment(
    dialect: str,
    request: pytest.FixtureRequest,
    people: dict[str, Any],
    sleeper_project: Path,
    settings: Any,
    tmp_path: Path,
) -> None:
    url = _target(request, dialect)
    config = _configure(settings, tmp_path, sleeper_project, url, time_limit=120)
    log = tmp_path / "worker.log"
    probe = Probe(dialect, url)
    worker = start_logged_worker(config, log)
    try:
        # A cancel through the service, run by a real worker.
        action = _request(people["olga"])
        tag = tag_of(action.pk)
        seen = wait_for(lambda: probe.sleeping(tag), within=60)
        assert [s.tag for s in seen] == [tag], f"the child's session is untagged: {seen}"
        with Watcher(probe, tag) as watcher:
            actions.action_cancel(user=people["olga"], action_id=action.pk)
            cancelled_at = timezone.now()
            ended = wait_for(lambda: _finished(action.pk), within=30)
            wait_for(lambda: watcher.gone_at, within=STOP_WITHIN + 1)
        assert ended.status == Action.Status.CANCELLED, ended.error
        assert watcher.gone_at is not None and watcher.last_seen is not None
        took = (watcher.gone_at - cancelled_at).total_seconds()
        assert took < STOP_WITHIN, f"its session ran {took:.1f} s after the cancel"
        # The environment stayed taken until its sessions were gone.
        assert ended.finished_at > watcher.last_seen
        assert probe.busy(tag) == []

        # The worker killed mid-statement; housekeeping stops the orphan before freeing it.
        action = _request(people["olga"])
        tag = tag_of(action.pk)
        seen = wait_for(lambda: probe.sleeping(tag), within=60)
        assert [s.tag for s in seen] == [tag]
        running = Action.objects.get(pk=action.pk)
        os.kill(worker_pid(running), signal.SIGKILL)
        worker.wait(timeout=10)
        silent = timedelta(seconds=HEARTBEAT_LIMIT)
        wait_for(
            lambda: (
                Action.objects.silent_since(timezone.now() - silent).filter(pk=action.pk).exists()
            ),
            within=HEARTBEAT_LIMIT + 5,
        )
        orphans = probe.busy(tag)
        assert orphans, "the statement ended with its client: nothing left to stop"
        started = time.monotonic()
        interrupted = actions.action_interrupt_silent(limit=HEARTBEAT_LIMIT)
        took = time.monotonic() - started
        assert probe.busy(tag) == [], f"{orphans} outlived the interrupted action"
        assert [a.pk for a in interrupted] == [action.pk]
        assert interrupted[0].status == Action.Status.INTERRUPTED
        assert "could not stop" not in interrupted[0].error
        assert took < STOP_WITHIN, f"housekeeping took {took:.1f} s"
    finally:
        stop_worker(worker)
        probe.close()


@transactional
@pytest.mark.postgres
def test_the_time_limit_stops_the_actions_session_before_the_action_ends(
    people: dict[str, Any],
    postgres_url: str,
    sleeper_project: Path,
    settings: Any,
    tmp_path: Path,
) -> None:
    _configure(settings, tmp_path, sleeper_project, postgres_url, time_limit=4)
    probe = Probe("postgres", postgres_url)
    try:
        action = _request(people["olga"])
        tag = tag_of(action.pk)
        with Watcher(probe, tag) as watcher:
            ended = actions.action_run(action_id=action.pk, worker="test")
            time.sleep(0.2)  # one more look
        assert ended.status == Action.Status.FAILED
        assert "time limit of 4 s" in ended.error and "could not stop" not in ended.error
        assert watcher.last_seen is not None, "the sleep was never seen running"
        assert ended.finished_at > watcher.last_seen
        assert probe.busy(tag) == []
    finally:
        probe.close()


def _hold_session(url: str, tag: str, sql: str) -> subprocess.Popen[str]:
    """Start a process whose one session carries tag (as Alembic's child would) and runs sql."""
    child_url, env = sessions.tag_child(url, tag, os.environ)
    script = (
        "import os, sqlalchemy as sa\n"
        "conn = sa.create_engine(os.environ['TARGET']).connect()\n"
        "print('connected', flush=True)\n"
        f"conn.exec_driver_sql({sql!r})\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, **env, "TARGET": child_url},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "connected\n"
    return proc


@pytest.fixture
def unprivileged_role(postgres_url: str) -> Iterator[str]:
    """Yield postgres_url as a fresh role that sees other roles' backends but may not signal them."""
    role = f"dash_nopriv_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN IN ROLE pg_read_all_stats')
    try:
        yield make_url(postgres_url).set(username=role).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"
                ),
                {"r": role},
            )
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.dispose()


@dialects
def test_orphaned_sessions_with_the_tag_are_stopped_and_others_left_alone(
    dialect: str, request: pytest.FixtureRequest
) -> None:
    url = _target(request, dialect)
    probe = Probe(dialect, url)
    tag, other = tag_of(900001), tag_of(900002)
    orphan = _hold_session(url, tag, SLEEP_SQL[dialect])
    bystander = _hold_session(url, other, SLEEP_SQL[dialect])
    try:
        orphan.kill()  # as the parent-death signal does: the server goes on with the statement
        orphan.wait()
        time.sleep(0.3)
        held = probe.tagged(tag)
        assert len(held) == 1 and held[0].sleeping
        report = sessions.stop_sessions(url, tag)
        assert report.ok and report.found == (held[0].ident,)
        assert probe.tagged(tag) == []
        assert [s.sleeping for s in probe.tagged(other)] == [True]  # only the tag decides
        assert sessions.stop_sessions(url, tag) == sessions.StopReport(found=(), failures=())
    finally:
        for proc in (orphan, bystander):
            proc.kill()
            proc.wait()
        sessions.stop_sessions(url, other)
        probe.close()


@pytest.mark.postgres
def test_a_session_that_cannot_be_stopped_is_named_with_the_reason(
    postgres_url: str, unprivileged_role: str
) -> None:
    tag = tag_of(900003)
    held = _hold_session(postgres_url, tag, SLEEP_SQL["postgres"])
    try:
        time.sleep(0.3)
        started = time.monotonic()
        report = sessions.stop_sessions(
            unprivileged_role, tag, cancel_grace=0.2, terminate_wait=0.5
        )
        took = time.monotonic() - started
    finally:
        held.kill()
        held.wait()
        sessions.stop_sessions(postgres_url, tag)
    assert len(report.found) == 1 and not report.ok
    (failure,) = report.failures
    assert failure.startswith(f"could not stop backend pid {report.found[0]}: ")
    # The server's own words, which differ between versions.
    assert re.search(r"permission denied|must be a (superuser|member)", failure), failure
    assert took < 3


def test_the_child_is_tagged_through_libpq_and_init_command_never_through_the_actions_url() -> None:
    tag = tag_of(7)
    pg = "postgresql+psycopg2://u:pw@db.example/app"
    url, env = sessions.tag_child(pg, tag, {"PGOPTIONS": "-c lock_timeout=5s"})
    assert url == pg
    assert env == {
        "PGOPTIONS": r"-c lock_timeout=5s -c application_name=migration-dashboard\ action\ 7",
        "PGAPPNAME": "migration-dashboard action 7",
    }
    my = "mysql+pymysql://u:pw@db.example/app?charset=utf8mb4"
    url, env = sessions.tag_child(my, tag, {})
    assert env == {}
    query = make_url(url).query
    assert query["charset"] == "utf8mb4" and make_url(url).password == "pw"
    assert query["init_command"] == (
        "DO GET_LOCK(CONCAT('migration-dashboard action 7 #', CONNECTION_ID()), 0)"
    )
    own = "mysql+pymysql://u:pw@db.example/app?init_command=SET+@a%3D1"
    assert sessions.tag_child(own, tag, {}) == (own, {})
    assert sessions.tag_child("sqlite:///x.db", tag, {}) == ("sqlite:///x.db", {})
    assert sessions.stop_sessions("sqlite:///x.db", tag).ok


def _alembic_children() -> list[int]:
    """Return the pids of this process's Alembic children (forked by its fork servers or not)."""
    servers = set(fork_server_pids())
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        mine = parent == os.getpid() or parent in servers
        if mine and int(pid) not in servers and b"alembic" in command:
            found.append(int(pid))
    return found


# Committed like a worker's run, so the monitor's thread can write the action's row.
@transactional
@pytest.mark.postgres
def test_a_child_that_dies_on_its_own_leaves_no_session_behind_the_freed_environment(
    postgres_url: str, people: dict[str, Any], sleeper_project: Path, settings: Any, tmp_path: Path
) -> None:
    _configure(settings, tmp_path, sleeper_project, postgres_url, time_limit=120)
    probe = Probe("postgres", postgres_url)
    try:
        action = _request(people["olga"])
        tag = tag_of(action.pk)

        def kill_the_child() -> None:
            wait_for(lambda: probe.sleeping(tag), within=60)
            for pid in _alembic_children():
                os.kill(pid, signal.SIGKILL)  # as the OOM killer would

        killer = threading.Thread(target=kill_the_child)
        killer.start()
        ended = actions.action_run(action_id=action.pk, worker="test")
        killer.join()
        assert ended.status == Action.Status.FAILED, ended.error
        # Finished, so the environment is free: its statement must be gone already.
        assert probe.busy(tag) == []
    finally:
        probe.close()
