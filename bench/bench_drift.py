"""Benchmark the schema drift check: 100 PostgreSQL environments at one revision, one replay.

Run: .venv/bin/python bench/bench_drift.py [--databases 100] [--alone 3]

Creates a throwaway dashboard (a SQLite file, migrated with `manage.py migrate`) and databases
bench_drift_<n> on the PostgreSQL server at TEST_POSTGRES_URL (default 127.0.0.1:5432): one
upgraded to the sample project's heads with Alembic, the rest cloned from it with CREATE DATABASE
... TEMPLATE. The same server is the project's scratch server. It prints how many replays the
whole check ran (must be 1), its wall time, the time of one environment's check alone (reference
cache cleared, median of --alone runs) and the ratio whole / (N x alone), all measured in this run,
and drops every bench database at the end (also on failure and Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from pgserver import ADMIN_URL, admin_engine, database_url, drop_databases  # noqa: E402

from tests.statusenv import HEAD, SAMPLE, alembic  # noqa: E402

PREFIX = "bench_drift_"
TEMPLATE = f"{PREFIX}template"


def write_config(folder: Path, names: list[str]) -> Path:
    """Write a config of the sample project, its scratch server the bench's PostgreSQL."""
    lines = [
        "[projects.blog]",
        f"script_location = {json.dumps(str(SAMPLE))}",
        f"scratch_url = {json.dumps(ADMIN_URL)}",
        "",
    ]
    for order, name in enumerate(names):
        lines += [
            f"[environments.{name}]",
            'project = "blog"',
            f"url = {json.dumps(database_url(name))}",
            f"order = {order}",
            "",
        ]
    path = folder / "dashboard.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def create_databases(admin: sa.Engine, count: int) -> list[str]:
    """Upgrade a template database to the heads and clone it count times."""
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{TEMPLATE}"'))
    alembic(database_url(TEMPLATE), "upgrade", "heads")
    names = [f"{PREFIX}{n:03d}" for n in range(count)]

    def create(name: str) -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"'))

    # CREATE DATABASE waits on I/O, so a few at a time fill the gaps (a template may not be
    # copied by many sessions at once: four is safe).
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(create, names))
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", type=int, default=100)
    parser.add_argument("--alone", type=int, default=3, help="runs of one check alone (median)")
    args = parser.parse_args()

    # SIGTERM unwinds like Ctrl-C so the finally block drops the databases.
    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    admin = admin_engine()
    leftovers = drop_databases(admin, PREFIX)
    if leftovers:
        print(f"dropped {leftovers} leftover bench databases")
    with tempfile.TemporaryDirectory(prefix="bench_drift_") as tmp:
        try:
            run(Path(tmp), admin, args)
        finally:
            from django.conf import settings
            from django.db import connections

            if settings.configured:  # SQLite's file goes with the folder: close it first
                connections.close_all()
            started = time.perf_counter()
            dropped = drop_databases(admin, PREFIX)
            print(f"\ndropped {dropped} databases in {time.perf_counter() - started:.1f} s")
            admin.dispose()


def run(folder: Path, admin: sa.Engine, args: argparse.Namespace) -> None:
    """Set the dashboard and the databases up, then time the whole check and one alone."""
    started = time.perf_counter()
    names = create_databases(admin, args.databases)
    os.environ.update(
        {
            "DATABASE_URL": f"sqlite:///{folder / 'dashboard.sqlite3'}",
            "DASHBOARD_CONFIG": str(write_config(folder, names)),
            "DASHBOARD_VAR_DIR": str(folder),
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "DASHBOARD_INSECURE_DEV_KEY": "1",
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
        }
    )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    import django

    django.setup()
    from dashboard.drift import reference
    from dashboard.models import SchemaCheck
    from dashboard.services import drift

    print(
        f"set up the dashboard and {len(names)} PostgreSQL databases at {HEAD}"
        f" in {time.perf_counter() - started:.1f} s"
    )

    def check(selected: list[str]) -> float:
        """Check the selected environments with the reference cache cleared; return seconds."""
        reference.forget()
        began = time.perf_counter()
        checks = drift.schemas_check(selected)
        seconds = time.perf_counter() - began
        wrong = [(c.environment, c.state, c.reason) for c in checks if c.state != "in_sync"]
        assert not wrong, f"environments not in sync: {wrong[:3]}"
        return seconds

    # The worker is a long-running process: load drivers, dialects and Alembic once first.
    check(names[:1])
    alone = [check(names[:1]) for _ in range(args.alone)]
    one = statistics.median(alone)
    whole = check(names)
    replays = reference.replays
    began = time.perf_counter()
    drift.schemas_check(names)  # the reference is cached now: what every later check costs
    warm = time.perf_counter() - began
    stored = SchemaCheck.objects.filter(state="in_sync").count()

    print(f"\ndrift check of {len(names)} PostgreSQL environments at one revision")
    print(f"    replays in the whole check:        {replays:8d}  (must be 1)")
    print(f"    whole check, wall time:            {whole:8.2f} s")
    print(
        f"    one environment alone (cold cache): {one:7.2f} s"
        f"  (median of {len(alone)}: {', '.join(f'{s:.2f}' for s in alone)})"
    )
    print(f"    {len(names)} x one alone:                 {len(names) * one:8.2f} s")
    print(f"    ratio whole / ({len(names)} x alone):      {whole / (len(names) * one):8.3f}")
    print(f"    whole check again, reference cached: {warm:6.2f} s")
    print(f"    checks stored in sync:             {stored:8d}")
    if replays != 1:
        raise SystemExit(f"the whole check replayed {replays} times, not once")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
