"""Benchmark a reader's worst wait behind a blocked ALTER: plain `alembic upgrade` vs a dashboard run.

Run: .venv/bin/python bench/bench_locks.py [--hold 20] [--lock-timeout 1s]

On the PostgreSQL server at TEST_POSTGRES_URL (default 127.0.0.1:5432) it creates a throwaway
dashboard database and two target databases at the revision that creates posts. For each target
a blocker opens a transaction that reads posts and stays idle in it for --hold seconds, a reader
counts posts in a loop on a connection of its own, and the upgrade to heads (whose next revision
alters posts) starts: once with Alembic's own command line (no lock_timeout: the ALTER queues
behind the blocker and every later reader queues behind the ALTER), once as a dashboard action
run by a real `manage.py db_worker` (lock_timeout, then retries with backoff). It prints the
reader's slowest count in each case and their ratio. Every bench_locks_* database is dropped at
the end (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import signal
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
from bench_actions import create_database, start_worker  # noqa: E402
from pgserver import admin_engine, drop_databases  # noqa: E402

from dashboard.config import parse_duration  # noqa: E402
from tests.lock_support import Blocker, Reader, alembic_argv, alembic_env, run_cli  # noqa: E402

PREFIX = "bench_locks_"
POSTS = "a71e5c0d2f39"  # creates posts; the next revision alters it
HEAD = "6c0a8d3f5e94"
POLL = 0.25


def hold_posts(url: str, seconds: float) -> threading.Thread:
    """Start a blocker that holds ACCESS SHARE on posts for seconds, then ends its transaction."""
    blocker = Blocker(url, "posts")
    thread = threading.Thread(
        target=lambda: (time.sleep(seconds), blocker.release()), name="blocker", daemon=True
    )
    thread.start()
    return thread


def plain_run(url: str, hold: float) -> tuple[float, float]:
    """Return the reader's slowest count and the upgrade's seconds with Alembic's command line."""
    blocker = hold_posts(url, hold)
    reader = Reader(url)
    reader.start()
    started = time.monotonic()
    subprocess.run(
        alembic_argv("upgrade", "heads"),
        cwd=ROOT,
        env=alembic_env(url),
        capture_output=True,
        check=True,
        timeout=hold + 300,
    )
    took = time.monotonic() - started
    blocker.join()
    slowest = reader.stop()
    if reader.errors:
        raise RuntimeError(f"the reader failed: {reader.errors[0]}")
    return slowest, took


def write_config(folder: Path, url: str, lock_timeout: str) -> Path:
    """Write a dashboard config with one environment on url whose actions need one approval."""
    text = (
        f'[projects.blog]\nalembic_ini = "{ROOT / "migrations_project" / "alembic.ini"}"\n\n'
        f'[environments.bench]\nproject = "blog"\nurl = "{url}"\n'
        f'lock_timeout = "{lock_timeout}"\napprovals_required = 1\n'
    )
    path = folder / "dashboard.toml"
    path.write_text(text, encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", type=float, default=20.0, help="seconds the blocker holds posts")
    parser.add_argument("--lock-timeout", default="1s", help="the environment's lock_timeout")
    args = parser.parse_args()

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    admin = admin_engine()
    leftovers = drop_databases(admin, PREFIX)
    if leftovers:
        print(f"dropped {leftovers} leftover bench databases")
    with tempfile.TemporaryDirectory(prefix=PREFIX) as tmp:
        try:
            run(Path(tmp), admin, args)
        finally:
            from django.db import connections

            connections.close_all()
            dropped = drop_databases(admin, PREFIX)
            print(f"\ndropped {dropped} databases")
            admin.dispose()


def run(folder: Path, admin: sa.Engine, args: argparse.Namespace) -> None:
    """Set both targets up at posts, run the upgrade each way behind a blocker, print the figures."""
    lock_timeout = parse_duration(args.lock_timeout)
    dashboard_url = create_database(admin, f"{PREFIX}dashboard")
    plain_url = create_database(admin, f"{PREFIX}plain")
    dash_url = create_database(admin, f"{PREFIX}dash")
    for url in (plain_url, dash_url):
        done = run_cli(url, "upgrade", POSTS)
        if done.returncode != 0:
            raise RuntimeError(done.stdout + done.stderr)
    os.environ.update(
        {
            "DATABASE_URL": dashboard_url,
            "DASHBOARD_CONFIG": str(write_config(folder, dash_url, args.lock_timeout)),
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
    from django.contrib.auth import get_user_model

    from dashboard.models import Action
    from dashboard.services import actions, users

    users.user_set_role(username="olga", role="operator")
    users.user_set_role(username="alan", role="approver")
    olga = get_user_model().objects.get(username="olga")
    alan = get_user_model().objects.get(username="alan")

    print(f"blocker holds posts for {args.hold:g} s; reader counts posts in a loop")
    plain_slowest, plain_took = plain_run(plain_url, args.hold)
    print(
        f"    plain alembic upgrade: slowest read {plain_slowest:6.2f} s (upgrade {plain_took:.1f} s)"
    )

    worker, ready = start_worker(0.05)
    try:
        if not ready.wait(60):
            raise RuntimeError("the worker did not start within 60 s")
        action = actions.action_request(
            user=olga, environment="bench", direction="upgrade", target="heads", prepare=True
        )
        blocker = hold_posts(dash_url, args.hold)
        reader = Reader(dash_url)
        reader.start()
        started = time.monotonic()
        actions.action_approve(user=alan, action_id=action.pk, plan_hash=action.plan_hash)
        deadline = started + args.hold + 300
        while not Action.objects.get(pk=action.pk).is_finished:
            if time.monotonic() > deadline:
                raise RuntimeError(f"action #{action.pk} did not finish in time")
            time.sleep(POLL)
        took = time.monotonic() - started
        blocker.join()
        dash_slowest = reader.stop()
        if reader.errors:
            raise RuntimeError(f"the reader failed: {reader.errors[0]}")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    action.refresh_from_db()
    print(
        f"    dashboard run:         slowest read {dash_slowest:6.2f} s (action {action.status}"
        f" after {took:.1f} s, {action.retries} retries; target <= lock_timeout + 1 s ="
        f" {lock_timeout + 1:g} s)"
    )
    if action.status != Action.Status.SUCCEEDED:
        print(f"      its error: {action.error}")
    print(f"\n    ratio plain / dashboard: {plain_slowest / dash_slowest:5.1f}x")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
