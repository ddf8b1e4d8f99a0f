"""`manage.py rollout` and `GET /api/rollouts/<id>`: a whole rollout through the CLI, on SQLite members."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from django.core.management import CommandError, call_command
from django.test import Client
from sqlalchemy.pool import NullPool

from dashboard.services import tokens
from tests.actions_support import ALL_REVISIONS, HEAD, ROOT, heads_of, insert_heads, run_worker
from tests.actions_support import worker_env as subprocess_env
from tests.test_rollouts import fleet_config, member_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("keep_roles")]

NAMES = [f"t{n:02d}" for n in range(1, 8)]


@pytest.fixture
def config(tmp_path: Path, settings: Any) -> Path:
    """Seven SQLite tenants at base, but t07 already at the heads: it is left out of a rollout."""
    path = fleet_config(tmp_path, NAMES, approvals_required=1, waves=[1, "50%", "100%"], parallel=2)
    insert_heads(member_url(tmp_path, "t07"), [HEAD])
    settings.DASHBOARD_CONFIG = str(path)
    return path


def rollout(*argv: str) -> str:
    """Run `manage.py rollout` in this process and return what it printed."""
    out = StringIO()
    call_command("rollout", *argv, stdout=out)
    return out.getvalue()


def shown(rollout_id: int) -> dict[str, Any]:
    """Return `rollout show ID --json`."""
    document: dict[str, Any] = json.loads(rollout("show", str(rollout_id), "--json"))
    return document


def rollout_subprocess(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run `manage.py rollout` as its own process, sharing the test's database and config."""
    return subprocess.run(
        [sys.executable, "manage.py", "rollout", *argv],
        cwd=ROOT,
        env=subprocess_env(config),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_rollout_from_request_to_the_end_through_the_cli_alone(
    config: Path, tmp_path: Path, people: dict[str, Any]
) -> None:
    # t02 (wave 2) already has a users table: its first revision fails there.
    engine = sa.create_engine(member_url(tmp_path, "t02"), poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE users (id INTEGER PRIMARY KEY)"))
    engine.dispose()

    requested = rollout(
        "request", "--fleet", "tenants", "--upgrade", "heads", "--user", "root",
        "--reason", "tenant schema v9",
    )  # fmt: skip
    found = re.match(r"rollout #(\d+) requested: upgrade 6 member\(s\) of tenants", requested)
    assert found, requested
    rollout_id = int(found.group(1))
    assert f"group 1: 6 member(s) from base, {len(ALL_REVISIONS)} revision(s)" in requested
    assert "left out: 1 member(s)\n  tenants/t07: already at" in requested
    assert "needs 1 approval(s)" in requested

    # The requester is an admin, who may approve others' rollouts but never their own.
    refused = rollout_subprocess(config, "approve", str(rollout_id), "--user", "root")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"you requested rollout #{rollout_id}, so you cannot approve it" in refused.stderr
    assert shown(rollout_id)["status"] == "requested"
    assert shown(rollout_id)["approvals"] == []

    approved = rollout("approve", str(rollout_id), "--user", "alan")
    assert "approved by alan (1 of 1): now running" in approved

    run_worker(config, command="worker")
    paused = shown(rollout_id)
    assert paused["status"] == "paused"
    assert "tenants/t02" in paused["paused_reason"]
    assert [(w["wave"], w["size"]) for w in paused["waves"]] == [(1, 1), (2, 2), (3, 3)]
    # t03, in t02's wave, ran too or waits: a pause lets running members finish, starts no other.
    assert paused["waves"][1]["counts"].get("failed") == 1
    assert sum(paused["waves"][1]["counts"].values()) == 2
    assert set(paused["waves"][1]["counts"]) <= {"failed", "succeeded", "approved"}
    # No member of the last wave started: they wait, approved, for the operator.
    assert paused["waves"][2]["counts"] == {"approved": 3}

    resumed = rollout("resume", str(rollout_id), "--user", "olga")
    assert "resumed, skipping tenants/t02" in resumed
    run_worker(config, command="worker")

    final = shown(rollout_id)
    assert final["status"] == "succeeded", final["error"]
    members = {m["name"]: m for m in final["members"]}
    assert len(members) == 6
    # Every member of the fleet is accounted for: one ran and failed, five ran, one was left out.
    assert {*members, *(item["member"] for item in final["left_out"])} == {
        f"tenants/{name}" for name in NAMES
    }
    failed = members.pop("tenants/t02")
    assert failed["status"] == "failed" and failed["skipped"] is True
    assert "already exists" in failed["error"]
    assert failed["action_id"] is not None and failed["wave"] == 2
    assert {m["status"] for m in members.values()} == {"succeeded"}
    assert all(m["started_at"] and m["finished_at"] for m in members.values())
    for name in members:
        assert set(heads_of(member_url(tmp_path, name.removeprefix("tenants/")))) == {HEAD}
    assert final["counts"] == {"failed": 1, "succeeded": 5}
    assert sum(final["counts"].values()) == final["progress"]["total"] == 6
    assert final["progress"]["done"] == 6
    assert sum(sum(w["counts"].values()) for w in final["waves"]) == 6
    assert final["skipped"] == ["tenants/t02"]
    assert "sql" not in final["groups"][0]

    text = rollout("show", str(rollout_id))
    assert "status:        succeeded (6/6 members finished)" in text
    assert "wave 3: 3 member(s): 3 succeeded" in text
    t02 = next(line for line in text.splitlines() if "tenants/t02" in line and "wave" in line)
    assert "failed (skipped): " in t02 and "already exists" in t02

    listed = json.loads(rollout("list", "--fleet", "tenants", "--json"))
    assert [(r["id"], r["status"], r["counts"]) for r in listed] == [
        (rollout_id, "succeeded", {"failed": 1, "succeeded": 5})
    ]
    assert json.loads(rollout("list", "--fleet", "elsewhere", "--json")) == []

    # The API says the same, to a viewer's token; an unknown id is a JSON 404.
    key = tokens.token_create(username="vic", name="ci")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    answer = client.get(f"/api/rollouts/{rollout_id}")
    assert answer.status_code == 200
    body = answer.json()
    assert body["counts"] == final["counts"]
    assert body["waves"] == final["waves"]
    assert body["members"] == final["members"]
    assert "sql" not in body["groups"][0]
    assert (
        "CREATE TABLE users"
        in client.get(f"/api/rollouts/{rollout_id}?sql=1").json()["groups"][0]["sql"]
    )
    for unknown in (str(rollout_id + 1000), "abc"):
        missing = client.get(f"/api/rollouts/{unknown}")
        assert missing.status_code == 404
        assert missing.json() == {"error": f"no rollout #{unknown}"}
    assert Client().get(f"/api/rollouts/{rollout_id}").status_code == 401
    assert [r["id"] for r in client.get("/api/rollouts?fleet=tenants").json()] == [rollout_id]


def test_pause_and_cancel_from_the_cli_leave_no_member_started(
    config: Path, people: dict[str, Any]
) -> None:
    requested = json.loads(
        rollout("request", "--fleet", "tenants", "--upgrade", "heads", "--user", "olga", "--json")
    )
    rollout_id = requested["id"]
    assert requested["status"] == "requested"
    assert requested["counts"] == {"pending": 6}
    assert [w["counts"] for w in requested["waves"]] == [
        {"pending": 1},
        {"pending": 2},
        {"pending": 3},
    ]
    # Approving with a hash other than the one shown is refused: the approver saw another plan.
    with pytest.raises(CommandError, match="changed since you reviewed it") as stale:
        rollout("approve", str(rollout_id), "--user", "alan", "--rollout-hash", "0" * 64)
    assert stale.value.returncode == 1
    rollout(
        "approve", str(rollout_id), "--user", "alan", "--rollout-hash", requested["rollout_hash"]
    )
    assert shown(rollout_id)["counts"] == {"queued": 1, "approved": 5}

    assert "paused in wave 1" in rollout("pause", str(rollout_id), "--user", "olga")
    paused = shown(rollout_id)
    assert paused["status"] == "paused" and paused["paused_reason"] == "paused by olga"
    assert paused["counts"] == {"approved": 6}  # the queued canary went back to waiting

    assert "cancelled" in rollout("cancel", str(rollout_id), "--user", "olga")
    cancelled = shown(rollout_id)
    assert cancelled["status"] == "cancelled"
    assert cancelled["counts"] == {"cancelled": 6}
    assert all(m["started_at"] is None for m in cancelled["members"])
    with pytest.raises(CommandError, match="no longer be cancelled") as again:
        rollout("cancel", str(rollout_id), "--user", "olga")
    assert again.value.returncode == 1


def test_reject_unknown_ids_and_refusals_exit_1_with_the_reason(
    config: Path, people: dict[str, Any]
) -> None:
    text = rollout("request", "--fleet", "tenants", "--upgrade", "heads", "--user", "olga")
    rollout_id = int(re.match(r"rollout #(\d+)", text).group(1))  # type: ignore[union-attr]
    with pytest.raises(CommandError, match="only approvers and admins may approve"):
        rollout("approve", str(rollout_id), "--user", "otto")
    assert "rejected by bea" in rollout("reject", str(rollout_id), "--user", "bea")
    rejected = shown(rollout_id)
    assert rejected["status"] == "rejected"
    assert rejected["counts"] == {"not_run": 6}
    assert [(a["user"], a["decision"]) for a in rejected["approvals"]] == [("bea", "reject")]
    for argv in (
        ("show", "999999"),
        ("approve", "999999", "--user", "alan"),
        ("resume", "999999", "--user", "olga"),
    ):
        with pytest.raises(CommandError, match="no rollout #999999") as missing:
            rollout(*argv)
        assert missing.value.returncode == 1
    with pytest.raises(CommandError, match="no fleet named 'nope'"):
        rollout("request", "--fleet", "nope", "--upgrade", "heads", "--user", "olga")
    with pytest.raises(CommandError, match="no active user named 'nobody'"):
        rollout("pause", str(rollout_id), "--user", "nobody")
    with pytest.raises(CommandError, match="only a paused one resumes"):
        rollout("resume", str(rollout_id), "--user", "olga")
