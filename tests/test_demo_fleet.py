"""The demo's fleet: a dozen SQLite tenants at mixed revisions, one broken so a rollout pauses."""

from __future__ import annotations

import sqlite3
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from dashboard.config import current_config
from dashboard.databases import versions
from dashboard.management.commands.demo_setup import BROKEN_TENANT
from dashboard.models import Action, Rollout
from dashboard.services import rollouts
from tests.actions_support import HEAD, run_worker
from tests.test_drift_command import demo_config

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("keep_roles")]
FLEET = "tenants"
BROKEN = f"{FLEET}/{BROKEN_TENANT}"


@pytest.fixture
def demo(settings: Any, tmp_path: Path) -> Path:
    """Run demo_setup twice into tmp_path (the second run must keep everything)."""
    config = demo_config(tmp_path)
    settings.DASHBOARD_CONFIG = str(config)
    call_command("demo_setup", stdout=StringIO())
    tenants = tmp_path / "demo" / "tenants"
    before = {path.name: path.read_bytes() for path in tenants.iterdir()}
    again = StringIO()
    call_command("demo_setup", stdout=again)
    assert {path.name: path.read_bytes() for path in tenants.iterdir()} == before
    assert f"{FLEET}: keeping 12 members" in again.getvalue()
    return config


def readings() -> dict[str, versions.Reading]:
    """Read every member of the demo fleet now."""
    config = current_config()
    project = config.projects[config.fleets[FLEET].project]
    members = config.members_of(FLEET)
    found = versions.read_many([(m, project) for m in members], max_workers=4)
    return {m.name: r for m, r in zip(members, found, strict=True)}


def test_the_demo_fleet_is_a_dozen_tenants_at_mixed_revisions_one_broken_grouped_by_plan(
    demo: Path,
) -> None:
    read = readings()
    assert len(read) == 12
    assert all(r.ok for r in read.values()), [r.error for r in read.values()]
    heads = {name: r.heads for name, r in read.items()}
    at_heads = sorted(name for name, h in heads.items() if h == (HEAD,))
    at_base = [name for name, h in heads.items() if not h and read[name].table_exists]
    mid_way = {h for h in heads.values() if h and h != (HEAD,)}
    assert len(at_heads) >= 2 and len(at_base) >= 2 and len(mid_way) >= 3, heads
    # The broken tenant: a users table made by hand, no version table, so "uninitialized".
    assert heads[BROKEN] == () and not read[BROKEN].table_exists
    path = Path(current_config().environments[BROKEN].database_url().removeprefix("sqlite:///"))
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert tables == {"users"}
    described = current_config().fleets[FLEET].description
    assert BROKEN_TENANT in described and "CREATE TABLE users" in described

    operator = get_user_model().objects.get(username="operator")
    rollout = rollouts.rollout_request(
        user=operator, fleet=FLEET, direction="upgrade", target="heads", prepare=True
    )

    assert rollout.status == Rollout.Status.REQUESTED and rollout.approvals_required == 1
    behind = sorted(name for name, h in heads.items() if h != (HEAD,))
    assert sorted(m for g in rollout.groups for m in g["members"]) == behind
    for group in rollout.groups:
        assert {heads[m] for m in group["members"]} == {tuple(group["from_heads"])}
        assert group["target_heads"] == [HEAD]
    assert len(rollout.groups) == len({heads[m] for m in behind})
    [fresh] = [g for g in rollout.groups if BROKEN in g["members"]]
    assert fresh["from_heads"] == [] and "CREATE TABLE users" in fresh["sql"]
    assert sorted(item["member"] for item in rollout.left_out) == at_heads
    # Members run in name order: the canary is a healthy tenant, the broken one is in wave 2,
    # so the pause comes before the last wave starts.
    assert rollout.wave_sizes == [1, 2, 6]
    assert behind[0] != BROKEN and BROKEN in behind[1:3]


@pytest.mark.once
def test_the_demo_rollout_pauses_at_the_broken_tenant_and_resume_finishes(demo: Path) -> None:
    people = get_user_model().objects
    rollout = rollouts.rollout_request(
        user=people.get(username="operator"),
        fleet=FLEET,
        direction="upgrade",
        target="heads",
        prepare=True,
    )
    rollouts.rollout_approve(
        user=people.get(username="approver"),
        rollout_id=rollout.pk,
        rollout_hash=rollout.rollout_hash,
    )
    run_worker(demo, command="worker")
    rollout.refresh_from_db()
    members = Action.objects.filter(rollout=rollout)
    assert rollout.status == Rollout.Status.PAUSED, rollout.error
    assert BROKEN_TENANT in rollout.paused_reason
    broken = members.get(environment=BROKEN)
    assert broken.status == Action.Status.FAILED and "users" in broken.error
    assert set(members.filter(wave=3).values_list("status", flat=True)) == {Action.Status.APPROVED}

    rollouts.rollout_resume(user=people.get(username="operator"), rollout_id=rollout.pk)
    run_worker(demo, command="worker")
    rollout.refresh_from_db()
    assert rollout.status == Rollout.Status.SUCCEEDED, rollout.error
    assert rollout.skipped == [BROKEN]
    heads = {name: r.heads for name, r in readings().items()}
    assert {name for name, h in heads.items() if h != (HEAD,)} == {BROKEN}
