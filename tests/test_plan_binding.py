"""The plan an approver sees is parsed from the approved bytes, and only that plan runs."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboard import runner, scripts
from dashboard.config import Project
from dashboard.models import Action, AuditEvent
from dashboard.runner import bundle
from dashboard.services import actions
from dashboard.services.actions import pinning
from tests.actions_support import (
    HEAD,
    MERGE,
    ROOT,
    heads_of,
    schema_of,
    touch_sqlite,
    write_config,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("keep_roles")]

FIRST = "3f8c1a2b9d04"
UNREVIEWED = 'op.execute("CREATE TABLE unreviewed (i int)")'
UPGRADE_START = (
    '    """Upgrade schema."""\n'
    '    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))\n'
)


@pytest.fixture(autouse=True)
def _fresh_parse_cache() -> Iterator[None]:
    scripts.clear_cache()
    yield
    scripts.clear_cache()


@pytest.fixture
def project(tmp_path: Path, settings: Any) -> Path:
    """Copy the sample project for the test to edit; keep its private copies beside it."""
    settings.DASHBOARD_APPROVED_DIR = str(tmp_path / "approved")
    target = tmp_path / "project"
    shutil.copytree(
        ROOT / "migrations_project", target, ignore=shutil.ignore_patterns("__pycache__")
    )
    return target


def configure(settings: Any, tmp_path: Path, project: Path, url: str, **env: Any) -> Project:
    """Make a config of staging at url on the project copy current; return the project."""
    path = write_config(tmp_path / "dashboard.toml", {"staging": {"url": url, **env}},
                        alembic_ini=project / "alembic.ini")  # fmt: skip
    settings.DASHBOARD_CONFIG = str(path)
    return Project(name="blog", script_location=project, alembic_ini=project / "alembic.ini")


def revision_file(project: Path, revision: str) -> Path:
    return next((project / "versions").glob(f"{revision}_*.py"))


def request(people: dict[str, Any], direction: str, target: str) -> Action:
    return actions.action_request(
        user=people["olga"], environment="staging", direction=direction, target=target,
        prepare=True,
    )  # fmt: skip


def swap_head_for_unreviewed_same_stat(project: Path) -> str:
    """Give the head file a new revision id and an extra statement, keeping size and mtime."""
    head = revision_file(project, HEAD)
    before = head.stat()
    text = head.read_text()
    new_id = HEAD[:-1] + "5"
    text = text.replace(f'revision: str = "{HEAD}"', f'revision: str = "{new_id}"')
    text = text.replace(UPGRADE_START, f'    """Upgrade schema."""\n    {UNREVIEWED}  #\n')
    padding = before.st_size - len(text.encode())
    assert padding > 0
    text = text.replace(f"{UNREVIEWED}  #", f"{UNREVIEWED}  #" + "-" * padding, 1)
    head.write_text(text)
    os.utime(head, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = head.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    return new_id


def test_the_plan_is_parsed_from_the_bytes_that_are_approved_not_a_stat_cached_parse(
    people: dict[str, Any], settings: Any, tmp_path: Path, project: Path, sqlite_url: str
) -> None:
    url = touch_sqlite(sqlite_url)
    blog = configure(settings, tmp_path, project, url, approvals_required=1)
    assert runner.upgrade(blog, url, MERGE).succeeded
    scripts.load_history(project, alembic_ini=project / "alembic.ini")  # a page view
    new_id = swap_head_for_unreviewed_same_stat(project)

    action = request(people, "upgrade", "heads")

    # What the approver sees names the revision that is in the approved bytes, and its SQL.
    assert action.plan == [new_id] and action.target_heads == [new_id]
    assert "CREATE TABLE unreviewed" in action.sql, action.sql_note
    actions.action_approve(user=people["alan"], action_id=action.pk, plan_hash=action.plan_hash)
    ran = actions.action_run(action_id=action.pk, worker="test")
    assert ran.status == Action.Status.SUCCEEDED, ran.error
    assert heads_of(url) == (new_id,)


def test_a_history_the_bundle_was_not_read_from_is_refused_after_one_reload(
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    project: Path,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = touch_sqlite(sqlite_url)
    blog = configure(settings, tmp_path, project, url, approvals_required=1)
    assert runner.upgrade(blog, url, MERGE).succeeded
    head = revision_file(project, HEAD)
    scripts.load_history(project, alembic_ini=project / "alembic.ini")
    swap_head_for_unreviewed_same_stat(project)  # the cached parse no longer holds
    read = bundle.bundle_read

    def read_then_edit(project: Project) -> bundle.Bundle:
        found = read(project)
        # Edited again between the read and the reload: no parse matches the bytes read.
        head.write_text(head.read_text() + "\n# and again\n")
        return found

    monkeypatch.setattr(bundle, "bundle_read", read_then_edit)
    with pytest.raises(actions.EnvironmentUnavailable, match="changed while the plan was made"):
        request(people, "upgrade", "heads")
    assert not Action.objects.exists()


def test_every_parsed_file_carries_the_sha256_of_the_bytes_it_was_parsed_from(
    project: Path,
) -> None:
    loaded = scripts.load_history(project, alembic_ini=project / "alembic.ini")
    files = sorted((project / "versions").glob("*.py"))
    assert loaded.file_hashes == {
        str(path.resolve()): hashlib.sha256(path.read_bytes()).hexdigest() for path in files
    }
    # The stat fast path serves the same parse, hashes and all.
    assert scripts.load_history(project, alembic_ini=project / "alembic.ini") is loaded


def test_alembics_loader_reports_the_bytes_it_loaded_and_a_stale_answer_is_reloaded(
    people: dict[str, Any], settings: Any, tmp_path: Path, project: Path, sqlite_url: str
) -> None:
    url = touch_sqlite(sqlite_url)
    blog = configure(settings, tmp_path, project, url, approvals_required=1)
    config = Path(settings.DASHBOARD_CONFIG)
    config.write_text(
        config.read_text().replace(
            "[projects.blog]\n",
            f'[projects.blog]\nloader = "alembic"\npython = "{sys.executable}"\n',
        )
    )
    assert runner.upgrade(blog, url, MERGE).succeeded
    loaded = scripts.load_history_with_alembic(project, alembic_ini=project / "alembic.ini")
    head = revision_file(project, HEAD)
    assert loaded.file_hashes[str(head.resolve())] == hashlib.sha256(head.read_bytes()).hexdigest()
    new_id = swap_head_for_unreviewed_same_stat(project)

    action = request(people, "upgrade", "heads")
    assert action.plan == [new_id]
    assert "CREATE TABLE unreviewed" in action.sql, action.sql_note


def approved(people: dict[str, Any], project: Path) -> Action:
    action = request(people, "upgrade", FIRST)
    assert action.is_prepared and "CREATE TABLE users" in action.sql, action.sql_note
    actions.action_approve(user=people["alan"], action_id=action.pk, plan_hash=action.plan_hash)
    action.refresh_from_db()
    assert action.status == Action.Status.QUEUED
    return action


def rebundle_with_unreviewed(project: Path, blog: Project) -> bundle.Bundle:
    """Edit the live file and store its bundle, as a writer of the dashboard's database could."""
    live = revision_file(project, FIRST)
    live.write_text(live.read_text().replace('"""Upgrade schema."""', UNREVIEWED))
    new = bundle.bundle_read(blog)
    bundle.bundle_store(new)
    return new


def test_a_bundle_edited_in_the_database_after_approval_does_not_run(
    people: dict[str, Any], settings: Any, tmp_path: Path, project: Path, sqlite_url: str
) -> None:
    url = touch_sqlite(sqlite_url)
    blog = configure(settings, tmp_path, project, url, approvals_required=1)
    action = approved(people, project)
    new = rebundle_with_unreviewed(project, blog)
    Action.objects.filter(pk=action.pk).update(bundle=new.manifest, fingerprint=new.digest)

    ran = actions.action_run(action_id=action.pk, worker="test")

    assert ran.status == Action.Status.FAILED
    assert "no longer matches what was approved; nothing ran" in ran.error
    assert "unreviewed" not in schema_of(url)["tables"]
    assert AuditEvent.objects.filter(verb="action.failed", action_id=action.pk).exists()


def test_an_action_rehashed_in_the_database_does_not_match_its_approvals(
    people: dict[str, Any], settings: Any, tmp_path: Path, project: Path, sqlite_url: str
) -> None:
    url = touch_sqlite(sqlite_url)
    blog = configure(settings, tmp_path, project, url, approvals_required=1)
    action = approved(people, project)
    new = rebundle_with_unreviewed(project, blog)
    action.bundle, action.fingerprint = new.manifest, new.digest
    rehashed = pinning.action_plan_hash(action)
    Action.objects.filter(pk=action.pk).update(
        bundle=new.manifest, fingerprint=new.digest, plan_hash=rehashed
    )

    ran = actions.action_run(action_id=action.pk, worker="test")

    assert ran.status == Action.Status.FAILED
    assert "no longer matches what was approved; nothing ran" in ran.error
    assert "unreviewed" not in schema_of(url)["tables"]


def test_the_target_heads_are_part_of_what_is_approved(
    people: dict[str, Any], settings: Any, tmp_path: Path, project: Path, sqlite_url: str
) -> None:
    url = touch_sqlite(sqlite_url)
    configure(settings, tmp_path, project, url, approvals_required=1)
    action = approved(people, project)
    # The run names the plan's end explicitly, so that end must be the approved one.
    Action.objects.filter(pk=action.pk).update(target_heads=[HEAD])

    ran = actions.action_run(action_id=action.pk, worker="test")

    assert ran.status == Action.Status.FAILED
    assert "no longer matches what was approved; nothing ran" in ran.error
    assert schema_of(url)["tables"] == {}


def test_the_run_names_the_plans_end_not_the_symbolic_target(
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    project: Path,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = touch_sqlite(sqlite_url)
    configure(settings, tmp_path, project, url, approvals_required=1)
    action = request(people, "upgrade", "heads")
    actions.action_approve(user=people["alan"], action_id=action.pk, plan_hash=action.plan_hash)
    asked: list[list[str]] = []
    run_alembic = runner.run_alembic

    def recording(project: Project, url: str, argv: list[str], **kwargs: Any) -> Any:
        asked.append(list(argv))
        return run_alembic(project, url, argv, **kwargs)

    monkeypatch.setattr(runner, "run_alembic", recording)
    ran = actions.action_run(action_id=action.pk, worker="test")
    assert ran.status == Action.Status.SUCCEEDED, ran.error
    # "heads" means whatever the files say when Alembic starts; the plan's end means one thing.
    assert asked == [["upgrade", HEAD]]


def test_an_approval_is_refused_when_the_offline_sql_failed(
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    project: Path,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = touch_sqlite(sqlite_url)
    configure(settings, tmp_path, project, url, approvals_required=1)
    monkeypatch.setenv("MIGRATIONS_PROJECT_FAIL", FIRST)
    action = request(people, "upgrade", FIRST)
    assert action.is_prepared and not action.sql
    assert action.sql_note.startswith("offline SQL could not be produced")

    with pytest.raises(actions.ActionRefused, match="offline SQL could not be produced"):
        actions.action_approve(user=people["alan"], action_id=action.pk, plan_hash=action.plan_hash)
    action.refresh_from_db()
    assert action.status == Action.Status.REQUESTED and not action.approvals.exists()


def test_an_action_needing_no_approval_fails_when_its_offline_sql_failed(
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    project: Path,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = touch_sqlite(sqlite_url)
    configure(settings, tmp_path, project, url, approvals_required=0)
    monkeypatch.setenv("MIGRATIONS_PROJECT_FAIL", FIRST)

    action = request(people, "upgrade", FIRST)

    assert action.status == Action.Status.FAILED
    assert action.error.startswith("offline SQL could not be produced: ")
    assert action.error.endswith("; nothing ran")
    assert action.finished_at is not None
    failed = AuditEvent.objects.get(verb="action.failed", action_id=action.pk)
    assert failed.payload["error"] == action.error
    assert not AuditEvent.objects.filter(verb="action.approved", action_id=action.pk).exists()
    assert schema_of(url)["tables"] == {}


def test_pinning_compares_every_revision_file_of_the_bundle(project: Path) -> None:
    blog = Project(name="blog", script_location=project, alembic_ini=project / "alembic.ini")
    loaded = scripts.load_history(project, alembic_ini=project / "alembic.ini")
    found = bundle.bundle_read(blog)
    assert pinning.parse_mismatch(blog, found, loaded) == []
    head = str(revision_file(project, HEAD).resolve())
    other = {**loaded.file_hashes, head: "0" * 64}
    stale = dataclasses.replace(loaded, file_hashes=other)
    assert pinning.parse_mismatch(blog, found, stale) == [head]
