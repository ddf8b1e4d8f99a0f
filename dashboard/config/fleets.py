"""Fleets: many databases sharing one project and policy, each member an environment."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dashboard.config.base import (
    ENVIRONMENT_KEYS,
    MAX_TIME_LIMIT,
    NAME,
    BadDatabaseURL,
    ConfigError,
    Environment,
    Project,
    check_keys,
    environment_of,
    get_value,
    local_url,
    parse_database_url,
    url_lines,
)

# Per-environment settings a fleet sets for all its members (url and url_env name members).
POLICY_KEYS = ENVIRONMENT_KEYS - {"url", "url_env", "project", "order", "description"}
SOURCE_KEYS = {
    "urls_env",
    "url_template",
    "password_env",
    "names",
    "names_query",
    "discovery_url",
    "discovery_url_env",
    "schemas_query",
    "url",
    "url_env",
}
ROLLOUT_KEYS = {"waves", "parallel", "on_error"}
FLEET_KEYS = (
    POLICY_KEYS
    | SOURCE_KEYS
    | ROLLOUT_KEYS
    | {
        "project",
        "order",
        "description",
        "discovery_interval",
    }
)
ON_ERROR = ("pause", "continue")
MAX_PARALLEL = 256
DEFAULT_WAVES: tuple[int | str, ...] = (1, "10%", "100%")
# A schema per tenant becomes the member's search_path, so only names needing no quoting.
SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PERCENT = re.compile(r"\s*(?P<number>\d+(?:\.\d+)?)\s*%\s*\Z")
TEMPLATE_FIELD = "{name}"

Source = Literal["urls_env", "names", "names_query", "schemas_query"]


@dataclass(frozen=True)
class Wave:
    """One wave of a rollout: the members reached by its end, as a count or a share."""

    count: int | None = None
    percent: float | None = None

    def reach(self, total: int) -> int:
        """Return how many of total members this wave has reached by its end (at least 1)."""
        if self.count is not None:
            return min(total, self.count)
        return min(total, max(1, math.ceil(total * (self.percent or 100.0) / 100)))

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.percent:g}%"


@dataclass(frozen=True)
class Fleet:
    """Many databases (tenants, schemas, shards) sharing one project and one policy."""

    name: str
    project: str
    source: Source
    # Every member's settings; its name is the fleet's, its url that of no member.
    policy: Environment
    members: tuple[Environment, ...] = ()
    url_template: str | None = field(default=None, repr=False)
    password_env: str | None = None
    urls_env: str | None = None
    names_query: str | None = None
    schemas_query: str | None = None
    # The database the query runs on (for schemas_query also every member's database).
    discovery_url: str | None = field(default=None, repr=False)
    discovery_url_env: str | None = None
    discovery_interval: float = 300.0
    waves: tuple[Wave, ...] = ()
    parallel: int = 4
    on_error: str = "pause"
    order: int = 0
    description: str = ""
    # Why some members could not be made (a bad line, a bad name): the others still work.
    problems: tuple[str, ...] = ()
    # The config file: members' relative SQLite paths start at its folder.
    config_path: Path = field(default=Path("."), repr=False)

    @property
    def discovered(self) -> bool:
        """Say whether the worker finds the members with a query (else the config names them)."""
        return self.source in ("names_query", "schemas_query")

    def member(self, name: str, *, schema: str | None = None) -> Environment:
        """Return the environment of the member called name (a discovered one too)."""
        env_name = f"{self.name}/{name}"
        if self.source == "schemas_query":
            return dataclasses.replace(
                self.policy,
                name=env_name,
                fleet=self.name,
                member=name,
                url=self.discovery_url,
                url_env=self.discovery_url_env,
                url_error=None,
                search_path=schema or name,
            )
        try:
            template = self.url_template or ""
            url = local_url(self.config_path, template.replace(TEMPLATE_FIELD, name))
            error = None
        except BadDatabaseURL as exc:
            url, error = None, f"invalid URL for member {name} of fleet {self.name}: {exc}"
        return dataclasses.replace(
            self.policy,
            name=env_name,
            fleet=self.name,
            member=name,
            url=url,
            url_env=None if url is not None else "",
            url_error=error,
            password_env=self.password_env,
        )

    def discovery_database_url(self) -> str:
        """Return the URL the discovery query runs on, with its password; raise NotConfigured."""
        env = dataclasses.replace(
            self.policy,
            name=f"{self.name} (discovery)",
            url=self.discovery_url,
            url_env=self.discovery_url_env,
            url_error=None,
            password_env=None if self.source == "schemas_query" else self.password_env,
        )
        return env.database_url()

    @property
    def secret_variables(self) -> set[str]:
        """Return the variables holding the fleet's URLs or password."""
        names = {self.urls_env, self.password_env, self.discovery_url_env}
        return {name for name in names if name}


def fleet_of(path: Path, name: str, table: dict[str, Any], projects: dict[str, Project]) -> Fleet:
    """Parse one [fleets.NAME] table and make its members from the config or the environment."""
    where = f"fleets.{name}"
    check_keys(path, where, table, FLEET_KEYS)
    project = get_value(path, where, table, "project", str, None)
    if project is None:
        raise ConfigError(f"{path}: [{where}] project is required")
    # The policy is parsed like an environment's, under the fleet's table name.
    policy_table = {key: value for key, value in table.items() if key in POLICY_KEYS}
    policy = environment_of(
        path,
        name,
        {**policy_table, "project": project, "url": "sqlite://"},
        projects,
        where=where,
        allowed=POLICY_KEYS | {"project", "url"},
    )
    policy = dataclasses.replace(policy, url=None, url_env=None)
    source = _source(path, where, table)
    password_env = get_value(path, where, table, "password_env", str, None)
    order = get_value(path, where, table, "order", int, 0)
    description = get_value(path, where, table, "description", str, "")
    interval = get_value(path, where, table, "discovery_interval", float, 300.0)
    if not (math.isfinite(interval) and 0 < interval <= MAX_TIME_LIMIT):
        raise ConfigError(
            f"{path}: [{where}] discovery_interval must be a number of seconds above 0"
            f" and at most {MAX_TIME_LIMIT:g}"
        )
    fleet = Fleet(
        name=name,
        project=project,
        source=source,
        policy=policy,
        password_env=password_env,
        discovery_interval=interval,
        waves=_waves(path, where, table),
        parallel=_parallel(path, where, table),
        on_error=_on_error(path, where, table),
        order=order,
        description=description,
        config_path=path,
    )
    if source == "urls_env":
        return _from_urls_env(path, where, table, fleet)
    if source == "schemas_query":
        return _for_schemas(path, where, table, fleet)
    fleet = dataclasses.replace(fleet, url_template=_template(path, where, table))
    if source == "names_query":
        return _for_names_query(path, where, table, fleet)
    names = table.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{path}: [{where}] names must be a list of strings")
    members, problems = [], []
    for member in dict.fromkeys(names):
        problem = member_name_problem(member)
        if problem:
            problems.append(f"[{where}] names: {problem}")
        else:
            members.append(fleet.member(member))
    return dataclasses.replace(fleet, members=_finished(members), problems=tuple(problems))


def member_name_problem(name: str, *, schema: bool = False) -> str:
    """Say why name cannot be a member's name (or, for schema=True, a schema's), else ""."""
    if schema and not SCHEMA_NAME.match(name):
        return (
            f"schema {name[:80]!r} is left out: a member schema holds only letters, digits"
            " and '_', and does not start with a digit"
        )
    if not NAME.match(name) or len(name) > 60:
        return (
            f"member {name[:80]!r} is left out: a member name starts with a letter or digit,"
            " holds only letters, digits, '.', '_' and '-', and has at most 60 characters"
        )
    return ""


def _source(path: Path, where: str, table: dict[str, Any]) -> Source:
    given = [
        key
        for key in ("urls_env", "names", "names_query", "schemas_query")
        if table.get(key) is not None
    ]
    if len(given) != 1:
        raise ConfigError(
            f"{path}: [{where}] needs exactly one of urls_env, names (with url_template),"
            " names_query (with url_template) or schemas_query"
        )
    source: Source = given[0]  # type: ignore[assignment]
    if source in ("names", "names_query") and "url_template" not in table:
        raise ConfigError(f"{path}: [{where}] {source} needs url_template")
    if source in ("urls_env", "schemas_query") and "url_template" in table:
        raise ConfigError(f"{path}: [{where}] url_template is only for names or names_query")
    discovery = [
        key for key in ("discovery_url", "discovery_url_env", "url", "url_env") if key in table
    ]
    if source in ("names_query", "schemas_query") and len(discovery) != 1:
        raise ConfigError(
            f"{path}: [{where}] {source} needs exactly one of discovery_url or discovery_url_env"
            " (url or url_env also name it), the database the query runs on"
        )
    if source in ("names", "urls_env") and discovery:
        raise ConfigError(
            f"{path}: [{where}] {discovery[0]} is only for names_query or schemas_query"
        )
    return source


def _template(path: Path, where: str, table: dict[str, Any]) -> str:
    template = get_value(path, where, table, "url_template", str, None)
    if TEMPLATE_FIELD not in template:
        raise ConfigError(f"{path}: [{where}] url_template must contain {TEMPLATE_FIELD}")
    try:
        parse_database_url(template.replace(TEMPLATE_FIELD, "member"))
    except BadDatabaseURL as exc:
        raise ConfigError(f"{path}: [{where}] url_template: {exc}") from None
    return template


def _discovery(path: Path, where: str, table: dict[str, Any], fleet: Fleet) -> Fleet:
    url = table.get("discovery_url", table.get("url"))
    url_env = table.get("discovery_url_env", table.get("url_env"))
    if url is not None:
        if not isinstance(url, str):
            raise ConfigError(f"{path}: [{where}] discovery_url must be a string")
        try:
            url = local_url(path, url)
        except BadDatabaseURL as exc:
            raise ConfigError(f"{path}: [{where}] discovery_url: {exc}") from None
    elif not isinstance(url_env, str):
        raise ConfigError(f"{path}: [{where}] discovery_url_env must be a string")
    return dataclasses.replace(fleet, discovery_url=url, discovery_url_env=url_env)


def _query(path: Path, where: str, table: dict[str, Any], key: str) -> str:
    query = get_value(path, where, table, key, str, None)
    if not query.strip():
        raise ConfigError(f"{path}: [{where}] {key} must not be empty")
    return query


def _for_names_query(path: Path, where: str, table: dict[str, Any], fleet: Fleet) -> Fleet:
    fleet = _discovery(path, where, table, fleet)
    return dataclasses.replace(fleet, names_query=_query(path, where, table, "names_query"))


def _for_schemas(path: Path, where: str, table: dict[str, Any], fleet: Fleet) -> Fleet:
    fleet = _discovery(path, where, table, fleet)
    if fleet.password_env is not None:
        raise ConfigError(f"{path}: [{where}] password_env is only for url_template")
    if fleet.discovery_url is not None:
        backend = parse_database_url(fleet.discovery_url).get_backend_name()
        if backend != "postgresql":
            raise ConfigError(
                f"{path}: [{where}] schemas_query needs a PostgreSQL database; for MySQL or"
                " MariaDB a schema is a database: use url_template with names_query"
            )
    return dataclasses.replace(fleet, schemas_query=_query(path, where, table, "schemas_query"))


def _from_urls_env(path: Path, where: str, table: dict[str, Any], fleet: Fleet) -> Fleet:
    variable = get_value(path, where, table, "urls_env", str, None)
    if fleet.password_env is not None:
        raise ConfigError(f"{path}: [{where}] password_env is only for url_template")
    text = os.environ.get(variable, "")
    members, problems = [], []
    lines = url_lines(text)
    for number, line in enumerate(text.splitlines(), start=1):
        name, sep, url = line.strip().partition("=")
        if not line.strip() or line.strip().startswith("#"):
            continue
        if not sep or not url.strip():
            # Never the line itself: it may hold a password.
            problems.append(f"{variable} line {number} is not name=url; it is left out")
            continue
        if member_name_problem(name.strip()):
            # Not quoted: what precedes the first '=' may be a URL with its password.
            problems.append(
                f"{variable} line {number}: its name is not a usable member name (letters,"
                " digits, '.', '_' and '-', at most 60 characters); it is left out"
            )
    for member in [name for name in lines if not member_name_problem(name)]:
        members.append(
            dataclasses.replace(
                fleet.policy,
                name=f"{fleet.name}/{member}",
                fleet=fleet.name,
                member=member,
                url=None,
                url_env=variable,
                url_key=member,
            )
        )
    if not text.strip():
        problems.append(f"no members: {variable} is not set or empty")
    return dataclasses.replace(
        fleet, urls_env=variable, members=_finished(members), problems=tuple(problems)
    )


def _finished(members: list[Environment]) -> tuple[Environment, ...]:
    """Return members in name order."""
    return tuple(sorted(members, key=lambda m: m.name))


def _waves(path: Path, where: str, table: dict[str, Any]) -> tuple[Wave, ...]:
    raw = table.get("waves", list(DEFAULT_WAVES))
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f'{path}: [{where}] waves must be a list like [1, "10%", "100%"]')
    waves = []
    for item in raw:
        if isinstance(item, int) and not isinstance(item, bool) and item >= 1:
            waves.append(Wave(count=item))
        elif isinstance(item, str) and (match := _PERCENT.match(item)):
            percent = float(match["number"])
            if not 0 < percent <= 100:
                raise ConfigError(
                    f"{path}: [{where}] waves: {item!r} is not above 0% and at most 100%"
                )
            waves.append(Wave(percent=percent))
        else:
            raise ConfigError(
                f"{path}: [{where}] waves: {item!r} is neither a count of members (1 or more)"
                ' nor a share like "10%"'
            )
    return tuple(waves)


def _parallel(path: Path, where: str, table: dict[str, Any]) -> int:
    parallel = get_value(path, where, table, "parallel", int, 4)
    if not 1 <= parallel <= MAX_PARALLEL:
        raise ConfigError(f"{path}: [{where}] parallel must be from 1 to {MAX_PARALLEL}")
    return int(parallel)


def _on_error(path: Path, where: str, table: dict[str, Any]) -> str:
    on_error = get_value(path, where, table, "on_error", str, "pause")
    if on_error not in ON_ERROR:
        raise ConfigError(f'{path}: [{where}] on_error must be "pause" or "continue"')
    return str(on_error)
