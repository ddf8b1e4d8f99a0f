"""Benchmark the CI gate: `manage.py status --fail-unless-current` beside `alembic current`.

Run: .venv/bin/python bench/bench_cli_gate.py [--runs 15]

It upgrades a SQLite file to heads with the sample project (migrations_project/), writes an
alembic.ini whose sqlalchemy.url is that file, migrates a dashboard SQLite database and writes a
dashboard config with that file as environment `prod`. Then, --runs times, each dashboard
command and the Alembic command it stands beside run as whole processes, taking turns (the
order flips every run, so a machine that gets busier slows both alike):

    manage.py status --env prod --fail-unless-current   beside  alembic current
    manage.py revisions --project blog                   beside  alembic history
    manage.py heads --check --project blog               beside  alembic heads

It prints each one's median wall time and the ratio dashboard/Alembic (the target is <= 1.0),
and checks that every run exited 0 and that each status run stored its snapshot.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "migrations_project"
PAIRS = {
    "status": (
        ["manage.py", "status", "--env", "prod", "--fail-unless-current"],
        ["current"],
    ),
    "revisions": (["manage.py", "revisions", "--project", "blog"], ["history"]),
    "heads --check": (["manage.py", "heads", "--check", "--project", "blog"], ["heads"]),
}


def run(args: list[str], env: dict[str, str]) -> float:
    """Run python with args from the repository root; return its wall time, exit 0 or stop."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return elapsed


def prepare(folder: Path) -> tuple[dict[str, str], dict[str, str], Path, Path]:
    """Create the target, ini, dashboard database and config; return both envs, ini and db."""
    target = folder / "prod.sqlite"
    url = f"sqlite:///{target}"
    ini = folder / "alembic.ini"
    text = (SAMPLE / "alembic.ini").read_text(encoding="utf-8")
    text = text.replace("%(here)s", str(SAMPLE)).replace(
        "sqlalchemy.url =", f"sqlalchemy.url = {url}", 1
    )
    ini.write_text(text, encoding="utf-8")
    config = folder / "dashboard.toml"
    config.write_text(
        f'[projects.blog]\nscript_location = "{SAMPLE}"\n\n'
        f'[environments.prod]\nproject = "blog"\nurl = "{url}"\n',
        encoding="utf-8",
    )
    dashboard_db = folder / "dashboard.sqlite3"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{dashboard_db}",
        "DASHBOARD_CONFIG": str(config),
        "SECRET_KEY": "bench-cli-gate-not-a-secret",  # noqa: S105 (a throwaway database)
    }
    for name in ("DEBUG", "DASHBOARD_INSECURE_DEV_KEY"):
        env.pop(name, None)  # as in a pipeline: production settings
    # The sample's env.py prefers DATABASE_URL to the ini's URL: that one is the dashboard's.
    plain = {key: value for key, value in env.items() if key != "DATABASE_URL"}
    run(["-m", "alembic", "-c", str(ini), "upgrade", "heads"], plain)
    run(["manage.py", "migrate", "--no-input", "-v", "0"], env)
    return env, plain, ini, dashboard_db


def snapshots(dashboard_db: Path) -> int:
    """Return how many snapshots the dashboard database holds."""
    with sqlite3.connect(dashboard_db) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM dashboard_snapshot").fetchone()
    return int(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="bench-cli-gate-") as name:
        env, plain, ini, dashboard_db = prepare(Path(name))
        seconds: dict[str, dict[str, list[float]]] = {
            what: {"dashboard": [], "alembic": []} for what in PAIRS
        }
        for what, (ours, theirs) in PAIRS.items():
            alembic = ["-m", "alembic", "-c", str(ini), *theirs]
            run(ours, env), run(alembic, plain)  # warm the page cache for both
            for n in range(runs):
                stored = snapshots(dashboard_db)
                turns = [("dashboard", ours, env), ("alembic", alembic, plain)]
                for who, args, environ in turns if n % 2 == 0 else turns[::-1]:
                    seconds[what][who].append(run(args, environ))
                if what == "status" and snapshots(dashboard_db) != stored + 1:
                    raise SystemExit("a status run did not store its snapshot")
    print(f"{runs} alternating runs of each pair, whole processes, one SQLite database")
    print(
        f"{'dashboard command':<50} {'median ms':>9} {'alembic':<16} {'median ms':>9} {'ratio':>6}"
    )
    for what, (ours, theirs) in PAIRS.items():
        mine = statistics.median(seconds[what]["dashboard"])
        alembic = statistics.median(seconds[what]["alembic"])
        print(
            f"{' '.join(ours):<50} {mine * 1000:>9.0f} {'alembic ' + ' '.join(theirs):<16}"
            f" {alembic * 1000:>9.0f} {mine / alembic:>6.2f}"
        )
    gate = statistics.median(seconds["status"]["dashboard"]) / statistics.median(
        seconds["status"]["alembic"]
    )
    print(
        f"CI gate ratio (status --fail-unless-current / alembic current): {gate:.2f} (target <= 1.0)"
    )


if __name__ == "__main__":
    main()
