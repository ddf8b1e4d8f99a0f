"""What was approved is exactly what runs: the plan binds file contents, the worker runs a copy."""

from __future__ import annotations

import hashlib
import os
import py_compile
import shutil
import stat
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from dashboard import runner
from dashboard.config import Project
from dashboard.models import Action, ApprovedFile
from dashboard.runner import bundle as runner_bundle
from dashboard.services import actions
from dashboard.services.actions import pinning as plans
from dashboard.worker import Housekeeping
from tests.actions_support import (
    ALL_REVISIONS,
    HEAD,
    MERGE,
    ROOT,
    heads_of,
    run_worker,
    schema_of,
    touch_sqlite,
    write_config,
)

# Worker processes share the test database, so every test commits for real.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("keep_roles")]

FIRST = "3f8c1a2b9d04"
UNREVIEWED = '    op.execute("CREATE TABLE unreviewed (i int)")'
DOWNGRADE_COMMENT = (
    "    # Plain DROP COLUMN: SQLite has had it since 3.35, and the column carries no constraint."
)
UPGRADE_DOCSTRING = '    """Upgrade schema."""'
UPGRADE_START = (
    UPGRADE_DOCSTRING + '\n    time.sleep(float(os.environ.get("MIGRATIONS_PROJECT_SLEEP", "0")))'
)


@pytest.fixture
def approved_dir(tmp_path: Path, settings: Any) -> Path:
    """Keep this test's private copies in a folder of its own."""
    folder = tmp_path / "approved"
    settings.DASHBOARD_APPROVED_DIR = str(folder)
    return folder


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Copy the sample project for the test to edit; return the copy."""
    target = tmp_path / "project"
    shutil.copytree(
        ROOT / "migrations_project", target, ignore=shutil.ignore_patterns("__pycache__")
    )
    return target


def configure(
    settings: Any, tmp_path: Path, project: Path, url: str, *, loader: str = "static", **env: Any
) -> Path:
    """Make a config of staging at url on the project copy current; return its path."""
    path = write_config(tmp_path / "dashboard.toml", {"staging": {"url": url, **env}},
                        alembic_ini=project / "alembic.ini")  # fmt: skip
    if loader == "alembic":
        text = path.read_text().replace(
            "[projects.blog]\n",
            f'[projects.blog]\nloader = "alembic"\npython = "{sys.executable}"\n',
        )
        path.write_text(text)
    settings.DASHBOARD_CONFIG = str(path)
    return path


def revision_file(folder: Path, revision: str) -> Path:
    return next(folder.glob(f"{revision}_*.py"))


def same_size_edit(path: Path, old: str, new: str) -> None:
    """Replace old with new padded to old's length, and put the file's mtime back."""
    before = path.stat()
    text = path.read_text()
    assert old in text and len(new) + 3 <= len(old)
    padded = new + "  #" + "-" * (len(old) - len(new) - 3)
    path.write_text(text.replace(old, padded))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def writable(path: Path) -> None:
    path.chmod(path.stat().st_mode | stat.S_IWUSR)


@pytest.mark.postgres
def test_a_same_size_same_mtime_edit_after_approval_fails_as_stale_and_runs_nothing(
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    project: Path,
    approved_dir: Path,
    postgres_url: str,
) -> None:
    config = configure(settings, tmp_path, project, postgres_url, approvals_required=1)
    blog = Project(name="blog", script_location=project, alembic_ini=project / "alembic.ini")
    assert runner.upgrade(blog, postgres_url, "heads").succeeded
    down = actions.action_request(
        user=people["olga"], environment="staging", direction="downgrade", target=MERGE
    )
    run_worker(config, DASHBOARD_APPROVED_DIR=str(approved_dir))  # renders its SQL
    down.refresh_from_db()
    assert down.is_prepared and "phone_number" in down.sql and "unreviewed" not in down.sql
    actions.action_approve(user=people["alan"], action_id=down.pk, plan_hash=down.plan_hash)
    same_size_edit(revision_file(project / "versions", HEAD), DOWNGRADE_COMMENT, UNREVIEWED)
    before = schema_of(postgres_url)

    run_worker(config, DASHBOARD_APPROVED_DIR=str(approved_dir))

    down.refresh_from_db()
    assert down.status == Action.Status.FAILED
    assert down.error.startswith(actions.SCRIPT_CHANGED), down.error
    assert "nothing ran" in down.error and f"versions/0/{HEAD}_" in down.error
    assert schema_of(postgres_url) == before
    assert "unreviewed" not in before["tables"] and heads_of(postgres_url) == (HEAD,)


@pytest.mark.parametrize("loader", ["static", "alembic"])
def test_a_change_after_the_check_cannot_reach_the_run(
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    project: Path,
    approved_dir: Path,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    loader: str,
) -> None:
    url = touch_sqlite(sqlite_url)
    configure(settings, tmp_path, project, url, loader=loader, approvals_required=0)
    action = actions.action_request(
        user=people["olga"], environment="staging", direction="upgrade", target=FIRST,
        prepare=True,
    )  # fmt: skip
    assert action.status == Action.Status.QUEUED, action.sql_note
    copy = approved_dir / action.fingerprint
    assert copy.is_dir()  # kept from preparing the SQL for the run
    live = revision_file(project / "versions", FIRST)
    real_run = runner.run_alembic
    seen: dict[str, Any] = {}

    def edit_then_run(*args: Any, **kwargs: Any) -> Any:
        # Past every check, just before Alembic starts: too late to change what runs.
        live.write_text(
            live.read_text().replace(UPGRADE_DOCSTRING, f"{UPGRADE_DOCSTRING}\n{UNREVIEWED}")
        )
        with (project / "env.py").open("a") as env_py:
            env_py.write('\nraise SystemExit("the live env.py ran")\n')
        ini = project / "alembic.ini"
        ini.write_text(ini.read_text().replace("[alembic]", "[alembic"))
        seen["copy"] = (copy / "versions" / "0" / live.name).read_bytes()
        return real_run(*args, **kwargs)

    monkeypatch.setattr(runner, "run_alembic", edit_then_run)
    ran = actions.action_run(action_id=action.pk, worker="test")

    assert ran.status == Action.Status.SUCCEEDED, ran.error
    assert hashlib.sha256(seen["copy"]).hexdigest() == action.bundle[f"versions/0/{live.name}"]
    tables = schema_of(url)["tables"]
    assert "users" in tables and "unreviewed" not in tables
    assert not copy.exists()  # swept once its action finished


@pytest.mark.parametrize("tampering", ["edited", "added"])
def test_a_tampered_private_copy_is_refused_before_start(
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    project: Path,
    approved_dir: Path,
    sqlite_url: str,
    tampering: str,
) -> None:
    url = touch_sqlite(sqlite_url)
    configure(settings, tmp_path, project, url, approvals_required=1)
    action = actions.action_request(
        user=people["olga"], environment="staging", direction="upgrade", target=FIRST,
        prepare=True,
    )  # fmt: skip
    actions.action_approve(user=people["alan"], action_id=action.pk, plan_hash=action.plan_hash)
    versions = approved_dir / action.fingerprint / "versions" / "0"
    writable(versions)
    if tampering == "edited":
        copied = revision_file(versions, FIRST)
        writable(copied)
        same_size_edit(copied, UPGRADE_START, UNREVIEWED)
    else:
        extra = revision_file(versions, FIRST).read_text().replace(UPGRADE_DOCSTRING, UNREVIEWED)
        (versions / "0000_extra.py").write_text(extra.replace(FIRST, "0000aaaa0000"))
    before = schema_of(url)

    ran = actions.action_run(action_id=action.pk, worker="test")

    assert ran.status == Action.Status.FAILED
    assert "was altered" in ran.error and ran.error.endswith("nothing ran"), ran.error
    assert ran.log == "" and schema_of(url) == before
    assert not (approved_dir / action.fingerprint).exists()  # the next attempt copies afresh


def test_a_fresh_worker_sweeps_the_copies_of_finished_actions(
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    project: Path,
    approved_dir: Path,
    sqlite_url: str,
) -> None:
    url = touch_sqlite(sqlite_url)
    config = configure(settings, tmp_path, project, url, approvals_required=1)
    # The one left waiting is on another environment: beside a running one it would be refused.
    qa = touch_sqlite(f"sqlite:///{tmp_path / 'qa.db'}")
    text = config.read_text()
    config.write_text(text + '\n[environments.qa]\nproject = "blog"\n' + f'url = "{qa}"\n'
                      + "approvals_required = 1\n")  # fmt: skip
    left = actions.action_request(
        user=people["olga"], environment="staging", direction="upgrade", target=FIRST,
        prepare=True,
    )  # fmt: skip
    # Its worker was killed mid-run: the action is still "running", its copy still there.
    Action.objects.filter(pk=left.pk).update(
        status=Action.Status.RUNNING,
        started_at=timezone.now() - timedelta(minutes=5),
        heartbeat_at=timezone.now() - timedelta(minutes=5),
        worker="gone:1",
    )
    live = revision_file(project / "versions", FIRST)
    live.write_text(live.read_text() + "\n# another change, another copy\n")
    waiting = actions.action_request(
        user=people["otto"], environment="qa", direction="upgrade", target=FIRST,
        prepare=True,
    )  # fmt: skip
    assert waiting.fingerprint != left.fingerprint
    assert (approved_dir / left.fingerprint).is_dir()
    assert (approved_dir / waiting.fingerprint).is_dir()

    run_worker(config, command="worker", DASHBOARD_APPROVED_DIR=str(approved_dir))

    left.refresh_from_db()
    assert left.status == Action.Status.INTERRUPTED
    assert not (approved_dir / left.fingerprint).exists()
    assert (approved_dir / waiting.fingerprint).is_dir()  # its action still waits for approval
    assert not list(approved_dir.glob(f"{left.fingerprint}*"))


def test_the_request_stores_every_file_once_and_binds_the_plan_to_their_content(
    people: dict[str, Any], settings: Any, tmp_path: Path, project: Path, sqlite_url: str
) -> None:
    configure(settings, tmp_path, project, touch_sqlite(sqlite_url), approvals_required=1)
    first = actions.action_request(
        user=people["olga"], environment="staging", direction="upgrade", target=FIRST
    )
    revisions = sorted((project / "versions").glob("*.py"))
    files = {
        "alembic.ini": project / "alembic.ini",
        "script/env.py": project / "env.py",
        "script/models.py": project / "models.py",
        "script/script.py.mako": project / "script.py.mako",
        **{f"versions/0/{path.name}": path for path in revisions},
    }
    assert set(first.bundle) == set(files)
    for name, path in files.items():
        stored = ApprovedFile.objects.get(sha256=first.bundle[name])
        assert bytes(stored.content) == path.read_bytes()
        assert stored.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    blog = Project(name="blog", script_location=project, alembic_ini=project / "alembic.ini")
    assert first.fingerprint == plans.current_fingerprint(blog)
    # Behind the first: a request beside an unfinished one is refused (test_superseding.py).
    second = actions.action_request(
        user=people["otto"], environment="staging", direction="upgrade", target="a71e",
        queue_behind=first.pk,
    )  # fmt: skip
    assert second.fingerprint == first.fingerprint
    assert ApprovedFile.objects.count() == len(set(first.bundle.values()))
    # A timestamp alone changes nothing that runs; a byte of the same size does.
    for path in files.values():
        os.utime(path, ns=(0, 0))
    assert plans.current_fingerprint(blog) == first.fingerprint
    same_size_edit(revision_file(project / "versions", FIRST), UPGRADE_START, UNREVIEWED)
    assert plans.current_fingerprint(blog) != first.fingerprint


def test_every_version_location_and_its_subfolders_run_from_the_copy(
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    project: Path,
    approved_dir: Path,
    sqlite_url: str,
) -> None:
    ini = project / "alembic.ini"
    ini.write_text(
        ini.read_text().replace(
            "version_locations = %(here)s/versions\n",
            "version_locations = %(here)s/versions:%(here)s/reporting\n"
            "recursive_version_locations = true\n",
        )
    )
    nested = project / "reporting" / "votes"
    nested.mkdir(parents=True)
    moved = [revision_file(project / "versions", rev) for rev in ("e0d7f4a19b53", "7a3c2e8b5f01")]
    for path in moved:
        path.rename(nested / path.name)
    url = touch_sqlite(sqlite_url)
    configure(settings, tmp_path, project, url, approvals_required=0)
    action = actions.action_request(
        user=people["olga"], environment="staging", direction="upgrade", target="heads",
        prepare=True,
    )  # fmt: skip
    assert {f"versions/1/votes/{path.name}" for path in moved} <= set(action.bundle)
    assert "CREATE TABLE votes" in action.sql

    ran = actions.action_run(action_id=action.pk, worker="test")

    assert ran.status == Action.Status.SUCCEEDED, ran.error
    assert ran.plan == ALL_REVISIONS and heads_of(url) == (HEAD,)
    assert "votes" in schema_of(url)["tables"]


def test_housekeeping_keeps_approved_bytes_while_an_action_may_still_need_or_show_them(
    people: dict[str, Any], settings: Any, tmp_path: Path, project: Path, sqlite_url: str
) -> None:
    configure(settings, tmp_path, project, touch_sqlite(sqlite_url), approvals_required=1)
    settings.DASHBOARD_RETENTION_DAYS = 30
    done = actions.action_request(
        user=people["olga"], environment="staging", direction="upgrade", target=FIRST
    )
    actions.action_cancel(user=people["olga"], action_id=done.pk)
    live = revision_file(project / "versions", FIRST)
    live.write_text(live.read_text() + "\n# changed since\n")
    waiting = actions.action_request(
        user=people["otto"], environment="staging", direction="upgrade", target=FIRST
    )
    long_ago = timezone.now() - timedelta(days=40)
    ApprovedFile.objects.update(created_at=long_ago)
    Action.objects.update(created_at=long_ago)
    all_files = set(done.bundle.values()) | set(waiting.bundle.values())

    Action.objects.filter(pk=done.pk).update(finished_at=timezone.now() - timedelta(days=1))
    Housekeeping(limit=60).run_once()
    assert set(ApprovedFile.objects.values_list("sha256", flat=True)) == all_files

    Action.objects.filter(pk=done.pk).update(finished_at=long_ago)
    Housekeeping(limit=60).run_once()
    kept = set(ApprovedFile.objects.values_list("sha256", flat=True))
    assert kept == set(waiting.bundle.values()) != all_files


# Planted after approval: makes the table the approved SQL never held, and leaves a mark.
EVIL = """
import os
import sqlalchemy as _sa
_url = os.environ.get("DATABASE_URL")
if _url:
    _engine = _sa.create_engine(_url)
    with _engine.begin() as _conn:
        _conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS unreviewed (i int)")
    _engine.dispose()
with open(os.environ["APPROVED_TEST_MARK"], "a") as _mark:
    _mark.write("planted code ran\\n")
"""
# A planted tomllib that does its harm, then hands over to the real one.
DELEGATE_TOMLLIB = """
import sys
sys.modules.pop("tomllib")
_here = os.path.dirname(os.path.abspath(__file__))
_saved = sys.path[:]
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
import tomllib
sys.path[:] = _saved
"""


def request_and_approve(people: dict[str, Any]) -> Action:
    """Request the first revision on staging, its SQL rendered, and approve it."""
    action = actions.action_request(
        user=people["olga"], environment="staging", direction="upgrade", target=FIRST,
        prepare=True,
    )  # fmt: skip
    assert action.is_prepared and "CREATE TABLE users" in action.sql, action.sql_note
    actions.action_approve(user=people["alan"], action_id=action.pk, plan_hash=action.plan_hash)
    action.refresh_from_db()
    assert action.status == Action.Status.QUEUED
    return action


def import_beside_env_py(project: Path, module: str) -> None:
    """Make env.py import a module by name, found through prepend_sys_path = . as many do."""
    env_py = project / "env.py"
    env_py.write_text(
        env_py.read_text().replace(
            "config = context.config\n", f"config = context.config\nimport {module}  # noqa\n"
        )
    )
    ini = project / "alembic.ini"
    ini.write_text(ini.read_text().replace("[alembic]\n", "[alembic]\nprepend_sys_path = .\n"))


@pytest.fixture
def mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Return the file planted code writes to when it runs."""
    path = tmp_path / "mark"
    monkeypatch.setenv("APPROVED_TEST_MARK", str(path))
    return path


def test_a_module_planted_in_the_live_folder_after_approval_is_never_imported(
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    project: Path,
    approved_dir: Path,
    sqlite_url: str,
    mark: Path,
) -> None:
    url = touch_sqlite(sqlite_url)
    configure(settings, tmp_path, project, url, approvals_required=1)
    action = request_and_approve(people)
    # Sourceless bytecode that Python would prefer to the standard library's tomllib.
    source = tmp_path / "tomllib_source.py"
    source.write_text(EVIL + DELEGATE_TOMLLIB)
    py_compile.compile(str(source), cfile=str(project / "tomllib.pyc"), doraise=True)

    ran = actions.action_run(action_id=action.pk, worker="test")

    assert ran.status == Action.Status.SUCCEEDED, ran.error
    assert not mark.exists()
    tables = schema_of(url)["tables"]
    assert "users" in tables and "unreviewed" not in tables


@pytest.mark.parametrize("bytecode", ["unchecked-hash", "same-size-same-mtime"])
def test_bytecode_in_the_live_folder_never_replaces_an_approved_module(
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    project: Path,
    approved_dir: Path,
    sqlite_url: str,
    mark: Path,
    bytecode: str,
) -> None:
    helper = project / "helpers.py"
    import_beside_env_py(project, "helpers")
    cached = project / "__pycache__" / f"helpers.{sys.implementation.cache_tag}.pyc"
    cached.parent.mkdir(exist_ok=True)
    say = "open(__import__('os').environ['APPROVED_TEST_MARK'], 'a').write('helpers {}\\n')\n"
    if bytecode == "same-size-same-mtime":
        # No malice: an earlier run left bytecode, then an edit kept size and mtime (cp -p).
        helper.write_text(say.format("ONE"))
        os.utime(helper, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
        py_compile.compile(str(helper), cfile=str(cached), doraise=True)
        before = helper.stat()
        helper.write_text(say.format("TWO"))
        os.utime(helper, ns=(before.st_atime_ns, before.st_mtime_ns))
    else:
        helper.write_text(say.format("TWO"))
    url = touch_sqlite(sqlite_url)
    configure(settings, tmp_path, project, url, approvals_required=1)
    action = request_and_approve(people)
    assert b"TWO" in bytes(
        ApprovedFile.objects.get(sha256=action.bundle["script/helpers.py"]).content
    )
    if bytecode == "unchecked-hash":
        # After approval: bytecode Python loads without looking at the source at all.
        planted = tmp_path / "helpers_source.py"
        planted.write_text(EVIL)
        py_compile.compile(
            str(planted),
            cfile=str(cached),
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
    mark.write_text("")

    ran = actions.action_run(action_id=action.pk, worker="test")

    assert ran.status == Action.Status.SUCCEEDED, ran.error
    assert mark.read_text() == "helpers TWO\n"
    assert "unreviewed" not in schema_of(url)["tables"]


def test_an_inherited_pycache_prefix_cannot_replace_the_copys_bytecode(
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    project: Path,
    approved_dir: Path,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = tmp_path / "pycache-prefix"
    prefix.mkdir()
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(prefix))
    url = touch_sqlite(sqlite_url)
    configure(settings, tmp_path, project, url, approvals_required=1)
    action = request_and_approve(people)
    copied = revision_file(approved_dir / action.fingerprint / "versions" / "0", FIRST)
    # Where the prefix keeps the copy's bytecode follows from the digest every page shows.
    cached = (
        prefix
        / str(copied.parent).lstrip("/")
        / f"{copied.stem}.{sys.implementation.cache_tag}.pyc"
    )
    planted = tmp_path / "revision_source.py"
    planted.write_text(copied.read_text().replace(UPGRADE_DOCSTRING, UNREVIEWED))
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.unlink(missing_ok=True)
    py_compile.compile(
        str(planted),
        cfile=str(cached),
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )

    ran = actions.action_run(action_id=action.pk, worker="test")

    assert ran.status == Action.Status.SUCCEEDED, ran.error
    tables = schema_of(url)["tables"]
    assert "users" in tables and "unreviewed" not in tables


def test_code_outside_the_approved_files_is_not_imported_and_the_error_says_so(
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    project: Path,
    approved_dir: Path,
    sqlite_url: str,
) -> None:
    # The application's package, beside alembic.ini: part of the repository, not of the files.
    (project / "myapp").mkdir()
    (project / "myapp" / "__init__.py").write_text("")
    import_beside_env_py(project, "myapp")
    url = touch_sqlite(sqlite_url)
    configure(settings, tmp_path, project, url, approvals_required=0)
    action = actions.action_request(
        user=people["olga"], environment="staging", direction="upgrade", target=FIRST,
        prepare=True,
    )  # fmt: skip

    # Nobody approves here, so a plan whose SQL cannot be rendered fails unrun (requests.py).
    assert action.status == Action.Status.FAILED and not action.sql
    hint = "env.py imports myapp, which is not part of the approved files; install the application"
    assert hint in action.sql_note and hint in action.error, action.error
    assert "into the project's `python` interpreter" in action.error
    assert "users" not in schema_of(url)["tables"]


def test_a_password_in_the_projects_ini_is_neither_stored_nor_copied(
    people: dict[str, Any],
    settings: Any,
    tmp_path: Path,
    project: Path,
    approved_dir: Path,
    sqlite_url: str,
) -> None:
    ini = project / "alembic.ini"
    ini.write_text(
        ini.read_text().replace(
            "sqlalchemy.url =\n", "sqlalchemy.url = postgresql://app:S3cretPassw0rd@db/prod\n"
        )
    )
    url = touch_sqlite(sqlite_url)
    configure(settings, tmp_path, project, url, approvals_required=1)
    action = request_and_approve(people)
    stored = bytes(ApprovedFile.objects.get(sha256=action.bundle["alembic.ini"]).content)
    assert b"S3cretPassw0rd" not in stored and b"\nsqlalchemy.url =\n" in stored
    copied = approved_dir / action.fingerprint / "alembic.ini"
    assert copied.read_bytes() == stored
    blog = Project(name="blog", script_location=project, alembic_ini=ini)
    # The page's fast path and the run's full read agree: the request's plan still holds.
    assert plans.current_fingerprint(blog) == action.fingerprint
    assert runner_bundle.page_digest(blog) == action.fingerprint

    ran = actions.action_run(action_id=action.pk, worker="test")

    assert ran.status == Action.Status.SUCCEEDED, ran.error
    assert "S3cretPassw0rd" not in ran.log
