"""Benchmark the status refresh: read_many over many PostgreSQL databases vs `alembic current`.

Run: .venv/bin/python bench/bench_status.py [--databases 100]

Creates databases bench_status_<n> on the PostgreSQL server at TEST_POSTGRES_URL (default
127.0.0.1:5432), each with an alembic_version row at one revision of a tiny linear history,
prints ratios measured in this run, and drops the databases at the end (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from pgserver import admin_engine, database_url, drop_databases  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from dashboard.config import Environment, Project  # noqa: E402
from dashboard.databases.versions import (  # noqa: E402
    Reading,
    forget_engines,
    read_environment,
    read_many,
    read_url,
)
from tests.fakeserver import silent_server  # noqa: E402

PREFIX = "bench_status_"
TEMPLATE = f"{PREFIX}template"
REVISIONS = ["b00000000001", "b00000000002", "b00000000003", "b00000000004", "b00000000005"]

ENV_PY = """\
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config


def run_migrations_online():
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
"""

REVISION_PY = '''\
"""step {n}

Revision ID: {revision}
Revises: {down}
Create Date: 2024-01-0{n} 00:00:00

"""

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
'''


def write_project(folder: Path) -> Path:
    """Write a stock-layout Alembic project with a five-step linear history."""
    scripts = folder / "migrations"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(ENV_PY)
    down = None
    for n, revision in enumerate(REVISIONS, start=1):
        text = REVISION_PY.format(n=n, revision=revision, down=down)
        (scripts / "versions" / f"{revision}_step_{n}.py").write_text(text)
        down = revision
    return scripts


def write_ini(folder: Path, name: str, url: str) -> Path:
    """Write an alembic.ini for one database; the URL goes in as sqlalchemy.url."""
    ini = folder / f"{name}.ini"
    escaped = url.replace("%", "%%")
    ini.write_text(
        textwrap.dedent(f"""\
            [alembic]
            script_location = %(here)s/migrations
            sqlalchemy.url = {escaped}
            """)
    )
    return ini


def create_databases(admin: sa.Engine, count: int) -> list[str]:
    """Create count databases from a template that holds an empty version table."""
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{TEMPLATE}"'))
    template = sa.create_engine(database_url(TEMPLATE), poolclass=NullPool)
    with template.begin() as conn:
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
    template.dispose()
    names = [f"{PREFIX}{n}" for n in range(count)]

    def create(name: str) -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"'))

    # CREATE DATABASE waits on I/O, so a few at a time fill the gaps.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(create, names))
    return names


def set_revisions(names: list[str]) -> dict[str, str]:
    """Stamp each database at an assorted revision by inserting its version row."""
    expected = {name: REVISIONS[(n * 3) % len(REVISIONS)] for n, name in enumerate(names)}

    def stamp(name: str) -> None:
        engine = sa.create_engine(database_url(name), poolclass=NullPool)
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO alembic_version (version_num) VALUES (:v)"),
                {"v": expected[name]},
            )
        engine.dispose()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(stamp, names))
    return expected


def refresh(pairs: list[tuple[Environment, Project]], workers: int) -> tuple[float, list[Reading]]:
    """Run one parallel refresh and return its wall-clock seconds and readings."""
    started = time.perf_counter()
    readings = read_many(pairs, max_workers=workers)
    return time.perf_counter() - started, readings


def alembic_current(folder: Path, name: str) -> str:
    """Run `alembic current` against one database in a fresh interpreter; return its output."""
    ini = write_ini(folder, name, database_url(name))
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), "current"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", type=int, default=100)
    parser.add_argument("--sample", type=int, default=10, help="databases for `alembic current`")
    parser.add_argument("--workers", type=int, default=50, help="read_many max_workers")
    parser.add_argument("--repeat", type=int, default=3, help="refreshes to take the median of")
    parser.add_argument("--hung-timeout", type=float, default=2.0)
    args = parser.parse_args()

    # SIGTERM unwinds like Ctrl-C so the finally block drops the databases.
    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    admin = admin_engine()
    leftovers = drop_databases(admin, PREFIX)
    if leftovers:
        print(f"dropped {leftovers} leftover bench databases")
    with tempfile.TemporaryDirectory(prefix="bench_status_") as tmp:
        folder = Path(tmp)
        try:
            run(folder, admin, args)
        finally:
            started = time.perf_counter()
            dropped = drop_databases(admin, PREFIX)
            print(f"\ndropped {dropped} databases in {time.perf_counter() - started:.1f} s")
            admin.dispose()


def run(folder: Path, admin: sa.Engine, args: argparse.Namespace) -> None:
    """Set the databases up, then measure and print the three comparisons."""
    scripts = write_project(folder)
    started = time.perf_counter()
    names = create_databases(admin, args.databases)
    expected = set_revisions(names)
    print(f"set up {len(names)} databases in {time.perf_counter() - started:.1f} s")

    project = Project(name="bench", script_location=scripts)
    pairs = [(Environment(name=n, project="bench", url=database_url(n)), project) for n in names]
    # The dashboard is a long-running process: load drivers and dialects once before timing.
    read_url(database_url(names[0]))

    print(f"\n(a) parallel refresh of {len(names)} databases (cold: engines not cached yet)")
    print("    max_workers   cold refresh   warm refresh   slowest read   warm / slowest")
    wide = max(args.workers, len(names) // 2)
    took = 0.0
    for workers in dict.fromkeys((args.workers, wide)):
        forget_engines()
        runs = []
        for _ in range(1 + args.repeat):
            seconds, readings = refresh(pairs, workers)
            wrong = [r for r in readings if r.heads != (expected[r.environment],)]
            assert not wrong, f"refresh read wrong heads: {wrong[:3]}"
            runs.append((seconds, max(r.latency_ms for r in readings) / 1000))
        cold = runs[0][0]
        warm, slowest = sorted(runs[1:])[len(runs[1:]) // 2]
        took = took or warm
        print(
            f"    {workers:11d} {cold * 1000:11.1f} ms {warm * 1000:11.1f} ms"
            f" {slowest * 1000:11.1f} ms {warm / slowest:15.2f}x"
        )
    print("    (target: refresh <= 2x its slowest read; warm = median of the later refreshes)")
    # The slowest read inside a refresh includes its wait for the two cores; alone, each read
    # shows what one environment costs, and the refresh what parallelism saves over their sum.
    alone = []
    for environment, project in pairs:
        started = time.perf_counter()
        read_environment(environment, project)
        alone.append(time.perf_counter() - started)
    print(
        f"    each read alone, in turn: slowest {max(alone) * 1000:.1f} ms,"
        f" median {statistics.median(alone) * 1000:.1f} ms, sum {sum(alone) * 1000:.1f} ms;"
        f" warm refresh = {took / max(alone):.1f}x the slowest alone,"
        f" {took / sum(alone):.2f}x the sum"
    )

    sample = names[: args.sample]
    started = time.perf_counter()
    for name in sample:
        output = alembic_current(folder, name)
        assert expected[name] in output, f"alembic current on {name} said {output!r}"
    sample_time = time.perf_counter() - started
    extrapolated = sample_time * len(names) / len(sample)
    print(f"\n(b) `python -m alembic current`, sequential, on {len(sample)} databases")
    print(f"    sample time:                     {sample_time:8.2f} s")
    print(f"    extrapolated to {len(names):4d} databases:   {extrapolated:8.2f} s")
    print(f"    warm refresh, {args.workers} workers (a):  {took:8.2f} s")
    print(f"    ratio alembic / refresh:         {extrapolated / took:8.1f}x")

    timeout = args.hung_timeout
    times: dict[str, list[float]] = {"without": [], "first": [], "last": []}
    with silent_server() as port:
        hung_url = make_url(database_url("hung")).set(port=port)
        hung = Environment(
            name="hung",
            project="bench",
            url=hung_url.render_as_string(hide_password=False),
            timeout=timeout,
        )
        # Interleaved, so load from anything else on the machine hits all three alike. Last in
        # the list is the worst case: the hung read starts only when the pool frees a worker.
        lists = {
            "without": pairs,
            "first": [(hung, project), *pairs],
            "last": [*pairs, (hung, project)],
        }
        for _ in range(args.repeat):
            for placement, jobs in lists.items():
                seconds, readings = refresh(jobs, args.workers)
                hung_readings = [r for r in readings if r.environment == "hung"]
                assert all(r.error_kind == "timeout" for r in hung_readings), hung_readings
                times[placement].append(seconds)
    without = statistics.median(times["without"])
    print(f"\n(c) the same refresh plus one server that accepts and never answers ({timeout:g} s)")
    print(f"    refresh without it (median of {args.repeat}): {without:8.2f} s")
    for placement in ("first", "last"):
        with_hung = statistics.median(times[placement])
        added = with_hung - without
        print(
            f"    hung server {placement:5s} in the list: {with_hung:8.2f} s,"
            f" adds {added:5.2f} s = {added / timeout:4.2f} x its timeout  (target <= 1)"
        )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
