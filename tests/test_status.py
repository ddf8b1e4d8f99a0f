"""Environment status on real SQLite, PostgreSQL and MariaDB targets: service, command, API, tasks."""

import io
import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.tasks import TaskResultStatus
from django.test import Client
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from dashboard.models import ApiToken, Snapshot
from dashboard.selectors.status import latest_snapshots
from dashboard.services import status, tokens
from dashboard.states import State
from dashboard.tasks import refresh_status_periodically
from tests.databases import mariadb_database, postgres_database
from tests.fakeserver import closed_port, silent_server
from tests.statusenv import (
    BOGUS,
    EARLY,
    HEAD,
    MID,
    PASSWORD,
    QUIRK,
    SAMPLE,
    alembic,
    create_schema,
    empty_sqlite,
    ran_revisions,
    with_password,
    write_config,
    write_versions,
)

pytestmark = pytest.mark.django_db
ITEM_KEYS = {
    "environment",
    "project",
    "heads",
    "state",
    "pending",
    "error",
    "latency_ms",
    "read_at",
}
ALL_REVISIONS = 9


def prepare(jobs: list[tuple[str, tuple[str, ...], str | None]]) -> None:
    """Run several Alembic upgrades at once, each on its own database."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda job: alembic(job[0], *job[1], schema=job[2]), jobs))


@pytest.fixture(scope="module")
def sqlite_targets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """SQLite databases in every state the sample project can leave them in."""
    base = tmp_path_factory.mktemp("sqlite-targets")
    names = ("behind", "current", "quirk", "unknown", "uninitialized", "empty", "overlapping")
    urls = {name: empty_sqlite(base / f"{name}.db") for name in names}
    prepare(
        [
            (urls["behind"], ("upgrade", MID), None),
            (urls["current"], ("upgrade", "heads"), None),
            (urls["quirk"], ("upgrade", QUIRK), None),
        ]
    )
    write_versions(urls["unknown"], [BOGUS])
    write_versions(urls["empty"], [])
    write_versions(urls["overlapping"], [MID, HEAD])
    return urls


@pytest.fixture(scope="module")
def postgres_targets() -> Iterator[dict[str, str]]:
    """PostgreSQL databases behind, current, current in another schema, unknown, empty."""
    with ExitStack() as stack:
        names = ("behind", "current", "schema", "unknown", "uninitialized")
        urls = {name: stack.enter_context(postgres_database()) for name in names}
        create_schema(urls["schema"], "tracking")
        prepare(
            [
                (urls["behind"], ("upgrade", EARLY), None),
                (urls["current"], ("upgrade", "heads"), None),
                (urls["schema"], ("upgrade", "heads"), "tracking"),
            ]
        )
        write_versions(urls["unknown"], [BOGUS])
        yield urls


@pytest.fixture(scope="module")
def mariadb_targets() -> Iterator[dict[str, str]]:
    """MariaDB databases behind, current, unknown and empty."""
    with ExitStack() as stack:
        names = ("behind", "current", "unknown", "uninitialized")
        urls = {name: stack.enter_context(mariadb_database()) for name in names}
        prepare(
            [
                (urls["behind"], ("upgrade", MID), None),
                (urls["current"], ("upgrade", "heads"), None),
            ]
        )
        write_versions(urls["unknown"], [BOGUS])
        yield urls


def use_config(
    settings: Any, tmp_path: Path, environments: dict[str, dict[str, Any]], **kw: Any
) -> Path:
    """Point the dashboard at a fresh config file with these environments."""
    path = write_config(tmp_path / f"dashboard-{time.monotonic_ns()}.toml", environments, **kw)
    settings.DASHBOARD_CONFIG = str(path)
    return path


def blog(url: str, **extra: Any) -> dict[str, Any]:
    """Return an environment table of the sample project at this URL."""
    return {"project": "blog", "url": url, **extra}


def run_status(*args: str) -> str:
    """Run `manage.py status` in-process and return what it printed."""
    out = io.StringIO()
    call_command("status", *args, stdout=out)
    return out.getvalue()


def status_json(*args: str) -> dict[str, dict[str, Any]]:
    """Run `manage.py status --json` and return its items by environment."""
    items = json.loads(run_status("--json", *args))
    assert all(set(item) >= ITEM_KEYS for item in items)
    return {item["environment"]: item for item in items}


def test_status_json_reports_each_state_on_sqlite(
    settings: Any, tmp_path: Path, sqlite_targets: dict[str, str]
) -> None:
    use_config(settings, tmp_path, {f"s-{name}": blog(url) for name, url in sqlite_targets.items()})

    items = status_json()

    assert items["s-behind"]["state"] == "behind"
    assert items["s-behind"]["heads"] == [MID]
    assert len(items["s-behind"]["pending"]) == 5
    assert items["s-behind"]["pending"][-1] == HEAD
    assert items["s-current"]["state"] == "current"
    assert items["s-current"]["heads"] == [HEAD]
    assert items["s-current"]["pending"] == []
    assert items["s-quirk"]["state"] == "behind"
    assert items["s-quirk"]["pending"] == ["9e4f1b7a2c68", HEAD]
    assert items["s-unknown"]["state"] == "unknown"
    assert BOGUS in items["s-unknown"]["detail"]
    assert items["s-uninitialized"]["state"] == "uninitialized"
    assert items["s-uninitialized"]["detail"] == "no version table alembic_version"
    assert len(items["s-uninitialized"]["pending"]) == ALL_REVISIONS
    assert items["s-empty"]["state"] == "uninitialized"
    assert items["s-empty"]["detail"] == "version table alembic_version is empty"
    assert items["s-overlapping"]["state"] == "invalid"
    assert MID in items["s-overlapping"]["error"]
    for item in items.values():
        assert item["latency_ms"] > 0
        assert datetime.fromisoformat(item["read_at"]) <= timezone.now()
    assert Snapshot.objects.count() == len(sqlite_targets)


@pytest.mark.postgres
def test_status_json_reports_each_state_on_postgres(
    settings: Any, tmp_path: Path, postgres_targets: dict[str, str]
) -> None:
    urls = postgres_targets
    use_config(
        settings,
        tmp_path,
        {
            "p-behind": blog(urls["behind"]),
            # Trust auth accepts any password: the read works and the password must not show.
            "p-current": blog(with_password(urls["current"])),
            "p-tracked": {"project": "tracked", "url": urls["schema"]},
            "p-untracked": blog(urls["schema"]),
            "p-unknown": blog(urls["unknown"]),
            "p-uninitialized": blog(urls["uninitialized"]),
        },
        projects={
            "blog": {"script_location": str(SAMPLE)},
            "tracked": {"script_location": str(SAMPLE), "version_table_schema": "tracking"},
        },
    )

    printed = run_status("--json")
    items = {item["environment"]: item for item in json.loads(printed)}

    assert items["p-behind"]["state"] == "behind"
    assert len(items["p-behind"]["pending"]) == 6
    assert items["p-current"]["state"] == "current"
    assert items["p-tracked"]["state"] == "current"
    assert items["p-tracked"]["heads"] == [HEAD]
    # Same database, default schema: no version table there, which is not an error.
    assert items["p-untracked"]["state"] == "uninitialized"
    assert items["p-unknown"]["state"] == "unknown"
    assert items["p-uninitialized"]["state"] == "uninitialized"
    assert PASSWORD not in printed
    assert PASSWORD not in run_status()


@pytest.mark.mariadb
def test_status_json_reports_each_state_on_mariadb(
    settings: Any, tmp_path: Path, mariadb_targets: dict[str, str]
) -> None:
    urls = mariadb_targets
    use_config(
        settings,
        tmp_path,
        {
            "m-behind": blog(urls["behind"]),
            "m-current": blog(urls["current"]),
            "m-unknown": blog(urls["unknown"]),
            "m-uninitialized": blog(urls["uninitialized"]),
            "m-wrong-password": blog(with_password(urls["current"])),
        },
    )

    printed = run_status("--json")
    items = {item["environment"]: item for item in json.loads(printed)}

    assert items["m-behind"]["state"] == "behind"
    assert items["m-behind"]["pending"][0] == "e0d7f4a19b53"
    assert items["m-current"]["state"] == "current"
    assert items["m-unknown"]["state"] == "unknown"
    assert items["m-uninitialized"]["state"] == "uninitialized"
    assert items["m-wrong-password"]["state"] == "unreachable"
    assert "authentication failed" in items["m-wrong-password"]["error"]
    assert PASSWORD not in printed
    assert not Snapshot.objects.filter(error__contains=PASSWORD).exists()


def test_hung_and_closed_servers_are_unreachable_within_their_timeout(
    settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STATUS_TEST_UNSET_URL", raising=False)
    with silent_server() as port:
        use_config(
            settings,
            tmp_path,
            {
                "hung-pg": blog(f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/blog", timeout=1),
                "hung-my": blog(f"mysql+pymysql://app:{PASSWORD}@127.0.0.1:{port}/blog", timeout=1),
                "closed": blog(
                    f"postgresql://app:{PASSWORD}@127.0.0.1:{closed_port()}/blog", timeout=1
                ),
                "unset": {"project": "blog", "url_env": "STATUS_TEST_UNSET_URL"},
            },
        )
        started = time.perf_counter()
        printed = run_status("--json")
        elapsed = time.perf_counter() - started

    items = {item["environment"]: item for item in json.loads(printed)}
    assert items["hung-pg"]["state"] == "unreachable"
    assert items["hung-my"]["state"] == "unreachable"
    assert "timed out" in items["hung-pg"]["error"]
    assert items["closed"]["state"] == "unreachable"
    assert "connection refused" in items["closed"]["error"]
    assert items["unset"]["state"] == "not_configured"
    assert items["unset"]["error"] == "not configured: STATUS_TEST_UNSET_URL is not set"
    # Read in parallel: the hung servers cost one timeout (plus grace), not two.
    assert elapsed < 3.0
    assert PASSWORD not in printed
    table = run_status("--env", "closed", "--env", "unset")
    assert "unreachable" in table and "not configured" in table
    assert PASSWORD not in table


def test_fail_unless_current_is_a_ci_gate(
    settings: Any, tmp_path: Path, sqlite_targets: dict[str, str]
) -> None:
    use_config(
        settings,
        tmp_path,
        {"prod": blog(sqlite_targets["current"]), "staging": blog(sqlite_targets["behind"])},
    )

    assert "current" in run_status("--env", "prod", "--fail-unless-current")
    with pytest.raises(CommandError) as failed:
        run_status("--fail-unless-current")
    assert failed.value.returncode == 1
    assert "staging (behind)" in str(failed.value)
    assert "prod" not in str(failed.value)
    # Without the flag the same states are only reported.
    assert "behind" in run_status()


def test_unknown_environment_name_is_a_clear_error(
    settings: Any, tmp_path: Path, sqlite_targets: dict[str, str]
) -> None:
    use_config(settings, tmp_path, {"prod": blog(sqlite_targets["current"])})

    with pytest.raises(CommandError) as failed:
        run_status("--env", "prdo")

    assert failed.value.returncode == 2
    assert "'prdo'" in str(failed.value) and "configured: prod" in str(failed.value)
    assert not Snapshot.objects.exists()


def test_a_broken_config_is_a_clear_command_error(settings: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[environments.prod]\nproject = 'nope'\nurl = 'sqlite://'\n")
    settings.DASHBOARD_CONFIG = str(broken)

    with pytest.raises(CommandError, match="config cannot be read"):
        run_status()


def test_pending_is_what_alembic_really_runs(
    settings: Any, tmp_path: Path, sqlite_targets: dict[str, str]
) -> None:
    copies = {}
    for name in ("behind", "quirk"):
        shutil.copy(sqlite_targets[name].removeprefix("sqlite:///"), tmp_path / f"{name}.db")
        copies[name] = f"sqlite:///{tmp_path / f'{name}.db'}"
    use_config(settings, tmp_path, {name: blog(url) for name, url in copies.items()})
    before = {snap.environment: snap for snap in status.status_refresh()}

    for name, url in copies.items():
        assert ran_revisions(alembic(url, "upgrade", "heads")) == before[name].pending

    after = {snap.environment: snap for snap in status.status_refresh()}
    assert {snap.state for snap in after.values()} == {"current"}
    assert all(snap.changed for snap in after.values())


def test_snapshots_keep_the_history_of_changes(settings: Any, tmp_path: Path) -> None:
    db = tmp_path / "dev.db"
    url = empty_sqlite(db)
    write_versions(url, [MID])
    use_config(settings, tmp_path, {"dev": blog(url)})

    first = status.status_refresh(environments=["dev"])[0]
    again = status.status_refresh(environments=["dev"])[0]
    write_versions(url, [HEAD])
    moved = status.status_refresh(environments=["dev"])[0]
    db.rename(tmp_path / "away.db")
    lost = status.status_refresh(environments=["dev"])[0]
    (tmp_path / "away.db").rename(db)
    back = status.status_refresh(environments=["dev"])[0]

    assert (first.state, first.changed) == ("behind", True)
    assert (again.state, again.changed) == ("behind", False)
    assert (moved.state, moved.changed) == ("current", True)
    assert moved.messages[HEAD] == "add phone_number to users"
    assert (lost.state, lost.changed) == ("unreachable", False)
    assert "does not exist" in lost.error
    # An unreachable read in between is not a change: compared with the last good read.
    assert (back.state, back.changed) == ("current", False)
    assert Snapshot.objects.filter(environment="dev").count() == 5


REVISION = '''"""{message}

Revision ID: {rev}
"""
revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
'''


def test_a_broken_history_is_an_invalid_state_not_a_crash(settings: Any, tmp_path: Path) -> None:
    scripts_dir = tmp_path / "broken_project"
    (scripts_dir / "versions").mkdir(parents=True)
    for rev, down in (("aaa111", None), ("bbb222", "gone99")):
        (scripts_dir / "versions" / f"{rev}.py").write_text(
            REVISION.format(rev=rev, down=down, message=f"make {rev}")
        )
    url = empty_sqlite(tmp_path / "target.db")
    write_versions(url, ["aaa111"])
    use_config(
        settings,
        tmp_path,
        {"dev": {"project": "broken", "url": url}},
        projects={"broken": {"script_location": str(scripts_dir)}},
    )

    broken = status.status_refresh()[0]
    shutil.rmtree(scripts_dir)
    missing = status.status_refresh()[0]

    assert broken.state == "invalid"
    assert "gone99" in broken.error
    assert missing.state == "invalid"
    assert "script directory cannot be read" in missing.error


def test_latest_snapshots_ignore_environments_the_config_no_longer_has(
    settings: Any, tmp_path: Path
) -> None:
    use_config(
        settings,
        tmp_path,
        {"dev": blog("sqlite:///dev.db"), "qa": blog("sqlite:///qa.db")},
        projects={
            "blog": {"script_location": str(SAMPLE)},
            "shop": {"script_location": str(SAMPLE)},
        },
    )
    now = timezone.now()

    def snap(env: str, seconds_ago: int, project: str = "blog") -> Snapshot:
        return Snapshot.objects.create(
            environment=env,
            project=project,
            state="current",
            read_at=now - timedelta(seconds=seconds_ago),
        )

    snap("dev", 60)
    newest_dev = snap("dev", 5)
    snap("qa", 10, project="shop")  # taken when qa belonged to another project
    snap("gone", 1)

    assert latest_snapshots() == {"dev": newest_dev}
    assert latest_snapshots("blog") == {"dev": newest_dev}
    assert latest_snapshots("shop") == {}


def test_pruning_keeps_changes_and_each_environments_newest_snapshot() -> None:
    now = timezone.now()

    def snap(env: str, days_ago: float, changed: bool = False) -> Snapshot:
        return Snapshot.objects.create(
            environment=env,
            project="blog",
            state="current",
            changed=changed,
            read_at=now - timedelta(days=days_ago),
        )

    change = snap("prod", 90, changed=True)
    snap("prod", 80)
    recent = snap("prod", 1)
    lonely = snap("qa", 60)  # old, but qa's only reading

    assert status.snapshots_prune(older_than=timedelta(days=30)) == 1
    assert set(Snapshot.objects.all()) == {change, recent, lonely}


def test_states_match_the_models_choices() -> None:
    assert {str(s) for s in State} == set(Snapshot.State.values)


def test_periodic_refresh_schedules_itself_once(settings: Any, tmp_path: Path) -> None:
    settings.DASHBOARD_REFRESH_INTERVAL = 120
    url = empty_sqlite(tmp_path / "dev.db")
    use_config(settings, tmp_path, {"dev": blog(url), "qa": blog(url)})
    task_rows = DBTaskResult.objects.filter(task_path=refresh_status_periodically.module_path)

    assert status.schedule_periodic_refresh() is True
    assert status.schedule_periodic_refresh() is False
    assert task_rows.filter(status=TaskResultStatus.READY).count() == 1

    # What a worker does: claim the waiting run, then run it.
    task_rows.get().claim("test-worker")
    assert refresh_status_periodically.call() == 2
    assert Snapshot.objects.filter(state="uninitialized").count() == 2
    waiting = task_rows.filter(status=TaskResultStatus.READY)
    assert waiting.count() == 1
    delay = (waiting.get().run_after - timezone.now()).total_seconds()
    assert 110 < delay <= 120


def test_a_failing_periodic_refresh_still_schedules_the_next(settings: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("not toml [")
    settings.DASHBOARD_CONFIG = str(broken)

    with pytest.raises(Exception, match="not valid TOML"):
        refresh_status_periodically.call()

    assert DBTaskResult.objects.filter(status=TaskResultStatus.READY).count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_database_worker_runs_the_periodic_refresh(settings: Any, tmp_path: Path) -> None:
    settings.DASHBOARD_REFRESH_INTERVAL = 300
    url = empty_sqlite(tmp_path / "dev.db")
    write_versions(url, [HEAD])
    use_config(settings, tmp_path, {"dev": blog(url)})
    status.schedule_periodic_refresh()

    call_command("db_worker", "--batch", "--no-startup-delay", stdout=io.StringIO())

    rows = DBTaskResult.objects.filter(task_path=refresh_status_periodically.module_path)
    assert rows.filter(status=TaskResultStatus.SUCCESSFUL).count() == 1
    assert rows.filter(status=TaskResultStatus.READY).count() == 1
    assert Snapshot.objects.get().state == "current"


def signed_in_token(username: str = "ci") -> str:
    """Create a viewer and an API token for it; return the token."""
    call_command("adduser", username, role="viewer", password="correct-horse-9")
    return tokens.token_create(username=username, name="pipeline")


def without_schema(item: dict[str, Any]) -> dict[str, Any]:
    """Return an API item without its `schema` object, which `status --json` does not print."""
    return {key: value for key, value in item.items() if key != "schema"}


def test_api_serves_the_latest_snapshots_like_the_command(
    settings: Any, tmp_path: Path, sqlite_targets: dict[str, str], client: Client
) -> None:
    use_config(
        settings,
        tmp_path,
        {"prod": blog(sqlite_targets["current"]), "staging": blog(sqlite_targets["behind"])},
    )
    printed = status_json()
    key = signed_in_token()

    listed = client.get("/api/environments", HTTP_AUTHORIZATION=f"Bearer {key}")
    one = client.get("/api/environments/staging", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert listed.status_code == 200
    # The API adds each environment's stored schema check (tests/test_drift_command.py).
    assert [without_schema(item) for item in listed.json()] == [printed["prod"], printed["staging"]]
    assert without_schema(one.json()) == printed["staging"]
    assert {item["schema"]["state"] for item in listed.json()} == {"not_checked"}
    # Serving never reads: no new snapshot was taken.
    assert Snapshot.objects.count() == 2


def test_api_shows_never_read_environments_with_null_state(
    settings: Any, tmp_path: Path, client: Client
) -> None:
    use_config(settings, tmp_path, {"prod": blog("sqlite:///never.db")})
    key = signed_in_token()

    item = client.get("/api/environments/prod", HTTP_AUTHORIZATION=f"Bearer {key}").json()

    assert item["state"] is None
    assert item["read_at"] is None
    assert set(item) >= ITEM_KEYS


def test_api_refuses_what_it_should(settings: Any, tmp_path: Path, client: Client) -> None:
    use_config(settings, tmp_path, {"prod": blog("sqlite:///never.db")})
    key = signed_in_token()
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {key}"}

    anonymous = client.get("/api/environments")
    bad = client.get("/api/environments", HTTP_AUTHORIZATION="Bearer mdb_not-a-real-token")
    post = client.post("/api/environments", **bearer)
    unknown = client.get("/api/environments/nope", **bearer)

    assert anonymous.status_code == 401
    assert "error" in anonymous.json()
    assert bad.status_code == 401
    assert post.status_code == 405
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "no environment named 'nope'"}


def test_api_tokens_take_any_case_of_bearer_and_revoke_one_at_a_time(
    settings: Any, tmp_path: Path, client: Client
) -> None:
    use_config(settings, tmp_path, {"prod": blog("sqlite:///never.db")})
    first = signed_in_token()
    second = tokens.token_create(username="ci", name="nightly")

    assert client.get("/api/environments", HTTP_AUTHORIZATION=f"bearer {first}").status_code == 200
    # A prefix shorter than the listed one would name every token: refused, none lost.
    for vague in ("mdb_", "", first[:8]):
        with pytest.raises(CommandError, match="give the 12 characters"):
            call_command("apitoken", "revoke", vague)
    assert ApiToken.objects.count() == 2
    out = io.StringIO()
    call_command("apitoken", "revoke", first[:12], stdout=out)
    assert out.getvalue().strip() == "revoked 1 token"
    assert client.get("/api/environments", HTTP_AUTHORIZATION=f"Bearer {first}").status_code == 401
    assert client.get("/api/environments", HTTP_AUTHORIZATION=f"Bearer {second}").status_code == 200
    call_command("apitoken", "revoke", second)  # the whole key works too
    assert not ApiToken.objects.exists()


def test_api_works_with_a_session_too(settings: Any, tmp_path: Path, client: Client) -> None:
    use_config(settings, tmp_path, {"prod": blog("sqlite:///never.db")})
    signed_in_token("lead")
    client.login(username="lead", password="correct-horse-9")

    assert client.get("/api/environments").json()[0]["environment"] == "prod"


def test_api_reports_a_broken_config_as_json(settings: Any, tmp_path: Path, client: Client) -> None:
    key = signed_in_token()
    broken = tmp_path / "broken.toml"
    broken.write_text("[projects.x]\n")
    settings.DASHBOARD_CONFIG = str(broken)

    response = client.get("/api/environments", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert response.status_code == 503
    assert "config cannot be read" in response.json()["error"]


@pytest.mark.postgres
def test_api_never_shows_a_password(
    settings: Any, tmp_path: Path, postgres_targets: dict[str, str], client: Client
) -> None:
    use_config(
        settings,
        tmp_path,
        {
            "prod": blog(with_password(postgres_targets["current"])),
            "gone": blog(f"postgresql://app:{PASSWORD}@127.0.0.1:{closed_port()}/x", timeout=1),
        },
    )
    status.status_refresh()
    key = signed_in_token()

    body = client.get("/api/environments", HTTP_AUTHORIZATION=f"Bearer {key}").content.decode()

    assert '"state": "current"' in body
    assert '"state": "unreachable"' in body
    assert PASSWORD not in body
