"""Helpers for the action tests: config files, users, worker subprocesses, target databases."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from dashboard.databases import versions
from dashboard.roles import ROLES
from dashboard.services import users

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_INI = ROOT / "migrations_project" / "alembic.ini"
BRANCH_POINT = "c94a0b3e6d12"
MERGE = "9e4f1b7a2c68"
HEAD = "6c0a8d3f5e94"
ALL_REVISIONS = [
    "3f8c1a2b9d04",
    "a71e5c0d2f39",
    "5b2d9e7f1c86",
    "c94a0b3e6d12",
    "e0d7f4a19b53",
    "7a3c2e8b5f01",
    "1d6b9f0c4e27",
    "9e4f1b7a2c68",
    "6c0a8d3f5e94",
]
PEOPLE = {
    "olga": "operator",
    "otto": "operator",
    "alan": "approver",
    "bea": "approver",
    "root": "admin",
    "vic": "viewer",
}


def write_config(
    path: Path, environments: dict[str, dict[str, Any]], *, alembic_ini: Path = SAMPLE_INI
) -> Path:
    """Write a dashboard config with the blog project and these environments."""
    lines = ["[projects.blog]", f'alembic_ini = "{alembic_ini}"', ""]
    for name, values in environments.items():
        lines.append(f"[environments.{name}]")
        lines.append('project = "blog"')
        for key, value in values.items():
            rendered = f'"{value}"' if isinstance(value, str) else repr(value)
            lines.append(f"{key} = {rendered}")
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def make_people() -> dict[str, Any]:
    """Create one user per name in PEOPLE with its role; return them by name."""
    for role in ROLES:
        Group.objects.get_or_create(name=role)
    people = {}
    for name, role in PEOPLE.items():
        users.user_set_role(username=name, role=role, password="correct-horse-9")
        people[name] = get_user_model().objects.get(username=name)
    return people


def touch_sqlite(url: str) -> str:
    """Create the SQLite file behind url if needed (an environment must exist to be read)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        Path(parsed.database).touch()
    return url


def heads_of(url: str) -> tuple[str, ...]:
    """Read the version table's heads at url."""
    reading = versions.read_url(url, timeout=10)
    assert reading.ok, reading.error
    return reading.heads


def schema_of(url: str) -> dict[str, Any]:
    """Return every table's columns and indexes, and the version rows: what a run could change."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            tables = {}
            for table in sorted(inspector.get_table_names()):
                tables[table] = (
                    sorted(c["name"] for c in inspector.get_columns(table)),
                    sorted(str(i["name"]) for i in inspector.get_indexes(table)),
                )
            versions_rows: list[str] = []
            if "alembic_version" in tables:
                versions_rows = sorted(
                    conn.scalars(sa.text("SELECT version_num FROM alembic_version"))
                )
        return {"tables": tables, "versions": versions_rows}
    finally:
        engine.dispose()


def insert_heads(url: str, heads: list[str]) -> None:
    """Write version rows directly, as if Alembic had left the environment at these heads."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"
                )
            )
            for head in heads:
                conn.execute(sa.text("INSERT INTO alembic_version VALUES (:h)"), {"h": head})
    finally:
        engine.dispose()


def dashboard_url() -> str:
    """Return a URL of the test's own dashboard database, for worker subprocesses."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    return URL.create(
        "postgresql",
        username=settings["USER"] or None,
        password=settings["PASSWORD"] or None,
        host=settings["HOST"] or None,
        port=int(settings["PORT"]) if settings["PORT"] else None,
        database=settings["NAME"],
    ).render_as_string(hide_password=False)


def worker_env(config: Path, **extra: str) -> dict[str, str]:
    """Return the environment of a worker subprocess sharing the test's database and config."""
    env = {
        **os.environ,
        "DATABASE_URL": dashboard_url(),
        "DASHBOARD_CONFIG": str(config),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DASHBOARD_INSECURE_DEV_KEY": "1",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("MIGRATIONS_PROJECT_SLEEP", None)
    env.pop("MIGRATIONS_PROJECT_FAIL", None)
    env.update(extra)
    return env


def worker_argv(command: str = "db_worker", *, batch: bool = True) -> list[str]:
    """Return the command line of a worker that polls fast and never reloads."""
    argv = [
        sys.executable,
        "manage.py",
        command,
        "--no-startup-delay",
        "--no-reload",
        "--interval",
        "0.1",
    ]
    return [*argv, "--batch"] if batch else argv


def run_worker(
    config: Path, *, command: str = "db_worker", timeout: float = 120, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run a worker until the queue has nothing ready, and return how it ended."""
    done = subprocess.run(
        worker_argv(command),
        cwd=ROOT,
        env=worker_env(config, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def start_worker(config: Path, **extra: str) -> subprocess.Popen[str]:
    """Start a long-running worker in the background."""
    return subprocess.Popen(
        worker_argv(batch=False),
        cwd=ROOT,
        env=worker_env(config, **extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_worker(proc: subprocess.Popen[str]) -> None:
    """Stop a background worker and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


def wait_for(condition: Callable[[], Any], *, within: float = 60, every: float = 0.05) -> Any:
    """Poll until condition returns something truthy, and return it."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(every)
