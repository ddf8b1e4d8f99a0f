"""Reading environments' version tables on real SQLite, PostgreSQL and MariaDB databases."""

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from dashboard.config import Environment, Project
from dashboard.databases.versions import (
    DEADLINE_GRACE,
    Reading,
    mask_secrets,
    read_environment,
    read_many,
    read_url,
)
from tests.databases import MARIADB_ADMIN_URL, PG_ADMIN_URL
from tests.fakeserver import closed_port, silent_server


def write_versions(
    url: str,
    heads: list[str],
    *,
    table: str = "alembic_version",
    schema: str | None = None,
) -> None:
    """Create a version table (and its schema) holding the given heads."""
    engine = sa.create_engine(url, poolclass=NullPool)
    metadata = sa.MetaData()
    versions = sa.Table(
        table,
        metadata,
        sa.Column("version_num", sa.String(32), primary_key=True),
        schema=schema,
    )
    with engine.begin() as conn:
        if schema is not None:
            conn.execute(sa.schema.CreateSchema(schema))
        metadata.create_all(conn)
        for head in heads:
            conn.execute(versions.insert().values(version_num=head))
    engine.dispose()


def project(tmp_path: Path, **settings: str) -> Project:
    """Return a project whose version table settings are the given ones."""
    return Project(name="blog", script_location=tmp_path, **settings)  # type: ignore[arg-type]


def environment(name: str, url: str, timeout: float = 5.0) -> Environment:
    """Return an environment of the blog project at this URL."""
    return Environment(name=name, project="blog", url=url, timeout=timeout)


def timed_read(url: str, **options: object) -> tuple[Reading, float]:
    """Read a URL and return the reading with the wall-clock seconds it took."""
    started = time.perf_counter()
    reading = read_url(url, **options)  # type: ignore[arg-type]
    return reading, time.perf_counter() - started


def reader_thread_alive(environment_name: str) -> bool:
    """Say whether the worker thread reading this environment is still running."""
    for thread in threading.enumerate():
        if thread.name == f"version-read-{environment_name}":
            thread.join(0.5)
            return thread.is_alive()
    return False


@contextmanager
def mariadb_user(password: str, database: str) -> Iterator[str]:
    """Create a MariaDB user with this password who may read a database; drop it after."""
    name = f"dash_x_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(MARIADB_ADMIN_URL, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE USER '{name}'@'%' IDENTIFIED BY :pw"), {"pw": password})
        conn.execute(sa.text(f"GRANT SELECT ON `{database}`.* TO '{name}'@'%'"))
    try:
        yield name
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP USER IF EXISTS '{name}'@'%'"))
        admin.dispose()


@contextmanager
def postgres_role() -> Iterator[str]:
    """Create a PostgreSQL login role with no table privileges, yield its name, then drop it."""
    name = f"dash_ro_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{name}" LOGIN'))
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{name}"'))
        admin.dispose()


def test_missing_version_table_reads_as_uninitialized(any_url: str) -> None:
    sa.create_engine(any_url, poolclass=NullPool).connect().close()  # creates a SQLite file
    reading = read_url(any_url, environment="dev")

    assert reading.error is None
    assert reading.error_kind is None
    assert reading.table_exists is False
    assert reading.heads == ()
    assert reading.environment == "dev"


def test_empty_version_table_is_told_apart_from_a_missing_one(any_url: str) -> None:
    write_versions(any_url, [])

    reading = read_url(any_url)

    assert reading.error is None
    assert reading.table_exists is True
    assert reading.heads == ()


def test_one_head_is_read(any_url: str) -> None:
    write_versions(any_url, ["ae1027a6acf"])

    reading = read_url(any_url)

    assert reading.ok
    assert reading.table_exists is True
    assert reading.heads == ("ae1027a6acf",)
    assert reading.latency_ms > 0
    assert reading.read_at.tzinfo is not None
    assert reading.read_at.utcoffset() == UTC.utcoffset(None)


def test_a_second_read_sees_the_table_as_it_is_now(any_url: str) -> None:
    write_versions(any_url, ["aaa"])
    first = read_url(any_url)
    engine = sa.create_engine(any_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'bbb'"))
    engine.dispose()

    second = read_url(any_url)

    assert (first.heads, second.heads) == (("aaa",), ("bbb",))


def test_branched_environment_reads_both_heads_sorted(any_url: str) -> None:
    write_versions(any_url, ["f00d", "beef"])

    reading = read_url(any_url)

    assert reading.heads == ("beef", "f00d")


def test_custom_version_table_name(any_url: str, tmp_path: Path) -> None:
    write_versions(any_url, ["1a2b"], table="blog_versions")

    custom = read_environment(
        environment("dev", any_url), project(tmp_path, version_table="blog_versions")
    )
    default = read_environment(environment("dev", any_url), project(tmp_path))

    assert custom.heads == ("1a2b",)
    assert custom.table_exists is True
    assert default.error is None
    assert default.table_exists is False


@pytest.mark.postgres
def test_version_table_in_another_postgres_schema(postgres_url: str, tmp_path: Path) -> None:
    write_versions(postgres_url, ["c0ffee"], schema="blog_meta")
    env = environment("staging", postgres_url)

    with_schema = read_environment(env, project(tmp_path, version_table_schema="blog_meta"))
    without_schema = read_environment(env, project(tmp_path))

    assert with_schema.heads == ("c0ffee",)
    assert with_schema.table_exists is True
    # The silent-wrong-config trap: the default schema has no table, which is not an error.
    assert without_schema.error is None
    assert without_schema.table_exists is False
    assert without_schema.heads == ()


@pytest.mark.postgres
def test_postgres_options_in_the_url_are_kept(postgres_url: str) -> None:
    write_versions(postgres_url, ["c0ffee"], schema="blog_meta")
    with_search_path = make_url(postgres_url).update_query_dict(
        {"options": "-c search_path=blog_meta"}
    )

    reading = read_url(with_search_path.render_as_string(hide_password=False))

    assert reading.heads == ("c0ffee",)


@pytest.mark.postgres
def test_postgres_permission_denied_names_the_table(postgres_url: str) -> None:
    write_versions(postgres_url, ["c0ffee"])
    with postgres_role() as role:
        as_role = make_url(postgres_url).set(username=role).render_as_string(hide_password=False)

        reading = read_url(as_role)

    assert reading.error_kind == "error"
    assert reading.error == "version table public.alembic_version: permission denied"


@pytest.mark.postgres
def test_postgres_statement_waiting_on_a_lock_gives_up_in_time(postgres_url: str) -> None:
    write_versions(postgres_url, ["c0ffee"])
    holder = sa.create_engine(postgres_url, poolclass=NullPool)
    with holder.connect() as conn:
        conn.execute(sa.text("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE"))

        reading, took = timed_read(postgres_url, timeout=1.0, environment="locked")
        # The server cancelled the statement itself: no reader thread waits on the lock.
        left_behind = reader_thread_alive("locked")

        conn.rollback()
    holder.dispose()

    assert reading.error_kind == "timeout"
    assert took < 1.0 + DEADLINE_GRACE + 1.0
    assert not left_behind


@pytest.mark.postgres
def test_postgres_database_that_does_not_exist(postgres_url: str) -> None:
    missing = make_url(postgres_url).set(database="dash_no_such_db").render_as_string(False)

    reading = read_url(missing)

    assert reading.error_kind == "error"
    assert reading.error == "database 'dash_no_such_db' does not exist"


@pytest.mark.mariadb
def test_mariadb_database_that_does_not_exist(mariadb_url: str) -> None:
    missing = make_url(mariadb_url).set(database="dash_no_such_db").render_as_string(False)

    reading = read_url(missing)

    assert reading.error_kind == "error"
    assert reading.error == "database 'dash_no_such_db' does not exist"


def test_missing_sqlite_file_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"

    reading = read_url(f"sqlite:///{path}")

    assert reading.error_kind == "error"
    assert reading.error is not None
    assert "does not exist" in reading.error
    assert not path.exists()


def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are not the tables you are looking for\n" * 100)

    reading = read_url(f"sqlite:///{path}")

    assert reading.error_kind == "error"
    assert reading.error == f"{path} is not a SQLite database"


def test_sqlite_read_does_not_write_to_the_file(sqlite_url: str) -> None:
    write_versions(sqlite_url, ["1a2b"])
    path = Path(str(make_url(sqlite_url).database))
    before = (path.stat().st_mtime_ns, path.read_bytes())

    reading = read_url(sqlite_url)

    assert reading.heads == ("1a2b",)
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before


@pytest.mark.parametrize(
    "admin_url", [PG_ADMIN_URL, MARIADB_ADMIN_URL], ids=["postgres", "mariadb"]
)
def test_closed_port_is_unreachable_quickly(admin_url: str) -> None:
    port = closed_port()
    url = make_url(admin_url).set(port=port).render_as_string(hide_password=False)

    reading, took = timed_read(url, timeout=2.0)

    assert reading.error_kind == "unreachable"
    assert reading.error == f"could not connect to 127.0.0.1:{port}: connection refused"
    assert took < 2.0


@pytest.mark.parametrize(
    "admin_url", [PG_ADMIN_URL, MARIADB_ADMIN_URL], ids=["postgres", "mariadb"]
)
def test_server_that_never_answers_times_out(admin_url: str) -> None:
    with silent_server() as port:
        url = make_url(admin_url).set(port=port).render_as_string(hide_password=False)

        reading, took = timed_read(url, timeout=1.0, environment="silent")

        # The driver's own timeout ended the read: no reader thread is left behind.
        assert not reader_thread_alive("silent")
    assert reading.error_kind == "timeout"
    assert reading.error == "timed out after 1.0 s"
    assert 0.9 <= took < 1.0 + 1.0


def test_unset_url_variable_is_not_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DASH_TEST_PROD_URL", raising=False)
    env = Environment(name="prod", project="blog", url_env="DASH_TEST_PROD_URL")

    reading = read_environment(env, project(tmp_path))

    assert reading.error_kind == "not_configured"
    assert reading.error == "not configured: DASH_TEST_PROD_URL is not set"
    assert reading.environment == "prod"


def test_url_variable_is_read_when_set(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_versions(sqlite_url, ["1a2b"])
    monkeypatch.setenv("DASH_TEST_PROD_URL", sqlite_url)
    env = Environment(name="prod", project="blog", url_env="DASH_TEST_PROD_URL")

    reading = read_environment(env, project(tmp_path))

    assert reading.heads == ("1a2b",)


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "postgresql+nosuchdriver://u:hunter22@h/db",
        "",
        "postgresql://u:hunter22@h:54x/db",
        # make_url would take "hunter22@x" apart and ask DNS for "x@nosuch.invalid".
        "postgresql://u:hunter22@x@nosuch.invalid/db",
    ],
)
def test_unusable_url_is_an_error_without_the_url(url: str) -> None:
    reading = read_url(url)

    assert reading.error_kind == "error"
    assert reading.error
    assert "hunter22" not in reading.error


@pytest.mark.mariadb
def test_wrong_mariadb_password_is_an_auth_error_that_never_shows_a_password(
    mariadb_url: str,
) -> None:
    right, wrong = "SecretPw123", "WrongSecret987"
    base = make_url(mariadb_url)
    with mariadb_user(right, str(base.database)) as user:
        base = base.set(username=user)
        good = read_url(base.set(password=right).render_as_string(hide_password=False))
        bad = read_url(base.set(password=wrong).render_as_string(hide_password=False))

    assert good.error is None
    assert bad.error_kind == "auth"
    assert bad.error == f"authentication failed for user '{user}'"
    for shown in (bad.error, repr(bad), str(bad)):
        assert wrong not in shown
        assert right not in shown


@pytest.mark.postgres
def test_postgres_errors_stay_readable_and_never_show_a_password(postgres_url: str) -> None:
    base = make_url(postgres_url)

    def error_for(user: str, password: str) -> str | None:
        url = base.set(username=user, password=password)
        return read_url(url.render_as_string(hide_password=False)).error

    # A one-letter password does not blank that letter all over the message...
    assert error_for("nosuch_role", "e") == "role 'nosuch_role' does not exist"
    # ...and a password that is also the user name is still never shown.
    assert error_for("nosuch_pw", "nosuch_pw") == "role '***' does not exist"


def test_mask_secrets_removes_the_password_in_every_form() -> None:
    message = (
        "failed for dsn host=db password=pa ss user=x; "
        "url postgresql://x:p%40ss%2Fw0rd@db/app; raw p@ss/w0rd; PWD='quoted secret'"
    )

    masked = mask_secrets(message, "p@ss/w0rd")

    assert "p@ss/w0rd" not in masked
    assert "p%40ss%2Fw0rd" not in masked
    assert "password=pa" not in masked
    assert "quoted secret" not in masked
    assert "host=db" in masked


def test_read_many_keeps_order_and_takes_the_slowest_not_the_sum(
    sqlite_url: str, postgres_url: str, mariadb_url: str, tmp_path: Path
) -> None:
    write_versions(sqlite_url, ["aaa"])
    write_versions(postgres_url, ["bbb", "ccc"])
    write_versions(mariadb_url, [])
    blog = project(tmp_path)
    hung_timeout = 1.0
    with silent_server() as port:
        hung_pg = make_url(PG_ADMIN_URL).set(port=port).render_as_string(hide_password=False)
        hung_my = make_url(MARIADB_ADMIN_URL).set(port=port).render_as_string(False)
        envs = [
            environment("hung-1", hung_pg, hung_timeout),
            environment("sqlite-1", sqlite_url),
            environment("pg-1", postgres_url),
            environment("maria-1", mariadb_url),
            environment("hung-2", hung_my, hung_timeout),
            environment("sqlite-2", sqlite_url),
            environment("pg-2", postgres_url),
            environment("maria-2", mariadb_url),
            environment("hung-3", hung_pg, hung_timeout),
            Environment(name="unset", project="blog", url_env="DASH_TEST_SURELY_UNSET"),
        ]

        started = time.perf_counter()
        readings = read_many([(env, blog) for env in envs])
        took = time.perf_counter() - started

    assert [r.environment for r in readings] == [env.name for env in envs]
    by_name = {r.environment: r for r in readings}
    assert by_name["sqlite-2"].heads == ("aaa",)
    assert by_name["pg-2"].heads == ("bbb", "ccc")
    assert by_name["maria-2"].table_exists is True
    assert by_name["maria-2"].heads == ()
    assert by_name["unset"].error_kind == "not_configured"
    assert {by_name[f"hung-{n}"].error_kind for n in (1, 2, 3)} == {"timeout"}
    # Three hung servers in sequence would take 3 s; in parallel about one timeout.
    assert took < hung_timeout + DEADLINE_GRACE + 1.0


def test_read_many_of_nothing_is_empty() -> None:
    assert read_many([]) == []
