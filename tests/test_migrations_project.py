"""Check the sample Alembic project: its schema, its graph, its URL sources and its test hooks."""

import configparser
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

PROJECT = Path(__file__).resolve().parents[1] / "migrations_project"
INI = PROJECT / "alembic.ini"

# The graph other tests rely on; test_history_has_the_documented_shape pins it.
FIRST = "3f8c1a2b9d04"
BRANCH_POINT = "c94a0b3e6d12"
VOTES = "e0d7f4a19b53"
LABELLED = "7a3c2e8b5f01"
DEPENDENT = "1d6b9f0c4e27"
MERGE = "9e4f1b7a2c68"
HEAD = "6c0a8d3f5e94"


def alembic(
    *args: str, url: str | None, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the project's Alembic in a subprocess from cwd, with only the given hook variables."""
    command = [sys.executable, "-m", "alembic", "-c", str(INI)]
    if url is not None:
        command += ["-x", f"url={url}"]
    environ = {
        key: value
        for key, value in os.environ.items()
        if key != "DATABASE_URL" and not key.startswith("MIGRATIONS_PROJECT_")
    }
    environ.update(env or {})
    return subprocess.run(
        [*command, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=120
    )


def succeed(result: subprocess.CompletedProcess[str]) -> None:
    """Fail the test with Alembic's own output when the subprocess failed."""
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def models() -> ModuleType:
    """Load models.py by path, the way env.py does."""
    spec = importlib.util.spec_from_file_location(
        "migrations_project_models", PROJECT / "models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def read_heads(url: str, version_table: str = "alembic_version") -> set[str]:
    """Return the revision ids in the version table."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": version_table})
            return set(context.get_current_heads())
    finally:
        engine.dispose()


def read_tables(url: str) -> dict[str, set[str]]:
    """Return every table with its column names."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            return {
                table: {column["name"] for column in inspector.get_columns(table)}
                for table in inspector.get_table_names()
            }
    finally:
        engine.dispose()


def schema_differences(url: str, metadata: sa.MetaData) -> list[object]:
    """Return what autogenerate would change to make the database match the models."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), metadata))
    finally:
        engine.dispose()


def test_upgrade_heads_builds_exactly_the_models_schema(
    any_url: str, tmp_path: Path, models: ModuleType
) -> None:
    succeed(alembic("upgrade", "heads", url=any_url, cwd=tmp_path))

    assert read_heads(any_url) == {HEAD}
    assert schema_differences(any_url, models.target_metadata) == []


def test_downgrade_base_leaves_only_an_empty_version_table(any_url: str, tmp_path: Path) -> None:
    succeed(alembic("upgrade", "heads", url=any_url, cwd=tmp_path))
    succeed(alembic("downgrade", "base", url=any_url, cwd=tmp_path))

    assert set(read_tables(any_url)) == {"alembic_version"}
    assert read_heads(any_url) == set()


def test_history_has_the_documented_shape() -> None:
    script = ScriptDirectory.from_config(Config(str(INI)))
    revisions = list(script.walk_revisions())

    assert len(revisions) >= 8
    assert script.get_heads() == [HEAD]
    assert script.get_bases() == [FIRST]
    assert [r.revision for r in revisions if r.is_branch_point] == [BRANCH_POINT]
    assert [r.revision for r in revisions if r.is_merge_point] == [MERGE]
    assert script.get_revision(MERGE).down_revision == (VOTES, DEPENDENT)
    declared = {r.revision: r.module.branch_labels for r in revisions if r.module.branch_labels}
    assert declared == {LABELLED: ("reporting",)}
    assert script.get_revision("reporting").revision == LABELLED
    # The label is inherited past the merge, so the branch's head is the project's head.
    assert script.get_revision("reporting@head").revision == HEAD
    assert script.get_revision(DEPENDENT).dependencies == VOTES


def test_revision_docstrings_agree_with_the_code() -> None:
    script = ScriptDirectory.from_config(Config(str(INI)))
    for revision in script.walk_revisions():
        doc = revision.module.__doc__ or ""
        parents = revision._versioned_down_revisions
        assert re.fullmatch(r"[0-9a-f]{12}", revision.revision)
        assert f"\nRevision ID: {revision.revision}\n" in doc
        assert re.search(rf"\nRevises: ?{re.escape(', '.join(parents))}\n", doc), revision.revision
        assert re.search(r"\nCreate Date: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}\n", doc)


def test_database_url_variable_is_used_without_x_url(any_url: str, tmp_path: Path) -> None:
    succeed(alembic("upgrade", BRANCH_POINT, url=None, cwd=tmp_path, env={"DATABASE_URL": any_url}))

    assert read_heads(any_url) == {BRANCH_POINT}


def test_x_url_wins_over_database_url(sqlite_url: str, tmp_path: Path) -> None:
    decoy = tmp_path / "decoy.db"
    result = alembic(
        "upgrade", FIRST, url=sqlite_url, cwd=tmp_path, env={"DATABASE_URL": f"sqlite:///{decoy}"}
    )

    succeed(result)
    assert read_heads(sqlite_url) == {FIRST}
    assert not decoy.exists()


def test_missing_url_fails_with_a_clear_message(tmp_path: Path) -> None:
    result = alembic("upgrade", "heads", url=None, cwd=tmp_path)

    assert result.returncode != 0
    assert "no database URL" in result.stderr


def test_failed_revision_rolls_back_only_on_postgresql(any_url: str, tmp_path: Path) -> None:
    succeed(alembic("upgrade", BRANCH_POINT, url=any_url, cwd=tmp_path))

    result = alembic(
        "upgrade", "heads", url=any_url, cwd=tmp_path, env={"MIGRATIONS_PROJECT_FAIL": HEAD}
    )

    assert result.returncode != 0
    assert "MIGRATIONS_PROJECT_FAIL requested" in result.stderr
    tables = read_tables(any_url)
    if make_url(any_url).get_backend_name() == "postgresql":
        # One transaction for the whole run: nothing after the starting point survives.
        assert read_heads(any_url) == {BRANCH_POINT}
        assert "votes" not in tables
        assert "phone_number" not in tables["users"]
    else:
        # Each step commits on its own, and the failed step's DDL stays without its version row.
        assert read_heads(any_url) == {MERGE}
        assert "votes" in tables
        assert "phone_number" in tables["users"]


def test_fail_hook_also_stops_downgrades(sqlite_url: str, tmp_path: Path) -> None:
    succeed(alembic("upgrade", "heads", url=sqlite_url, cwd=tmp_path))

    result = alembic(
        "downgrade", MERGE, url=sqlite_url, cwd=tmp_path, env={"MIGRATIONS_PROJECT_FAIL": HEAD}
    )

    assert result.returncode != 0
    assert "MIGRATIONS_PROJECT_FAIL requested" in result.stderr
    assert read_heads(sqlite_url) == {HEAD}
    assert "phone_number" not in read_tables(sqlite_url)["users"]


def test_sleep_hook_delays_every_step(sqlite_url: str, tmp_path: Path) -> None:
    started = time.monotonic()
    succeed(
        alembic(
            "upgrade",
            "a71e5c0d2f39",
            url=sqlite_url,
            cwd=tmp_path,
            env={"MIGRATIONS_PROJECT_SLEEP": "0.4"},
        )
    )

    assert time.monotonic() - started >= 0.8


def test_version_table_comes_from_the_config(any_url: str, tmp_path: Path) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(INI)
    parser["alembic"]["script_location"] = str(PROJECT)
    parser["alembic"]["version_locations"] = str(PROJECT / "versions")
    parser["alembic"]["version_table"] = "blog_version"
    ini = tmp_path / "generated.ini"
    with ini.open("w") as file:
        parser.write(file)

    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), "-x", f"url={any_url}", "upgrade", FIRST],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )

    succeed(result)
    assert read_heads(any_url, version_table="blog_version") == {FIRST}
    assert "alembic_version" not in read_tables(any_url)


def test_version_table_can_come_from_x_arguments(sqlite_url: str, tmp_path: Path) -> None:
    succeed(
        alembic("-x", "version_table=blog_version", "upgrade", FIRST, url=sqlite_url, cwd=tmp_path)
    )

    assert read_heads(sqlite_url, version_table="blog_version") == {FIRST}
    assert "alembic_version" not in read_tables(sqlite_url)


@pytest.mark.parametrize("dialect_url", ["sqlite://", "postgresql+psycopg2://", "mysql+pymysql://"])
def test_offline_sql_renders_the_whole_history(dialect_url: str, tmp_path: Path) -> None:
    upgrade = alembic("upgrade", "base:heads", "--sql", url=dialect_url, cwd=tmp_path)
    downgrade = alembic("downgrade", f"{HEAD}:base", "--sql", url=dialect_url, cwd=tmp_path)

    succeed(upgrade)
    succeed(downgrade)
    assert "CREATE TABLE votes" in upgrade.stdout
    steps = len(list(ScriptDirectory.from_config(Config(str(INI))).walk_revisions()))
    assert upgrade.stdout.count("-- Running upgrade") == steps
    assert downgrade.stdout.count("-- Running downgrade") == steps
    assert "DROP TABLE users" in downgrade.stdout
