"""The audit trail is append-only and tamper-evident."""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import sqlalchemy as sa
from django.core.management import CommandError, call_command
from django.db import InternalError, connection, transaction
from django.test import Client

from dashboard import audit
from dashboard.models import AuditEvent
from tests.audit_support import behind_the_orms_back

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db


def _trail(n: int) -> list[AuditEvent]:
    return [
        audit.record(
            "test.event", actor_name="tester", payload={"n": i, "nested": {"b": 1, "a": [i]}}
        )
        for i in range(n)
    ]


def test_untouched_trail_verifies_and_counts() -> None:
    _trail(5)
    result = audit.verify()
    assert (result.verified, result.broken_at) == (5, None)
    assert AuditEvent.objects.order_by("id").first().prev_hash == audit.GENESIS


def test_orm_refuses_to_change_or_delete_events() -> None:
    event = _trail(1)[0]
    event.verb = "forged"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.all().update(verb="forged")
    with pytest.raises(PermissionError):
        AuditEvent.objects.all().delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.bulk_create(
            [event],
            update_conflicts=True,
            unique_fields=["id"],
            update_fields=["verb"],
        )


EDITS = {
    "verb": "UPDATE dashboard_auditevent SET verb = 'forged' WHERE id = %s",
    "payload": "UPDATE dashboard_auditevent SET payload = '{\"n\": 99}' WHERE id = %s",
    "actor_name": "UPDATE dashboard_auditevent SET actor_name = 'mallory' WHERE id = %s",
    "created_at": "UPDATE dashboard_auditevent SET created_at = created_at - interval '1 day' WHERE id = %s",
}


@pytest.mark.parametrize("column", sorted(EDITS))
def test_an_edit_behind_the_orms_back_is_found(column: str) -> None:
    events = _trail(4)
    victim = events[2]
    sql = EDITS[column]
    if connection.vendor == "sqlite":
        sql = sql.replace("created_at - interval '1 day'", "datetime(created_at, '-1 day')")
    if connection.vendor == "postgresql":
        # The trigger refuses the edit outright; a superuser who disables it is caught by the chain.
        with (
            pytest.raises(InternalError, match="audit events are append-only"),
            transaction.atomic(),
        ):
            connection.cursor().execute(sql, [victim.pk])
    with behind_the_orms_back() as cursor:
        cursor.execute(sql, [victim.pk])
    with pytest.raises(CommandError, match=f"audit event {victim.pk} does not verify") as info:
        call_command("verify_audit")
    assert info.value.returncode == 1


def test_a_deleted_event_breaks_the_chain_at_its_successor() -> None:
    events = _trail(4)
    with behind_the_orms_back() as cursor:
        cursor.execute("DELETE FROM dashboard_auditevent WHERE id = %s", [events[1].pk])
    result = audit.verify()
    assert result.broken_at == events[2].pk
    assert result.verified == 1


def test_verify_audit_command_reports_the_count(capsys: pytest.CaptureFixture[str]) -> None:
    _trail(3)
    call_command("verify_audit")
    assert "verified 3 audit events" in capsys.readouterr().out


# --- checkpoints: the page's check starts from the last verified-up-to event ------------------


@pytest.fixture
def every_20(monkeypatch: pytest.MonkeyPatch) -> None:
    """Record a checkpoint once 20 new events were verified (the product waits for 1000)."""
    monkeypatch.setattr(audit, "CHECKPOINT_EVERY", 20)


def hashed(check: Callable[[], Any]) -> tuple[Any, int]:
    """Return what check() returns and how many events it re-hashed."""
    with mock.patch.object(audit, "event_hash", wraps=audit.event_hash) as spy:
        result = check()
    return result, spy.call_count


def tamper(event: AuditEvent) -> None:
    with behind_the_orms_back() as cursor:
        cursor.execute("UPDATE dashboard_auditevent SET verb = 'forged' WHERE id = %s", [event.pk])


def test_a_checkpoint_is_an_event_of_the_chain(every_20: None) -> None:
    events = _trail(30)
    first, work = hashed(audit.verify_since_checkpoint)
    assert (first.verified, first.broken_at, first.checked) == (30, None, 30)
    assert work == 31  # the thirty events, then the new checkpoint's own hash
    checkpoint = AuditEvent.objects.get(verb=audit.CHECKPOINT)
    assert checkpoint.pk > events[-1].pk and checkpoint.actor_name == audit.SYSTEM
    assert checkpoint.payload["up_to_id"] == events[-1].pk
    assert checkpoint.payload["up_to_hash"] == events[-1].hash
    assert checkpoint.payload["verified"] == 30
    # The full check walks it like any other event.
    assert audit.verify().verified == 31


def test_tampering_after_the_checkpoint_is_caught_rehashing_only_the_new_events(
    every_20: None,
) -> None:
    _trail(40)
    audit.verify_since_checkpoint()
    later = _trail(5)
    result, work = hashed(audit.verify_since_checkpoint)
    assert (result.verified, result.broken_at, result.checked) == (46, None, 6)
    assert work <= 8  # the checkpoint, the event it names, then the checkpoint and five new ones
    tamper(later[2])
    result, work = hashed(audit.verify_since_checkpoint)
    assert result.broken_at == later[2].pk
    assert work <= 8


def test_tampering_before_the_checkpoint_is_caught_by_the_full_check_only(every_20: None) -> None:
    events = _trail(40)
    audit.verify_since_checkpoint()
    tamper(events[5])
    with pytest.raises(CommandError, match=f"audit event {events[5].pk} does not verify"):
        call_command("verify_audit")
    # What the incremental check cannot see: it trusts what the checkpoint verified.
    assert audit.verify_since_checkpoint().broken_at is None
    call_command("verify_audit", "--since-checkpoint")


def test_a_checkpoint_without_the_dashboards_key_is_not_trusted(every_20: None) -> None:
    _trail(25)
    audit.verify_since_checkpoint()
    later = _trail(5)
    tamper(later[1])
    # Someone with write access appends a checkpoint past the edit; only the key makes one count.
    last = AuditEvent.objects.order_by("-id").first()
    audit.record(
        audit.CHECKPOINT,
        actor_name=audit.SYSTEM,
        payload={"up_to_id": last.pk, "up_to_hash": last.hash, "verified": 99, "mac": "0" * 64},
    )
    result, work = hashed(audit.verify_since_checkpoint)
    assert result.broken_at == later[1].pk
    assert work <= 12


def test_a_changed_checkpoint_is_found_from_the_one_before(every_20: None) -> None:
    _trail(25)
    audit.verify_since_checkpoint()
    _trail(25)
    audit.verify_since_checkpoint()
    first, second = AuditEvent.objects.filter(verb=audit.CHECKPOINT).order_by("id")
    sql = "UPDATE dashboard_auditevent SET payload = %s WHERE id = %s"
    if connection.vendor == "postgresql":
        sql = "UPDATE dashboard_auditevent SET payload = %s::jsonb WHERE id = %s"
    claim = json.dumps({"up_to_id": 1, "up_to_hash": "0" * 64, "verified": 1})
    with behind_the_orms_back() as cursor:
        cursor.execute(sql, [claim, second.pk])
    result, work = hashed(audit.verify_since_checkpoint)
    assert result.broken_at == second.pk
    assert result.since == first.pk
    assert work <= 32


def test_the_full_check_refuses_a_checkpoint_that_names_a_wrong_hash() -> None:
    events = _trail(3)
    forged = audit.record(
        audit.CHECKPOINT,
        actor_name=audit.SYSTEM,
        payload={"up_to_id": events[1].pk, "up_to_hash": "f" * 64, "verified": 2},
    )
    result = audit.verify()
    assert result.broken_at == forged.pk
    assert "checkpoint" in result.reason


def test_the_page_check_costs_the_same_on_a_longer_trail(every_20: None) -> None:
    for size in (50, 500):
        _trail(size)
        audit.verify_since_checkpoint()
        _trail(3)
        _result, work = hashed(audit.verify_since_checkpoint)
        assert work <= 6, size


def test_sign_in_failure_success_and_sign_out_are_recorded(client: Client) -> None:
    call_command("adduser", "ann", role="viewer", password="correct-horse-9")
    client.post(
        "/accounts/login/", {"username": "ann", "password": "nope"}, HTTP_USER_AGENT="pytest-agent"
    )
    client.post("/accounts/login/", {"username": "ann", "password": "correct-horse-9"})
    client.post("/accounts/logout/")
    verbs = list(AuditEvent.objects.order_by("id").values_list("verb", "actor_name"))
    assert verbs == [
        ("user.role_changed", "system"),
        ("auth.sign_in_failed", "ann"),
        ("auth.sign_in", "ann"),
        ("auth.sign_out", "ann"),
    ]
    failed = AuditEvent.objects.get(verb="auth.sign_in_failed")
    assert failed.user_agent == "pytest-agent"
    assert failed.ip == "127.0.0.1"
    assert "nope" not in str(failed.payload)


def test_role_change_is_recorded() -> None:
    call_command("adduser", "bob", role="viewer", password="correct-horse-9")
    call_command("adduser", "bob", role="approver")
    change = AuditEvent.objects.filter(verb="user.role_changed").last()
    assert change.payload == {
        "username": "bob",
        "from": "viewer",
        "to": "approver",
        "created": False,
    }


def test_postgresql_trigger_refuses_update_and_delete(postgres_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": postgres_url,
        "DASHBOARD_INSECURE_DEV_KEY": "1",
        "DEBUG": "1",
    }
    env["DASHBOARD_VAR_DIR"] = str(tmp_path)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=180,
    )
    subprocess.run(
        [
            sys.executable,
            "manage.py",
            "adduser",
            "eve",
            "--role",
            "viewer",
            "--password",
            "correct-horse-9",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=60,
    )
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM dashboard_auditevent")).scalar() == 1
        for statement in (
            "UPDATE dashboard_auditevent SET verb = 'forged'",
            "DELETE FROM dashboard_auditevent",
        ):
            with (
                pytest.raises(sa.exc.DBAPIError, match="audit events are append-only"),
                engine.begin() as conn,
            ):
                conn.execute(sa.text(statement))
        # Deleting a user nulls actor_id: the one change the trigger lets through.
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM auth_user_groups"))
            conn.execute(sa.text("UPDATE dashboard_auditevent SET actor_id = NULL"))
            assert (
                conn.execute(sa.text("SELECT actor_name FROM dashboard_auditevent")).scalar()
                == "system"
            )
    finally:
        engine.dispose()
