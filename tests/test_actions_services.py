"""Action services: who may request, approve, reject and cancel; plans, SQL review, refusals."""

from __future__ import annotations

import hashlib
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from dashboard import runner
from dashboard.config import load_config
from dashboard.models import Action, Approval, AuditEvent
from dashboard.runner import review
from dashboard.services import actions
from dashboard.services.actions import pinning as plans
from dashboard.tasks import prepare_action, run_action
from tests.actions_support import (
    ALL_REVISIONS,
    HEAD,
    MERGE,
    ROOT,
    heads_of,
    insert_heads,
    make_people,
    schema_of,
    touch_sqlite,
    write_config,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def people() -> dict[str, Any]:
    return make_people()


@pytest.fixture
def config_at(tmp_path: Path, settings: Any) -> Any:
    """Return a function that writes a config of these environments and makes it current."""

    def write(environments: dict[str, dict[str, Any]], **kw: Any) -> Path:
        path = write_config(tmp_path / "dashboard.toml", environments, **kw)
        settings.DASHBOARD_CONFIG = str(path)
        return path

    return write


@pytest.fixture
def staging(config_at: Any, sqlite_url: str) -> str:
    """An empty SQLite environment needing two approvals for upgrades, one for downgrades."""
    config_at(
        {
            "staging": {
                "url": touch_sqlite(sqlite_url),
                "approvals_required": 2,
                "downgrade_approvals_required": 1,
            }
        }
    )
    return sqlite_url


def own_sample(tmp_path: Path, config_at: Any, sqlite_url: str, **staging: Any) -> Path:
    """Copy the sample project for a test to edit, and configure staging on it; return the copy."""
    project = tmp_path / "project"
    shutil.copytree(
        ROOT / "migrations_project", project, ignore=shutil.ignore_patterns("__pycache__")
    )
    config_at(
        {"staging": {"url": touch_sqlite(sqlite_url), **staging}},
        alembic_ini=project / "alembic.ini",
    )
    return project


def _request(user: Any, target: str = "heads", direction: str = "upgrade", **kw: Any) -> Action:
    return actions.action_request(
        user=user, environment="staging", direction=direction, target=target, **kw
    )


def _trail(action: Action) -> list[tuple[str, str]]:
    return list(
        AuditEvent.objects.filter(action_id=action.pk)
        .order_by("id")
        .values_list("verb", "actor_name")
    )


def test_approval_policy_from_request_to_queue(
    people: dict[str, Any], staging: str, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        action = _request(people["root"], reason="launch")
    assert action.status == Action.Status.REQUESTED
    assert action.plan == ALL_REVISIONS
    assert (action.from_heads, action.target_heads) == ([], [HEAD])
    assert (action.approvals_required, action.progress_total) == (2, 9)
    # The web path leaves the project's code to the worker: the SQL is not there yet.
    assert not action.is_prepared and action.sql_sha256 == ""
    assert DBTaskResult.objects.filter(task_path=prepare_action.module_path).count() == 1
    with pytest.raises(actions.NotPrepared):
        actions.action_approve(user=people["alan"], action_id=action.pk, plan_hash=action.plan_hash)

    prepare_action.call(action.pk)
    action.refresh_from_db()
    assert action.is_prepared and "CREATE TABLE users" in action.sql
    assert action.sql_sha256 == hashlib.sha256(action.sql.encode()).hexdigest()
    seen = action.plan_hash

    for who, refusal in [
        ("olga", actions.NotAllowed),
        ("vic", actions.NotAllowed),
        ("root", actions.SelfApproval),
    ]:
        with pytest.raises(refusal):
            actions.action_approve(user=people[who], action_id=action.pk, plan_hash=seen)
    with pytest.raises(actions.PlanChanged, match="review it again"):
        actions.action_approve(user=people["alan"], action_id=action.pk, plan_hash="0" * 64)

    actions.action_approve(user=people["alan"], action_id=action.pk, plan_hash=seen, comment="ok")
    action.refresh_from_db()
    assert action.status == Action.Status.REQUESTED  # one of two
    with pytest.raises(actions.AlreadyDecided):
        actions.action_approve(user=people["alan"], action_id=action.pk, plan_hash=seen)
    with django_capture_on_commit_callbacks(execute=True):
        actions.action_approve(user=people["bea"], action_id=action.pk, plan_hash=seen)
    action.refresh_from_db()
    assert action.status == Action.Status.QUEUED
    assert DBTaskResult.objects.filter(id=action.task_id, task_path=run_action.module_path).exists()
    assert list(action.approvals.values_list("username", "plan_hash")) == [
        ("alan", seen),
        ("bea", seen),
    ]
    assert _trail(action) == [
        ("action.requested", "root"),
        ("action.prepared", "system"),
        ("action.approved", "alan"),
        ("action.approved", "bea"),
        ("action.queued", "system"),
    ]


def test_only_operators_and_admins_request(people: dict[str, Any], staging: str) -> None:
    for who in ("vic", "alan"):
        with pytest.raises(actions.NotAllowed):
            _request(people[who])
    assert not Action.objects.exists()


def test_one_rejection_ends_it(people: dict[str, Any], staging: str) -> None:
    action = _request(people["olga"])
    with pytest.raises(actions.ActionRefused, match="reason"):
        actions.action_reject(user=people["alan"], action_id=action.pk, reason="  ")
    with pytest.raises(actions.NotAllowed):
        actions.action_reject(user=people["olga"], action_id=action.pk, reason="mine")
    actions.action_reject(user=people["alan"], action_id=action.pk, reason="not in the freeze")
    action.refresh_from_db()
    assert action.status == Action.Status.REJECTED and action.finished_at is not None
    assert action.approvals.get().decision == Approval.Decision.REJECT
    with pytest.raises(actions.WrongState):
        actions.action_approve(user=people["bea"], action_id=action.pk, plan_hash=action.plan_hash)
    with pytest.raises(actions.WrongState):
        actions.action_cancel(user=people["olga"], action_id=action.pk)


def test_changed_script_directory_refuses_approval_and_run(
    people: dict[str, Any], config_at: Any, sqlite_url: str, tmp_path: Path
) -> None:
    project = own_sample(tmp_path, config_at, sqlite_url, approvals_required=1)
    approved = _request(people["olga"], target="c94a", prepare=True)
    actions.action_approve(user=people["alan"], action_id=approved.pk, plan_hash=approved.plan_hash)
    # Queued behind it: a request beside an unfinished one is refused (test_superseding.py).
    pending = _request(people["otto"], target="heads", prepare=True, queue_behind=approved.pk)
    revision = next((project / "versions").glob(f"{HEAD}_*.py"))
    revision.write_text(revision.read_text() + "\n# edited after the request\n")

    with pytest.raises(actions.PlanChanged) as refused:
        actions.action_approve(
            user=people["alan"], action_id=pending.pk, plan_hash=pending.plan_hash
        )
    assert str(refused.value) == (
        "the script directory changed since this plan was made: request it again"
    )
    before = schema_of(sqlite_url)
    ran = actions.action_run(action_id=approved.pk, worker="test")
    assert ran.status == Action.Status.FAILED
    assert ran.error.startswith("the script directory changed since this plan was made")
    assert schema_of(sqlite_url) == before


@pytest.mark.parametrize("edited", ["env.py", "alembic.ini"])
def test_an_edited_env_py_or_ini_also_needs_a_new_plan(
    people: dict[str, Any], config_at: Any, sqlite_url: str, tmp_path: Path, edited: str
) -> None:
    project = own_sample(tmp_path, config_at, sqlite_url, approvals_required=1)
    pending = _request(people["olga"], target="c94a", prepare=True)
    path = project / edited
    path.write_text(path.read_text() + "\n# edited after the request\n")

    with pytest.raises(actions.PlanChanged, match="script directory changed"):
        actions.action_approve(
            user=people["alan"], action_id=pending.pk, plan_hash=pending.plan_hash
        )


def test_a_run_declared_interrupted_under_it_keeps_one_ending_and_records_the_late_outcome(
    people: dict[str, Any], config_at: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_at({"staging": {"url": touch_sqlite(sqlite_url), "approvals_required": 0}})
    action = _request(people["olga"], target="3f8c", prepare=True)
    real_run = runner.run_alembic

    def run_after_housekeeping(*args: Any, **kwargs: Any) -> Any:
        # The worker's heartbeats stop reaching the database; housekeeping elsewhere fires.
        Action.objects.filter(pk=action.pk).update(
            heartbeat_at=timezone.now() - timedelta(minutes=2)
        )
        assert [a.pk for a in actions.action_interrupt_silent(limit=60)] == [action.pk]
        return real_run(*args, **kwargs)

    monkeypatch.setattr(runner, "run_alembic", run_after_housekeeping)
    done = actions.action_run(action_id=action.pk, worker="test")

    assert done.status == Action.Status.INTERRUPTED
    verbs = list(
        AuditEvent.objects.filter(action_id=action.pk).order_by("id").values_list("verb", flat=True)
    )
    assert verbs[-3:] == ["action.started", "action.interrupted", "action.late_outcome"]
    late = AuditEvent.objects.get(action_id=action.pk, verb="action.late_outcome")
    assert late.payload["outcome"] in ("succeeded", "interrupted")
    assert done.after_heads == list(heads_of(sqlite_url))


def test_a_renamed_approver_still_counts_once(
    people: dict[str, Any], config_at: Any, sqlite_url: str
) -> None:
    config_at({"staging": {"url": touch_sqlite(sqlite_url), "approvals_required": 2}})
    action = _request(people["olga"], prepare=True)
    alan = people["alan"]
    actions.action_approve(user=alan, action_id=action.pk, plan_hash=action.plan_hash)
    alan.username = "alan.smith"
    alan.save()

    with pytest.raises(actions.AlreadyDecided):
        actions.action_approve(user=alan, action_id=action.pk, plan_hash=action.plan_hash)
    # The database has the last word even if the check above were skipped.
    with pytest.raises(IntegrityError), transaction.atomic():
        Approval.objects.create(
            action=action, user=alan, username="alan.smith", decision="approve", plan_hash="x"
        )
    action.refresh_from_db()
    assert action.status == Action.Status.REQUESTED


def test_a_syntax_error_anywhere_refuses_the_request(
    people: dict[str, Any], config_at: Any, sqlite_url: str, tmp_path: Path
) -> None:
    project = own_sample(tmp_path, config_at, sqlite_url)
    # The header parses (the graph is whole); the error sits where only Alembic's import sees it.
    (project / "versions" / "ffff00000001_broken.py").write_text(
        f'"""broken"""\nrevision = "ffff00000001"\ndown_revision = "{HEAD}"\n'
        "branch_labels = None\ndepends_on = None\n\n\ndef upgrade(:\n    pass\n"
    )

    with pytest.raises(actions.ActionRefused, match="syntax error") as refused:
        _request(people["olga"], target="c94a")
    assert "cannot load project blog's history" in str(refused.value)
    assert not Action.objects.exists()


def test_cancel_rules_and_a_cancelled_action_never_runs(
    people: dict[str, Any], config_at: Any, sqlite_url: str
) -> None:
    config_at({"staging": {"url": touch_sqlite(sqlite_url), "approvals_required": 0}})
    mine = _request(people["olga"])
    for who in ("otto", "alan", "vic"):
        with pytest.raises(actions.NotAllowed):
            actions.action_cancel(user=people[who], action_id=mine.pk)
    actions.action_cancel(user=people["olga"], action_id=mine.pk)
    with pytest.raises(actions.WrongState):
        actions.action_cancel(user=people["olga"], action_id=mine.pk)

    # No approvals required: queued as soon as its SQL is ready; then cancelled while queued.
    queued = _request(people["otto"], prepare=True)
    assert queued.status == Action.Status.QUEUED
    actions.action_cancel(user=people["root"], action_id=queued.pk)
    assert run_action.call(queued.pk) == Action.Status.CANCELLED
    queued.refresh_from_db()
    assert queued.started_at is None and queued.error == "cancelled by root while queued"
    assert schema_of(sqlite_url) == {"tables": {}, "versions": []}
    assert [verb for verb, _ in _trail(queued)][-1] == "action.cancelled"


def test_requests_that_cannot_be_planned_are_refused_with_the_reason(
    people: dict[str, Any], config_at: Any, tmp_path: Path
) -> None:
    at_head = f"sqlite:///{tmp_path / 'head.db'}"
    stranger = f"sqlite:///{tmp_path / 'stranger.db'}"
    at_branch_point = f"sqlite:///{tmp_path / 'branch.db'}"
    insert_heads(at_head, [HEAD])
    insert_heads(stranger, ["deadbeef0000"])
    insert_heads(at_branch_point, ["c94a0b3e6d12"])
    config_at(
        {
            "staging": {"url": at_head},
            "stranger": {"url": stranger},
            "early": {"url": at_branch_point},
            "missing": {"url": f"sqlite:///{tmp_path / 'nothing-here.db'}"},
        }
    )
    olga = people["olga"]
    with pytest.raises(actions.UnknownEnvironment, match="no environment named 'prod'"):
        actions.action_request(user=olga, environment="prod", direction="upgrade", target="heads")
    with pytest.raises(actions.UnknownTarget, match="zzzz"):
        _request(olga, target="zzzz")
    with pytest.raises(actions.NothingToDo, match=f"staging is at {HEAD}"):
        _request(olga)
    with pytest.raises(actions.AmbiguousDowngrade) as ambiguous:
        _request(olga, target="-2", direction="downgrade")
    assert ambiguous.value.proposals == [MERGE]
    assert "ambiguous" in str(ambiguous.value)
    with pytest.raises(actions.NotReachable, match="cannot downgrade early"):
        actions.action_request(user=olga, environment="early", direction="downgrade", target=HEAD)
    with pytest.raises(actions.EnvironmentUnavailable, match="deadbeef0000"):
        actions.action_request(
            user=olga, environment="stranger", direction="upgrade", target="heads"
        )
    with pytest.raises(actions.EnvironmentUnavailable, match="cannot read missing"):
        actions.action_request(
            user=olga, environment="missing", direction="upgrade", target="heads"
        )
    assert not Action.objects.exists()


def test_label_and_prefix_targets_resolve_like_alembic(
    people: dict[str, Any], config_at: Any, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'early.db'}"
    insert_heads(url, ["c94a0b3e6d12"])
    config_at({"staging": {"url": url}})
    labelled = _request(people["olga"], target="reporting@head")
    assert labelled.plan == ALL_REVISIONS[4:] and labelled.target_heads == [HEAD]
    actions.action_cancel(user=people["olga"], action_id=labelled.pk)  # one plan at a time
    prefix = _request(people["olga"], target="e0d7")
    assert (prefix.plan, prefix.target_heads) == (["e0d7f4a19b53"], ["e0d7f4a19b53"])


def test_a_plan_from_several_heads_says_why_it_has_no_sql_and_can_be_approved(
    people: dict[str, Any], config_at: Any, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'two-heads.db'}"
    insert_heads(url, ["e0d7f4a19b53", "7a3c2e8b5f01"])
    config_at({"staging": {"url": url, "approvals_required": 1}})
    action = _request(people["olga"], prepare=True)
    assert action.plan == ["1d6b9f0c4e27", MERGE, HEAD]
    assert action.is_prepared and action.sql == "" and action.sql_sha256 == ""
    assert "several heads" in action.sql_note
    actions.action_approve(user=people["alan"], action_id=action.pk, plan_hash=action.plan_hash)
    action.refresh_from_db()
    assert action.status == Action.Status.QUEUED


@pytest.mark.postgres
def test_postgresql_sql_is_linted_by_squawk(
    people: dict[str, Any], config_at: Any, postgres_url: str
) -> None:
    # From the branch point, the indexes go onto tables that already exist: a lock risk.
    insert_heads(postgres_url, ["c94a0b3e6d12"])
    config_at({"staging": {"url": postgres_url}, "other": {"url_env": "OTHER_TEST_URL"}})
    action = _request(people["olga"], prepare=True)
    lines = action.sql.splitlines()
    index_warnings = [i for i in action.lint if i["rule"] == "require-concurrent-index-creation"]
    assert len(index_warnings) == 2, action.lint
    for item in index_warnings:
        assert lines[item["line"] - 1].startswith("CREATE INDEX")
    # Rendering the SQL never touched the database.
    assert heads_of(postgres_url) == ("c94a0b3e6d12",)


def test_squawk_lines_count_from_one_and_a_missing_squawk_is_said(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    items = review.squawk_lint("SELECT 1;\nCREATE INDEX ix_t_c ON t (c);\n")
    assert {i["line"] for i in items if i["rule"] == "require-concurrent-index-creation"} == {2}
    monkeypatch.setattr(review, "squawk_path", lambda: None)
    assert review.squawk_lint("SELECT 1;") == [
        {
            "line": None,
            "level": "info",
            "message": "squawk is not installed, so the SQL was not checked for lock risks",
            "rule": "",
            "help": "",
        }
    ]


def test_plan_hash_covers_every_part_of_the_plan() -> None:
    base = {
        "environment": "staging",
        "direction": "upgrade",
        "target": "heads",
        "from_heads": ["a", "b"],
        "plan": ["c", "d"],
        "sql_sha256": "e" * 64,
        "fingerprint": "f" * 64,
    }
    reference = plans.plan_hash(**base)
    assert plans.plan_hash(**{**base, "from_heads": ["b", "a"]}) == reference
    for key, other in [
        ("environment", "prod"),
        ("direction", "downgrade"),
        ("target", "head"),
        ("from_heads", ["a"]),
        ("plan", ["d", "c"]),
        ("sql_sha256", "0" * 64),
        ("fingerprint", "0" * 64),
    ]:
        assert plans.plan_hash(**{**base, key: other}) != reference, key


def test_one_running_action_per_environment_is_a_database_constraint() -> None:
    def running(environment: str, status: str = Action.Status.RUNNING) -> Action:
        return Action.objects.create(
            environment=environment,
            project="blog",
            direction="upgrade",
            target="heads",
            fingerprint="f",
            plan_hash="h",
            requested_by_name="olga",
            status=status,
        )

    running("staging")
    running("prod")
    running("staging", Action.Status.QUEUED)
    with pytest.raises(IntegrityError), transaction.atomic():
        running("staging")


def test_command_line_refusals_exit_1(people: dict[str, Any], staging: str) -> None:
    call_command("action", "request", "--env", "staging", "--upgrade", "heads", "--user", "root")
    action = Action.objects.get()
    cases = [
        (["approve", str(action.pk), "--user", "root"], "you requested action"),
        (["approve", str(action.pk), "--user", "olga"], "only approvers and admins"),
        (["request", "--env", "staging", "--upgrade", "nope", "--user", "olga"], "'nope'"),
        (["request", "--env", "staging", "--upgrade", "heads", "--user", "nobody"], "no active"),
        (["show", "999"], "no action #999"),
    ]
    for argv, message in cases:
        with pytest.raises(CommandError, match=message) as refused:
            call_command("action", *argv)
        assert refused.value.returncode == 1


def test_child_never_inherits_the_dashboards_secrets_or_other_urls(tmp_path: Path) -> None:
    config = load_config(
        write_config(
            tmp_path / "dashboard.toml",
            {
                "staging": {"url_env": "STAGING_URL"},
                "prod": {"url_env": "PROD_URL"},
                "demo": {"url": "sqlite:///demo.db"},
            },
        )
    )
    assert actions.child_secrets(config, config.environments["staging"]) == {
        "SECRET_KEY",
        "DASHBOARD_PASSWORD",
        "PROD_URL",
    }
