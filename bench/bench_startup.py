"""Benchmark many small upgrades: the runner with its fork server, without, and Alembic's CLI.

Run: .venv/bin/python bench/bench_startup.py [--runs 20]

Each of --runs sequential runs upgrades a fresh SQLite file to heads with the sample project
(migrations_project/), the way a fleet rollout's members do: through
dashboard.runner.process.upgrade with the fork server (a new one, whose start the first run
pays), through it with DASHBOARD_ALEMBIC_ZYGOTE=0 (a fresh interpreter per run, as before),
and as `python -m alembic upgrade heads` started directly, the three taking turns run by run.
It prints the total, the median and the first run of each, and their ratios to the CLI. No Django and no server is needed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dashboard.config import Project  # noqa: E402
from dashboard.runner import zygote  # noqa: E402
from dashboard.runner.process import fork_server_pids, upgrade  # noqa: E402

SAMPLE = ROOT / "migrations_project"
PROJECT = Project("blog", SAMPLE, alembic_ini=SAMPLE / "alembic.ini")


def through_runner(url: str) -> None:
    """Upgrade url to heads through the dashboard's runner."""
    result = upgrade(PROJECT, url, "heads")
    if not result.succeeded:
        raise SystemExit("the runner's upgrade failed:\n" + "\n".join(result.output_tail))


def through_cli(url: str) -> None:
    """Upgrade url to heads with Alembic's own command line."""
    env = {**os.environ, "DATABASE_URL": url}
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "heads"],
        cwd=SAMPLE,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"alembic upgrade heads failed:\n{done.stderr}")


def timed(
    runs: int, folder: Path, ways: Mapping[str, Callable[[str], None]]
) -> dict[str, list[float]]:
    """Return the seconds each way took for each of runs upgrades of a fresh SQLite file.

    The ways take turns, run by run, so a machine that gets busier slows them alike.
    """
    seconds: dict[str, list[float]] = {how: [] for how in ways}
    for n in range(runs):
        for k, (how, upgrade_one) in enumerate(ways.items()):
            url = f"sqlite:///{folder / f'{k}-{n}.sqlite'}"
            started = time.perf_counter()
            upgrade_one(url)
            seconds[how].append(time.perf_counter() - started)
    return seconds


def fresh_interpreter(url: str) -> None:
    """Upgrade through the runner with the fork server turned off."""
    os.environ[zygote.SETTING] = "0"
    try:
        through_runner(url)
    finally:
        os.environ[zygote.SETTING] = "1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    if not zygote.enabled():
        raise SystemExit("the fork server is off here (not Linux, or DASHBOARD_ALEMBIC_ZYGOTE=0)")
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as name:
        folder = Path(name)
        through_cli(f"sqlite:///{folder / 'warm-up.sqlite'}")  # the page cache, for everyone
        if fork_server_pids():
            raise SystemExit("a fork server is already running: the first run would not start it")
        ways = {
            "alembic CLI": through_cli,
            "runner, fresh interpreter": fresh_interpreter,
            "runner, fork server": through_runner,
        }
        results = timed(runs, folder, ways)
    cli = statistics.median(results["alembic CLI"])
    print(f"{runs} sequential `upgrade heads` of {SAMPLE.name}/ into fresh SQLite files")
    print(f"{'how':<28} {'total s':>8} {'median ms':>10} {'first ms':>9} {'median/CLI':>11}")
    for how, seconds in results.items():
        median = statistics.median(seconds)
        print(
            f"{how:<28} {sum(seconds):>8.2f} {median * 1000:>10.0f} {seconds[0] * 1000:>9.0f}"
            f" {median / cli:>11.2f}"
        )
    fresh = statistics.median(results["runner, fresh interpreter"])
    forked = statistics.median(results["runner, fork server"])
    print(
        f"per run, the fork server saves {(fresh - forked) * 1000:.0f} ms"
        f" ({fresh / forked:.1f}x faster than a fresh interpreter per run)"
    )


if __name__ == "__main__":
    main()
