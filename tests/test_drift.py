"""Schema drift checks end to end: the done-when case, scratch clean-up, secrets, models, adoption."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from django.forms.models import model_to_dict

from dashboard import audit
from dashboard.databases import scratch
from dashboard.drift import adoption, reference
from dashboard.drift.differences import describe, from_dicts
from dashboard.models import AuditEvent, SchemaCheck
from dashboard.services import drift
from tests.actions_support import (
    HEAD,
    MERGE,
    SAMPLE_INI,
    make_people,
    start_worker,
    stop_worker,
    wait_for,
)
from tests.databases import MARIADB_ADMIN_URL
from tests.drift_support import (
    SCRATCH,
    empty_database,
    execute,
    migrate,
    sample_copy,
    scratch_names,
    write_drift_config,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("keep_roles")]

OLDER = "5b2d9e7f1c86"  # posts gained published and created_at; no foreign key, no votes yet
WITHOUT_PHONE = "6c0a8d3f5e94_add_phone_number_to_users.py"


@pytest.fixture
def configure(tmp_path: Path, settings: Any) -> Callable[..., Path]:
    """Return a function that writes a config of these environments and makes it current."""

    def write(environments: dict[str, str], **project: Any) -> Path:
        path = write_drift_config(
            tmp_path / f"dashboard-{uuid.uuid4().hex[:6]}.toml",
            {name: {"url": url} for name, url in environments.items()},
            **project,
        )
        settings.DASHBOARD_CONFIG = str(path)
        return path

    return write


def _check(name: str = "staging") -> SchemaCheck:
    [check] = drift.schemas_check([name])
    return check


def _mine(kind: str, pid: int | None = None) -> list[str]:
    """Return the scratch databases (or SQLite scratch folders) a process of ours left."""
    tag = f"_{pid or os.getpid()}_"
    if kind == "sqlite":
        root = Path(tempfile.gettempdir())
        prefix = f"{scratch.SQLITE_PREFIX}{pid or os.getpid()}-"
        return sorted(p.name for p in root.glob(f"{prefix}*"))
    return [name for name in scratch_names(kind) if tag in name]


DONE_WHEN = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]
EVERY_KIND = [
    *DONE_WHEN,
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]


@pytest.mark.parametrize("kind", DONE_WHEN)
def test_done_when_a_hand_made_column_is_named_then_dropped_in_sync(
    kind: str, tmp_path: Path, configure: Callable[..., Path]
) -> None:
    with empty_database(kind, tmp_path) as url:
        migrate(url, "heads")
        configure({"staging": url}, scratch_url=SCRATCH[kind])
        execute(url, "ALTER TABLE users ADD COLUMN nickname VARCHAR(40)")

        found = _check()
        assert (found.state, found.heads) == ("drift", [HEAD])
        assert [(d["kind"], d["table"], d["name"]) for d in found.differences] == [
            ("remove_column", "users", "nickname")
        ]
        [difference] = from_dicts(found.differences)
        assert describe(difference, "staging") == (
            "column users.nickname exists in staging but no revision creates it"
        )
        users = next(t for t in found.live_schema["tables"] if t["name"] == "users")
        assert "nickname" in [c["name"] for c in users["columns"]]

        execute(url, "ALTER TABLE users DROP COLUMN nickname")
        clean = _check()
    assert (clean.state, clean.differences, clean.reason) == ("in_sync", [], "")


@pytest.mark.once  # target databases only: the dashboard's own backend changes nothing here
@pytest.mark.parametrize("kind", EVERY_KIND)
def test_scratch_is_gone_after_a_passing_check_and_after_a_failing_replay(
    kind: str, tmp_path: Path, configure: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reference.forget()
    with empty_database(kind, tmp_path) as url:
        migrate(url, "heads")
        configure({"staging": url}, scratch_url=SCRATCH[kind])

        # The replay's Alembic inherits this process's environment (less the dashboard's secrets).
        monkeypatch.setenv("MIGRATIONS_PROJECT_FAIL", "7a3c2e8b5f01")
        failed = _check()
        assert failed.state == "check_failed"
        assert "the reference schema could not be built: replaying to" in failed.reason
        assert "MIGRATIONS_PROJECT_FAIL requested" in failed.reason
        assert failed.differences == [] and failed.replayed is False
        assert _mine(kind) == []

        monkeypatch.delenv("MIGRATIONS_PROJECT_FAIL")
        passed = _check()  # a failed replay is not cached: this one replays again
        assert (passed.state, passed.replayed) == ("in_sync", True)
        assert reference.replays == 2
        assert _mine(kind) == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_scratch_left_by_a_worker_killed_mid_replay_is_swept(
    postgres_url: str, configure: Callable[..., Path]
) -> None:
    migrate(postgres_url, "heads")
    config = configure({"staging": postgres_url}, scratch_url=SCRATCH["postgres"])
    people = make_people()
    check = drift.schema_check_request(environment="staging", user=people["olga"])
    worker = start_worker(config, MIGRATIONS_PROJECT_SLEEP="30")
    try:
        left = wait_for(lambda: _mine("postgres", worker.pid), within=90, every=0.1)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=15)
    finally:
        stop_worker(worker)
    assert _mine("postgres", worker.pid) == left  # nobody dropped it: the worker died
    check.refresh_from_db()
    assert check.state == "pending"

    # What the next worker's start-up does.
    assert set(left) <= set(drift.scratch_sweep())
    assert _mine("postgres", worker.pid) == []


NO_SCRATCH = (
    "no scratch server: set scratch_url or scratch_url_env in [projects.blog]"
    " to check postgresql environments"
)


@pytest.mark.postgres
def test_postgresql_without_a_scratch_server_is_not_checked(
    postgres_url: str, configure: Callable[..., Path]
) -> None:
    migrate(postgres_url, "heads")
    configure({"staging": postgres_url})
    reference.forget()  # a reference another test built would need no scratch server
    check = _check()
    assert (check.state, check.reason) == ("not_checked", NO_SCRATCH)
    assert check.differences == [] and check.replayed is False

    # Without a version table the reference is the empty base (no replay), so the tables are
    # drift; which revision they match needs replays, and the adoption says why it has none.
    execute(postgres_url, "DROP TABLE alembic_version")
    unversioned = _check()
    assert unversioned.state == "drift"
    assert {(d["kind"], d["name"]) for d in unversioned.differences} == {
        ("remove_table", "posts"),
        ("remove_table", "users"),
        ("remove_table", "votes"),
    }
    assert unversioned.adoption == {"error": NO_SCRATCH}


@pytest.fixture
def mariadb_user() -> Iterator[Callable[[str, str], str]]:
    """Return a function making a MariaDB user with a password, allowed on one database and
    on scratch databases."""
    made: list[str] = []
    admin = sa.create_engine(MARIADB_ADMIN_URL, poolclass=sa.pool.NullPool)

    def make(password: str, database: str) -> str:
        name = f"dashdrift_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE USER '{name}'@'%' IDENTIFIED BY :pw"), {"pw": password})
            conn.execute(sa.text(f"GRANT ALL ON `{database}`.* TO '{name}'@'%'"))
            conn.execute(sa.text(f"GRANT ALL ON `dashscratch\\_%`.* TO '{name}'@'%'"))
        made.append(name)
        return name

    yield make
    with admin.connect() as conn:
        for name in made:
            conn.execute(sa.text(f"DROP USER IF EXISTS '{name}'@'%'"))
    admin.dispose()


def _stored_text() -> str:
    """Return every schema check and audit event as text: where a password must not be."""
    rows = [model_to_dict(c) for c in SchemaCheck.objects.all()]
    rows += [{"verb": e.verb, "payload": e.payload} for e in AuditEvent.objects.all()]
    return json.dumps(rows, default=str)


@pytest.mark.mariadb
@pytest.mark.parametrize("where", ["scratch", "environment"])
def test_a_password_in_a_url_is_never_stored_nor_logged(
    where: str,
    mariadb_url: str,
    mariadb_user: Callable[[str, str], str],
    configure: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    migrate(mariadb_url, "heads")
    secret = f"Sekr1t{uuid.uuid4().hex[:10]}"
    user = mariadb_user(secret, str(sa.engine.make_url(mariadb_url).database))
    # A scratch server's URL needs no database (this user may open none but its own).
    server = sa.engine.make_url(mariadb_url)
    if where == "scratch":
        server = server.set(database=None)
    right = server.set(username=user, password=secret)
    wrong = right.set(password=f"{secret}Wrong")
    caplog.set_level(logging.DEBUG)
    reference.forget()
    if where == "scratch":
        # The replay runs through the scratch URL with its password, then a wrong one fails.
        configure({"staging": mariadb_url}, scratch_url=right.render_as_string(hide_password=False))
        passed = _check()
        configure({"staging": mariadb_url}, scratch_url=wrong.render_as_string(hide_password=False))
        reference.forget()
        failed = _check()
        reason = "the reference schema could not be built: scratch server 127.0.0.1:3306:"
    else:
        environments = {
            "staging": right.render_as_string(hide_password=False),
            "broken": wrong.render_as_string(hide_password=False),
        }
        configure(environments, scratch_url=MARIADB_ADMIN_URL)
        passed, failed = drift.schemas_check(["staging", "broken"])
        reason = "cannot read the version table:"
    assert (passed.state, passed.reason, passed.replayed) == ("in_sync", "", True)
    assert passed.live_schema["tables"]
    assert failed.state == "check_failed"
    assert reason in failed.reason and user in failed.reason
    stored = _stored_text()
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert user in stored  # the reasons name the user, so a password would show beside it
    assert secret not in stored and secret not in logged


def _sample_without_its_last_revision(folder: Path) -> Path:
    copy = folder / "blog"
    shutil.copytree(SAMPLE_INI.parent, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (copy / "versions" / WITHOUT_PHONE).unlink()
    return copy / "alembic.ini"


def test_models_ahead_of_the_revisions_are_reported_and_in_sync_with_the_revision(
    tmp_path: Path, configure: Callable[..., Path]
) -> None:
    ini = _sample_without_its_last_revision(tmp_path)
    behind = tmp_path / "behind.db"
    migrate(f"sqlite:///{behind}", "heads", script_location=ini.parent)
    configure({"staging": f"sqlite:///{behind}"}, alembic_ini=ini, check_models=True)
    ahead = _check()
    # The database is what the copy's revisions make; the models want one column more.
    assert (ahead.state, ahead.heads) == ("in_sync", [MERGE])
    assert ahead.models_state == "drift", ahead.models_reason
    assert ahead.models_differences == ["add_column users.phone_number"]

    covered = tmp_path / "covered.db"
    migrate(f"sqlite:///{covered}", "heads")
    configure({"staging": f"sqlite:///{covered}"}, check_models=True)
    clean = _check()
    assert (clean.state, clean.heads) == ("in_sync", [HEAD])
    assert (clean.models_state, clean.models_differences) == ("in_sync", [])


def test_a_database_without_a_version_table_is_matched_to_its_revision(
    tmp_path: Path, configure: Callable[..., Path]
) -> None:
    exact = f"sqlite:///{tmp_path / 'exact.db'}"
    migrate(exact, OLDER)
    execute(exact, "DROP TABLE alembic_version")  # what create_all from those models leaves
    extra = f"sqlite:///{tmp_path / 'extra.db'}"
    shutil.copyfile(tmp_path / "exact.db", tmp_path / "extra.db")
    execute(extra, "ALTER TABLE users ADD COLUMN nickname VARCHAR(40)")
    configure({"exact": exact, "extra": extra})

    matched, closest = drift.schemas_check(["exact", "extra"])
    assert matched.heads == [] and matched.adoption["exact"] == OLDER
    assert matched.adoption["closest"][0] == {"revision": OLDER, "count": 0, "items": []}
    assert closest.adoption["exact"] is None
    best = closest.adoption["closest"][0]
    assert (best["revision"], best["count"]) == (OLDER, 1)
    assert [(d["kind"], d["table"], d["name"]) for d in best["items"]] == [
        ("remove_column", "users", "nickname")
    ]
    assert closest.adoption["compared"] == closest.adoption["of"] == 9


def test_one_replay_serves_every_environment_at_one_revision(
    tmp_path: Path, configure: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tmp_path / "env0.db"
    migrate(f"sqlite:///{first}", "heads")
    urls = {}
    for n in range(5):
        path = tmp_path / f"env{n}.db"
        if n:
            shutil.copyfile(first, path)
        urls[f"env{n}"] = f"sqlite:///{path}"
    configure(urls)
    reference.forget()
    checks = drift.schemas_check(list(urls))
    assert reference.replays == 1
    assert [(c.environment, c.state, c.replayed) for c in checks] == [
        ("env0", "in_sync", True),
        *((f"env{n}", "in_sync", False) for n in range(1, 5)),
    ]
    assert len({c.fingerprint for c in checks}) == 1

    # A replay that fails fails once for all of them, not once each.
    reference.forget()
    monkeypatch.setenv("MIGRATIONS_PROJECT_FAIL", "3f8c1a2b9d04")
    failed = drift.schemas_check(list(urls))
    assert reference.replays == 1
    assert {c.state for c in failed} == {"check_failed"}
    assert len({c.reason for c in failed}) == 1
    assert reference._key_locks == {}  # a failed build leaves no lock behind either


def test_drift_found_changed_and_resolved_are_audited_once_each(
    tmp_path: Path, configure: Callable[..., Path]
) -> None:
    url = f"sqlite:///{tmp_path / 'target.db'}"
    migrate(url, "heads")
    configure({"staging": url})

    def audited() -> list[tuple[str, int, list[str]]]:
        events = AuditEvent.objects.filter(verb__startswith="schema.").order_by("id")
        return [(e.verb, e.payload["differences"], e.payload["items"]) for e in events]

    assert _check().state == "in_sync"
    assert audited() == []
    execute(url, "ALTER TABLE users ADD COLUMN nickname VARCHAR(40)")
    assert _check().state == "drift"
    assert _check().state == "drift"  # the same drift again: nothing new to say
    found = [("schema.drift_found", 1, ["remove_column users.nickname"])]
    assert audited() == found
    configure({"staging": f"sqlite:///{tmp_path / 'moved-away.db'}"})
    assert _check().state == "check_failed"  # says nothing of the schema...
    configure({"staging": url})
    assert _check().state == "drift"  # ...so the same drift after it is not found again
    assert audited() == found
    execute(url, "CREATE INDEX ix_users_password ON users (password)")
    assert _check().state == "drift"
    both = ["remove_column users.nickname", "remove_index users.ix_users_password"]
    changed = [("schema.drift_changed", 2, both)]
    assert audited() == found + changed
    execute(url, "DROP INDEX ix_users_password", "ALTER TABLE users DROP COLUMN nickname")
    assert _check().state == "in_sync"
    assert _check().state == "in_sync"
    resolved = [("schema.drift_resolved", 0, [])]
    assert audited() == found + changed + resolved
    assert all(
        e.actor_name == "worker" and e.environment == "staging"
        for e in AuditEvent.objects.filter(verb__startswith="schema.")
    )
    assert audit.verify().broken_at is None


# Models that differ from the revisions in most ways alembic check reports, one change each.
MODEL_CHANGES = {
    "    phone_number: Mapped[str | None] = mapped_column(sa.String(50))\n": "",
    "    title: Mapped[str] = mapped_column(sa.String(255))": (
        "    title: Mapped[str] = mapped_column(sa.String(300), index=True)"
    ),
    "    content: Mapped[str] = mapped_column(sa.Text)": (
        "    content: Mapped[str | None] = mapped_column(sa.Text)"
    ),
    "    password: Mapped[str] = mapped_column(sa.String(255))": (
        "    password: Mapped[str] = mapped_column(sa.String(255), unique=True)"
    ),
    '        sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True\n    )\n    post_id': (
        "        primary_key=True\n    )\n    post_id"
    ),
    "target_metadata = Base.metadata": (
        "class Tag(Base):\n"
        '    """A label."""\n\n'
        '    __tablename__ = "tags"\n\n'
        "    id: Mapped[int] = mapped_column(primary_key=True)\n\n\n"
        "target_metadata = Base.metadata"
    ),
}


def test_alembic_checks_operations_are_each_named(
    tmp_path: Path, configure: Callable[..., Path]
) -> None:
    copy = tmp_path / "blog"
    shutil.copytree(SAMPLE_INI.parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    models = (copy / "models.py").read_text(encoding="utf-8")
    for old, new in MODEL_CHANGES.items():
        assert old in models
        models = models.replace(old, new)
    (copy / "models.py").write_text(models, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'target.db'}"
    migrate(url, "heads")
    configure({"staging": url}, alembic_ini=copy / "alembic.ini", check_models=True)
    check = _check()
    assert check.models_state == "drift", check.models_reason
    assert sorted(check.models_differences) == [
        "add_constraint unique constraint on users (password)",
        "add_index ix_posts_title on posts (title)",
        "add_table tags",
        "modify_nullable posts.content",
        "modify_type posts.title",
        "remove_column users.phone_number",
        "remove_fk fk_votes_user_id_users on votes (user_id) -> users",
    ]


def test_a_cached_reference_does_not_outlive_its_scratch_server(
    postgres_url: str, configure: Callable[..., Path]
) -> None:
    migrate(postgres_url, "heads")
    configure({"staging": postgres_url}, scratch_url=SCRATCH["postgres"])
    assert _check().state == "in_sync"  # the reference is now cached
    configure({"staging": postgres_url})  # the scratch server is removed from the config
    check = _check()
    assert (check.state, check.reason) == ("not_checked", NO_SCRATCH)


def test_a_pending_check_no_worker_finished_fails_and_a_new_request_is_made(
    sqlite_url: str, configure: Callable[..., Path]
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from dashboard.worker import Housekeeping

    migrate(sqlite_url, "heads")
    configure({"staging": sqlite_url})
    olga = make_people()["olga"]
    lost = drift.schema_check_request(environment="staging", user=olga)
    assert drift.schema_check_request(environment="staging", user=olga).pk == lost.pk
    SchemaCheck.objects.filter(pk=lost.pk).update(
        created_at=timezone.now() - drift.PENDING_LIMIT - timedelta(minutes=1)
    )
    assert Housekeeping(limit=60).run_once().abandoned_checks == [lost.pk]
    lost.refresh_from_db()
    assert lost.state == "check_failed"
    assert lost.reason == "no worker finished this check within 60 min (did the worker die?)"
    assert drift.schema_check_request(environment="staging", user=olga).pk != lost.pk


def test_pruning_keeps_each_environments_newest_and_newest_conclusive_check() -> None:
    from datetime import timedelta

    from django.utils import timezone

    old = timezone.now() - timedelta(days=100)

    def row(state: str, days_ago: int) -> int:
        at = old - timedelta(days=days_ago)
        check = SchemaCheck.objects.create(
            environment="prod", project="blog", trigger="periodic", state=state, checked_at=at
        )
        SchemaCheck.objects.filter(pk=check.pk).update(created_at=at)
        return check.pk

    row("in_sync", 3)
    drifted = row("drift", 2)
    failed = row("check_failed", 1)
    assert drift.schema_checks_prune(older_than=timedelta(days=30)) == 1
    assert set(SchemaCheck.objects.values_list("pk", flat=True)) == {drifted, failed}


def test_a_replay_never_reaches_the_live_database_through_its_url_variable(
    tmp_path: Path, configure: Callable[..., Path], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # env.py reads the environment's own URL variable before DATABASE_URL.
    ini = sample_copy(tmp_path / "own", url_from="BLOG_URL")
    live = f"sqlite:///{tmp_path / 'live.db'}"
    migrate(live, "heads")
    monkeypatch.setenv("BLOG_URL", live)
    config = write_drift_config(
        tmp_path / "url-env.toml",
        {"staging": {"url_env": "BLOG_URL"}},
        alembic_ini=ini,
        check_models=True,
    )
    settings.DASHBOARD_CONFIG = str(config)
    reference.forget()
    check = _check()
    # Replayed into the live database, the reference would have been empty: all drift.
    assert (check.state, check.differences, check.replayed) == ("in_sync", [], True)
    assert check.models_state == "in_sync", check.models_reason

    # An env.py taking its URL from anywhere else replays elsewhere: said, never compared.
    elsewhere = tmp_path / "elsewhere.db"
    monkeypatch.setenv("BLOG_ELSEWHERE", f"sqlite:///{elsewhere}")
    configure(
        {"staging": live}, alembic_ini=sample_copy(tmp_path / "other", url_from="BLOG_ELSEWHERE")
    )
    failed = _check()
    assert (failed.state, failed.differences) == ("check_failed", [])
    assert failed.reason == (
        "the reference schema could not be built: the replay did not write to the scratch"
        " database (env.py must take its URL from DATABASE_URL or sqlalchemy.url)"
    )
    assert elsewhere.is_file()  # where it went


def test_the_models_are_checked_anew_by_every_check(
    tmp_path: Path, configure: Callable[..., Path]
) -> None:
    # Models outside the migration files (installed code, say): no digest of the files covers them.
    models = tmp_path / "installed_models.py"
    ini = sample_copy(tmp_path / "blog", models=models)
    urls = {}
    for name in ("first", "second"):
        urls[name] = f"sqlite:///{tmp_path / f'{name}.db'}"
        migrate(urls[name], "heads")
    configure(urls, alembic_ini=ini, check_models=True)
    reference.forget()
    before = drift.schemas_check(list(urls))
    assert [(c.models_state, c.replayed) for c in before] == [("in_sync", True), ("in_sync", False)]
    assert reference.replays == 1  # once per check of all environments, not per environment

    phone = "    phone_number: Mapped[str | None] = mapped_column(sa.String(50))\n"
    text = models.read_text(encoding="utf-8")
    assert phone in text
    nickname = "    nickname: Mapped[str | None] = mapped_column(sa.String(40))\n"
    models.write_text(text.replace(phone, phone + nickname), encoding="utf-8")
    after = drift.schemas_check(list(urls))
    assert [c.models_differences for c in after] == [["add_column users.nickname"]] * 2
    assert [c.state for c in after] == ["in_sync", "in_sync"]
    assert reference.replays == 2


DEAD_PID = 4_999_999  # above Linux's largest pid_max: no process here has it


@pytest.mark.parametrize("kind", EVERY_KIND)
def test_the_sweep_drops_only_the_scratch_nobody_holds(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = SCRATCH[kind]
    # In use, though its name says a process gone long ago made it: a worker in a container
    # sharing this hostname (another PID namespace), or a replay running for days.
    held_name = f"{scratch.PREFIX}1000000000_{scratch.host_tag()}_{DEAD_PID}_{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(scratch, "new_name", lambda: held_name)
    if kind == "sqlite":
        monkeypatch.setattr(scratch, "folder_prefix", lambda: f"{scratch.SQLITE_PREFIX}{DEAD_PID}-")
    backend = {"sqlite": "sqlite", "postgres": "postgresql", "mariadb": "mysql"}[kind]
    with scratch.scratch_database(backend, server) as url:
        # Left by a process that lives (this one) but holds nothing: a name is only a hint.
        if kind == "sqlite":
            held = Path(str(sa.engine.make_url(url).database)).parent.name
            folder = Path(tempfile.mkdtemp(prefix=f"{scratch.SQLITE_PREFIX}{os.getpid()}-"))
            (folder / "in-use.lock").touch()
            leftover = folder.name
        else:
            held = held_name
            leftover = f"{scratch.PREFIX}{int(time.time())}_{scratch.host_tag()}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            quoted = f'"{leftover}"' if kind == "postgres" else f"`{leftover}`"
            execute(server or "", f"CREATE DATABASE {quoted}")
        swept = scratch.sweep(server)
        assert leftover in swept
        assert held not in swept
        assert held in _present(kind) and leftover not in _present(kind)
    assert held not in _present(kind)


def _present(kind: str) -> list[str]:
    if kind == "sqlite":
        return sorted(p.name for p in Path(tempfile.gettempdir()).glob(f"{scratch.SQLITE_PREFIX}*"))
    return scratch_names(kind)


@pytest.mark.parametrize("version_table", ["missing", "empty"])
def test_adoption_tries_the_newest_revisions_first_with_no_version_rows(
    version_table: str,
    tmp_path: Path,
    configure: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(adoption, "MAX_CANDIDATES", 3)  # stands for a long history
    url = f"sqlite:///{tmp_path / 'target.db'}"
    migrate(url, "heads")
    # A stamp may fill an empty version table as well as create a missing one.
    if version_table == "missing":
        execute(url, "DROP TABLE alembic_version")
    else:
        execute(url, "DELETE FROM alembic_version")
    configure({"staging": url})
    check = _check()
    assert (check.heads, check.state) == ([], "drift")
    assert (check.adoption["exact"], check.adoption["compared"]) == (HEAD, 1)
    assert check.adoption["closest"][0] == {"revision": HEAD, "count": 0, "items": []}


def test_a_pending_check_whose_task_is_gone_fails_and_so_does_one_that_raised(
    sqlite_url: str, configure: Callable[..., Path]
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    migrate(sqlite_url, "heads")
    configure({"staging": sqlite_url})
    olga = make_people()["olga"]
    # The request's task is queued after its transaction commits, which this test never does:
    # like a task that died with its worker, there is none.
    lost = drift.schema_check_request(environment="staging", user=olga)
    queued = SchemaCheck.objects.create(environment="staging", project="blog", trigger="demand")
    drift.enqueue_check(queued.pk)
    assert drift.schema_checks_abandon() == []  # young: its task may be on its way
    SchemaCheck.objects.update(created_at=timezone.now() - timedelta(minutes=2))
    assert drift.schema_checks_abandon() == [lost.pk]
    lost.refresh_from_db()
    assert (lost.state, lost.reason) == (
        "check_failed",
        "this check's task is no longer queued nor running (did the worker stop?)",
    )
    assert drift.schema_check_request(environment="staging", user=olga).pk != lost.pk

    # The environment left the config before the worker ran the queued check.
    configure({"production": sqlite_url})
    with pytest.raises(drift.UnknownEnvironment):
        drift.schema_check_run(check_id=queued.pk)
    queued.refresh_from_db()
    assert (queued.state, queued.reason) == (
        "check_failed",
        "environment staging is no longer configured",
    )


def test_a_failed_replay_says_what_the_database_said(
    tmp_path: Path, configure: Callable[..., Path]
) -> None:
    first = "3f8c1a2b9d04"
    ini = sample_copy(tmp_path / "blog", revision_sql=(first, "UPDATE no_such_table SET x = 1"))
    url = f"sqlite:///{tmp_path / 'target.db'}"
    migrate(url, first)
    configure({"staging": url}, alembic_ini=ini)
    check = _check()
    assert check.state == "check_failed"
    assert check.reason.startswith(
        f"the reference schema could not be built: replaying to {first} failed:"
    )
    assert "no such table: no_such_table" in check.reason
    assert "Background on this error" not in check.reason


def test_moving_the_scratch_server_is_an_audited_config_change(
    sqlite_url: str, configure: Callable[..., Path]
) -> None:
    from dashboard import worker

    def server(host: str, password: str) -> str:
        return f"postgresql://dash:{password}@{host}:5432/postgres"

    configure({"staging": sqlite_url}, scratch_url=server("scratch-one", "first-Sekr1t"))
    assert worker.config_changes_record() is not None  # the first record
    configure({"staging": sqlite_url}, scratch_url=server("scratch-one", "second-Sekr1t"))
    assert worker.config_changes_record() is None  # a rotated password moves nothing
    configure({"staging": sqlite_url}, scratch_url=server("scratch-two", "second-Sekr1t"))
    moved = worker.config_changes_record()
    assert moved is not None
    assert moved.payload["changed"] == {"projects": ["blog"], "environments": []}
    text = json.dumps(moved.payload)
    assert "Sekr1t" not in text and "scratch-two" not in text
