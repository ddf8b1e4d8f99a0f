"""Rollouts on SQLite fleets: one request and approval, waves, the parallel cap, pause and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from dashboard.models import Action, AuditEvent, Rollout
from dashboard.services import rollouts
from dashboard.services.actions.errors import SelfApproval
from tests.actions_support import HEAD, SAMPLE_INI, heads_of, run_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("keep_roles")]


def fleet_config(tmp_path: Path, names: list[str], **policy: Any) -> Path:
    """Write a config with the blog project and a fleet of SQLite members named names."""
    folder = tmp_path / "tenants"
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / f"{name}.db").touch()
    lines = [
        "[projects.blog]",
        f'alembic_ini = "{SAMPLE_INI}"',
        "",
        "[fleets.tenants]",
        'project = "blog"',
        f'url_template = "sqlite:///{folder}/{{name}}.db"',
        f"names = {names!r}".replace("'", '"'),
    ]
    for key, value in policy.items():
        rendered = f'"{value}"' if isinstance(value, str) else repr(value).replace("'", '"')
        lines.append(f"{key} = {rendered}")
    path = tmp_path / "dashboard.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def member_url(tmp_path: Path, name: str) -> str:
    return f"sqlite:///{tmp_path / 'tenants' / name}.db"


@pytest.fixture
def fleet(tmp_path: Path, settings: Any) -> Path:
    names = [f"t{n:02d}" for n in range(1, 7)]
    config = fleet_config(
        tmp_path, names, approvals_required=1, waves=[1, "50%", "100%"], parallel=2
    )
    settings.DASHBOARD_CONFIG = str(config)
    return config


def test_a_rollout_runs_every_member_in_waves_after_one_approval(
    fleet: Path, tmp_path: Path, people: dict[str, Any]
) -> None:
    rollout = rollouts.rollout_request(
        user=people["root"], fleet="tenants", direction="upgrade", target="heads", prepare=True
    )
    assert rollout.status == Rollout.Status.REQUESTED
    assert rollout.wave_sizes == [1, 2, 3]
    assert len(rollout.groups) == 1 and len(rollout.groups[0]["members"]) == 6
    assert "CREATE TABLE users" in rollout.groups[0]["sql"]
    with pytest.raises(SelfApproval):
        rollouts.rollout_approve(
            user=people["root"], rollout_id=rollout.pk, rollout_hash=rollout.rollout_hash
        )
    rollouts.rollout_approve(
        user=people["alan"], rollout_id=rollout.pk, rollout_hash=rollout.rollout_hash
    )
    # Only the canary is queued until it has finished.
    members = Action.objects.filter(rollout=rollout)
    assert members.filter(status=Action.Status.QUEUED).count() == 1
    run_worker(fleet, command="worker")
    rollout.refresh_from_db()
    assert rollout.status == Rollout.Status.SUCCEEDED, rollout.error
    for n in range(1, 7):
        assert set(heads_of(member_url(tmp_path, f"t{n:02d}"))) == {HEAD}
    canary = members.get(wave=1)
    later = members.exclude(pk=canary.pk)
    assert all(m.started_at >= canary.finished_at for m in later)
    assert all(m.status == Action.Status.SUCCEEDED for m in members)
    verbs = list(
        AuditEvent.objects.filter(verb__startswith="rollout.").values_list("verb", flat=True)
    )
    assert verbs.count("rollout.wave_started") == 2
    assert "rollout.succeeded" in verbs


def test_a_failing_member_pauses_the_rollout_and_resume_skips_it(
    fleet: Path, tmp_path: Path, people: dict[str, Any]
) -> None:
    # t02 (wave 2) already has a users table: its first revision fails there.
    engine = sa.create_engine(member_url(tmp_path, "t02"), poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE users (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    rollout = rollouts.rollout_request(
        user=people["olga"], fleet="tenants", direction="upgrade", target="heads", prepare=True
    )
    rollouts.rollout_approve(
        user=people["alan"], rollout_id=rollout.pk, rollout_hash=rollout.rollout_hash
    )
    run_worker(fleet, command="worker")
    rollout.refresh_from_db()
    assert rollout.status == Rollout.Status.PAUSED
    assert "t02" in rollout.paused_reason
    members = Action.objects.filter(rollout=rollout)
    assert members.get(environment="tenants/t02").status == Action.Status.FAILED
    # No member of the last wave started.
    assert set(members.filter(wave=3).values_list("status", flat=True)) == {Action.Status.APPROVED}
    rollouts.rollout_resume(user=people["olga"], rollout_id=rollout.pk)
    run_worker(fleet, command="worker")
    rollout.refresh_from_db()
    assert rollout.status == Rollout.Status.SUCCEEDED, rollout.error
    assert rollout.skipped == ["tenants/t02"]
    assert members.filter(status=Action.Status.SUCCEEDED).count() == 5


def test_a_members_alembic_child_never_inherits_the_fleets_url_or_password_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dashboard.config import load_config
    from dashboard.runner.process import child_secrets

    path = tmp_path / "dashboard.toml"
    path.write_text(
        f'[projects.blog]\nalembic_ini = "{SAMPLE_INI}"\n\n'
        '[environments.prod]\nproject = "blog"\nurl_env = "PROD_URL"\n\n'
        '[fleets.lines]\nproject = "blog"\nurls_env = "TENANT_URLS"\n\n'
        '[fleets.pg]\nproject = "blog"\nurl_template = "postgresql://app@db/{name}"\n'
        'password_env = "TENANT_PASSWORD"\nnames = ["acme"]\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("TENANT_URLS", "a=postgresql://u:one@h/a\nb=postgresql://u:two@h/b")
    config = load_config(path)
    for member in ("lines/a", "pg/acme"):
        dropped = child_secrets(config, config.environments[member])
        assert {"TENANT_URLS", "TENANT_PASSWORD", "PROD_URL"} <= dropped
    # A standalone environment's own variable names only its database: it may stay.
    assert "PROD_URL" not in child_secrets(config, config.environments["prod"])


def test_members_on_another_dialect_get_their_own_group_and_sql(
    tmp_path: Path, settings: Any, people: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.databases import postgres_database

    with postgres_database() as pg_url:
        sqlite_url = f"sqlite:///{tmp_path / 'lite.db'}"
        (tmp_path / "lite.db").touch()
        monkeypatch.setenv("MIXED_URLS", f"lite={sqlite_url}\npg={pg_url}")
        path = tmp_path / "dashboard.toml"
        path.write_text(
            f'[projects.blog]\nalembic_ini = "{SAMPLE_INI}"\n\n'
            '[fleets.mixed]\nproject = "blog"\nurls_env = "MIXED_URLS"\n',
            encoding="utf-8",
        )
        settings.DASHBOARD_CONFIG = str(path)
        rollout = rollouts.rollout_request(
            user=people["olga"], fleet="mixed", direction="upgrade", target="heads", prepare=True
        )
        by_dialect = {g["dialect"]: g for g in rollout.groups}
        assert set(by_dialect) == {"sqlite", "postgresql"}
        assert by_dialect["postgresql"]["members"] == ["mixed/pg"]
        assert by_dialect["sqlite"]["sql_sha256"] != by_dialect["postgresql"]["sql_sha256"]


def test_no_more_than_parallel_members_are_handed_to_the_queue_at_once(
    fleet: Path, people: dict[str, Any]
) -> None:
    rollout = rollouts.rollout_request(
        user=people["olga"], fleet="tenants", direction="upgrade", target="heads", prepare=True
    )
    rollouts.rollout_approve(
        user=people["alan"], rollout_id=rollout.pk, rollout_hash=rollout.rollout_hash
    )
    members = Action.objects.filter(rollout=rollout)
    # As if the canary and the second wave had run: the last wave has 3 members, parallel is 2.
    members.filter(wave__in=[1, 2]).update(status=Action.Status.SUCCEEDED)
    for _ in range(3):  # every worker's advance, one after another
        rollouts.rollout_advance(rollout_id=rollout.pk)
    assert members.filter(wave=3, status=Action.Status.QUEUED).count() == 2
    assert members.filter(wave=3, status=Action.Status.APPROVED).count() == 1
    # A member that ends frees its slot for the one left.
    first = members.filter(wave=3, status=Action.Status.QUEUED).values_list("pk", flat=True)[0]
    members.filter(pk=first).update(status=Action.Status.SUCCEEDED)
    rollouts.rollout_advance(rollout_id=rollout.pk)
    assert members.filter(wave=3, status=Action.Status.QUEUED).count() == 2
    assert members.filter(wave=3, status=Action.Status.APPROVED).count() == 0
