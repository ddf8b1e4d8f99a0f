"""Run Alembic in a subprocess for an action: upgrade, downgrade, stamp, offline SQL."""

from __future__ import annotations

import codecs
import configparser
import contextlib
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

from dashboard.config import (
    BadDatabaseURL,
    DashboardConfig,
    Environment,
    Project,
    mask_url,
    parse_database_url,
    secret_spellings,
    url_secrets,
)
from dashboard.databases import sessions
from dashboard.runner import zygote

CHECK_INTERVAL = 0.2  # seconds between time-limit and cancel checks when the child is quiet
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of the process group
DRAIN_GRACE = 1.0  # seconds to wait for EOF after exit, in case a grandchild holds the pipe
TAIL_LINES = 200
MAX_LINE = 64 * 1024  # a longer run of output without a newline is cut into lines
CONFIG_PREFIX = "dashboard-alembic-"  # + the owner's pid: private folders of generated configs
SAFE_PATH_PYTHON = (3, 11)  # -P, which keeps the working directory off sys.path, came in 3.11
VERSION_CHECK_TIMEOUT = 30.0
# Inherited variables that change where the child imports from or what it runs first. Only the
# interpreter's own paths and site-packages remain (installed packages are the deployment's);
# PATH, locale, PYTHONWARNINGS and the rest pass through.
IMPORT_VARIABLES = frozenset(
    {
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONPLATLIBDIR",
        "PYTHONUSERBASE",
        "PYTHONSTARTUP",
        "PYTHONINSPECT",
        "PYTHONPYCACHEPREFIX",
        "PYTHONBREAKPOINT",
        "PYTHONEXECUTABLE",
        "PYTHONCASEOK",
        "PYTHON_PRESITE",
    }
)

PROGRESS_RE = re.compile(
    r"Running (?P<direction>upgrade|downgrade) (?P<sources>.*?) ->(?: (?P<rest>.*))?$"
)
_GENERATED_ID = re.compile(r"[0-9a-f]{12}")
_HERE = re.compile(r"%%|%\(here\)s")
_LEGACY_SYS_PATH_SPLIT = re.compile(r", *|(?: +)|\:")  # Alembic's, without path_separator
_MISSING_MODULE = re.compile(
    r"(?:ModuleNotFoundError|ImportError): No module named '(?P<name>[^']+)'"
)
_TRACEBACK_FILE = re.compile(r'^\s*File "(?P<path>[^"]+)", line \d+')
_SEPARATORS = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}
_OFFLINE_IMPOSSIBLE = (
    "cannot proceed in --sql mode",  # batch mode needs to reflect the table
    "No support for ALTER of constraints in SQLite dialect",
)
_DIALECT_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MySQL"}

# PR_SET_PDEATHSIG is set by this bootstrap, which then execs Alembic's interpreter (_ALEMBIC),
# rather than by preexec_fn: preexec_fn runs Python between fork and exec, which can deadlock
# when another thread (the worker's heartbeat) holds a lock at fork time. The setting survives
# execve. The signal fires when the *thread* that forked the child ends; run_alembic blocks
# that thread until the child has exited, so only the death of the whole worker fires it.
# The bootstrap itself runs isolated (-I), so nothing of its working directory is imported.
# argv: parent pid, the length of the command to exec, that command, then Alembic's arguments.
_BOOTSTRAP = """\
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL) != 0:
        print("warning: PR_SET_PDEATHSIG failed", file=sys.stderr)
    if os.getppid() != int(sys.argv[1]):
        os._exit(1)
count = int(sys.argv[2])
command, rest = sys.argv[3 : 3 + count], sys.argv[3 + count :]
os.execv(sys.executable, [sys.executable, *command, *rest])
"""


def _bootstrap_argv(python: str, command: list[str]) -> list[str]:
    """Return the argv that starts `python <command>` through the bootstrap."""
    return [python, "-I", "-c", _BOOTSTRAP, str(os.getpid()), str(len(command)), *command]


# `python -m alembic`, except that bytecode is looked for only in a fresh, empty folder (argv[1])
# from the moment Alembic itself is loaded: env.py, the revisions and everything they import
# are compiled from the bytes on disk. Python trusts a .pyc whose source has the same size and
# mtime, or any unchecked-hash .pyc, so reading none is the only way to run exactly the approved
# bytes. Alembic and SQLAlchemy come before the switch: installed packages are the deployment's
# (like their source), and compiling them afresh would cost ~2 s of CPU per run.
_ALEMBIC = """\
import sys
prefix = sys.argv.pop(1)
from alembic.config import main
sys.pycache_prefix = prefix
main(prog="alembic")
"""

# With DASHBOARD_ALEMBIC_ZYGOTE unset (or not 0), runs are forked from a server that did the
# imports above once (zygote.py); it falls back to _ALEMBIC's fresh interpreter by itself.
_FORK_SERVERS = zygote.ForkServers(_bootstrap_argv)


def fork_server_pids() -> list[int]:
    """Return the pids of this process's live Alembic fork servers."""
    return _FORK_SERVERS.server_pids()


# Used when the project has no alembic.ini, or one without logging: Alembic reports each
# step ("Running upgrade A -> B") only through the alembic logger at INFO.
LOGGING_SECTIONS = """\
[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
datefmt = %H:%M:%S
"""


# Never handed to Alembic's child: the dashboard's own secrets.
DASHBOARD_SECRETS = ("SECRET_KEY", "DASHBOARD_PASSWORD")


def child_secrets(config: DashboardConfig, env: Environment) -> set[str]:
    """Return the variables Alembic's child must not inherit when it works on env."""
    names = set(DASHBOARD_SECRETS)
    for other in config.environments.values():
        names.update(other.secret_variables)
    for fleet in config.fleets.values():
        names.update(fleet.secret_variables)
    # Its own url_env may stay when it names its database alone (an env.py may read it); a
    # fleet's url_env holds every member's URL, and a password variable is not a database.
    if env.url_env and env.url_key is None and env.fleet is None:
        names.discard(env.url_env)
    for notifier in config.notifiers.values():
        names.update(notifier.secret_variables)  # a webhook URL and its signing secret
    # The child gets its database through DATABASE_URL, never a scratch server's password.
    names.update(p.scratch_url_env for p in config.projects.values() if p.scratch_url_env)
    if config.sso is not None:
        names.update(config.sso.secret_variables)  # the OpenID Connect client secret
    return names


def replay_secrets(config: DashboardConfig) -> set[str]:
    """Return the variables a replay's or `alembic check`'s child must not inherit.

    Every environment's url_env too, its own among them: an env.py that reads that variable
    before DATABASE_URL would replay into the live database.
    """
    names = set(DASHBOARD_SECRETS)
    for env in config.environments.values():
        names.update(env.secret_variables)
    for fleet in config.fleets.values():
        names.update(fleet.secret_variables)
    for notifier in config.notifiers.values():
        names.update(notifier.secret_variables)  # a webhook URL and its signing secret
    names.update(p.scratch_url_env for p in config.projects.values() if p.scratch_url_env)
    if config.sso is not None:
        names.update(config.sso.secret_variables)
    return names


class RunnerError(Exception):
    """Alembic could not be run or did not produce what was asked."""


class OfflineSQLUnavailable(RunnerError):
    """The plan's SQL cannot be rendered without a database connection."""


@dataclass(frozen=True)
class RunResult:
    """How an Alembic run ended and the last lines it printed (passwords masked)."""

    returncode: int | None
    timed_out: bool
    cancelled: bool
    duration_s: float
    output_tail: list[str]

    @property
    def succeeded(self) -> bool:
        """Say whether Alembic finished on its own with exit status 0."""
        return self.returncode == 0 and not self.timed_out and not self.cancelled


@dataclass(frozen=True)
class ApprovedCopy:
    """A private, read-only copy of the approved files, from which Alembic loads the project."""

    folder: Path
    script_location: Path  # env.py and the files beside it
    version_locations: tuple[Path, ...]
    alembic_ini: Path | None  # the approved bytes of the project's ini, if it has one


@dataclass(frozen=True)
class ProgressStep:
    """One step Alembic announced it is about to run."""

    direction: str
    from_revisions: tuple[str, ...]
    to_revisions: tuple[str, ...]
    message: str


class RunOptions(TypedDict, total=False):
    """Keyword options of run_alembic, shared by upgrade and downgrade."""

    on_line: Callable[[str], None] | None
    time_limit: float
    should_cancel: Callable[[], bool] | None
    extra_env: dict[str, str] | None
    drop_env: Collection[str] | None
    session_tag: str | None
    approved: ApprovedCopy | None
    ini_options: dict[str, str] | None


def run_alembic(
    project: Project,
    url: str,
    args: list[str],
    *,
    on_line: Callable[[str], None] | None = None,
    time_limit: float = 1800,
    should_cancel: Callable[[], bool] | None = None,
    extra_env: dict[str, str] | None = None,
    drop_env: Collection[str] | None = None,
    session_tag: str | None = None,
    approved: ApprovedCopy | None = None,
    ini_options: dict[str, str] | None = None,
) -> RunResult:
    """Run `alembic <args>` against url, streaming masked output lines to on_line.

    drop_env names variables of this process the child must not inherit (the dashboard's
    own secrets, other environments' URLs). session_tag names every database session the
    child opens (see databases.sessions), so they can be found and stopped from outside.
    With approved, Alembic loads env.py, the revisions and the ini from that copy only.
    ini_options are set in the generated ini's [alembic] section over the project's own (a
    replay's version_table_schema).
    """
    mask = _Masker(url)
    tail: deque[str] = deque(maxlen=TAIL_LINES)

    def emit(line: str) -> None:
        line = mask(line)
        tail.append(line)
        if on_line is not None:
            on_line(line)

    outcome = _execute(
        project,
        url,
        args,
        on_stdout=emit,
        on_stderr=None,
        time_limit=time_limit,
        should_cancel=should_cancel,
        extra_env=extra_env,
        drop_env=drop_env,
        session_tag=session_tag,
        approved=approved,
        ini_options=ini_options,
    )
    if approved is not None and outcome.stopped is None and outcome.returncode != 0:
        hint = _missing_module_hint(tail, approved)
        if hint:
            emit(f"FAILED: {hint}")
    return RunResult(
        returncode=outcome.returncode,
        timed_out=outcome.stopped == "timed_out",
        cancelled=outcome.stopped == "cancelled",
        duration_s=outcome.duration_s,
        output_tail=list(tail),
    )


def upgrade(project: Project, url: str, target: str, **kw: Unpack[RunOptions]) -> RunResult:
    """Upgrade the database at url to target."""
    return run_alembic(project, url, ["upgrade", target], **kw)


def downgrade(project: Project, url: str, target: str, **kw: Unpack[RunOptions]) -> RunResult:
    """Downgrade the database at url to target."""
    return run_alembic(project, url, ["downgrade", target], **kw)


def stamp(
    project: Project, url: str, revisions: Sequence[str], **kw: Unpack[RunOptions]
) -> RunResult:
    """Write revisions into the version table at url (creating it if missing); run no revision."""
    if not revisions:
        raise ValueError("a stamp needs at least one revision")
    return run_alembic(project, url, stamp_arguments(revisions), **kw)


def stamp_arguments(revisions: Sequence[str]) -> list[str]:
    """Return Alembic's arguments for stamping exactly these revisions."""
    return ["stamp", *revisions]


def offline_sql(
    project: Project,
    url: str,
    *,
    direction: str,
    from_rev: str | None,
    to_rev: str,
    timeout: float = 120,
    drop_env: Collection[str] | None = None,
    approved: ApprovedCopy | None = None,
) -> str:
    """Return the SQL Alembic would run from from_rev to to_rev, without connecting."""
    if direction == "upgrade":
        # From base, the plain target renders CREATE TABLE alembic_version too.
        revision_range = to_rev if from_rev is None else f"{from_rev}:{to_rev}"
    elif direction == "downgrade":
        if from_rev is None:
            raise ValueError("an offline downgrade needs the revision it starts from")
        revision_range = f"{from_rev}:{to_rev}"
    else:
        raise ValueError(f"direction must be upgrade or downgrade, not {direction!r}")
    return _offline(
        project,
        url,
        [direction, revision_range],
        label=f"{direction} {revision_range}",
        timeout=timeout,
        drop_env=drop_env,
        approved=approved,
    )


def offline_stamp_sql(
    project: Project,
    url: str,
    revisions: Sequence[str],
    *,
    timeout: float = 120,
    drop_env: Collection[str] | None = None,
    approved: ApprovedCopy | None = None,
) -> str:
    """Return the SQL `alembic stamp <revisions>` writes into an empty version table, offline.

    Offline, Alembic starts from no version table: the SQL begins with its CREATE TABLE.
    """
    if not revisions:
        raise ValueError("a stamp needs at least one revision")
    return _offline(
        project,
        url,
        stamp_arguments(revisions),
        label=f"stamp {' '.join(revisions)}",
        timeout=timeout,
        drop_env=drop_env,
        approved=approved,
    )


def _offline(
    project: Project,
    url: str,
    args: list[str],
    *,
    label: str,
    timeout: float,
    drop_env: Collection[str] | None,
    approved: ApprovedCopy | None,
) -> str:
    """Run `alembic <args> --sql` and return the SQL it printed, or raise why there is none."""
    mask = _Masker(url)
    sql: list[str] = []
    diagnostics: deque[str] = deque(maxlen=TAIL_LINES)
    outcome = _execute(
        project,
        url,
        [*args, "--sql"],
        on_stdout=lambda line: sql.append(mask(line)),
        on_stderr=lambda line: diagnostics.append(mask(line)),
        time_limit=timeout,
        should_cancel=None,
        extra_env=None,
        drop_env=drop_env,
        approved=approved,
    )
    if outcome.stopped == "timed_out":
        raise RunnerError(f"offline SQL for {label} took longer than {timeout:g} s")
    if outcome.returncode == 0:
        return "\n".join(sql) + "\n"
    # Alembic prints its own failures as "FAILED: ..." on stdout, tracebacks on stderr.
    failures = [line for line in sql if line.startswith("FAILED:")]
    detail = [*failures, *(line for line in diagnostics if not line.startswith("INFO"))][-20:]
    hint = _missing_module_hint([*diagnostics, *sql], approved) if approved else None
    if hint:
        detail = [f"FAILED: {hint}", *detail]
    if any(marker in line for line in detail for marker in _OFFLINE_IMPOSSIBLE):
        raise OfflineSQLUnavailable(
            f"offline SQL is not available for this plan on {_dialect_name(url)}: "
            "batch operations cannot be rendered offline"
        )
    raise RunnerError(
        f"alembic {label} --sql exited with status {outcome.returncode}:\n" + "\n".join(detail)
    )


def parse_progress(
    line: str, known_revisions: Collection[str] | None = None
) -> ProgressStep | None:
    """Parse Alembic's "Running upgrade A -> B, message" line, or return None.

    A downgrade of a merge point lists several targets, and Alembic joins targets and
    message with the same ", ": a token counts as a target when it is in known_revisions,
    or, without them, when it looks like an id Alembic generates (12 hex digits).
    """
    match = PROGRESS_RE.search(line)
    if match is None:
        return None
    direction = match["direction"]
    sources = tuple(match["sources"].split(", ")) if match["sources"] else ()
    parts = (match["rest"] or "").split(", ")
    count = 1
    if direction == "downgrade" and parts[0]:
        while count < len(parts) and _is_revision(parts[count], known_revisions):
            count += 1
    targets = tuple(part for part in parts[:count] if part)
    return ProgressStep(
        direction=direction,
        from_revisions=sources,
        to_revisions=targets,
        message=", ".join(parts[count:]),
    )


def _is_revision(token: str, known_revisions: Collection[str] | None) -> bool:
    if known_revisions is not None:
        return token in known_revisions
    return _GENERATED_ID.fullmatch(token) is not None


@dataclass(frozen=True)
class _Outcome:
    returncode: int | None
    stopped: str | None  # "timed_out", "cancelled" or None when the child ended on its own
    duration_s: float


def _execute(
    project: Project,
    url: str,
    args: list[str],
    *,
    on_stdout: Callable[[str], None],
    on_stderr: Callable[[str], None] | None,
    time_limit: float,
    should_cancel: Callable[[], bool] | None,
    extra_env: dict[str, str] | None,
    drop_env: Collection[str] | None = None,
    session_tag: str | None = None,
    approved: ApprovedCopy | None = None,
    ini_options: dict[str, str] | None = None,
) -> _Outcome:
    python = project.python or sys.executable
    if approved is not None:
        _require_safe_path(python)
    dropped = set(drop_env or ()) | IMPORT_VARIABLES
    inherited = {name: value for name, value in os.environ.items() if name not in dropped}
    tag_env: dict[str, str] = {}
    if session_tag is not None:
        # Only the child's copy of the URL may change (MySQL's init_command), never the action's.
        url, tag_env = sessions.tag_child(url, session_tag, {**inherited, **(extra_env or {})})
    env = {
        **inherited,
        **(extra_env or {}),
        **tag_env,
        "DATABASE_URL": url,  # never on the command line: `ps` shows it to every user
        "PYTHONUNBUFFERED": "1",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if approved is not None:
        # With -P nothing of the working directory is imported; relative paths and a
        # pyproject.toml Alembic looks for are found in the copy, never in the live folder.
        cwd = approved.folder
    elif project.alembic_ini is not None:
        cwd = project.alembic_ini.parent  # prepend_sys_path and relative paths start here
    else:
        cwd = project.script_location.parent
    _sweep_config_folders()
    with tempfile.TemporaryDirectory(prefix=f"{CONFIG_PREFIX}{os.getpid()}-") as folder:
        ini = _write_config(project, url, Path(folder), approved=approved, ini_options=ini_options)
        cache = Path(folder) / "pycache"  # fresh, empty, 0700, removed with the run
        os.mkdir(cache, 0o700)
        safe_path = ["-P"] if approved is not None else []
        command = [*safe_path, "-c", _ALEMBIC, str(cache)]
        alembic_args = ["-c", str(ini), *args]
        forked = zygote.Run(
            python=python,
            safe_path=approved is not None,
            arguments=alembic_args,
            pycache_prefix=str(cache),
            env=env,
            cwd=str(cwd),
            command_line=[python, *safe_path, "-m", "alembic", *alembic_args],
        )
        return _supervise(
            [*_bootstrap_argv(python, command), *alembic_args],
            forked=forked,
            cwd=cwd,
            env=env,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            time_limit=time_limit,
            should_cancel=should_cancel,
        )


def _write_config(
    project: Project,
    url: str,
    folder: Path,
    *,
    approved: ApprovedCopy | None = None,
    ini_options: dict[str, str] | None = None,
) -> Path:
    """Write the ini Alembic will read, with the URL, readable by this user only."""
    parser = configparser.RawConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    sys_path: list[Path] | None = None
    if project.alembic_ini is not None:
        source = project.alembic_ini
        # The generated ini lives elsewhere, so %(here)s is set to the folder of the ini it
        # came from: the project's, or the approved copy's root where its approved bytes sit.
        here = project.alembic_ini.parent
        if approved is not None:
            if approved.alembic_ini is None:
                raise RunnerError(f"the approved files hold no copy of {project.alembic_ini}")
            source = approved.alembic_ini
            here = approved.alembic_ini.parent
        try:
            text = source.read_text(encoding="utf-8")
            _read_ini(parser, text, here, source=str(project.alembic_ini))
            if approved is not None:
                sys_path = _approved_sys_path(
                    project.alembic_ini, project.script_location, approved, text
                )
        except (OSError, UnicodeDecodeError, configparser.Error) as exc:
            raise RunnerError(f"cannot read {project.alembic_ini}: {exc}") from exc
    if not parser.has_section("alembic"):
        parser.add_section("alembic")
    main = parser["alembic"]
    if approved is None:
        main["script_location"] = _ini_escape(str(project.script_location))
    else:
        main["script_location"] = _ini_escape(str(approved.script_location))
        main["version_locations"] = _locations_value(main, approved.version_locations)
        if sys_path is not None:
            main["prepend_sys_path"] = _locations_value(main, tuple(sys_path), sys_path=True)
        # Pinned here, where the ini wins over a pyproject.toml in the working directory.
        main.setdefault("recursive_version_locations", "false")
    main["sqlalchemy.url"] = _ini_escape(url)
    # Not keys Alembic reads itself, but an env.py can pass them to context.configure().
    main.setdefault("version_table", _ini_escape(project.version_table))
    if project.version_table_schema is not None:
        main.setdefault("version_table_schema", _ini_escape(project.version_table_schema))
    for key, value in (ini_options or {}).items():
        main[key] = _ini_escape(value)
    if not parser.has_section("loggers"):
        parser.read_string(LOGGING_SECTIONS)
    path = folder / "alembic.ini"
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        parser.write(handle)
    return path


def _read_ini(parser: configparser.RawConfigParser, text: str, here: Path, *, source: str) -> None:
    """Read an ini's text into parser with %(here)s meaning here, as Alembic would."""
    value = _ini_escape(str(here))
    parser.read_string(_HERE.sub(lambda m: m[0] if m[0] == "%%" else value, text), source=source)


def _approved_sys_path(
    live_ini: Path, script_location: Path, approved: ApprovedCopy, text: str
) -> list[Path] | None:
    """Return the copy's folders for the ini's prepend_sys_path, or None if it names none.

    Each entry is read as it meant in the live project (relative to the ini's folder, where
    runs used to start); the live script folder becomes the copy's, whose .py files are
    approved, and every other entry the copy's root: no folder of the live project is left.
    """
    live = configparser.RawConfigParser()
    _read_ini(live, text, live_ini.parent, source=str(live_ini))
    value = live.get("alembic", "prepend_sys_path", fallback="")
    if not value:
        return None
    separator = live.get("alembic", "path_separator", fallback=None)
    if separator is None:
        entries = _LEGACY_SYS_PATH_SPLIT.split(value)
    else:
        entries = [entry.strip() for entry in value.split(_SEPARATORS.get(separator, " ")) if entry]
    script = os.path.realpath(script_location)
    mapped: list[Path] = []
    for entry in entries:
        meant = os.path.realpath(os.path.join(live_ini.parent, entry))
        folder = approved.script_location if meant == script else approved.folder
        if folder not in mapped:
            mapped.append(folder)
    return mapped


def _locations_value(
    main: configparser.SectionProxy, locations: tuple[Path, ...], *, sys_path: bool = False
) -> str:
    """Join folders the way Alembic will split version_locations (or prepend_sys_path)."""
    # Without path_separator Alembic splits on spaces and commas, prepend_sys_path on colons too.
    separator = " "
    names = ("path_separator",) if sys_path else ("path_separator", "version_path_separator")
    unsafe = ",%:" if sys_path else ",%"
    for name in names:
        if name in main:
            separator = _SEPARATORS.get(main[name].strip(), " ")
            unsafe = ",%"
            break
    for location in locations:
        text = str(location)
        if separator in text or any(c.isspace() or c in unsafe for c in text):
            raise RunnerError(f"the approved copy's folder {text} cannot be named in an ini")
    return separator.join(str(location) for location in locations)


# (interpreter, size, mtime_ns, inode) -> its (major, minor) version
_python_versions: dict[tuple[str, int, int, int], tuple[int, int]] = {}


def _require_safe_path(python: str) -> None:
    """Refuse an interpreter that cannot keep the working directory off sys.path (-P)."""
    version = tuple(sys.version_info[:2]) if python == sys.executable else _python_version(python)
    if version < SAFE_PATH_PYTHON:
        raise RunnerError(
            f"the project's python {python} is Python {version[0]}.{version[1]}; running"
            " Alembic from the approved files needs Python 3.11 or later, whose -P option keeps"
            " the project's folder off sys.path: set the project's python to a newer interpreter"
        )


def _python_version(python: str) -> tuple[int, int]:
    """Return the interpreter's version, asked once per build of the file."""
    path = shutil.which(python) or python
    try:
        info = os.stat(path)
    except OSError as exc:
        raise RunnerError(f"cannot start {python}: {exc}") from exc
    key = (os.path.realpath(path), info.st_size, info.st_mtime_ns, info.st_ino)
    known = _python_versions.get(key)
    if known is not None:
        return known
    try:
        done = subprocess.run(
            [path, "-I", "-S", "-c", "import sys; print(*sys.version_info[:2])"],
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=VERSION_CHECK_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RunnerError(f"cannot start {python}: {exc}") from exc
    match = re.fullmatch(r"(\d+) (\d+)", done.stdout.strip())
    if done.returncode != 0 or match is None:
        raise RunnerError(f"cannot tell which Python {python} is (exit status {done.returncode})")
    version = (int(match[1]), int(match[2]))
    _python_versions[key] = version
    return version


def _missing_module_hint(lines: Iterable[str], approved: ApprovedCopy) -> str | None:
    """Explain a failed import of code the approved files do not hold, from a traceback."""
    importer: str | None = None
    missing: tuple[str | None, str] | None = None
    for line in lines:
        if frame := _TRACEBACK_FILE.match(line):
            path = Path(frame["path"])
            if path.is_relative_to(approved.folder):
                importer = _copy_file_name(path, approved)
        elif found := _MISSING_MODULE.search(line):
            missing = (importer, found["name"])
            importer = None
    if missing is None:
        return None
    who, name = missing
    return (
        f"{who or 'the migration code'} imports {name}, which is not part of the approved files;"
        " install the application into the project's `python` interpreter, or keep the module"
        " beside env.py with prepend_sys_path naming that folder: a run reads nothing else of"
        " the project's folder"
    )


def _copy_file_name(path: Path, approved: ApprovedCopy) -> str:
    """Name a file of the copy the way its project knows it."""
    if path.is_relative_to(approved.script_location):
        return path.relative_to(approved.script_location).as_posix()
    return f"revision file {path.name}"


def _sweep_config_folders() -> None:
    """Remove config folders (they hold passwords) left behind by killed workers."""
    owner = re.compile(re.escape(CONFIG_PREFIX) + r"(\d+)-")
    for entry in Path(tempfile.gettempdir()).glob(f"{CONFIG_PREFIX}*"):
        match = owner.match(entry.name)
        if match is None or int(match[1]) == os.getpid():
            continue
        try:
            os.kill(int(match[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            pass  # alive, and someone else's
        except OverflowError:
            pass  # no pid: not a folder a worker made, and no reason to stop every run


def _ini_escape(value: str) -> str:
    return value.replace("%", "%%")


def _supervise(
    argv: list[str],
    *,
    forked: zygote.Run | None = None,
    cwd: Path,
    env: dict[str, str],
    on_stdout: Callable[[str], None],
    on_stderr: Callable[[str], None] | None,
    time_limit: float,
    should_cancel: Callable[[], bool] | None,
) -> _Outcome:
    """Run argv in its own process group, pump its output, stop it when told to.

    With forked, the same run is forked from a fork server when one can take it.
    """
    started = time.monotonic()
    proc, pipes = _start(argv, forked, cwd=cwd, env=env, split_stderr=on_stderr is not None)
    sinks = (on_stdout, on_stderr)
    streams = [_LineStream(fd, sink) for fd, sink in zip(pipes, sinks, strict=False) if sink]
    # Readable when the child exits, so the loop notices at once instead of at its next check;
    # a forked run's is its server's report, which comes while the server keeps the pid.
    exit_fd = _open_pidfd(proc.pid) if isinstance(proc, subprocess.Popen) else None
    watch_fd = exit_fd if isinstance(proc, subprocess.Popen) else proc.fileno()
    stopped: str | None = None
    term_sent_at: float | None = None
    exited_at: float | None = None
    group_killed = False
    last_check = started
    try:
        with selectors.DefaultSelector() as selector:
            for stream in streams:
                os.set_blocking(stream.fd, False)
                selector.register(stream.fd, selectors.EVENT_READ, stream)
            if watch_fd is not None:
                selector.register(watch_fd, selectors.EVENT_READ, None)
            while True:
                if selector.get_map():
                    for key, _ in selector.select(CHECK_INTERVAL):
                        if key.data is None or not key.data.read():
                            selector.unregister(key.fd)
                else:
                    time.sleep(CHECK_INTERVAL)
                now = time.monotonic()
                if exited_at is None and _has_exited(proc):
                    exited_at = now
                if exited_at is not None:
                    if stopped and not group_killed:
                        # Grandchildren may outlive the leader; its zombie still pins the
                        # group id, so this cannot hit a recycled group.
                        _signal_group(proc, signal.SIGKILL)
                        group_killed = True
                    if not selector.get_map() or now - exited_at >= DRAIN_GRACE:
                        break
                    continue
                if stopped is None and now - last_check >= CHECK_INTERVAL:
                    last_check = now
                    if now - started >= time_limit:
                        stopped = "timed_out"
                    elif should_cancel is not None and should_cancel():
                        stopped = "cancelled"
                    if stopped:
                        _signal_group(proc, signal.SIGTERM)
                        term_sent_at = now
                if term_sent_at is not None and now - term_sent_at >= KILL_GRACE:
                    _signal_group(proc, signal.SIGKILL)
                    term_sent_at = None
        for stream in streams:
            stream.finish()
    finally:
        if exited_at is None and not _has_exited(proc):
            # Unwinding on an error (a failing on_line, KeyboardInterrupt): never leave it running.
            _signal_group(proc, signal.SIGKILL)
        proc.wait()
        for fd in pipes:
            os.close(fd)
        if exit_fd is not None:
            os.close(exit_fd)
    return _Outcome(proc.returncode, stopped, time.monotonic() - started)


def _start(
    argv: list[str],
    forked: zygote.Run | None,
    *,
    cwd: Path,
    env: dict[str, str],
    split_stderr: bool,
) -> tuple[subprocess.Popen[bytes] | zygote.ForkedRun, list[int]]:
    """Start the run in a session of its own; return it and the read ends of its output."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe() if split_stderr else (None, out_w)
    pipes = [out_r] if err_r is None else [out_r, err_r]
    proc: subprocess.Popen[bytes] | zygote.ForkedRun | None = None
    try:
        if forked is not None:
            try:
                proc = _FORK_SERVERS.spawn(forked, stdout=out_w, stderr=err_w)
            except zygote.ServerFailed as exc:
                raise RunnerError(f"cannot run Alembic: {exc}") from exc
        if proc is None:
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out_w,
                    stderr=err_w,
                    start_new_session=True,
                )
            except OSError as exc:
                raise RunnerError(f"cannot start {argv[0]}: {exc}") from exc
    except BaseException:
        for fd in pipes:
            os.close(fd)
        raise
    finally:
        os.close(out_w)
        if err_w != out_w:
            os.close(err_w)
    return proc, pipes


def _open_pidfd(pid: int) -> int | None:
    """Return a descriptor that becomes readable when pid exits (Linux 5.3+), or None."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return int(pidfd_open(pid))
    except OSError:
        return None


def _has_exited(proc: subprocess.Popen[bytes] | zygote.ForkedRun) -> bool:
    """Say whether the child exited, without reaping it (its pid stays reserved)."""
    if isinstance(proc, zygote.ForkedRun):
        return proc.poll() is not None  # its server reaps it only once we have waited
    try:
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        return os.waitid(os.P_PID, proc.pid, flags) is not None
    except ChildProcessError:
        return True


def _signal_group(proc: subprocess.Popen[bytes] | zygote.ForkedRun, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


class _LineStream:
    """Split one pipe's bytes into text lines as they arrive."""

    def __init__(self, fd: int, sink: Callable[[str], None]) -> None:
        self.fd = fd
        self.sink = sink
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""
        self.finished = False

    def read(self) -> bool:
        """Consume what is available; return False at end of file."""
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            self.finish()
            return False
        *lines, self.pending = (self.pending + self.decoder.decode(chunk)).split("\n")
        for line in lines:
            self.sink(line.removesuffix("\r"))
        if len(self.pending) > MAX_LINE:
            self.sink(self.pending)
            self.pending = ""
        return True

    def finish(self) -> None:
        """Emit a last line that had no newline."""
        if self.finished:
            return
        self.finished = True
        rest = self.pending + self.decoder.decode(b"", final=True)
        self.pending = ""
        if rest:
            self.sink(rest.removesuffix("\r"))


class _Masker:
    """Replace a database URL and its password wherever they appear in a line."""

    def __init__(self, url: str) -> None:
        self.replacement_url = mask_url(url)
        urls = {url}
        passwords: set[str] = set()
        try:
            parsed = parse_database_url(url)
        except BadDatabaseURL:
            parsed = None
        if parsed is not None:
            # SQLAlchemy re-renders URLs with its own escaping, which differs from both quotes.
            rendered = parsed.render_as_string(hide_password=False)
            urls.add(rendered)
            for password in url_secrets(parsed):
                for form in secret_spellings(password):
                    passwords |= {form, _ini_escape(form)}
        self.urls = sorted(urls | {_ini_escape(u) for u in urls}, key=len, reverse=True)
        self.passwords = sorted(passwords, key=len, reverse=True)

    def __call__(self, line: str) -> str:
        for secret in self.urls:
            line = line.replace(secret, self.replacement_url)
        for secret in self.passwords:
            line = line.replace(secret, "***")
        return line


def _dialect_name(url: str) -> str:
    try:
        backend = parse_database_url(url).get_backend_name()
    except BadDatabaseURL:
        return "this database"
    return _DIALECT_NAMES.get(backend, backend)
