"""Benchmark an upgrade through the dashboard against `python -m alembic upgrade heads`.

Run: .venv/bin/python bench/bench_actions.py [--rounds 5]

On the PostgreSQL server at TEST_POSTGRES_URL (default 127.0.0.1:5432) it creates a throwaway
dashboard database (migrated with `manage.py migrate`) and two fresh target databases per round.
Each round upgrades one target from base to heads through the dashboard (requested through the
service, approved by a second user, run by a real `manage.py db_worker` process) and the other
with Alembic's own command line, then prints the ratio of run times and the latency from
approval to start, measured in this run. Every bench_actions_* database is dropped at the end
(also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from pgserver import admin_engine, database_url, drop_databases  # noqa: E402

PREFIX = "bench_actions_"
DASHBOARD_DB = f"{PREFIX}dashboard"
SAMPLE_INI = ROOT / "migrations_project" / "alembic.ini"
HEAD = "6c0a8d3f5e94"
POLL = 0.25  # the timings come from the action's own timestamps; polling only costs CPU


def create_database(admin: sa.Engine, name: str) -> str:
    """Create an empty database and return its URL."""
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return database_url(name)


def write_config(folder: Path, targets: list[str]) -> Path:
    """Write a dashboard config with one environment per target, each needing one approval."""
    lines = ["[projects.blog]", f'alembic_ini = "{SAMPLE_INI}"', ""]
    for n, url in enumerate(targets):
        lines += [f"[environments.bench{n}]", 'project = "blog"', f'url = "{url}"']
        lines += ["approvals_required = 1", ""]
    path = folder / "dashboard.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def start_worker(interval: float) -> tuple[subprocess.Popen[str], threading.Event]:
    """Start `manage.py db_worker`; return it and an event set once its loop is running."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "db_worker",
            "--interval",
            str(interval),
            "--no-startup-delay",
            "--no-reload",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready = threading.Event()

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "Starting worker" in line:
                ready.set()
            elif "Traceback" in line or "Error" in line:
                print(f"    worker: {line.rstrip()}")

    threading.Thread(target=watch, daemon=True).start()
    return proc, ready


def alembic_upgrade(url: str) -> float:
    """Run `python -m alembic upgrade heads` on url in a fresh interpreter; return its seconds."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(SAMPLE_INI), "-x", f"url={url}"]
        + ["upgrade", "heads"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=300,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.05, help="db_worker --interval")
    args = parser.parse_args()

    # SIGTERM unwinds like Ctrl-C so the finally block drops the databases.
    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    admin = admin_engine()
    leftovers = drop_databases(admin, PREFIX)
    if leftovers:
        print(f"dropped {leftovers} leftover bench databases")
    with tempfile.TemporaryDirectory(prefix="bench_actions_") as tmp:
        try:
            run(Path(tmp), admin, args)
        finally:
            from django.db import connections

            connections.close_all()
            dropped = drop_databases(admin, PREFIX)
            print(f"\ndropped {dropped} databases")
            admin.dispose()


def run(folder: Path, admin: sa.Engine, args: argparse.Namespace) -> None:
    """Set the dashboard up, then time each round both ways and print the comparison."""
    started = time.perf_counter()
    dashboard_url = create_database(admin, DASHBOARD_DB)
    dashboard_targets = [create_database(admin, f"{PREFIX}dash_{n}") for n in range(args.rounds)]
    plain_targets = [create_database(admin, f"{PREFIX}plain_{n}") for n in range(args.rounds)]
    config = write_config(folder, dashboard_targets)
    os.environ.update(
        {
            "DATABASE_URL": dashboard_url,
            "DASHBOARD_CONFIG": str(config),
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "DASHBOARD_INSECURE_DEV_KEY": "1",
            "LOG_LEVEL": "WARNING",
        }
    )
    for name in ("MIGRATIONS_PROJECT_SLEEP", "MIGRATIONS_PROJECT_FAIL"):
        os.environ.pop(name, None)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    import django

    django.setup()
    from dashboard.models import Action
    from dashboard.services import actions, users

    users.user_set_role(username="olga", role="operator")
    users.user_set_role(username="alan", role="approver")
    from django.contrib.auth import get_user_model

    olga = get_user_model().objects.get(username="olga")
    alan = get_user_model().objects.get(username="alan")
    print(
        f"set up the dashboard and {2 * args.rounds} targets in {time.perf_counter() - started:.1f} s"
    )

    worker, ready = start_worker(args.interval)
    try:
        if not ready.wait(60):
            raise RuntimeError("the worker did not start within 60 s")
        rows = []
        for n in range(args.rounds):
            action = actions.action_request(
                user=olga,
                environment=f"bench{n}",
                direction="upgrade",
                target="heads",
                prepare=True,  # the SQL review happens before approval: not part of the run
            )
            if n % 2:  # alternate the order so load from elsewhere hits both alike
                plain = alembic_upgrade(plain_targets[n])
            actions.action_approve(user=alan, action_id=action.pk, plan_hash=action.plan_hash)
            deadline = time.monotonic() + 300
            while not Action.objects.get(pk=action.pk).is_finished:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"action #{action.pk} did not finish within 300 s")
                time.sleep(POLL)
            if not n % 2:
                plain = alembic_upgrade(plain_targets[n])
            action.refresh_from_db()
            if action.status != Action.Status.SUCCEEDED or action.after_heads != [HEAD]:
                raise RuntimeError(f"action #{action.pk} ended {action.status}: {action.error}")
            assert action.decided_at and action.started_at and action.finished_at
            latency = (action.started_at - action.decided_at).total_seconds()
            dashboard = (action.finished_at - action.started_at).total_seconds()
            end_to_end = (action.finished_at - action.decided_at).total_seconds()
            rows.append((latency, dashboard, end_to_end, plain))
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    print(
        f"\nupgrade base -> heads ({9} revisions, sample project) on PostgreSQL, {args.rounds} rounds"
    )
    print("    round   approval->start   dashboard run   approval->done   alembic CLI    ratio")
    for n, (latency, dashboard, end_to_end, plain) in enumerate(rows):
        print(
            f"    {n:5d} {latency * 1000:14.0f} ms {dashboard:12.2f} s {end_to_end:13.2f} s"
            f" {plain:10.2f} s {dashboard / plain:8.2f}x"
        )
    latency = statistics.median(r[0] for r in rows)
    # Each round pairs the two runs under the same machine load, so compare within rounds.
    ratio = statistics.median(r[1] / r[3] for r in rows)
    end_to_end = statistics.median(r[2] / r[3] for r in rows)
    print(f"\n    median ratio dashboard run / alembic CLI:  {ratio:5.2f}x  (target <= 1.2)")
    print(f"    median ratio approval -> done / CLI:       {end_to_end:5.2f}x")
    print(
        f"    median latency approval -> start:          {latency * 1000:5.0f} ms (target <= 1000 ms)"
    )
    print(
        "    (dashboard run = the worker's started_at to finished_at: fresh read, stale check,"
        " Alembic in a subprocess, read after, audit; CLI = wall time of the process)"
    )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
