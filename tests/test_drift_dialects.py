"""Schema drift on real SQLite, PostgreSQL and MariaDB: no false drift, hand-made drift named."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.operations import Operations

from dashboard.databases import versions
from dashboard.drift import reference
from dashboard.drift.differences import describe, from_dicts
from dashboard.models import SchemaCheck
from dashboard.services import drift
from tests.actions_support import ALL_REVISIONS, HEAD, heads_of
from tests.drift_support import (
    SCRATCH,
    alter,
    database_copy,
    empty_database,
    execute,
    migrate,
    write_drift_config,
)

# Target-dialect tests: the dashboard's own backend changes nothing here (CI runs them once).
pytestmark = [pytest.mark.django_db, pytest.mark.once]

MARKS: dict[str, Any] = {
    "sqlite": (),
    "postgres": pytest.mark.postgres,
    "mariadb": pytest.mark.mariadb,
}
DIALECTS = [pytest.param(kind, id=kind, marks=marks) for kind, marks in MARKS.items()]


def _configure(settings: Any, folder: Path, kind: str, url: str) -> None:
    path = write_drift_config(
        folder / "dashboard.toml", {"staging": {"url": url}}, scratch_url=SCRATCH[kind]
    )
    settings.DASHBOARD_CONFIG = str(path)


def _check() -> SchemaCheck:
    [check] = drift.schemas_check(["staging"])
    return check


@pytest.mark.parametrize("kind", DIALECTS)
def test_every_revision_of_the_sample_checks_in_sync(
    kind: str, tmp_path: Path, settings: Any
) -> None:
    reference.forget()
    with empty_database(kind, tmp_path) as url:
        _configure(settings, tmp_path, kind, url)
        for revision in ALL_REVISIONS:
            migrate(url, revision)
            check = _check()
            assert (check.state, check.differences, check.reason) == ("in_sync", [], ""), revision
            assert sorted(check.heads) == sorted(heads_of(url))
            assert check.replayed
            assert check.live_schema["tables"], revision
    # Two heads after the branch, one after the merge: each set of heads is its own reference.
    assert reference.replays == len(ALL_REVISIONS)


@dataclass(frozen=True)
class Drift:
    """One hand-made change and what the check must call it."""

    change: dict[str, Callable[[str], None]]  # by dialect; a dialect absent cannot express it
    kind: str
    table: str
    name: str
    words: str
    # A dialect that says the same change in other words: {dialect: (kind, words)}.
    on: dict[str, tuple[str, str]] = field(default_factory=dict)
    # A change Alembic sees as two operations: the other's (kind, table, name, words).
    more: tuple[tuple[str, str, str, str], ...] = ()

    def expected(self, dialect: str) -> list[tuple[str, str, str, str]]:
        """Return every difference the check must find on dialect, in the check's order."""
        kind, words = self.on.get(dialect, (self.kind, self.words))
        said = [(kind, self.table, self.name, words), *self.more]
        return sorted(said, key=lambda d: (d[1], d[0], d[2]))


def _sql(*statements: str) -> Callable[[str], None]:
    return lambda url: execute(url, *statements)


def _batch(change: Callable[[Any], None], table: str, **options: Any) -> Callable[[str], None]:
    """Recreate a SQLite table with a change, as Alembic's batch mode does (SQLite has no ALTER)."""

    def apply(url: str) -> None:
        def run(op: Operations) -> None:
            with op.batch_alter_table(table, recreate="always", **options) as batch:
                change(batch)

        alter(url, run)

    return apply


def _duplicate_titles_then_unique_index(url: str) -> None:
    execute(
        url,
        "INSERT INTO users (id, email, password) VALUES (1, 'a@example.com', 'x')",
        "INSERT INTO posts (title, content, owner_id) VALUES ('same', 'one', 1)",
        "INSERT INTO posts (title, content, owner_id) VALUES ('same', 'two', 1)",
    )
    with pytest.raises(sa.exc.IntegrityError):
        execute(url, "CREATE UNIQUE INDEX CONCURRENTLY ix_posts_title_once ON posts (title)")


DRIFTS = {
    "extra_column": Drift(
        {
            "sqlite": _sql("ALTER TABLE users ADD COLUMN nickname VARCHAR(40)"),
            "postgres": _sql("ALTER TABLE users ADD COLUMN nickname VARCHAR(40)"),
            "mariadb": _sql("ALTER TABLE users ADD COLUMN nickname VARCHAR(40)"),
        },
        "remove_column",
        "users",
        "nickname",
        "column users.nickname exists in staging but no revision creates it",
    ),
    "missing_column": Drift(
        {
            "sqlite": _sql("ALTER TABLE users DROP COLUMN phone_number"),
            "postgres": _sql("ALTER TABLE users DROP COLUMN phone_number"),
            "mariadb": _sql("ALTER TABLE users DROP COLUMN phone_number"),
        },
        "add_column",
        "users",
        "phone_number",
        "column users.phone_number is missing in staging (the revisions create it)",
    ),
    "changed_type": Drift(
        {
            "sqlite": _batch(
                lambda b: b.alter_column(
                    "phone_number", type_=sa.String(80), existing_type=sa.String(50)
                ),
                "users",
            ),
            "postgres": _sql("ALTER TABLE users ALTER COLUMN phone_number TYPE VARCHAR(80)"),
            "mariadb": _sql("ALTER TABLE users MODIFY phone_number VARCHAR(80) NULL"),
        },
        "modify_type",
        "users",
        "phone_number",
        "column users.phone_number is VARCHAR(80); the revisions make it VARCHAR(50)",
    ),
    "changed_nullability": Drift(
        {
            "sqlite": _batch(
                lambda b: b.alter_column(
                    "phone_number", nullable=False, existing_type=sa.String(50)
                ),
                "users",
            ),
            "postgres": _sql("ALTER TABLE users ALTER COLUMN phone_number SET NOT NULL"),
            "mariadb": _sql("ALTER TABLE users MODIFY phone_number VARCHAR(50) NOT NULL"),
        },
        "modify_nullable",
        "users",
        "phone_number",
        "column users.phone_number is NOT NULL; the revisions make it NULL",
    ),
    "missing_index": Drift(
        {
            "sqlite": _sql("DROP INDEX ix_posts_created_at"),
            "postgres": _sql("DROP INDEX ix_posts_created_at"),
            "mariadb": _sql("DROP INDEX ix_posts_created_at ON posts"),
        },
        "add_index",
        "posts",
        "ix_posts_created_at",
        "index ix_posts_created_at on posts (created_at) is missing in staging",
    ),
    "extra_index": Drift(
        {
            "sqlite": _sql("CREATE INDEX ix_posts_title ON posts (title)"),
            "postgres": _sql("CREATE INDEX ix_posts_title ON posts (title)"),
            "mariadb": _sql("CREATE INDEX ix_posts_title ON posts (title)"),
        },
        "remove_index",
        "posts",
        "ix_posts_title",
        "index ix_posts_title on posts (title) exists in staging but no revision creates it",
    ),
    "extra_table": Drift(
        {
            kind: _sql(
                "CREATE TABLE notes (id INTEGER PRIMARY KEY, body VARCHAR(100) UNIQUE)",
                "CREATE INDEX ix_notes_body ON notes (body)",
            )
            for kind in ("sqlite", "postgres", "mariadb")
        },
        "remove_table",
        "notes",
        "notes",
        "table notes exists in staging but no revision creates it",
    ),
    "missing_table": Drift(
        {kind: _sql("DROP TABLE votes") for kind in ("sqlite", "postgres", "mariadb")},
        "add_table",
        "votes",
        "votes",
        "table votes is missing in staging (the revisions create it)",
    ),
    "missing_foreign_key": Drift(
        {
            "sqlite": _batch(
                lambda b: b.drop_constraint("fk_posts_owner_id_users", type_="foreignkey"),
                "posts",
            ),
            "postgres": _sql("ALTER TABLE posts DROP CONSTRAINT fk_posts_owner_id_users"),
            "mariadb": _sql("ALTER TABLE posts DROP FOREIGN KEY fk_posts_owner_id_users"),
        },
        "add_fk",
        "posts",
        "fk_posts_owner_id_users",
        "foreign key fk_posts_owner_id_users on posts (owner_id) -> users ON DELETE CASCADE"
        " is missing in staging",
    ),
    "changed_foreign_key_action": Drift(
        {
            "sqlite": _batch(
                lambda b: (
                    b.drop_constraint("fk_posts_owner_id_users", type_="foreignkey"),
                    b.create_foreign_key("fk_posts_owner_id_users", "users", ["owner_id"], ["id"]),
                ),
                "posts",
            ),
            "postgres": _sql(
                "ALTER TABLE posts DROP CONSTRAINT fk_posts_owner_id_users",
                "ALTER TABLE posts ADD CONSTRAINT fk_posts_owner_id_users"
                " FOREIGN KEY (owner_id) REFERENCES users (id)",
            ),
            "mariadb": _sql(
                "ALTER TABLE posts DROP FOREIGN KEY fk_posts_owner_id_users",
                "ALTER TABLE posts ADD CONSTRAINT fk_posts_owner_id_users"
                " FOREIGN KEY (owner_id) REFERENCES users (id)",
            ),
        },
        "add_fk",
        "posts",
        "fk_posts_owner_id_users",
        "foreign key fk_posts_owner_id_users on posts (owner_id) -> users ON DELETE CASCADE"
        " is missing in staging",
        more=(
            (
                "remove_fk",
                "posts",
                "fk_posts_owner_id_users",
                "foreign key fk_posts_owner_id_users on posts (owner_id) -> users exists in"
                " staging but no revision creates it",
            ),
        ),
    ),
    "changed_comment": Drift(
        # SQLite keeps no comments.
        {
            "postgres": _sql("COMMENT ON COLUMN users.email IS 'login'"),
            "mariadb": _sql("ALTER TABLE users MODIFY email VARCHAR(255) NOT NULL COMMENT 'login'"),
        },
        "modify_comment",
        "users",
        "email",
        "the comment of column users.email is 'login'; the revisions give none",
    ),
    "extra_unique_constraint": Drift(
        {
            "sqlite": _batch(
                lambda b: b.create_unique_constraint("uq_posts_title", ["title"]), "posts"
            ),
            "postgres": _sql("ALTER TABLE posts ADD CONSTRAINT uq_posts_title UNIQUE (title)"),
            "mariadb": _sql("ALTER TABLE posts ADD CONSTRAINT uq_posts_title UNIQUE (title)"),
        },
        "remove_constraint",
        "posts",
        "uq_posts_title",
        "unique constraint uq_posts_title on posts (title) exists in staging"
        " but no revision creates it",
        # MySQL keeps a unique constraint as a unique index, and Alembic reads it back as one.
        on={
            "mariadb": (
                "remove_index",
                "unique index uq_posts_title on posts (title) exists in staging"
                " but no revision creates it",
            )
        },
    ),
    "extra_unnamed_unique_constraint": Drift(
        # Only SQLite keeps a constraint without a name (the others name it themselves, and
        # the named case above covers them); Alembic itself never reports an unnamed extra.
        {"sqlite": _batch(lambda b: None, "posts", table_args=(sa.UniqueConstraint("title"),))},
        "remove_constraint",
        "posts",
        "(unnamed)",
        "an unnamed unique constraint on posts (title) exists in staging"
        " but no revision creates it",
    ),
    "changed_type_time_zone": Drift(
        # Only PostgreSQL keeps time zones apart; the words must say the dialect's types.
        {"postgres": _sql("ALTER TABLE users ALTER COLUMN created_at TYPE TIMESTAMP")},
        "modify_type",
        "users",
        "created_at",
        "column users.created_at is TIMESTAMP WITHOUT TIME ZONE;"
        " the revisions make it TIMESTAMP WITH TIME ZONE",
    ),
    "invalid_index": Drift(
        {"postgres": _duplicate_titles_then_unique_index},
        "invalid_index",
        "posts",
        "ix_posts_title_once",
        "index ix_posts_title_once on posts is invalid in staging (a failed CREATE INDEX"
        " CONCURRENTLY leaves it so) and no revision creates it: drop it",
    ),
}


@pytest.fixture(scope="module")
def at_heads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], str]]:
    """Return a function giving one database per dialect upgraded to the heads (built once)."""
    built: dict[str, str] = {}
    folder = tmp_path_factory.mktemp("heads")
    with ExitStack() as stack:

        def get(kind: str) -> str:
            if kind not in built:
                url = stack.enter_context(empty_database(kind, folder))
                migrate(url, "heads")
                built[kind] = url
            return built[kind]

        yield get


# Every drift on every dialect that can hold it (the comments above say why one cannot).
DRIFT_CASES = [
    pytest.param(name, kind, id=f"{name}-{kind}", marks=MARKS[kind])
    for name, made in DRIFTS.items()
    for kind in made.change
]


@pytest.mark.parametrize(("name", "kind"), DRIFT_CASES)
def test_hand_made_drift_is_found_and_named(
    name: str, kind: str, at_heads: Callable[[str], str], tmp_path: Path, settings: Any
) -> None:
    made = DRIFTS[name]
    with database_copy(kind, at_heads(kind), tmp_path, at="heads") as url:
        _configure(settings, tmp_path, kind, url)
        made.change[kind](url)
        check = _check()
    found = from_dicts(check.differences)
    assert check.state == "drift", check.reason
    said = [(d.kind, d.table, d.name, describe(d, "staging")) for d in found]
    assert said == made.expected(kind)


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_a_version_table_in_another_schema_is_replayed_into_the_scratch_database(
    kind: str, tmp_path: Path, settings: Any
) -> None:
    reference.forget()
    with ExitStack() as stack:
        url = stack.enter_context(empty_database(kind, tmp_path))
        if kind == "postgres":
            meta = "meta"
            execute(url, "CREATE SCHEMA meta")  # a scratch database has none: made there
        else:
            # A MySQL schema is a database beside the live one, on the same server as the
            # scratch databases: the replay must keep its version table out of it.
            meta = f"dash_test_meta_{uuid.uuid4().hex[:8]}"
            execute(url, f"CREATE DATABASE `{meta}`")
            stack.callback(execute, url, f"DROP DATABASE IF EXISTS `{meta}`")
        migrate(url, "heads", version_table_schema=meta)
        path = write_drift_config(
            tmp_path / "dashboard.toml",
            {"staging": {"url": url}},
            scratch_url=SCRATCH[kind],
            version_table_schema=meta,
        )
        settings.DASHBOARD_CONFIG = str(path)
        check = _check()
        assert (check.state, check.differences, check.reason) == ("in_sync", [], "")
        assert (check.heads, check.replayed) == ([HEAD], True)
        live = versions.read_url(url, version_table_schema=meta, timeout=10)
        assert live.heads == (HEAD,)  # the replay never wrote to the live version table
