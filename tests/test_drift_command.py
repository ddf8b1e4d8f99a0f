"""`manage.py drift`, the API's `schema` field and the demo's drifted environment, on real databases."""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import time
import tomllib
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from django.core.management import CommandError, call_command
from django.test import Client
from sqlalchemy.pool import NullPool

from dashboard.drift import reference
from dashboard.models import SchemaCheck
from dashboard.services import tokens
from tests.actions_support import worker_env
from tests.databases import PG_ADMIN_URL
from tests.statusenv import HEAD, ROOT, SAMPLE, write_config, write_versions

pytestmark = pytest.mark.django_db
EXTRA = "ALTER TABLE users ADD COLUMN nickname VARCHAR(40)"
DROP = "ALTER TABLE users DROP COLUMN nickname"


def upgrade(url: str, target: str = "heads") -> None:
    """Upgrade the database at url with the sample project, in this process (no ini logging)."""
    config = Config(cmd_opts=argparse.Namespace(x=[f"url={url}"]))
    config.set_main_option("script_location", str(SAMPLE))
    command.upgrade(config, target)


def execute(url: str, statement: str) -> None:
    """Change the database outside Alembic, as someone with a SQL prompt would."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def at_heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database the sample project left at its heads (copied, never changed)."""
    path = tmp_path_factory.mktemp("drift") / "heads.db"
    upgrade(f"sqlite:///{path}")
    return path


def sqlite_copy(at_heads: Path, folder: Path, name: str) -> str:
    """Return the URL of a fresh copy of the database at the heads."""
    target = folder / f"{name}.db"
    shutil.copyfile(at_heads, target)
    return f"sqlite:///{target}"


def use_config(
    settings: Any, folder: Path, environments: dict[str, str], *, scratch: str | None = None
) -> Path:
    """Point the dashboard at a config of the sample project with these environment URLs."""
    project: dict[str, Any] = {"script_location": str(SAMPLE)}
    if scratch is not None:
        project["scratch_url"] = scratch
    path = write_config(
        folder / f"dashboard-{time.monotonic_ns()}.toml",
        {name: {"project": "blog", "url": url} for name, url in environments.items()},
        {"blog": project},
    )
    settings.DASHBOARD_CONFIG = str(path)
    return path


def drift_json(*args: str) -> dict[str, dict[str, Any]]:
    """Run `manage.py drift --json` in this process; return its items by environment."""
    out = StringIO()
    call_command("drift", "--json", *args, stdout=out)
    items = json.loads(out.getvalue())
    assert all(set(item) == {"environment", "project", "schema"} for item in items)
    return {item["environment"]: item for item in items}


def drift_text(*args: str) -> str:
    """Run `manage.py drift` in this process and return what it printed."""
    out = StringIO()
    call_command("drift", *args, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_drift_json_names_a_hand_made_column_and_forgets_it_once_dropped(
    kind: str, settings: Any, tmp_path: Path, at_heads: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        url = sqlite_copy(at_heads, tmp_path, "staging")
    else:
        url = request.getfixturevalue("postgres_url")
        upgrade(url)
    use_config(settings, tmp_path, {"staging": url}, scratch=PG_ADMIN_URL)
    execute(url, EXTRA)

    drifted = drift_json("--env", "staging")["staging"]
    printed = drift_text("--env", "staging")
    execute(url, DROP)
    clean = drift_json("--env", "staging")["staging"]

    assert drifted["project"] == "blog"
    assert drifted["schema"]["state"] == "drift"
    assert drifted["schema"]["heads"] == [HEAD]
    [difference] = drifted["schema"]["differences"]
    assert (difference["kind"], difference["table"], difference["name"]) == (
        "remove_column",
        "users",
        "nickname",
    )
    assert set(difference) == {"kind", "table", "name", "detail"}
    assert drifted["schema"]["checked_at"]
    assert "drift at 6c0a8d3f5e94: 1 difference" in printed
    assert "column users.nickname exists in staging but no revision creates it" in printed
    assert clean["schema"]["state"] == "in_sync"
    assert clean["schema"]["differences"] == []
    # Every run stored its result: the pages and the API read these rows.
    assert list(
        SchemaCheck.objects.filter(environment="staging")
        .order_by("checked_at")
        .values_list("state", "trigger")
    ) == [("drift", "command"), ("drift", "command"), ("in_sync", "command")]


@pytest.mark.postgres
def test_without_a_scratch_server_postgres_is_not_checked_and_says_why(
    settings: Any, tmp_path: Path, postgres_url: str
) -> None:
    write_versions(postgres_url, [HEAD])
    use_config(settings, tmp_path, {"prod": postgres_url})
    reference.forget()  # a reference another test built would serve without a scratch server

    item = drift_json("--env", "prod")["prod"]
    printed = drift_text("--env", "prod")
    with pytest.raises(CommandError, match=r"schema not in sync: prod \(not checked\)") as raised:
        call_command("drift", "--env", "prod", "--fail-on-drift", stdout=StringIO())

    assert item["schema"]["state"] == "not_checked"
    assert "no scratch server" in item["schema"]["reason"]
    assert "scratch_url" in item["schema"]["reason"]
    assert "not checked: no scratch server" in printed
    assert raised.value.returncode == 1


def run_drift(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `manage.py drift` in a subprocess sharing the test's database and config."""
    return subprocess.run(
        [sys.executable, "manage.py", "drift", *args],
        cwd=ROOT,
        env=worker_env(config),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
def test_fail_on_drift_exits_1_for_drift_and_for_what_could_not_be_checked(
    settings: Any, tmp_path: Path, at_heads: Path, postgres_url: str
) -> None:
    drifted = sqlite_copy(at_heads, tmp_path, "drifted")
    execute(drifted, EXTRA)
    write_versions(postgres_url, [HEAD])
    synced = sqlite_copy(at_heads, tmp_path, "synced")
    config = use_config(
        settings, tmp_path, {"synced": synced, "drifted": drifted, "noscratch": postgres_url}
    )

    passing = run_drift(config, "--env", "synced", "--fail-on-drift")
    failing = run_drift(config, "--fail-on-drift")
    unknown = run_drift(config, "--env", "nope")

    assert passing.returncode == 0, passing.stderr
    assert "synced  in sync at 6c0a8d3f5e94" in passing.stdout
    assert failing.returncode == 1, failing.stderr
    assert "drifted (drift)" in failing.stderr
    assert "noscratch (not checked)" in failing.stderr
    assert "synced" not in failing.stderr
    assert "column users.nickname exists in drifted" in failing.stdout
    assert "noscratch  not checked: no scratch server" in failing.stdout
    assert unknown.returncode == 2
    assert "unknown environment 'nope'" in unknown.stderr
    assert set(SchemaCheck.objects.values_list("environment", flat=True)) == {
        "synced",
        "drifted",
        "noscratch",
    }


def test_a_broken_config_is_a_clear_error(settings: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[projects.x]\n")
    settings.DASHBOARD_CONFIG = str(broken)

    with pytest.raises(CommandError, match="the config cannot be read: .*broken.toml") as raised:
        call_command("drift", stdout=StringIO())

    assert raised.value.returncode == 2


def test_the_api_serves_each_environments_stored_check_without_checking(
    settings: Any, tmp_path: Path, at_heads: Path, client: Client
) -> None:
    staging = sqlite_copy(at_heads, tmp_path, "staging")
    execute(staging, EXTRA)
    use_config(
        settings,
        tmp_path,
        {"staging": staging, "prod": sqlite_copy(at_heads, tmp_path, "prod")},
    )
    call_command("adduser", "ci", role="viewer", password="correct-horse-9")
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {tokens.token_create(username='ci', name='ci')}"}
    never = client.get("/api/environments/staging", **bearer).json()["schema"]

    drift_json("--env", "staging")
    stored = SchemaCheck.objects.count()
    listed = {
        item["environment"]: item for item in client.get("/api/environments", **bearer).json()
    }
    one = client.get("/api/environments/staging", **bearer).json()

    assert never["state"] == "not_checked"
    assert never["reason"] == "no schema check has run yet"
    assert never["checked_at"] is None
    schema = listed["staging"]["schema"]
    assert schema == one["schema"]
    assert schema["state"] == "drift"
    assert schema["differences"] == [
        {"kind": "remove_column", "table": "users", "name": "nickname", "detail": "VARCHAR(40)"}
    ]
    assert schema["checked_at"] is not None
    assert schema["reason"] == ""
    # prod was never checked: the API says so instead of checking on a request.
    assert listed["prod"]["schema"]["state"] == "not_checked"
    assert listed["prod"]["schema"]["checked_at"] is None
    assert SchemaCheck.objects.count() == stored


def test_the_api_ignores_a_check_made_while_the_environment_was_another_projects(
    settings: Any, tmp_path: Path, at_heads: Path, client: Client
) -> None:
    use_config(settings, tmp_path, {"staging": sqlite_copy(at_heads, tmp_path, "staging")})
    SchemaCheck.objects.create(
        environment="staging", project="shop", state="drift", trigger="command", differences=[]
    )
    call_command("adduser", "lead", role="viewer", password="correct-horse-9")
    client.login(username="lead", password="correct-horse-9")

    schema = client.get("/api/environments/staging").json()["schema"]

    assert schema["state"] == "not_checked"
    assert schema["checked_at"] is None


def demo_config(folder: Path) -> Path:
    """Copy the demo's config into folder, its databases there too."""
    text = (ROOT / "demo" / "dashboard.toml").read_text(encoding="utf-8")
    text = text.replace('"../migrations_project"', json.dumps(str(SAMPLE)))
    text = text.replace("sqlite:///../var/demo/", f"sqlite:///{folder}/demo/")
    path = folder / "dashboard.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.once
def test_the_demo_has_one_environment_in_drift_out_of_the_box(
    settings: Any, tmp_path: Path
) -> None:
    config = demo_config(tmp_path)
    settings.DASHBOARD_CONFIG = str(config)
    described = tomllib.loads(config.read_text(encoding="utf-8"))["environments"]

    out = StringIO()
    call_command("demo_setup", stdout=out)
    again = StringIO()
    call_command("demo_setup", stdout=again)  # a second run keeps the files, and the drift

    states = dict(SchemaCheck.objects.values_list("environment", "state"))
    assert set(states) == set(described)
    [drifted] = [name for name, state in states.items() if state == "drift"]
    assert {state for name, state in states.items() if name != drifted} == {"in_sync"}
    check = SchemaCheck.objects.filter(environment=drifted).latest("checked_at")
    assert [(d["kind"], d["table"], d["name"]) for d in check.differences] == [
        ("remove_column", "users", "nickname")
    ]
    assert "users.nickname by hand" in described[drifted]["description"]
    assert f"{drifted}: schema drift (1)" in out.getvalue()
    assert f"{drifted}: schema drift (1)" in again.getvalue()
    assert "Demo users (shown once" in out.getvalue()
    conn = sqlite3.connect(tmp_path / "demo" / f"{drifted}.db")
    columns = [row[1] for row in conn.execute("PRAGMA table_info(users)")]
    conn.close()
    assert "nickname" in columns


def test_text_output_escapes_what_could_rewrite_the_terminal() -> None:
    from dashboard.management.commands.drift import render_checks

    trick = "a\x1b[2K\rprod in sync"
    check = SchemaCheck(
        environment="prod\x07",
        project="blog",
        state="drift",
        heads=[HEAD],
        differences=[{"kind": "remove_column", "table": "users", "name": trick, "detail": ""}],
        models_state="drift",
        models_differences=["add_column users.\x1b]0;owned\x07x"],
    )
    failed = SchemaCheck(
        environment="qa", project="blog", state="check_failed", reason="timed out\r\x1b[1Aok"
    )

    printed = render_checks([check, failed])

    assert not [c for c in printed if not c.isprintable() and c != "\n"], repr(printed)
    assert "column users.a\\x1b[2K\\rprod in sync exists in prod\\x07" in printed
    assert "add_column users.\\x1b]0;owned\\x07x" in printed
    assert "check failed: timed out\\r\\x1b[1Aok" in printed
    assert printed.startswith("prod\\x07  drift at")


def test_the_api_writes_a_checks_time_as_it_writes_a_reads(
    settings: Any, tmp_path: Path, at_heads: Path, client: Client
) -> None:
    from django.utils import timezone

    from dashboard.models import Snapshot

    use_config(settings, tmp_path, {"staging": sqlite_copy(at_heads, tmp_path, "staging")})
    moment = timezone.now()
    Snapshot.objects.create(
        environment="staging", project="blog", heads=[HEAD], state="current", read_at=moment
    )
    SchemaCheck.objects.create(
        environment="staging", project="blog", state="in_sync", trigger="command", checked_at=moment
    )
    call_command("adduser", "lead", role="viewer", password="correct-horse-9")
    client.login(username="lead", password="correct-horse-9")

    item = client.get("/api/environments/staging").json()

    assert item["read_at"].endswith("Z")
    assert item["schema"]["checked_at"] == item["read_at"]
