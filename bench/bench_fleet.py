"""Benchmark a fleet rollout against the same upgrades run one after another with Alembic.

Run: .venv/bin/python bench/bench_fleet.py [--tenants 200] [--parallel 8] [--workers 4]

On the PostgreSQL server at TEST_POSTGRES_URL (default 127.0.0.1:5432) it creates a throwaway
dashboard database (migrated with `manage.py migrate`) and two sets of --tenants empty tenant
databases, copied from a template with CREATE DATABASE ... TEMPLATE (tests/fleet_support.py).
One set is upgraded from base to heads by `python -m alembic upgrade heads`, one tenant after
another; the other is one fleet, upgraded by one rollout (waves 1, 10 %, 100 %, --parallel) run
by --workers `manage.py worker` processes, timed from the approval to the rollout's end. Then
the status refresh of the fleet's members is timed against its slowest read. It prints both
comparisons as ratios measured in this run. Every bench_fleet_* database is dropped at the end
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
import time
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fleet_support import SAMPLE_INI, Tenants, fleet_config, most_at_once  # noqa: E402

PREFIX = "bench_fleet_"
FLEET = "tenants"
HEAD = "6c0a8d3f5e94"
POLL = 0.25  # the rollout's timings come from its own timestamps; polling only costs CPU
TARGET_ROLLOUT = 0.35
TARGET_REFRESH = 2.0
REFRESH_POOL = 16  # status_refresh's default max_workers


def alembic_upgrade(url: str) -> None:
    """Run `python -m alembic upgrade heads` on url in a fresh interpreter, as a person would."""
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(SAMPLE_INI), "upgrade", "heads"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=True,
        timeout=300,
    )


def start_workers(count: int, log: Path, interval: float) -> list[subprocess.Popen[str]]:
    """Start count `manage.py worker` processes logging to log."""
    procs = []
    for _ in range(count):
        with log.open("a", encoding="utf-8") as handle:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "manage.py", "worker", "--interval", str(interval)]
                    + ["--no-startup-delay", "--no-reload"],
                    cwd=ROOT,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
    return procs


def stop_workers(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=8, help="the fleet's parallel")
    parser.add_argument("--workers", type=int, default=4, help="manage.py worker processes")
    parser.add_argument("--interval", type=float, default=0.05, help="the workers' --interval")
    args = parser.parse_args()

    # SIGTERM unwinds like Ctrl-C so the finally block drops the databases.
    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    tenants = Tenants(PREFIX)
    leftovers = tenants.drop()
    if leftovers:
        print(f"dropped {leftovers} leftover bench databases")
    with tempfile.TemporaryDirectory(prefix=PREFIX) as tmp:
        try:
            run(Path(tmp), tenants, args)
        finally:
            from django.db import connections

            connections.close_all()
            dropped = tenants.drop()
            print(f"\ndropped {dropped} databases")
            tenants.admin.dispose()


def run(folder: Path, tenants: Tenants, args: argparse.Namespace) -> None:
    """Set everything up, run both ways, refresh the fleet, and print the figures."""
    started = time.perf_counter()
    plain = tenants.create(f"p{n:03d}" for n in range(args.tenants))
    members = tenants.create(f"t{n:03d}" for n in range(args.tenants))
    tenants.create(["dashboard"])
    print(
        f"set up {2 * args.tenants} tenant databases from a template in"
        f" {time.perf_counter() - started:.1f} s"
    )
    config = fleet_config(
        folder / "dashboard.toml",
        fleet=FLEET,
        url_template=tenants.url_template(),
        names=members,
        approvals_required=1,
        waves=[1, "10%", "100%"],
        parallel=args.parallel,
    )
    os.environ.update(
        {
            "DATABASE_URL": tenants.url("dashboard"),
            "DASHBOARD_CONFIG": str(config),
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "DASHBOARD_INSECURE_DEV_KEY": "1",
            "LOG_LEVEL": "WARNING",
            # The rollout is measured alone: the periodic refresh of every member waits.
            "DASHBOARD_REFRESH_INTERVAL": "3600",
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

    print(f"\n(a) {args.tenants} tenants from base to heads")
    started = time.perf_counter()
    for name in plain:
        alembic_upgrade(tenants.url(name))
    sequential = time.perf_counter() - started
    print(f"    python -m alembic upgrade heads, one after another: {sequential:8.1f} s")

    import django

    django.setup()
    rollout_figures = rollout(folder, members, args)
    took = rollout_figures["took"]
    print(
        f"    one rollout, parallel {args.parallel}, {args.workers} workers:             {took:8.1f} s"
        f" (request and SQL {rollout_figures['requested']:.1f} s before it,"
        f" at most {rollout_figures['at_once']} members at once,"
        f" median member {rollout_figures['median']:.2f} s)"
    )
    ratio = took / sequential
    print(
        f"    ratio rollout / sequential: {ratio:.2f} (target <= {TARGET_ROLLOUT:.2f}:"
        f" {'met' if ratio <= TARGET_ROLLOUT else 'missed'})"
    )
    refresh(members)


def rollout(folder: Path, members: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Request, approve and wait for one rollout of the fleet; return its figures."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from dashboard.models import Action, Rollout, WorkerBeat
    from dashboard.services import rollouts, users

    users.user_set_role(username="olga", role="operator")
    users.user_set_role(username="alan", role="approver")
    olga = get_user_model().objects.get(username="olga")
    alan = get_user_model().objects.get(username="alan")
    log = folder / "workers.log"
    procs = start_workers(args.workers, log, args.interval)
    try:
        wait(lambda: WorkerBeat.objects.count() >= args.workers, "the workers to start", log)
        wait(queue_idle, "the workers' start-up tasks", log)
        started = time.perf_counter()
        requested = rollouts.rollout_request(
            user=olga, fleet=FLEET, direction="upgrade", target="heads", prepare=True
        )
        request_took = time.perf_counter() - started
        approved_at = timezone.now()
        rollouts.rollout_approve(
            user=alan, rollout_id=requested.pk, rollout_hash=requested.rollout_hash
        )
        done = wait(
            lambda: Rollout.objects.filter(pk=requested.pk, finished_at__isnull=False).first(),
            "the rollout",
            log,
            within=3600,
        )
    finally:
        stop_workers(procs)
    runs = list(Action.objects.filter(rollout=done))
    if done.status != Rollout.Status.SUCCEEDED or len(runs) != len(members):
        raise RuntimeError(f"rollout #{done.pk} ended {done.status}: {done.error}")
    if any(run.after_heads != [HEAD] for run in runs):
        raise RuntimeError("a member did not end at the heads")
    spans = [(run.started_at, run.finished_at) for run in runs]
    ran = [(start, end) for start, end in spans if start is not None and end is not None]
    assert done.finished_at is not None and len(ran) == len(runs)
    return {
        "took": (done.finished_at - approved_at).total_seconds(),
        "requested": request_took,
        "at_once": most_at_once(ran),
        "median": statistics.median((end - start).total_seconds() for start, end in ran),
    }


def queue_idle() -> bool:
    """Say whether no task is running or due now (later scheduled ones do not count)."""
    from django.db.models import Q
    from django.utils import timezone
    from django_tasks_db.models import DBTaskResult

    due = Q(status="RUNNING") | Q(status="READY", run_after__lte=timezone.now())
    return not DBTaskResult.objects.filter(due).exists()


def wait(condition: Any, what: str, log: Path, *, within: float = 120) -> Any:
    """Poll condition until it returns something truthy; fail naming what after within s."""
    deadline = time.monotonic() + within
    while not (value := condition()):
        if time.monotonic() > deadline:
            tail = log.read_text(encoding="utf-8")[-2000:] if log.exists() else ""
            raise RuntimeError(f"gave up waiting for {what} after {within:g} s\n{tail}")
        time.sleep(POLL)
    return value


def refresh(members: list[str]) -> None:
    """Time the status refresh of every member against its slowest read, and print them."""
    from dashboard.config import current_config
    from dashboard.databases import versions
    from dashboard.services import status

    config = current_config()
    names = [env.name for env in config.members_of(FLEET)]
    print(f"\n(b) status refresh of the {len(names)} members (status_refresh, its own pool)")
    print("                refresh   slowest read   refresh / slowest")
    figures = []
    for label in ("cold", "warm", "warm"):
        started = time.perf_counter()
        snapshots = status.status_refresh(environments=names, max_workers=REFRESH_POOL)
        took = time.perf_counter() - started
        behind = [s.environment for s in snapshots if s.heads != [HEAD]]
        if behind:
            raise RuntimeError(f"the refresh read members not at the heads: {behind[:3]}")
        slowest = max(s.latency_ms or 0.0 for s in snapshots) / 1000
        figures.append((took, slowest))
        print(
            f"    {label}  {took * 1000:10.1f} ms {slowest * 1000:11.1f} ms {took / slowest:14.2f}x"
        )
    took, slowest = figures[-1]
    ratio = took / slowest
    print(
        f"    ratio refresh / slowest read (warm): {ratio:.2f}x (target <= {TARGET_REFRESH:g}x:"
        f" {'met' if ratio <= TARGET_REFRESH else 'missed'})"
    )
    # The same reads without storing snapshots: what the refresh adds to its pool's reads.
    pairs = [(env, config.projects[env.project]) for env in config.members_of(FLEET)]
    started = time.perf_counter()
    readings = versions.read_many(pairs, max_workers=REFRESH_POOL, run_lock=True)
    read_took = time.perf_counter() - started
    read_slowest = max(r.latency_ms for r in readings) / 1000
    print(
        f"    its reads alone (read_many, {REFRESH_POOL} threads): {read_took * 1000:.1f} ms,"
        f" slowest {read_slowest * 1000:.1f} ms ({read_took / read_slowest:.2f}x); storing"
        f" the snapshots takes the other {max(0.0, took - read_took) * 1000:.0f} ms"
    )
    # The slowest read inside a refresh includes its wait for the two cores; alone, each read
    # shows what one member costs.
    alone = []
    for env, _project in pairs:
        started = time.perf_counter()
        versions.read_environment(env, config.projects[env.project], run_lock=True)
        alone.append(time.perf_counter() - started)
    print(
        f"    each read alone, in turn: slowest {max(alone) * 1000:.1f} ms, median"
        f" {statistics.median(alone) * 1000:.1f} ms, sum {sum(alone) * 1000:.1f} ms;"
        f" warm refresh = {took / max(alone):.1f}x the slowest alone, {took / sum(alone):.2f}x"
        " the sum"
    )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
