"""The CI gates import only what a read needs: real `manage.py` processes, their sys.modules."""

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.statusenv import HEAD, SAMPLE, alembic, write_config

ROOT = Path(__file__).resolve().parent.parent
# Runs manage.py as `python manage.py ...` does, then writes the modules it imported as JSON.
PROBE = """
import atexit, json, runpy, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.path.insert(0, ".")
sys.argv = ["manage.py", *sys.argv[2:]]
runpy.run_path("manage.py", run_name="__main__")
"""
# What a read never needs: pages, actions, schema checks, webhooks, sign-in, metrics, Alembic.
NEVER = (
    "alembic",
    "mako",
    "pygments",
    "urllib3",
    "squawk",
    "prometheus_client",
    "mozilla_django_oidc",
    "django.contrib.admin.views.main",
    "dashboard.urls",
    "dashboard.views",
    "dashboard.api",
    "dashboard.metrics",
    "dashboard.sso",
    "dashboard.runner",
    "dashboard.drift",
    "dashboard.databases.schema",
    "dashboard.selectors.drift",
    "dashboard.services.actions",
    "dashboard.services.drift",
    "dashboard.services.notifications",
    "dashboard.notify.send",
)

pytestmark = pytest.mark.once


class Gate:
    """A migrated dashboard SQLite database, a config and an environment at the sample's head."""

    def __init__(self, folder: Path) -> None:
        target = folder / "prod.sqlite"
        alembic(f"sqlite:///{target}", "upgrade", "heads")
        self.database = folder / "dashboard.sqlite3"
        config = write_config(
            folder / "dashboard.toml",
            {"prod": {"project": "blog", "url": f"sqlite:///{target}"}},
        )
        self.env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{self.database}",
            "DASHBOARD_CONFIG": str(config),
            "SECRET_KEY": "test-cli-imports-not-a-secret",
        }
        for name in ("DEBUG", "DASHBOARD_INSECURE_DEV_KEY", "DJANGO_SETTINGS_MODULE"):
            self.env.pop(name, None)
        self.folder = folder
        done = self.run("migrate", "--no-input", "-v", "0")[0]
        assert done.returncode == 0, done.stderr

    def run(self, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
        """Run `manage.py args` in a fresh interpreter; return it and the modules it imported."""
        out = self.folder / "modules.json"
        out.unlink(missing_ok=True)
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(out), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return done, set(json.loads(out.read_text())) if out.exists() else set()

    def snapshots(self) -> list[tuple[str, str]]:
        """Return the (environment, state) of every stored snapshot."""
        with sqlite3.connect(self.database) as conn:
            return conn.execute("SELECT environment, state FROM dashboard_snapshot").fetchall()


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    yield Gate(tmp_path_factory.mktemp("cli-imports"))


def heavy(modules: set[str]) -> list[str]:
    """Return the modules of NEVER (or inside them) that were imported."""
    return sorted(m for m in modules if any(m == n or m.startswith(f"{n}.") for n in NEVER))


def test_status_gate_reads_and_stores_without_the_heavy_modules(gate: Gate) -> None:
    before = len(gate.snapshots())
    done, modules = gate.run("status", "--env", "prod", "--fail-unless-current")

    assert done.returncode == 0, done.stderr
    assert "current" in done.stdout and HEAD in done.stdout
    assert gate.snapshots()[before:] == [("prod", "current")]
    assert heavy(modules) == []
    # It read the version table itself: SQLAlchemy and the dashboard's own database were used.
    assert {"sqlalchemy.dialects.sqlite", "dashboard.databases.versions"} <= modules


def test_status_json_and_a_failing_gate_stay_light(gate: Gate, tmp_path: Path) -> None:
    done, modules = gate.run("status", "--env", "prod", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["state"] == "current"
    assert heavy(modules) == []

    unknown, modules = gate.run("status", "--env", "nope", "--fail-unless-current")
    assert unknown.returncode == 2 and "'nope'" in unknown.stderr
    assert heavy(modules) == []


def test_revisions_and_heads_check_stay_light(gate: Gate) -> None:
    for args in (
        ("revisions", "--project", "blog"),
        ("revisions", "--script-location", str(SAMPLE)),
        ("heads", "--check", "--project", "blog"),
    ):
        done, modules = gate.run(*args)
        assert done.returncode == 0, (args, done.stderr)
        assert heavy(modules) == [], args
    assert "9 revisions, 1 head" in gate.run("revisions", "--project", "blog")[0].stdout


def test_a_broken_config_still_fails_the_gate_with_its_reason(gate: Gate, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[environments.prod]\nproject = 'nope'\nurl = 'sqlite://'\n")
    gate.env["DASHBOARD_CONFIG"], saved = str(broken), gate.env["DASHBOARD_CONFIG"]
    try:
        done, _ = gate.run("status", "--env", "prod", "--fail-unless-current")
    finally:
        gate.env["DASHBOARD_CONFIG"] = saved
    # Without the system checks the command's own message says why; never a pass.
    assert done.returncode == 2
    assert "the config cannot be read" in done.stderr and "nope" in done.stderr
