"""Projects and environments: their dataclasses, URL helpers and the parsing of their tables."""

from __future__ import annotations

import importlib.util
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from dashboard.config.windows import Window, WindowError, parse_windows

PROJECT_KEYS = {
    "script_location",
    "alembic_ini",
    "version_table",
    "version_table_schema",
    "loader",
    "python",
    "description",
    "scratch_url",
    "scratch_url_env",
    "check_models",
    "replay_time_limit",
    "source_root",
}
ENVIRONMENT_KEYS = {
    "project",
    "url",
    "url_env",
    "timeout",
    "time_limit",
    "approvals_required",
    "downgrade_approvals_required",
    "order",
    "description",
    "schema_check_interval",
    "schema_timeout",
    "stamp_approvals_required",
    "lock_timeout",
    "statement_timeout",
    "lock_retries",
    "run_lock_wait",
    "windows",
}
LOADERS = ("static", "alembic")
# Names appear in URLs, element ids and file names: keep them to one plain word.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
# Upper bounds keep deadlines computable; a read or a run beyond them is a mistake.
MAX_TIMEOUT = 3600.0
MAX_TIME_LIMIT = 7 * 24 * 3600.0
# Query parameters that drivers take as a password.
SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "sslpassword")
MAX_PORT = 65535
MAX_LOCK_RETRIES = 10
# A duration as PostgreSQL writes one ("5s", "500ms", "10min", "1h"); a bare TOML number is seconds.
DURATION = re.compile(r"\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|min|h)\s*\Z")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0}


class ConfigError(Exception):
    """The config file cannot be used; the message names the file, table and key."""


class NotConfigured(Exception):
    """An environment's database URL is not available (its variable is unset or unusable)."""


class BadDatabaseURL(ValueError):
    """A database URL that cannot be parsed, or that SQLAlchemy would misread."""


@dataclass(frozen=True)
class Project:
    """One Alembic script directory and its version table settings."""

    name: str
    script_location: Path
    alembic_ini: Path | None = None
    version_table: str = "alembic_version"
    version_table_schema: str | None = None
    loader: str = "static"
    python: str | None = None
    description: str = ""
    # A server where drift checks may create and drop scratch databases (Atlas's "dev database").
    scratch_url: str | None = field(default=None, repr=False)
    scratch_url_env: str | None = None
    # Run `alembic check` (imports the project's models) against the reference at the heads.
    check_models: bool = False
    replay_time_limit: float = 600.0
    # Where the application's package lives, for constants a revision imports (read, never run).
    source_root: Path | None = None

    def scratch_database_url(self) -> str | None:
        """Return the scratch server's URL with its password, or None when none is configured."""
        if self.scratch_url is not None:
            return with_installed_driver(self.scratch_url)
        if self.scratch_url_env is None:
            return None
        value = os.environ.get(self.scratch_url_env, "").strip()
        if not value:
            raise NotConfigured(f"no scratch server: {self.scratch_url_env} is not set")
        try:
            return with_installed_driver(value)
        except BadDatabaseURL as exc:
            raise NotConfigured(f"no scratch server: {self.scratch_url_env} is {exc}") from None


@dataclass(frozen=True)
class Environment:
    """One database that a project migrates."""

    name: str
    project: str
    url: str | None = field(default=None, repr=False)
    url_env: str | None = None
    timeout: float = 5.0
    time_limit: float = 1800.0
    approvals_required: int = 0
    downgrade_approvals_required: int = 0
    order: int = 0
    description: str = ""
    # Seconds between the worker's schema drift checks; 0 turns periodic checks off.
    schema_check_interval: float = 3600.0
    # Seconds a whole live schema read (every table) may take.
    schema_timeout: float = 60.0
    # A stamp rewrites what the dashboard believes, so by default it needs a downgrade's approvals.
    stamp_approvals_required: int = 0
    # Seconds any statement of the Alembic child waits for a lock before it gives up.
    lock_timeout: float = 5.0
    # Seconds any statement of the Alembic child may run; None leaves the server's setting.
    statement_timeout: float | None = None
    # How often a run rolled back by a lock timeout is tried again (PostgreSQL only).
    lock_retries: int = 3
    # Seconds an action waits for another run to release the environment's run lock.
    run_lock_wait: float = 60.0
    # Why the inline url cannot be used, naming file, table and key; the rest still works.
    url_error: str | None = None
    # A fleet member: its fleet and its own name there (the environment is "fleet/member").
    fleet: str | None = None
    member: str | None = None
    # The variable holding the password the url (a fleet's url_template) leaves out.
    password_env: str | None = None
    # The member's name in url_env when that variable holds one "name=url" a line.
    url_key: str | None = None
    # A schema-per-tenant member's schema: first on every session's search_path, so its
    # version table and its tables are the schema's.
    search_path: str | None = None
    # When actions may start ("Sat 02:00-04:00 Europe/Berlin", ...); none: at any time.
    windows: tuple[Window, ...] = ()
    # Why the windows cannot be read, naming file, table and text: no window ever opens.
    windows_error: str | None = None

    def database_url(self) -> str:
        """Return the URL with its password, or raise NotConfigured."""
        if self.url_error is not None:
            raise NotConfigured(self.url_error)
        if self.url is not None:
            return self._finished(self.url)
        value = os.environ.get(self.url_env or "", "").strip()
        if not value:
            raise NotConfigured(f"not configured: {self.url_env} is not set")
        where = str(self.url_env)
        if self.url_key is not None:
            value = url_lines(value).get(self.url_key, "")
            where = f"{self.url_env}'s line {self.url_key}="
            if not value:
                raise NotConfigured(f"not configured: {self.url_env} has no line {self.url_key}=")
        try:
            return self._finished(value)
        except BadDatabaseURL as exc:
            raise NotConfigured(f"not configured: {where} is {exc}") from None

    def _finished(self, url: str) -> str:
        """Return url with the installed driver, the password variable's value and search_path."""
        if self.password_env is None and self.search_path is None:
            return with_installed_driver(url)
        parsed = parse_database_url(with_installed_driver(url))
        if self.password_env is not None:
            password = os.environ.get(self.password_env, "")
            if not password:
                raise NotConfigured(f"not configured: {self.password_env} is not set")
            parsed = parsed.set(password=password)
        if self.search_path is not None:
            existing = parsed.query.get("options")
            option = f"-c search_path={self.search_path}"
            if isinstance(existing, str) and existing.strip():
                option = f"{existing.strip()} {option}"
            parsed = parsed.update_query_dict({"options": option})
        return parsed.render_as_string(hide_password=False)

    @property
    def secret_variables(self) -> set[str]:
        """Return the variables holding this environment's URL or password."""
        return {name for name in (self.url_env, self.password_env) if name}

    def display_url(self) -> str:
        """Return the URL with its password masked, or why there is none."""
        try:
            return mask_url(self.database_url())
        except NotConfigured as exc:
            return str(exc)

    def approvals_for(self, direction: str) -> int:
        """Return how many approvals an action in this direction needs."""
        if direction == "downgrade":
            return self.downgrade_approvals_required
        if direction == "stamp":
            return self.stamp_approvals_required
        return self.approvals_required


# SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3 and mysql:// as mysqlclient; people write
# the bare forms, and we ship psycopg2 and PyMySQL.
_DEFAULT_DRIVERS = {
    "postgresql": ("psycopg", "postgresql+psycopg2"),
    "mysql": ("MySQLdb", "mysql+pymysql"),
    "mariadb": ("MySQLdb", "mariadb+pymysql"),
}


def parse_duration(value: object) -> float:
    """Return a duration in seconds from a number of seconds or text like "5s" or "10min".

    Raises ValueError naming the forms it takes.
    """
    if isinstance(value, bool):
        raise ValueError('a duration is a number of seconds or text like "5s", not true/false')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := DURATION.match(value)):
        seconds = float(match["number"]) * _DURATION_UNITS[match["unit"]]
    else:
        raise ValueError(
            f'a duration is a number of seconds or text like "500ms", "5s", "10min"'
            f' or "1h", not {value!r}'
        )
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be finite, not {value!r}")
    return seconds


def render_duration(seconds: float) -> str:
    """Return seconds the way PostgreSQL and the config write them: "5s", "1500ms", "10min"."""
    millis = max(1, round(seconds * 1000))
    if millis % 3_600_000 == 0:
        return f"{millis // 3_600_000}h"
    if millis % 60_000 == 0:
        return f"{millis // 60_000}min"
    if millis % 1000 == 0:
        return f"{millis // 1000}s"
    return f"{millis}ms"


def parse_database_url(url: str) -> URL:
    """Parse a database URL, refusing one SQLAlchemy would misread; never quote it back."""
    if "\x00" in url:
        # make_url takes it, but no driver can pass a NUL on to the server or a file name.
        raise BadDatabaseURL("not a usable database URL: it holds a NUL character")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        # The original message may quote the URL, password and all.
        raise BadDatabaseURL("not a database URL") from None
    if parsed.host and "@" in parsed.host:
        # make_url ends the password at its first '@' and takes the rest for the host.
        raise BadDatabaseURL(
            "not a usable database URL: write an '@' in a user name or password as %40"
        ) from None
    if parsed.port is not None and not 0 < parsed.port <= MAX_PORT:
        # Not quoted: without an '@', make_url reads "user:password" as host and port.
        raise BadDatabaseURL(
            f"not a usable database URL: its port is not between 1 and {MAX_PORT}"
        ) from None
    return parsed


def url_secrets(url: URL) -> list[str]:
    """Return the passwords a parsed URL carries: its own and any in its query."""
    found = [str(url.password)] if url.password else []
    for key, value in url.query.items():
        if key.lower() in SECRET_QUERY_KEYS:
            found.extend([value] if isinstance(value, str) else value)
    return [secret for secret in found if secret]


def secret_spellings(secret: str) -> set[str]:
    """Return the ways a password appears in text: as is, and quoted as URLs carry it."""
    # quote(..., safe=" +") is how SQLAlchemy writes a password into a rendered URL.
    return {secret, quote(secret, safe=""), quote(secret, safe=" +"), quote_plus(secret)}


def url_lines(text: str) -> dict[str, str]:
    """Return the "name=url" lines of a variable's value by name; other lines are left out."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, url = line.strip().partition("=")
        if sep and NAME.match(name.strip()) and url.strip():
            found.setdefault(name.strip(), url.strip())
    return found


def with_installed_driver(url: str) -> str:
    """Point a URL without an explicit driver at the driver this installation has."""
    parsed = parse_database_url(url)
    default = _DEFAULT_DRIVERS.get(parsed.drivername)
    if default is None or importlib.util.find_spec(default[0]) is not None:
        return url
    return parsed.set(drivername=default[1]).render_as_string(hide_password=False)


def mask_url(url: str) -> str:
    """Render a database URL with its passwords (also in the query) replaced by ***."""
    try:
        parsed = parse_database_url(url)
    except BadDatabaseURL as exc:
        return f"<{exc}>"
    query = {
        key: "***" if key.lower() in SECRET_QUERY_KEYS else value
        for key, value in parsed.query.items()
    }
    masked = parsed.set(query=query).render_as_string(hide_password=True)
    return masked.replace("=%2A%2A%2A", "=***")


def url_identity(url: str) -> str:
    """Render what a URL points at (backend, user, host, port, database, options), no secrets."""
    parsed = parse_database_url(url)
    query = {k: v for k, v in parsed.query.items() if k.lower() not in SECRET_QUERY_KEYS}
    # The driver is how we connect, not where: postgresql:// and postgresql+psycopg2:// match.
    # (URL.set takes password=None as "leave it", so build the URL anew.)
    bare = URL.create(
        parsed.get_backend_name(),
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query=query,
    )
    return bare.render_as_string(hide_password=False)


def table_of(path: Path, raw: dict[str, Any], key: str, where: str | None = None) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{where or key}] must be a table")
    return value


def check_keys(path: Path, where: str, table: dict[str, Any], allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{path}: [{where}] unknown key {key!r}")


def get_value(
    path: Path,
    where: str,
    table: dict[str, Any],
    key: str,
    kind: type,
    default: Any,
    *,
    nul_ok: bool = False,
) -> Any:
    value = table.get(key, default)
    if value is default:
        return value
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        wanted = {int: "an integer", float: "a number", str: "a string"}.get(kind, kind.__name__)
        raise ConfigError(f"{path}: [{where}] {key} must be {wanted}, not {value!r}")
    if isinstance(value, str) and "\x00" in value and not nul_ok:
        raise ConfigError(f"{path}: [{where}] {key} must not hold a NUL character")
    return value


def project_of(path: Path, name: str, table: dict[str, Any]) -> Project:
    where = f"projects.{name}"
    check_keys(path, where, table, PROJECT_KEYS)
    here = path.parent
    location = get_value(path, where, table, "script_location", str, None)
    ini = get_value(path, where, table, "alembic_ini", str, None)
    if (location is None) == (ini is None):
        raise ConfigError(f"{path}: [{where}] needs exactly one of script_location or alembic_ini")
    alembic_ini = (here / ini).resolve() if ini else None
    if alembic_ini is not None:
        if not alembic_ini.is_file():
            raise ConfigError(f"{path}: [{where}] alembic_ini {alembic_ini} does not exist")
        script_location = _script_location_from_ini(path, where, alembic_ini)
    else:
        script_location = (here / location).resolve()
    if not script_location.is_dir():
        raise ConfigError(f"{path}: [{where}] script_location {script_location} does not exist")
    loader = get_value(path, where, table, "loader", str, "static")
    if loader not in LOADERS:
        raise ConfigError(f"{path}: [{where}] loader must be one of {', '.join(LOADERS)}")
    python = get_value(path, where, table, "python", str, None)
    if loader == "alembic" and python is None:
        raise ConfigError(f'{path}: [{where}] loader = "alembic" needs python = "/path/to/python"')
    scratch_url = get_value(path, where, table, "scratch_url", str, None)
    scratch_url_env = get_value(path, where, table, "scratch_url_env", str, None)
    if scratch_url is not None and scratch_url_env is not None:
        raise ConfigError(f"{path}: [{where}] needs at most one of scratch_url or scratch_url_env")
    if scratch_url is not None:
        try:
            scratch_url = local_url(path, scratch_url)
        except BadDatabaseURL as exc:
            raise ConfigError(f"{path}: [{where}] scratch_url: {exc}") from None
        if parse_database_url(scratch_url).get_backend_name() == "sqlite":
            raise ConfigError(
                f"{path}: [{where}] scratch_url must name a PostgreSQL or MySQL/MariaDB server;"
                " SQLite environments use a temporary file"
            )
    check_models = table.get("check_models", False)
    if not isinstance(check_models, bool):
        raise ConfigError(f"{path}: [{where}] check_models must be true or false")
    replay_time_limit = get_value(path, where, table, "replay_time_limit", float, 600.0)
    if not (math.isfinite(replay_time_limit) and 0 < replay_time_limit <= MAX_TIME_LIMIT):
        raise ConfigError(
            f"{path}: [{where}] replay_time_limit must be a number of seconds above 0"
            f" and at most {MAX_TIME_LIMIT:g}"
        )
    source_root = get_value(path, where, table, "source_root", str, None)
    if source_root is not None:
        source_root = (here / source_root).resolve()
        if not source_root.is_dir():
            raise ConfigError(f"{path}: [{where}] source_root {source_root} is not a directory")
    return Project(
        name=name,
        script_location=script_location,
        alembic_ini=alembic_ini,
        version_table=get_value(path, where, table, "version_table", str, "alembic_version"),
        version_table_schema=get_value(path, where, table, "version_table_schema", str, None),
        loader=loader,
        python=python,
        description=get_value(path, where, table, "description", str, ""),
        scratch_url=scratch_url,
        scratch_url_env=scratch_url_env,
        check_models=check_models,
        replay_time_limit=replay_time_limit,
        source_root=source_root,
    )


def _script_location_from_ini(path: Path, where: str, ini: Path) -> Path:
    import configparser

    parser = configparser.ConfigParser(defaults={"here": str(ini.parent)})
    try:
        parser.read(ini, encoding="utf-8")
        location = parser.get("alembic", "script_location")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: [{where}] cannot read script_location from {ini}: {exc}"
        ) from exc
    return (ini.parent / location).resolve()


def environment_of(
    path: Path,
    name: str,
    table: dict[str, Any],
    projects: dict[str, Project],
    *,
    where: str | None = None,
    allowed: set[str] = ENVIRONMENT_KEYS,
) -> Environment:
    where = where or f"environments.{name}"
    check_keys(path, where, table, allowed)
    project = get_value(path, where, table, "project", str, None)
    if project is None:
        raise ConfigError(f"{path}: [{where}] project is required")
    if project not in projects:
        raise ConfigError(f"{path}: [{where}] project {project!r} is not defined in [projects]")
    # A NUL in the URL is refused as a bad URL, failing this environment alone.
    url = get_value(path, where, table, "url", str, None, nul_ok=True)
    url_env = get_value(path, where, table, "url_env", str, None)
    if (url is None) == (url_env is None):
        raise ConfigError(f"{path}: [{where}] needs exactly one of url or url_env")
    url_error = None
    if url is not None:
        try:
            url = local_url(path, url)
        except BadDatabaseURL as exc:
            # One environment's typo must not take every page down: only it is unusable.
            url_error = f"invalid URL in {path} [{where}] url: {exc}"
    approvals = get_value(path, where, table, "approvals_required", int, 0)
    downgrade = get_value(path, where, table, "downgrade_approvals_required", int, approvals)
    stamp = get_value(path, where, table, "stamp_approvals_required", int, downgrade)
    timeout = get_value(path, where, table, "timeout", float, 5.0)
    time_limit = get_value(path, where, table, "time_limit", float, 1800.0)
    schema_timeout = get_value(path, where, table, "schema_timeout", float, 60.0)
    interval = get_value(path, where, table, "schema_check_interval", float, 3600.0)
    lock_timeout = duration_of(path, where, table, "lock_timeout", 5.0, MAX_TIMEOUT)
    statement_timeout = duration_of(path, where, table, "statement_timeout", None, MAX_TIME_LIMIT)
    lock_retries = get_value(path, where, table, "lock_retries", int, 3)
    if not 0 <= lock_retries <= MAX_LOCK_RETRIES:
        raise ConfigError(
            f"{path}: [{where}] lock_retries must be from 0 (never retry) to {MAX_LOCK_RETRIES}"
        )
    run_lock_wait = get_value(path, where, table, "run_lock_wait", float, 60.0)
    if not (math.isfinite(run_lock_wait) and 0 <= run_lock_wait <= MAX_TIMEOUT):
        raise ConfigError(
            f"{path}: [{where}] run_lock_wait must be a number of seconds from 0 (do not wait)"
            f" to {MAX_TIMEOUT:g}"
        )
    if not (math.isfinite(interval) and 0 <= interval <= MAX_TIME_LIMIT):
        raise ConfigError(
            f"{path}: [{where}] schema_check_interval must be a number of seconds from 0 (off)"
            f" to {MAX_TIME_LIMIT:g}"
        )
    for key, value in (
        ("approvals_required", approvals),
        ("downgrade_approvals_required", downgrade),
        ("stamp_approvals_required", stamp),
    ):
        if value < 0:
            raise ConfigError(f"{path}: [{where}] {key} must not be negative")
    for key, value, most in (
        ("timeout", timeout, MAX_TIMEOUT),
        ("time_limit", time_limit, MAX_TIME_LIMIT),
        ("schema_timeout", schema_timeout, MAX_TIMEOUT),
    ):
        if not (math.isfinite(value) and 0 < value <= most):
            raise ConfigError(
                f"{path}: [{where}] {key} must be a number of seconds above 0 and at most {most:g}"
            )
    windows: tuple[Window, ...] = ()
    windows_error = None
    if "windows" in table:
        try:
            windows = parse_windows(table["windows"])
        except WindowError as exc:
            # Its actions wait (never start outside a window); the other environments go on.
            windows_error = f"invalid window in {path} [{where}] windows: {exc}"
    return Environment(
        name=name,
        project=project,
        url=url,
        url_env=url_env,
        timeout=timeout,
        time_limit=time_limit,
        approvals_required=approvals,
        downgrade_approvals_required=downgrade,
        stamp_approvals_required=stamp,
        schema_check_interval=interval,
        schema_timeout=schema_timeout,
        lock_timeout=lock_timeout,
        statement_timeout=statement_timeout,
        lock_retries=lock_retries,
        run_lock_wait=run_lock_wait,
        order=get_value(path, where, table, "order", int, 0),
        description=get_value(path, where, table, "description", str, ""),
        url_error=url_error,
        windows=windows,
        windows_error=windows_error,
    )


def duration_of(
    path: Path, where: str, table: dict[str, Any], key: str, default: Any, most: float
) -> Any:
    """Return a duration key in seconds (default when absent), above 0 and at most most."""
    if key not in table:
        return default
    try:
        seconds = parse_duration(table[key])
    except ValueError as exc:
        raise ConfigError(f"{path}: [{where}] {key}: {exc}") from None
    # A millisecond is the finest either server takes; 0 would mean "wait forever" to both.
    if not 0.001 <= seconds <= most:
        raise ConfigError(
            f"{path}: [{where}] {key} must be at least 1ms and at most {render_duration(most)}"
        )
    return seconds


def local_url(path: Path, url: str) -> str:
    """Validate a URL and anchor relative SQLite paths at the config file's folder."""
    parsed = parse_database_url(url)
    db = parsed.database
    if (
        parsed.get_backend_name() == "sqlite"
        and db
        and db != ":memory:"
        and not Path(db).is_absolute()
    ):
        return parsed.set(database=str((path.parent / db).resolve())).render_as_string(
            hide_password=False
        )
    return url
