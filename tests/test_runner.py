"""Tests for dashboard.runner: real Alembic subprocesses against real databases."""

import contextlib
import dataclasses
import hashlib
import json
import os
import py_compile
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.runtime.migration import RevisionStep
from alembic.script.base import Script
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from dashboard.config import Project
from dashboard.runner.process import (
    CONFIG_PREFIX,
    ApprovedCopy,
    OfflineSQLUnavailable,
    RunnerError,
    downgrade,
    offline_sql,
    parse_progress,
    run_alembic,
    upgrade,
)

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).resolve().parent / "runner_fixtures" / "project"
ALL_STEPS = [((), ("a1",)), (("a1",), ("b2",)), (("b2",), ("c3",)), (("c3",), ("d4",))]


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """Copy the test Alembic project into a fresh folder."""
    target = tmp_path / "project"
    shutil.copytree(FIXTURE, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.fixture
def ini_project(project_dir: Path) -> Project:
    """Return the project as configured through its alembic.ini."""
    return Project(
        name="runner-test",
        script_location=project_dir / "migrations",
        alembic_ini=project_dir / "alembic.ini",
    )


@pytest.fixture
def plain_project(project_dir: Path) -> Project:
    """Return the project as a bare script_location with its own version table."""
    return Project(
        name="runner-test",
        script_location=project_dir / "migrations",
        version_table="runner_version",
    )


@pytest.fixture
def spawned() -> Iterator[list[int]]:
    """Collect pids the test's processes report, and kill any survivors afterwards."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_dead(pids: list[int], within: float) -> list[int]:
    deadline = time.monotonic() + within
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _read_pids(path: Path, within: float = 30) -> list[int]:
    deadline = time.monotonic() + within
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was never written"
        time.sleep(0.05)
    return [int(pid) for pid in path.read_text().split()]


def _steps(lines: list[str]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    parsed = [parse_progress(line) for line in lines]
    return [(step.from_revisions, step.to_revisions) for step in parsed if step]


def _with_password(url: str, password: str) -> str:
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def _schema(url: str, version_table: str) -> tuple[set[str], list[str]]:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            versions = []
            if version_table in tables:
                query = sa.select(sa.column("version_num")).select_from(sa.table(version_table))
                versions = list(conn.scalars(query))
    finally:
        engine.dispose()
    return tables, versions


def test_upgrade_streams_each_step_while_it_runs(sqlite_url: str, ini_project: Project) -> None:
    seen: list[tuple[float, str]] = []
    result = upgrade(
        ini_project,
        sqlite_url,
        "head",
        on_line=lambda line: seen.append((time.monotonic(), line)),
        extra_env={"RUNNER_TEST_SLEEP": "1"},
    )
    finished = time.monotonic()
    lines = [line for _, line in seen]
    assert result.returncode == 0, lines
    assert not result.timed_out and not result.cancelled
    assert _steps(lines) == ALL_STEPS
    first_step = next(at for at, line in seen if parse_progress(line))
    assert finished - first_step > 0.8, "the first step arrived only when the run ended"
    assert result.output_tail == lines
    assert _schema(sqlite_url, "alembic_version") == (
        {"alembic_version", "users", "posts", "votes"},
        ["d4"],
    )


def test_upgrade_then_downgrade_with_a_generated_config(
    any_url: str, plain_project: Project
) -> None:
    up = upgrade(plain_project, any_url, "head")
    assert up.returncode == 0, up.output_tail
    assert _steps(up.output_tail) == ALL_STEPS
    assert _schema(any_url, "runner_version")[1] == ["d4"]

    lines: list[str] = []
    down = downgrade(plain_project, any_url, "a1", on_line=lines.append)
    assert down.returncode == 0, lines
    assert [
        (s.direction, s.from_revisions, s.to_revisions) for s in map(parse_progress, lines) if s
    ] == [
        ("downgrade", ("d4",), ("c3",)),
        ("downgrade", ("c3",), ("b2",)),
        ("downgrade", ("b2",), ("a1",)),
    ]
    assert _schema(any_url, "runner_version") == ({"runner_version", "users"}, ["a1"])


@pytest.mark.postgres
@pytest.mark.parametrize("source", ["env", "ini"])
def test_percent_in_password_arrives_intact_and_is_never_shown(
    postgres_url: str, ini_project: Project, source: str
) -> None:
    password = "p%ss"
    url = _with_password(postgres_url, password)
    assert "p%25ss" in url
    lines: list[str] = []
    result = upgrade(
        ini_project,
        url,
        "a1",
        on_line=lines.append,
        extra_env={"RUNNER_TEST_PROBE": "1", "RUNNER_TEST_URL_FROM": source},
    )
    assert result.returncode == 0, lines
    probe = dict(
        line.removeprefix("probe ").split("=", 1) for line in lines if line.startswith("probe ")
    )
    assert probe["password-sha256"] == hashlib.sha256(password.encode()).hexdigest()
    assert probe["password-on-command-line"] == "False"
    assert ":***@" in probe["url"]
    assert " password=*** " in probe["dsn"]
    for line in [*lines, *result.output_tail]:
        assert password not in line and "p%25ss" not in line
    config_file, mode = probe["config"].split(" mode=")
    assert mode == "600"
    assert not Path(config_file).parent.exists(), "the private config folder was left behind"


@pytest.mark.postgres
def test_failure_output_never_contains_the_password(
    postgres_url: str, ini_project: Project
) -> None:
    url = _with_password(postgres_url, "S3cretPw")
    lines: list[str] = []
    result = upgrade(
        ini_project, url, "head", on_line=lines.append, extra_env={"RUNNER_TEST_FAIL": "1"}
    )
    assert result.returncode not in (0, None)
    leaked = [line for line in [*lines, *result.output_tail] if "S3cretPw" in line]
    assert leaked == []
    assert any("refusing to migrate" in line and ":***@" in line for line in lines), lines


def test_the_masker_hides_every_spelling_of_the_password() -> None:
    from urllib.parse import quote, quote_plus

    from dashboard.runner.process import _Masker

    password = "p@ss:w/rd+x y!"
    url = _with_password("postgresql+psycopg2://deploy@db.internal/app", password)
    rendered_password = quote(password, safe=" +")  # how SQLAlchemy writes it into a URL
    masker = _Masker(url)
    for spelling in (password, quote(password, safe=""), rendered_password, quote_plus(password)):
        shown = masker(f"connect failed: password={spelling!r} ({spelling})")
        assert spelling not in shown, shown
    assert masker(f"using {url}") == "using postgresql+psycopg2://deploy:***@db.internal/app"


def test_time_limit_kills_the_whole_process_group(
    sqlite_url: str, ini_project: Project, tmp_path: Path, spawned: list[int]
) -> None:
    pid_file = tmp_path / "pids"
    env = {
        "RUNNER_TEST_SLEEP": "60",
        "RUNNER_TEST_PID_FILE": str(pid_file),
        "RUNNER_TEST_GRANDCHILD": "1",
    }
    result = run_alembic(ini_project, sqlite_url, ["upgrade", "head"], time_limit=2, extra_env=env)
    spawned.extend(_read_pids(pid_file, within=0))
    assert result.timed_out and not result.cancelled
    assert 2 <= result.duration_s < 6
    assert result.returncode == -signal.SIGTERM
    assert len(spawned) == 2
    assert _wait_dead(spawned, within=1) == []
    assert _steps(result.output_tail)[-1] == (("a1",), ("b2",))


def test_should_cancel_stops_the_run(
    sqlite_url: str, ini_project: Project, tmp_path: Path, spawned: list[int]
) -> None:
    pid_file = tmp_path / "pids"
    reached_b2 = False

    def watch(line: str) -> None:
        nonlocal reached_b2
        step = parse_progress(line)
        reached_b2 = reached_b2 or (step is not None and step.to_revisions == ("b2",))

    started = time.monotonic()
    result = upgrade(
        ini_project,
        sqlite_url,
        "head",
        on_line=watch,
        # Cancel once b2 is asleep (its pid written), so the kill must reach a working step.
        should_cancel=lambda: reached_b2 and pid_file.exists(),
        extra_env={"RUNNER_TEST_SLEEP": "60", "RUNNER_TEST_PID_FILE": str(pid_file)},
    )
    spawned.extend(_read_pids(pid_file, within=0))
    assert result.cancelled and not result.timed_out
    assert time.monotonic() - started < 10
    assert _wait_dead(spawned, within=1) == []
    assert _schema(sqlite_url, "alembic_version")[1] == ["a1"]


PARENT = """\
import sys
from pathlib import Path

from dashboard.config import Project
from dashboard.runner.process import upgrade

root = Path(sys.argv[1])
project = Project("runner-test", root / "migrations", alembic_ini=root / "alembic.ini")
env = {"RUNNER_TEST_SLEEP": "60", "RUNNER_TEST_PID_FILE": sys.argv[3]}
upgrade(project, sys.argv[2], "head", extra_env=env)
"""


def test_alembic_dies_with_its_parent(
    sqlite_url: str, ini_project: Project, project_dir: Path, tmp_path: Path, spawned: list[int]
) -> None:
    pid_file = tmp_path / "pids"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(project_dir), sqlite_url, str(pid_file)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    spawned.append(parent.pid)
    try:
        spawned.extend(_read_pids(pid_file))
    finally:
        parent.kill()
        parent.wait()
    alembic_child = spawned[1]
    assert _wait_dead([alembic_child], within=2) == []

    # The killed parent could not remove its config (it holds the URL); the next run does.
    left_behind = list(Path(tempfile.gettempdir()).glob(f"{CONFIG_PREFIX}{parent.pid}-*"))
    assert len(left_behind) == 1
    offline_sql(ini_project, sqlite_url, direction="upgrade", from_rev=None, to_rev="a1")
    assert not left_behind[0].exists()


def test_offline_upgrade_from_base_does_not_touch_sqlite(
    sqlite_url: str, ini_project: Project
) -> None:
    sql = offline_sql(ini_project, sqlite_url, direction="upgrade", from_rev=None, to_rev="c3")
    for table in ("alembic_version", "users", "posts", "votes"):
        assert f"CREATE TABLE {table} (" in sql
    assert "INSERT INTO alembic_version (version_num) VALUES ('a1')" in sql
    assert not Path(make_url(sqlite_url).database or "").exists()


@pytest.mark.postgres
def test_offline_sql_on_postgres_leaves_the_database_alone(
    postgres_url: str, ini_project: Project
) -> None:
    up = offline_sql(ini_project, postgres_url, direction="upgrade", from_rev="b2", to_rev="d4")
    assert "CREATE TABLE votes" in up and "ALTER TABLE users DROP COLUMN name" in up
    assert "CREATE TABLE users" not in up, "the start of a range is exclusive"
    down = offline_sql(ini_project, postgres_url, direction="downgrade", from_rev="d4", to_rev="a1")
    assert "DROP TABLE votes" in down and "DROP TABLE posts" in down
    assert "DROP TABLE users" not in down
    assert "UPDATE alembic_version SET version_num='a1'" in down
    assert _schema(postgres_url, "alembic_version") == (set(), [])


def test_offline_batch_operation_on_sqlite_is_unavailable(
    sqlite_url: str, ini_project: Project
) -> None:
    with pytest.raises(OfflineSQLUnavailable, match="not available for this plan on SQLite"):
        offline_sql(ini_project, sqlite_url, direction="upgrade", from_rev="c3", to_rev="d4")


def test_offline_sql_reports_alembic_errors(sqlite_url: str, ini_project: Project) -> None:
    with pytest.raises(RunnerError, match="Can't locate revision identified by 'nope'") as caught:
        offline_sql(ini_project, sqlite_url, direction="upgrade", from_rev="a1", to_rev="nope")
    assert not isinstance(caught.value, OfflineSQLUnavailable)


def test_offline_downgrade_needs_its_start(sqlite_url: str, ini_project: Project) -> None:
    with pytest.raises(ValueError, match="starts from"):
        offline_sql(ini_project, sqlite_url, direction="downgrade", from_rev=None, to_rev="a1")


def _alembic_log_line(
    revision: str, down: str | tuple[str, ...] | None, doc: str, *, is_upgrade: bool
) -> str:
    """Format a step the way Alembic logs it, from Alembic's own classes."""
    module = types.ModuleType(f"rev_{revision}")
    module.__doc__ = doc
    module.revision, module.down_revision = revision, down
    module.branch_labels = module.depends_on = None

    def upgrade() -> None: ...

    def downgrade() -> None: ...

    module.upgrade, module.downgrade = upgrade, downgrade
    step = RevisionStep(None, Script(module, revision, f"/{revision}.py"), is_upgrade)  # type: ignore[arg-type]
    return f"INFO  [alembic.runtime.migration] Running {step}"


@pytest.mark.parametrize(
    ("revision", "down", "doc", "is_upgrade", "expected"),
    [
        ("a1", None, "create users\n\nRevision ID: a1", True, ((), ("a1",), "create users")),
        ("c3", ("a1", "b2"), "merge a1, b2", True, (("a1", "b2"), ("c3",), "merge a1, b2")),
        ("c3", ("a1", "b2"), "merge heads", False, (("c3",), ("a1", "b2"), "merge heads")),
        ("a1", None, "create users", False, (("a1",), (), "create users")),
        ("b2", "a1", "", True, (("a1",), ("b2",), "")),
        ("b2", "a1", "", False, (("b2",), ("a1",), "")),
        ("b2", "a1", "rename x -> y, then z", True, (("a1",), ("b2",), "rename x -> y, then z")),
    ],
)
def test_parse_progress_reads_alembic_step_lines(
    revision: str,
    down: str | tuple[str, ...] | None,
    doc: str,
    is_upgrade: bool,
    expected: tuple[tuple[str, ...], tuple[str, ...], str],
) -> None:
    line = _alembic_log_line(revision, down, doc, is_upgrade=is_upgrade)
    step = parse_progress(line, known_revisions={"a1", "b2", "c3"})
    assert step is not None, line
    assert step.direction == ("upgrade" if is_upgrade else "downgrade")
    assert (step.from_revisions, step.to_revisions, step.message) == expected


def test_parse_progress_recognises_generated_ids_without_known_revisions() -> None:
    merge, left, right = "3f2a1b0c9d8e", "1a2b3c4d5e6f", "9f8e7d6c5b4a"
    line = _alembic_log_line(merge, (left, right), "merge, finally", is_upgrade=False)
    step = parse_progress(line)
    assert step is not None
    assert step.to_revisions == (left, right)
    assert step.message == "merge, finally"


@pytest.mark.parametrize(
    "line",
    [
        "INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.",
        "INFO  [alembic.runtime.migration] Running stamp_revision  -> a1",
        "Revision ID: a1",
    ],
)
def test_parse_progress_ignores_other_lines(line: str) -> None:
    assert parse_progress(line) is None


PROBE = """\
import json as _json, os as _os, sys as _sys
print("probe " + _json.dumps({
    "cwd": _os.getcwd(),
    "sys_path": _sys.path,
    "pycache_prefix": _sys.pycache_prefix,
    "prefix_entries": _os.listdir(_sys.pycache_prefix) if _sys.pycache_prefix else None,
    "dont_write_bytecode": _sys.flags.dont_write_bytecode,
    "safe_path": _sys.flags.safe_path,
    "env": sorted(name for name in _os.environ if name.startswith("PYTHON")),
}), flush=True)
"""


def _add_probe(env_py: Path) -> None:
    """Make env.py print where the child imports from, as a line starting with "probe "."""
    text = env_py.read_text()
    env_py.write_text(
        text.replace("config = context.config\n", PROBE + "config = context.config\n")
    )


def _probe(lines: list[str]) -> dict[str, Any]:
    found = [line.removeprefix("probe ") for line in lines if line.startswith("probe {")]
    assert found, lines
    return dict(json.loads(found[0]))


def _approved(project_dir: Path, folder: Path) -> ApprovedCopy:
    """Lay the project out the way bundle.approved_copy does."""
    (folder / "script").mkdir(parents=True)
    shutil.copy(project_dir / "alembic.ini", folder / "alembic.ini")
    shutil.copy(project_dir / "migrations" / "env.py", folder / "script" / "env.py")
    shutil.copytree(project_dir / "migrations" / "versions", folder / "versions" / "0")
    return ApprovedCopy(
        folder=folder,
        script_location=folder / "script",
        version_locations=(folder / "versions" / "0",),
        alembic_ini=folder / "alembic.ini",
    )


def test_the_child_neither_reads_nor_writes_existing_bytecode(
    sqlite_url: str, ini_project: Project, project_dir: Path, tmp_path: Path
) -> None:
    _add_probe(project_dir / "migrations" / "env.py")
    # Bytecode Python would load without looking at the source: b2 creating another table.
    revision = project_dir / "migrations" / "versions" / "b2_create_posts.py"
    planted = tmp_path / "b2_planted.py"
    planted.write_text(revision.read_text().replace('"posts",', '"planted",'))
    cached = revision.parent / "__pycache__" / f"{revision.stem}.{sys.implementation.cache_tag}.pyc"
    cached.parent.mkdir()
    py_compile.compile(
        str(planted),
        cfile=str(cached),
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    lines: list[str] = []

    result = upgrade(ini_project, sqlite_url, "head", on_line=lines.append)

    assert result.returncode == 0, lines
    assert _schema(sqlite_url, "alembic_version")[0] == {
        "alembic_version",
        "users",
        "posts",
        "votes",
    }
    probe = _probe(lines)
    # A fresh, private, empty cache folder: no bytecode made before this run can be read.
    prefix = Path(probe["pycache_prefix"])
    assert probe["prefix_entries"] == [] and probe["dont_write_bytecode"] == 1
    assert prefix.parent.name.startswith(CONFIG_PREFIX)
    assert not prefix.exists(), "the run's cache folder was left behind"
    assert list(project_dir.rglob("*.pyc")) == [cached]


def test_inherited_python_variables_that_change_imports_do_not_reach_the_child(
    sqlite_url: str,
    ini_project: Project,
    project_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    planted = tmp_path / "planted"
    planted.mkdir()
    mark = tmp_path / "mark"
    # Ahead of the standard library on sys.path, Alembic would import this tomllib.
    (planted / "tomllib.py").write_text(f"open({str(mark)!r}, 'a').write('planted')\n")
    (planted / "startup.py").write_text(f"open({str(mark)!r}, 'a').write('startup')\n")
    monkeypatch.setenv("PYTHONPATH", str(planted))
    monkeypatch.setenv("PYTHONSTARTUP", str(planted / "startup.py"))
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(planted))
    monkeypatch.setenv("PYTHONHOME", str(tmp_path / "no-such-home"))
    monkeypatch.setenv("PYTHONWARNINGS", "default")  # changes no import: kept
    _add_probe(project_dir / "migrations" / "env.py")
    lines: list[str] = []

    result = upgrade(ini_project, sqlite_url, "head", on_line=lines.append)

    assert result.returncode == 0, lines
    assert not mark.exists()
    probe = _probe(lines)
    assert "PYTHONWARNINGS" in probe["env"]
    assert not {"PYTHONPATH", "PYTHONSTARTUP", "PYTHONPYCACHEPREFIX", "PYTHONHOME"} & set(
        probe["env"]
    )
    assert probe["sys_path"] and str(planted) not in probe["sys_path"]


def test_an_approved_run_imports_nothing_from_the_live_project_folder(
    sqlite_url: str, ini_project: Project, project_dir: Path, tmp_path: Path
) -> None:
    ini = project_dir / "alembic.ini"
    ini.write_text(
        ini.read_text().replace(
            "[alembic]\n", f"[alembic]\nprepend_sys_path = %(here)s/migrations{os.pathsep}.\n"
        )
    )
    _add_probe(project_dir / "migrations" / "env.py")
    copy = _approved(project_dir, tmp_path / "copy")
    lines: list[str] = []

    result = upgrade(ini_project, sqlite_url, "head", on_line=lines.append, approved=copy)

    assert result.returncode == 0, lines
    probe = _probe(lines)
    assert probe["cwd"] == str(copy.folder) and probe["safe_path"] == 1
    # The live script folder is the copy's; the ini's own folder ("." and %(here)s) the copy's root.
    assert probe["sys_path"][:2] == [str(copy.script_location), str(copy.folder)]
    live = [entry for entry in probe["sys_path"] if entry.startswith(str(project_dir))]
    assert live == [] and "" not in probe["sys_path"]


def test_an_approved_run_refuses_a_python_older_than_3_11(
    sqlite_url: str, ini_project: Project, project_dir: Path, tmp_path: Path
) -> None:
    old = tmp_path / "python3.9"
    old.write_text("#!/bin/sh\necho 3 9\n")
    old.chmod(0o755)
    project = dataclasses.replace(ini_project, python=str(old))
    copy = _approved(project_dir, tmp_path / "copy")

    with pytest.raises(RunnerError, match=r"python3\.9 is Python 3\.9.* 3\.11 or later"):
        upgrade(project, sqlite_url, "head", approved=copy)
    with pytest.raises(RunnerError, match=r"3\.11 or later"):
        offline_sql(project, sqlite_url, direction="upgrade", from_rev=None, to_rev="a1",
                    approved=copy)  # fmt: skip


def test_an_import_of_code_outside_the_approved_files_says_what_to_do(
    sqlite_url: str, ini_project: Project, project_dir: Path, tmp_path: Path
) -> None:
    (project_dir / "myapp").mkdir()
    (project_dir / "myapp" / "__init__.py").write_text("")
    (project_dir / "myapp" / "models.py").write_text("")
    ini = project_dir / "alembic.ini"
    ini.write_text(ini.read_text().replace("[alembic]\n", "[alembic]\nprepend_sys_path = .\n"))
    env_py = project_dir / "migrations" / "env.py"
    # Online only, so the offline SQL renders and the failure comes at the run.
    env_py.write_text(
        env_py.read_text().replace(
            '    """Run the migrations on a connection."""\n',
            '    """Run the migrations on a connection."""\n    import myapp.models  # noqa\n',
        )
    )
    copy = _approved(project_dir, tmp_path / "copy")
    assert offline_sql(ini_project, sqlite_url, direction="upgrade", from_rev=None, to_rev="a1",
                       approved=copy)  # fmt: skip
    lines: list[str] = []

    result = upgrade(ini_project, sqlite_url, "head", on_line=lines.append, approved=copy)

    assert result.returncode == 1
    hint = (
        "FAILED: env.py imports myapp, which is not part of the approved files; install the"
        " application into the project's `python` interpreter"
    )
    assert result.output_tail[-1].startswith(hint) and lines[-1] == result.output_tail[-1]
    assert len(result.output_tail[-1]) < 300  # the action's error quotes one line of that size
    # Run from the live folder, as before the approved files, it finds the application.
    assert upgrade(ini_project, sqlite_url, "head").returncode == 0
