"""Put real target databases in each status state with the sample project, and config files."""

import json
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "migrations_project"
HEAD = "6c0a8d3f5e94"
MID = "c94a0b3e6d12"  # the branch point: 5 revisions behind the head
EARLY = "5b2d9e7f1c86"  # 6 behind
QUIRK = "1d6b9f0c4e27"  # recorded alone although its dependency e0d7f4a19b53 ran too
BOGUS = "0000deadbeef"
PASSWORD = "Sup3rSecret"


def alembic(url: str, *args: str, schema: str | None = None) -> str:
    """Run the real sample project with Alembic in a subprocess; return its log output."""
    command = [sys.executable, "-m", "alembic", "-c", str(SAMPLE / "alembic.ini")]
    command += ["-x", f"url={url}"]
    if schema:
        command += ["-x", f"version_table_schema={schema}"]
    done = subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stderr


def ran_revisions(log: str) -> list[str]:
    """Return the revisions an Alembic upgrade ran, in order, from its log lines."""
    found = []
    for line in log.splitlines():
        if "Running upgrade" in line:
            # "Running upgrade A, B -> C, message": a merge lists several revisions before ->.
            after = line.split("Running upgrade", 1)[1].split("->", 1)[1]
            found.append(after.split(",", 1)[0].strip())
    return found


def write_versions(url: str, heads: list[str], *, schema: str | None = None) -> None:
    """Replace the version table's rows with these heads, creating it (and schema) if needed."""
    engine = sa.create_engine(url, poolclass=NullPool)
    table = sa.Table(
        "alembic_version",
        sa.MetaData(),
        sa.Column("version_num", sa.String(32), primary_key=True),
        schema=schema,
    )
    with engine.begin() as conn:
        if schema is not None:
            conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
        table.create(conn, checkfirst=True)
        conn.execute(table.delete())
        for head in heads:
            conn.execute(table.insert().values(version_num=head))
    engine.dispose()


def create_schema(url: str, schema: str) -> None:
    """Create a PostgreSQL schema."""
    engine = sa.create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    engine.dispose()


def empty_sqlite(path: Path) -> str:
    """Create an empty SQLite database file and return its URL."""
    sqlite3.connect(path).close()
    return f"sqlite:///{path}"


def write_config(
    path: Path,
    environments: Mapping[str, Mapping[str, Any]],
    projects: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write a dashboard config whose projects default to the sample project."""
    projects = projects or {"blog": {"script_location": str(SAMPLE)}}
    lines: list[str] = []
    for kind, tables in (("projects", projects), ("environments", environments)):
        for name, table in tables.items():
            lines.append(f"[{kind}.{name}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
            lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def with_password(url: str, password: str = PASSWORD) -> str:
    """Return the URL with this password set."""
    return sa.engine.make_url(url).set(password=password).render_as_string(hide_password=False)
