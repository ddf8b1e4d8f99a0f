"""Alembic's own load check: a revision that parses but cannot be imported refuses requests."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from dashboard import scripts
from dashboard.models import Action, HistoryCheck
from dashboard.services import actions, history_checks, rollouts
from dashboard.services.actions.errors import ActionRefused
from dashboard.services.rollouts.errors import RolloutRefused
from tests.statusenv import SAMPLE, empty_sqlite

pytestmark = pytest.mark.django_db

FIXTURE = Path(__file__).resolve().parent / "load_fixtures"
BROKEN = "versions/2c3d4e5f6a7b_name_things.py"
IMPORT_LINE = "import not_installed_pkg_h4  # noqa: F401\n"
MISSING = "ModuleNotFoundError: No module named 'not_installed_pkg_h4'"


@pytest.fixture
def things(settings: Any, tmp_path: Path) -> Path:
    """Configure a copy of the fixture (with the sample's env.py) and a SQLite dev; return it."""
    project = shutil.copytree(FIXTURE, tmp_path / "things")
    for name in ("alembic.ini", "env.py", "models.py", "script.py.mako"):
        shutil.copy(SAMPLE / name, project / name)
    dev = empty_sqlite(tmp_path / "dev.db")
    config = tmp_path / f"dashboard-{time.monotonic_ns()}.toml"
    config.write_text(
        "[projects.things]\n"
        f'alembic_ini = "{project / "alembic.ini"}"\n\n'
        "[environments.dev]\n"
        f'project = "things"\nurl = "{dev}"\n\n'
        "[fleets.tenants]\n"
        f'project = "things"\nurl_template = "sqlite:///{tmp_path}/{{name}}.db"\n'
        'names = ["t01"]\n',
        encoding="utf-8",
    )
    settings.DASHBOARD_CONFIG = str(config)
    return project


def request_upgrade(people: dict[str, Any]) -> Action:
    return actions.action_request(
        user=people["olga"], environment="dev", direction="upgrade", target="heads"
    )


def test_an_import_the_parser_cannot_see_is_recorded_and_refuses_requests(
    things: Path, people: dict[str, Any], client: Client
) -> None:
    # Read without running it, the history looks healthy.
    assert not scripts.load_history(alembic_ini=things / "alembic.ini").graph.problems
    assert history_checks.histories_check_due() == ["things"]
    check = HistoryCheck.objects.get(project="things")
    assert (check.ok, check.file, check.line, check.error) == (False, BROKEN, 9, MISSING)
    expected = f"Alembic cannot load project things's history at {BROKEN}:9: {MISSING}"

    with pytest.raises(ActionRefused) as refused:
        request_upgrade(people)
    assert str(refused.value) == f"{expected}; nothing can be requested until it loads"
    with pytest.raises(RolloutRefused) as refused_rollout:
        rollouts.rollout_request(
            user=people["olga"], fleet="tenants", direction="upgrade", target="heads"
        )
    assert str(refused_rollout.value) == str(refused.value)
    assert not Action.objects.exists()

    client.force_login(people["vic"])
    for page in (client.get("/projects/things/graph"), client.get("/")):
        text = page.content.decode()
        assert text.count('id="history-load-things"') == 1
        assert "Alembic cannot load things's history</strong> at" in text
        assert f"<code>{BROKEN}:9</code>" in text
        assert "No module named &#x27;not_installed_pkg_h4&#x27;" in text
    document = json.loads(client.get("/api/projects/things/graph").content)
    assert document["history_check"] | {"checked_at": None} == {
        "checked": True,
        "ok": False,
        "current": True,
        "file": BROKEN,
        "line": 9,
        "error": MISSING,
        "checked_at": None,
    }

    # Fixed: the stored failure describes other bytes now, so it no longer blocks anything.
    broken = things / BROKEN
    broken.write_text(broken.read_text().replace(IMPORT_LINE, ""), encoding="utf-8")
    assert "history-load" not in client.get("/projects/things/graph").content.decode()
    assert (
        json.loads(client.get("/api/projects/things/graph").content)["history_check"]["current"]
        is False
    )
    # The changed fingerprint makes it due at once; the new check loads.
    assert history_checks.histories_check_due() == ["things"]
    check.refresh_from_db()
    assert (check.ok, check.file, check.line, check.error) == (True, "", None, "")
    assert request_upgrade(people).plan == ["1b2c3d4e5f6a", "2c3d4e5f6a7b"]
    assert "history-load" not in client.get("/").content.decode()


def test_checks_are_due_when_old_or_changed_and_errors_are_masked(things: Path) -> None:
    broken = things / BROKEN
    broken.write_text(
        broken.read_text().replace(
            IMPORT_LINE, 'raise RuntimeError("no postgresql://app:Sup3rSecret@db/prod")\n'
        ),
        encoding="utf-8",
    )
    assert history_checks.histories_check_due() == ["things"]
    check = HistoryCheck.objects.get(project="things")
    assert (check.ok, check.file, check.line) == (False, BROKEN, 9)
    assert check.error == "RuntimeError: no postgresql://app:***@db/prod"
    # Unchanged and fresh: not checked again until the interval has passed.
    assert history_checks.histories_check_due() == []
    later = timezone.now() + timedelta(seconds=history_checks.check_interval() + 1)
    assert history_checks.histories_check_due(now=later) == ["things"]


def test_the_sample_project_loads(settings: Any, tmp_path: Path) -> None:
    config = tmp_path / "blog.toml"
    config.write_text(f'[projects.blog]\nscript_location = "{SAMPLE}"\n', encoding="utf-8")
    settings.DASHBOARD_CONFIG = str(config)
    HistoryCheck.objects.create(project="gone", ok=False, checked_at=timezone.now())
    assert history_checks.histories_check_due() == ["blog"]
    assert HistoryCheck.objects.get(project="blog").ok
    # A project no longer configured keeps no check.
    assert not HistoryCheck.objects.filter(project="gone").exists()


def test_the_worker_schedules_the_periodic_check() -> None:
    from django_tasks_db.models import DBTaskResult

    from dashboard import tasks

    assert history_checks.schedule_periodic_history_checks(delay=history_checks.TICK)
    waiting = DBTaskResult.objects.get(task_path=tasks.check_histories_periodically.module_path)
    assert waiting.run_after > timezone.now() + timedelta(seconds=history_checks.TICK - 5)
    # One waits already: a second worker starting does not add another.
    assert not history_checks.schedule_periodic_history_checks()


SNOOPING_REVISION = """\
import json, os
with open({out!r}, "w", encoding="utf-8") as handle:
    json.dump(dict(os.environ), handle)
revision = "aaaaaaaaaaa1"
down_revision = None
branch_labels = None
depends_on = None
def upgrade(): pass
def downgrade(): pass
"""


def test_a_revision_sees_none_of_the_dashboards_own_variables(
    settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = tmp_path / "environ.json"
    project = tmp_path / "snoop"
    (project / "versions").mkdir(parents=True)
    (project / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s\n")
    (project / "env.py").write_text("from alembic import context\n")
    (project / "versions" / "aaaaaaaaaaa1_x.py").write_text(SNOOPING_REVISION.format(out=str(seen)))
    config = tmp_path / f"dashboard-{time.monotonic_ns()}.toml"
    config.write_text(
        f'[projects.snoop]\nalembic_ini = "{project / "alembic.ini"}"\n\n'
        '[environments.prod]\nproject = "snoop"\nurl_env = "PYTHON_PROD_URL"\n',
        encoding="utf-8",
    )
    settings.DASHBOARD_CONFIG = str(config)
    secrets = {
        "DATABASE_URL": "postgresql://dash:DashPw-7@db/dashboard",  # the dashboard's own
        "SECRET_KEY": "sk-never-shown",
        "DASHBOARD_PASSWORD": "admin-pw-9",
        "DASHBOARD_OIDC_SECRET": "oidc-pw-3",
        "DJANGO_EXTRA": "django-only",
        "PYTHON_PROD_URL": "postgresql://app:ProdPw-5@prod/app",  # an environment's, PYTHON*
        "AWS_SECRET_ACCESS_KEY": "aws-pw-1",  # nothing the check needs
        "PYTHONPATH": str(tmp_path),
    }
    for name, value in {**secrets, "LC_ALL": "C.UTF-8", "PYTHONWARNINGS": "ignore"}.items():
        monkeypatch.setenv(name, value)

    assert history_checks.histories_check_due() == ["snoop"]
    assert HistoryCheck.objects.get(project="snoop").ok
    environ = json.loads(seen.read_text(encoding="utf-8"))
    leaked = {name for name in secrets if name in environ}
    leaked |= {name for name, value in environ.items() if value in secrets.values()}
    assert leaked == set()
    assert not [name for name in environ if name.startswith(("DJANGO_", "DASHBOARD_"))]
    # What the interpreter and a revision's imports may need still passes.
    assert environ["LC_ALL"] == "C.UTF-8"
    assert environ["PYTHONWARNINGS"] == "ignore"
    assert environ["PATH"] == os.environ["PATH"]
