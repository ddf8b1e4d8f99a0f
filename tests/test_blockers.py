"""Blockers: the sessions in a run's way on real PostgreSQL, written live to the action and shown."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from sqlalchemy.pool import NullPool

from dashboard.config import Project
from dashboard.databases.blockers import in_the_way, tables_in_sql
from dashboard.databases.sessions import action_tag
from dashboard.models import Action, Snapshot
from dashboard.runner.monitor import RunMonitor
from dashboard.runner.process import offline_sql
from dashboard.services import status
from tests.actions_support import SAMPLE_INI, wait_for
from tests.statusenv import empty_sqlite, with_password, write_config

pytestmark = pytest.mark.django_db(transaction=True)
PASSWORD = "correct-horse-9"
SECRET = "hunter2blockers"
FK = "c94a0b3e6d12"
VOTES = "e0d7f4a19b53"


@contextmanager
def session(url: str, **connect_args: Any) -> Iterator[sa.Connection]:
    """Open one real session on url (its own connection, not pooled)."""
    engine = sa.create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def pid_of(conn: sa.Connection) -> int:
    return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


@pytest.fixture
def posts(postgres_url: str) -> str:
    """A PostgreSQL database with a posts table; return its URL."""
    with session(postgres_url) as conn:
        conn.execute(sa.text("CREATE TABLE posts (id int)"))
        conn.commit()
    return postgres_url


def by_pid(items: list[dict[str, Any]], pid: int) -> dict[str, Any] | None:
    return next((item for item in items if item["pid"] == pid), None)


def test_an_idle_transaction_holding_access_share_on_posts_is_in_the_way(posts: str) -> None:
    with session(posts, application_name="psql") as blocker:
        blocker.execute(sa.text("SELECT count(*) FROM posts"))  # ACCESS SHARE until it ends
        pid = pid_of(blocker)

        with session(posts, application_name="migration-dashboard") as own_read:
            own_read.execute(sa.text("SELECT count(*) FROM posts"))
            own = pid_of(own_read)
            items = in_the_way(posts, tag=action_tag(1), tables=["posts"])
            own_read.rollback()
        elsewhere = by_pid(in_the_way(posts, tag=action_tag(1), tables=["users"]), pid)
        blocker.rollback()

    item = by_pid(items, pid)
    assert by_pid(items, own) is None  # the dashboard's own version read is not in the way
    assert item is not None
    assert item["kind"] == "lock_holder"
    assert item["state"] == "idle in transaction"
    assert item["lock"] == "AccessShareLock" and item["table"] == "posts"
    assert item["application"] == "psql" and item["user"] == "postgres"
    assert item["client"] == "127.0.0.1"
    assert item["xact_age_s"] is not None and item["since"]
    assert item["query"] == "SELECT pg_backend_pid()"  # its last statement
    json.dumps(item)  # stored on the action as it is
    assert elsewhere is None  # a young transaction on other tables is not in the way


def test_the_session_a_tagged_child_waits_on_is_listed_as_blocking(posts: str) -> None:
    tag = action_tag(4242)
    failures: list[BaseException] = []
    with session(posts) as blocker:
        blocker.execute(sa.text("SELECT count(*) FROM posts"))
        blocker_pid = pid_of(blocker)
        child_pid: list[int] = []

        def alter() -> None:
            try:
                with session(posts, application_name=tag) as child:
                    child_pid.append(pid_of(child))
                    child.execute(sa.text("SET lock_timeout = '10s'"))
                    child.execute(sa.text("ALTER TABLE posts ADD COLUMN x int"))
                    child.commit()
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=alter)
        thread.start()
        try:

            def blocking() -> list[dict[str, Any]] | None:
                items = in_the_way(posts, tag=tag, tables=["posts"], older_than=3600)
                item = by_pid(items, blocker_pid)
                return items if item is not None and item["kind"] == "blocking" else None

            items = wait_for(blocking, within=8)
        finally:
            blocker.rollback()
            thread.join(15)

    assert not failures, failures
    item = by_pid(items, blocker_pid)
    assert item is not None
    assert item["lock"] == "AccessShareLock" and item["table"] == "posts"
    assert item["state"] == "idle in transaction"
    assert by_pid(items, child_pid[0]) is None  # the run's own session is not in its way
    assert [i["pid"] for i in items].count(blocker_pid) == 1  # blocking and holder: said once


def test_an_old_transaction_is_listed_even_without_a_lock_on_the_tables(posts: str) -> None:
    with session(posts) as old:
        old.execute(sa.text("SELECT 1"))  # the transaction started here
        pid = pid_of(old)

        item = by_pid(in_the_way(posts, tag="t", tables=["posts"], older_than=0), pid)
        young = by_pid(in_the_way(posts, tag="t", tables=["posts"], older_than=3600), pid)
        old.rollback()

    assert item is not None
    assert item["kind"] == "old_transaction"
    assert item["lock"] == "" and item["table"] == ""
    assert young is None


def test_no_password_appears_in_a_blockers_query(posts: str) -> None:
    url = with_password(posts, SECRET)  # the server trusts; the URL still carries a password
    with session(posts) as blocker:
        pid = pid_of(blocker)
        said = f"SELECT 1 AS {SECRET} FROM posts WHERE '{SECRET}' <> 'y' -- {SECRET}"  # noqa: S608
        blocker.execute(sa.text(said))

        items = in_the_way(url, tag="t", tables=["posts"])
        blocker.rollback()

    item = by_pid(items, pid)
    assert item is not None
    assert SECRET not in json.dumps(items)
    assert item["query"].startswith("SELECT 1 AS *** FROM posts WHERE '…' <> '…'")


def test_a_long_query_is_cut(posts: str) -> None:
    with session(posts) as blocker:
        pid = pid_of(blocker)
        columns = ", ".join(f"id AS column_{n}" for n in range(60))
        blocker.execute(sa.text(f"SELECT {columns} FROM posts"))  # noqa: S608

        item = by_pid(in_the_way(posts, tag="t", tables=["posts"]), pid)
        blocker.rollback()

    assert item is not None
    assert len(item["query"]) <= 200 and item["query"].endswith("…")


def test_other_databases_and_unreachable_servers_give_an_empty_list(tmp_path: Path) -> None:
    sqlite = empty_sqlite(tmp_path / "t.db")
    assert in_the_way(sqlite, tag="t", tables=["posts"]) == []
    assert in_the_way("mysql+pymysql://root@127.0.0.1/x", tag="t", tables=["posts"]) == []
    assert in_the_way("not a url", tag="t", tables=["posts"]) == []
    closed = "postgresql://postgres@127.0.0.1:1/nothing"
    assert in_the_way(closed, tag="t", tables=["posts"], timeout=1) == []


def test_the_tables_the_sample_projects_offline_sql_touches() -> None:
    project = Project(name="blog", script_location=SAMPLE_INI.parent, alembic_ini=SAMPLE_INI)
    sql = offline_sql(
        project, "postgresql://u@localhost/x", direction="upgrade", from_rev=FK, to_rev=VOTES
    )
    assert "CREATE TABLE votes" in sql
    # The new table is nobody's to hold; the tables it references and the version table are.
    assert tables_in_sql(sql) == ["posts", "users", "alembic_version"]


def test_the_tables_each_kind_of_statement_touches() -> None:
    sql = """
    -- ALTER TABLE commented_out ADD x int;
    ALTER TABLE IF EXISTS ONLY "Blog"."Posts" ADD COLUMN x int;
    CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ix_a ON public.accounts (email);
    CREATE INDEX ON tags (name);
    DROP TABLE IF EXISTS old_a, blog.old_b CASCADE;
    DROP INDEX CONCURRENTLY ix_gone;
    UPDATE alembic_version SET version_num='UPDATE literal SET' WHERE true;
    INSERT INTO audit (a) VALUES (1);
    DELETE FROM ONLY sessions;
    TRUNCATE TABLE carts;
    CREATE TABLE comments (post_id int REFERENCES posts (id));
    COMMENT ON COLUMN public.users.email IS 'mail';
    """
    assert tables_in_sql(sql) == [
        "Posts",
        "accounts",
        "tags",
        "old_a",
        "old_b",
        "ix_gone",
        "alembic_version",
        "audit",
        "sessions",
        "carts",
        "posts",
        "users",
    ]


def test_a_dropped_index_counts_its_table(posts: str) -> None:
    with session(posts) as setup:
        setup.execute(sa.text("CREATE INDEX ix_posts_id ON posts (id)"))
        setup.commit()
    with session(posts) as blocker:
        blocker.execute(sa.text("SELECT count(*) FROM posts"))
        pid = pid_of(blocker)

        item = by_pid(
            in_the_way(posts, tag="t", tables=tables_in_sql("DROP INDEX ix_posts_id")), pid
        )
        blocker.rollback()

    assert item is not None and item["table"] == "posts"


def running_action(**fields: Any) -> Action:
    values: dict[str, Any] = {
        "environment": "staging",
        "project": "blog",
        "direction": "upgrade",
        "target": "heads",
        "from_heads": [FK],
        "target_heads": [VOTES],
        "plan": [VOTES],
        "fingerprint": "f",
        "plan_hash": "h",
        "requested_by_name": "olga",
        "status": Action.Status.RUNNING,
        "started_at": timezone.now(),
    }
    return Action.objects.create(**{**values, **fields})


def blocker_item(**fields: Any) -> dict[str, Any]:
    item = {
        "kind": "blocking",
        "pid": 4242,
        "user": "app",
        "application": "psql",
        "client": "10.0.0.7",
        "state": "idle in transaction",
        "xact_age_s": 350.0,
        "query": "SELECT count(*) FROM posts",
        "lock": "AccessShareLock",
        "table": "posts",
        "since": "2026-05-04T13:50:00+00:00",
    }
    return {**item, **fields}


def test_set_blockers_writes_the_actions_row_and_the_last_list_stays() -> None:
    action = running_action()
    monitor = RunMonitor(action.pk, known_revisions=[], flush_interval=0.05)
    monitor.start()
    try:
        first = [blocker_item()]
        monitor.set_blockers(first)
        wait_for(lambda: Action.objects.get(pk=action.pk).blockers == first, within=10)
        seen_at = Action.objects.get(pk=action.pk).blockers_at
        assert seen_at is not None
        # Only its age grew: not news, so the row keeps the list and its moment.
        monitor.set_blockers([blocker_item(xact_age_s=351.0)])
        later = [blocker_item(state="active", query="SELECT pg_sleep(600)")]
        monitor.set_blockers(later)
    finally:
        monitor.stop()
    row = Action.objects.get(pk=action.pk)
    assert row.blockers == later  # written at the latest with the final flush
    assert row.blockers_at is not None and row.blockers_at >= seen_at


def test_an_unchanged_list_is_not_written_again() -> None:
    action = running_action()
    monitor = RunMonitor(action.pk, known_revisions=[], flush_interval=0.05)
    monitor.start()
    try:
        monitor.set_blockers([blocker_item()])
        wait_for(lambda: Action.objects.get(pk=action.pk).blockers, within=10)
        seen_at = Action.objects.get(pk=action.pk).blockers_at
        monitor.set_blockers([blocker_item(xact_age_s=400.0)])
    finally:
        monitor.stop()
    row = Action.objects.get(pk=action.pk)
    assert row.blockers_at == seen_at
    assert row.blockers[0]["xact_age_s"] == 350.0


def test_the_monitor_watches_in_its_own_thread_and_keeps_the_last_list(posts: str) -> None:
    action = running_action()
    looks: list[int] = []

    def watch() -> list[dict[str, Any]]:
        looks.append(1)
        if len(looks) == 1:
            raise RuntimeError("a look failed")  # logged; the next one still comes
        return in_the_way(posts, tag=action_tag(action.pk), tables=["posts"])

    with session(posts) as blocker:
        blocker.execute(sa.text("SELECT count(*) FROM posts"))
        pid = pid_of(blocker)
        monitor = RunMonitor(
            action.pk, known_revisions=[], flush_interval=0.05, watch=watch, watch_interval=0.1
        )
        monitor.start()
        try:
            wait_for(
                lambda: any(i["pid"] == pid for i in Action.objects.get(pk=action.pk).blockers),
                within=15,
            )
        finally:
            monitor.stop()
            blocker.rollback()
    assert len(looks) >= 2
    row = Action.objects.get(pk=action.pk)
    assert [item["pid"] for item in row.blockers] == [pid]
    assert row.blockers[0]["kind"] == "lock_holder"


@pytest.fixture
def viewer(settings: Any, tmp_path: Path) -> Client:
    """A signed-in viewer, the sample project configured with staging on SQLite."""
    path = write_config(
        tmp_path / "dashboard.toml",
        {"staging": {"project": "blog", "url": empty_sqlite(tmp_path / "staging.db")}},
    )
    settings.DASHBOARD_CONFIG = str(path)
    call_command("adduser", "vera", role="viewer", password=PASSWORD)
    client = Client()
    assert client.login(username="vera", password=PASSWORD)
    return client


def test_the_action_page_says_what_is_in_the_way_and_refreshes_it(viewer: Client) -> None:
    run_lock = {
        "kind": "run_lock",
        "pid": 77,
        "user": "deploy",
        "application": "alembic",
        "client": "10.0.0.9",
        "since": "2026-05-04T13:50:00+00:00",
    }
    action = running_action(
        blockers=[run_lock, blocker_item(), blocker_item(kind="old_transaction", pid=5, lock="")],
        blockers_at=timezone.now(),
    )
    page = viewer.get(reverse("action-detail", args=[action.pk])).content.decode()
    live = viewer.get(
        reverse("action-progress", args=[action.pk]), HTTP_HX_REQUEST="true"
    ).content.decode()

    for html in (page, live):
        assert (
            "waiting: pid 4242, idle in transaction for 6 min, holds AccessShareLock on posts"
            in html
        )
        assert (
            "waiting for the run lock held by pid 77 (user deploy, application alembic, "
            "from 10.0.0.9) since 2026-05-04 13:50:00 UTC" in html
        )
        assert "long transaction: pid 5, idle in transaction for 6 min" in html
        assert "user app, application psql, from 10.0.0.7" in html
        assert "SELECT count(*) FROM posts" in html
    # The list sits inside the region that polls, so a new blocker shows at the next poll.
    assert 'hx-trigger="every 1s"' in live and 'id="blockers"' in live
    blockers = live[live.index('id="blockers"') :]
    assert "<form" not in blockers and "<button" not in blockers  # never a kill button


def test_a_finished_action_keeps_its_last_blockers(viewer: Client) -> None:
    seen = timezone.now() - timedelta(minutes=1)
    action = running_action(
        status=Action.Status.FAILED,
        finished_at=seen,
        blockers=[blocker_item()],
        blockers_at=seen,
        error="lock timeout",
    )
    html = viewer.get(reverse("action-detail", args=[action.pk])).content.decode()
    assert "waiting: pid 4242, idle in transaction for 6 min" in html


def test_no_blockers_no_section(viewer: Client) -> None:
    action = running_action()
    html = viewer.get(
        reverse("action-progress", args=[action.pk]), HTTP_HX_REQUEST="true"
    ).content.decode()
    assert 'id="blockers"' not in html


def test_the_environment_page_shows_a_held_run_lock(viewer: Client) -> None:
    status.status_refresh(environments=["staging"])
    html = viewer.get(reverse("environment", args=["staging"])).content.decode()
    assert 'id="run-lock"' not in html
    Snapshot.objects.filter(environment="staging").update(
        run_lock={
            "pid": 4242,
            "user": "deploy",
            "application": "alembic",
            "client": "10.0.0.9",
            "since": "2026-05-04T13:50:00+00:00",
        }
    )
    html = viewer.get(reverse("environment", args=["staging"])).content.decode()
    assert (
        "run lock held by pid 4242 (user deploy, application alembic, from 10.0.0.9, "
        "since 2026-05-04 13:50:00 UTC)" in html
    )


def test_the_status_refresh_reads_who_holds_the_run_lock(
    viewer: Client, settings: Any, tmp_path: Path, postgres_url: str
) -> None:
    from dashboard.databases import runlock

    path = write_config(tmp_path / "pg.toml", {"prod": {"project": "blog", "url": postgres_url}})
    settings.DASHBOARD_CONFIG = str(path)
    (free,) = status.status_refresh(environments=["prod"])
    key = runlock.postgresql_key("public", "alembic_version")
    with session(postgres_url, application_name="psql") as psql:
        psql.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        pid = pid_of(psql)
        (held,) = status.status_refresh(environments=["prod"])
        html = viewer.get(reverse("environment", args=["prod"])).content.decode()

    assert free.run_lock == {}
    stored = Snapshot.objects.get(pk=held.pk).run_lock
    assert stored["pid"] == pid
    assert (stored["user"], stored["application"], stored["client"]) == (
        "postgres",
        "psql",
        "127.0.0.1",
    )
    assert stored["since"]
    assert (
        f"run lock held by pid {pid} (user postgres, application psql, from 127.0.0.1, since "
        in html
    )
