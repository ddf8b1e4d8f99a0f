"""Tests for the runner's fork server: real servers, real forked Alembic runs on SQLite."""

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboard.config import Project
from dashboard.runner import zygote
from dashboard.runner.process import ApprovedCopy, RunResult, fork_server_pids, upgrade

pytestmark = pytest.mark.skipif(not zygote.enabled(), reason="the fork server is Linux's")

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).resolve().parent / "runner_fixtures" / "project"

# Put at the top of env.py: what the run's process looks like from inside, on stderr (which
# run_alembic merges into the lines), then the crash the test asks for.
PROBE = r"""
import ctypes as _ctypes, json as _json, os as _os, sys as _sys
_libc = _ctypes.CDLL(None)
_libc.getenv.restype = _ctypes.c_char_p
_names = [name for name in _os.environ.get("ZYGOTE_TEST_SHOW", "").split(",") if name]
print("zygote-probe " + _json.dumps({
    "pid": _os.getpid(),
    "ppid": _os.getppid(),
    "preloaded": "pymysql" in _sys.modules,
    "dumpable": _libc.prctl(3, 0, 0, 0, 0),
    "cwd": _os.getcwd(),
    "sys_path": _sys.path,
    "env": {name: _os.environ.get(name) for name in _names},
    "c_env": {name: (_libc.getenv(name.encode()) or b"").decode() or None for name in _names},
    "proc_environ": open("/proc/self/environ", "rb").read().rstrip(b"\0").decode(errors="replace"),
    "proc_cmdline": open("/proc/self/cmdline", "rb").read().rstrip(b"\0").decode(errors="replace"),
}), file=_sys.stderr, flush=True)
_crash = _os.environ.get("ZYGOTE_TEST_CRASH")
if _crash == "exit":
    _os._exit(7)
elif _crash == "segfault":
    _ctypes.string_at(0)
elif _crash == "loop":
    while True:
        pass
"""

PARENT = """\
import sys
from pathlib import Path

from dashboard.config import Project
from dashboard.runner.process import upgrade

root = Path(sys.argv[1])
project = Project("zygote-test", root / "migrations", alembic_ini=root / "alembic.ini")
env = {"RUNNER_TEST_SLEEP": "60", "RUNNER_TEST_PID_FILE": sys.argv[3]}
upgrade(project, sys.argv[2], "head", extra_env=env)
"""


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """Copy the runner's test project with the probe at the top of its env.py."""
    target = tmp_path / "project"
    shutil.copytree(FIXTURE, target, ignore=shutil.ignore_patterns("__pycache__"))
    env_py = target / "migrations" / "env.py"
    env_py.write_text(PROBE + env_py.read_text())
    return Project("zygote-test", target / "migrations", alembic_ini=target / "alembic.ini")


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


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


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


def _run(project: Project, url: str, **kw: Any) -> tuple[RunResult, dict[str, Any]]:
    """Upgrade url to head; return the result and what the probe saw."""
    lines: list[str] = []
    result = upgrade(project, url, "head", on_line=lines.append, **kw)
    found = [line.removeprefix("zygote-probe ") for line in lines if line.startswith("zygote-")]
    assert found, lines
    return result, dict(json.loads(found[0]))


def _environ_of(pid: int) -> str:
    """Return what /proc shows of pid's environment; nothing to a user who may not look."""
    try:
        return Path(f"/proc/{pid}/environ").read_text(errors="replace")
    except PermissionError:  # undumpable: only root reads it
        return ""


def _url(tmp_path: Path, name: str) -> str:
    return f"sqlite:///{tmp_path / name}.sqlite"


def test_a_run_is_forked_with_alembic_and_the_drivers_already_imported(
    project: Project, tmp_path: Path
) -> None:
    pytest.importorskip("pymysql")
    first, seen_first = _run(project, _url(tmp_path, "a"))
    second, seen_second = _run(project, _url(tmp_path, "b"))

    assert first.returncode == 0 and second.returncode == 0, second.output_tail
    # A run on SQLite never imports pymysql itself: the server did, once, before forking.
    assert seen_first["preloaded"] and seen_second["preloaded"]
    server = seen_second["ppid"]
    assert seen_first["ppid"] == server != os.getpid()
    assert server in fork_server_pids()
    assert seen_first["pid"] != seen_second["pid"]
    # What ps and /proc show is the run, not the server's source.
    assert "-m\0alembic\0-c\0" in seen_second["proc_cmdline"]
    assert f"DATABASE_URL={_url(tmp_path, 'b')}\0" in seen_second["proc_environ"]
    assert seen_second["cwd"] == str(project.alembic_ini.parent)  # type: ignore[union-attr]
    assert seen_second["sys_path"][0] == ""  # no -P: as `python -c` has it


def test_the_setting_turns_the_fork_server_off(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(zygote.SETTING, "0")

    result, seen = _run(project, _url(tmp_path, "a"))

    assert result.returncode == 0, result.output_tail
    assert seen["ppid"] == os.getpid()  # the bootstrap exec'd Alembic in this process's child
    assert not seen["preloaded"]


def test_an_approved_run_is_forked_from_a_server_that_keeps_the_cwd_off_sys_path(
    project: Project, tmp_path: Path
) -> None:
    root = project.script_location.parent
    copy = tmp_path / "copy"
    (copy / "script").mkdir(parents=True)
    shutil.copy(root / "alembic.ini", copy / "alembic.ini")
    shutil.copy(root / "migrations" / "env.py", copy / "script" / "env.py")
    shutil.copytree(root / "migrations" / "versions", copy / "versions" / "0")
    approved = ApprovedCopy(copy, copy / "script", (copy / "versions" / "0",), copy / "alembic.ini")
    _plain, plain_seen = _run(project, _url(tmp_path, "plain"))

    result, seen = _run(project, _url(tmp_path, "a"), approved=approved)

    assert result.returncode == 0, result.output_tail
    assert seen["preloaded"] and seen["cwd"] == str(copy)
    assert "" not in seen["sys_path"] and str(copy) not in seen["sys_path"]
    assert seen["ppid"] != plain_seen["ppid"]  # a server started with -P, not the plain one


def test_the_fork_server_and_its_run_die_with_the_worker(
    project: Project, tmp_path: Path, spawned: list[int]
) -> None:
    pid_file = tmp_path / "pids"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PARENT,
            str(project.script_location.parent),
            _url(tmp_path, "a"),
            str(pid_file),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    spawned.append(parent.pid)
    try:
        run = _read_pids(pid_file)[0]
        spawned.append(run)
        server = _parent_of(run)
        spawned.append(server)
        assert server != parent.pid and _parent_of(server) == parent.pid
    finally:
        parent.kill()
        parent.wait()

    assert _wait_dead([server, run], within=2) == []


@pytest.mark.parametrize(
    ("crash", "returncode"), [("exit", 7), ("segfault", -signal.SIGSEGV), ("loop", -signal.SIGTERM)]
)
def test_a_crashing_run_ends_alone_and_the_next_run_is_forked_as_before(
    project: Project, tmp_path: Path, crash: str, returncode: int
) -> None:
    _result, before = _run(project, _url(tmp_path, "before"))

    crashed, seen = _run(
        project, _url(tmp_path, "crash"), extra_env={"ZYGOTE_TEST_CRASH": crash}, time_limit=3
    )
    after, seen_after = _run(project, _url(tmp_path, "after"))

    assert crashed.returncode == returncode, crashed.output_tail
    assert crashed.timed_out == (crash == "loop")
    assert seen["ppid"] == before["ppid"] == seen_after["ppid"] != os.getpid()
    assert not _alive(seen["pid"])
    assert after.returncode == 0, after.output_tail


def test_runs_side_by_side_each_get_their_own_environment(project: Project, tmp_path: Path) -> None:
    names = [f"member{n}" for n in range(4)]
    seen: dict[str, tuple[RunResult, dict[str, Any]]] = {}

    def run(name: str) -> None:
        env = {"ZYGOTE_TEST_SHOW": "MEMBER,DATABASE_URL", "MEMBER": name}
        seen[name] = _run(project, _url(tmp_path, name), extra_env=env)

    threads = [threading.Thread(target=run, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert sorted(seen) == names
    for name, (result, probe) in seen.items():
        assert result.returncode == 0, result.output_tail
        expected = {"MEMBER": name, "DATABASE_URL": _url(tmp_path, name)}
        assert probe["env"] == probe["c_env"] == expected
    servers = {probe["ppid"] for _result, probe in seen.values()}
    assert len(servers) == 1 and servers <= set(fork_server_pids())


def test_a_runs_variables_do_not_reach_the_next_run_or_stay_in_the_server(
    project: Project, tmp_path: Path
) -> None:
    show = {"ZYGOTE_TEST_SHOW": "ZYGOTE_TEST_SECRET,PGOPTIONS"}
    secret = "s3cr3t-of-the-first-run"
    first, seen_first = _run(
        project,
        _url(tmp_path, "a"),
        extra_env={**show, "ZYGOTE_TEST_SECRET": secret, "PGOPTIONS": "-c lock_timeout=5s"},
    )
    second, seen_second = _run(project, _url(tmp_path, "b"), extra_env=show)

    assert first.returncode == 0 and second.returncode == 0
    # Through putenv too: libpq reads PGOPTIONS with getenv().
    assert seen_first["c_env"] == {"ZYGOTE_TEST_SECRET": secret, "PGOPTIONS": "-c lock_timeout=5s"}
    nothing = {"ZYGOTE_TEST_SECRET": None, "PGOPTIONS": None}
    assert seen_second["env"] == seen_second["c_env"] == nothing
    assert secret not in seen_second["proc_environ"]
    # The server is undumpable, and so is every run it forks: the user's other processes
    # cannot read their memory or /proc/<pid>/environ (root still can).
    assert seen_first["dumpable"] == 0
    held = _environ_of(seen_second["ppid"])
    assert secret not in held and "DATABASE_URL" not in held


def test_dropped_and_import_variables_reach_neither_a_forked_run_nor_its_server(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_KEY", "dashboard-secret")
    monkeypatch.setenv("PROD_DATABASE_URL", "postgresql://u:pw@prod/db")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("KEPT_FOR_THE_PROJECT", "1")
    names = ["SECRET_KEY", "PROD_DATABASE_URL", "PYTHONPATH", "KEPT_FOR_THE_PROJECT"]

    result, seen = _run(
        project,
        _url(tmp_path, "a"),
        drop_env={"SECRET_KEY", "PROD_DATABASE_URL"},
        extra_env={"ZYGOTE_TEST_SHOW": ",".join(names)},
    )

    assert result.returncode == 0, result.output_tail
    expected = {**dict.fromkeys(names), "KEPT_FOR_THE_PROJECT": "1"}
    assert seen["env"] == seen["c_env"] == expected
    assert seen["ppid"] in fork_server_pids()
    for where in (seen["proc_environ"], _environ_of(seen["ppid"])):
        assert "dashboard-secret" not in where and "prod/db" not in where
        assert f"PYTHONPATH={tmp_path}" not in where


def test_a_server_that_died_is_replaced_on_the_next_run(
    project: Project, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _result, before = _run(project, _url(tmp_path, "a"))
    assert before["ppid"] in fork_server_pids()
    os.kill(before["ppid"], signal.SIGKILL)
    assert _wait_dead([before["ppid"]], within=2) == []

    with caplog.at_level(logging.WARNING, logger="dashboard.runner.zygote"):
        result, after = _run(project, _url(tmp_path, "b"))

    assert result.returncode == 0, result.output_tail
    assert after["preloaded"] and after["ppid"] not in (before["ppid"], os.getpid())
    assert f"fork server (pid {before['ppid']})" in caplog.text


def test_an_interpreter_whose_server_cannot_start_runs_as_before_and_says_why_once(
    project: Project, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    python = tmp_path / "python"
    # Starts the bootstrap and Alembic, refuses the server (whose source names ForkServers).
    python.write_text(
        f'#!/bin/sh\ncase "$*" in *ForkServers*) echo no server here >&2; exit 3;; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    project = dataclasses.replace(project, python=str(python))

    with caplog.at_level(logging.WARNING, logger="dashboard.runner.zygote"):
        first, seen_first = _run(project, _url(tmp_path, "a"))
        second, seen_second = _run(project, _url(tmp_path, "b"))

    assert first.returncode == 0 and second.returncode == 0, second.output_tail
    assert seen_first["ppid"] == seen_second["ppid"] == os.getpid()
    said = [r.getMessage() for r in caplog.records if "could not start" in r.getMessage()]
    assert len(said) == 1 and "no server here" in said[0] and str(python) in said[0]
