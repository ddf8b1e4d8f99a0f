"""Read the dashboard's TOML config (projects, environments, fleets, policies) into dataclasses."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from dashboard.config.base import (
    ENVIRONMENT_KEYS,
    MAX_LOCK_RETRIES,
    MAX_PORT,
    MAX_TIME_LIMIT,
    MAX_TIMEOUT,
    NAME,
    PROJECT_KEYS,
    SECRET_QUERY_KEYS,
    BadDatabaseURL,
    ConfigError,
    Environment,
    NotConfigured,
    Project,
    environment_of,
    mask_url,
    parse_database_url,
    parse_duration,
    project_of,
    render_duration,
    secret_spellings,
    table_of,
    url_identity,
    url_lines,
    url_secrets,
    with_installed_driver,
)
from dashboard.config.fleets import Fleet, Wave, fleet_of, member_name_problem
from dashboard.config.notify import Notifier, notifier_of
from dashboard.config.sso import SSOConfig, sso_of

__all__ = [
    "ENVIRONMENT_KEYS",
    "MAX_LOCK_RETRIES",
    "MAX_PORT",
    "MAX_TIMEOUT",
    "MAX_TIME_LIMIT",
    "PROJECT_KEYS",
    "SECRET_QUERY_KEYS",
    "BadDatabaseURL",
    "ConfigError",
    "DashboardConfig",
    "Environment",
    "Fleet",
    "NotConfigured",
    "Notifier",
    "Project",
    "SSOConfig",
    "Wave",
    "current_config",
    "forget_discovered",
    "load_config",
    "mask_url",
    "member_name_problem",
    "parse_database_url",
    "parse_duration",
    "render_duration",
    "secret_spellings",
    "url_identity",
    "url_lines",
    "url_secrets",
    "with_installed_driver",
]

logger = logging.getLogger(__name__)
MAX_FLEET_NAME = 39  # + "/" + a member name of at most 60
TOP_LEVEL_KEYS = {"projects", "environments", "fleets", "notify", "sso"}
# Seconds a process trusts its copy of the discovered members before reading them again.
DISCOVERED_TTL = 5.0


@dataclass(frozen=True)
class DashboardConfig:
    """The whole config: projects, environments and fleets by name, and where it came from.

    environments holds every fleet's members too, named "fleet/member".
    """

    path: Path
    projects: dict[str, Project]
    environments: dict[str, Environment]
    fleets: dict[str, Fleet] = field(default_factory=dict)
    notifiers: dict[str, Notifier] = field(default_factory=dict)
    sso: SSOConfig | None = None

    def environments_of(self, project: str) -> list[Environment]:
        """Return a project's environments that are no fleet's members, in display order."""
        envs = [e for e in self.environments.values() if e.project == project and e.fleet is None]
        return sorted(envs, key=lambda e: (e.order, e.name))

    def ordered_environments(self) -> list[Environment]:
        """Return every environment, fleet members last, in display order."""
        return sorted(
            self.environments.values(),
            key=lambda e: (e.fleet is not None, e.project, e.order, e.fleet or "", e.name),
        )

    def standalone_environments(self) -> list[Environment]:
        """Return the environments that are no fleet's members, in display order."""
        return [env for env in self.ordered_environments() if env.fleet is None]

    def members_of(self, fleet: str) -> list[Environment]:
        """Return a fleet's members in name order."""
        return sorted(
            (e for e in self.environments.values() if e.fleet == fleet), key=lambda e: e.name
        )

    def fleets_of(self, project: str) -> list[Fleet]:
        """Return a project's fleets in display order."""
        found = [f for f in self.fleets.values() if f.project == project]
        return sorted(found, key=lambda f: (f.order, f.name))

    def environment_problems(self) -> list[str]:
        """Return why each environment with an unusable inline url, or fleet member, is left out."""
        problems = [
            error
            for e in self.ordered_environments()
            if e.fleet is None
            for error in (e.url_error, e.windows_error)
            if error is not None
        ]
        for fleet in sorted(self.fleets.values(), key=lambda f: f.name):
            problems.extend(f"fleet {fleet.name}: {problem}" for problem in fleet.problems)
            if fleet.policy.windows_error is not None:
                problems.append(f"fleet {fleet.name}: {fleet.policy.windows_error}")
            broken = [e for e in self.members_of(fleet.name) if e.url_error is not None]
            if broken:
                more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
                problems.append(f"fleet {fleet.name}: {broken[0].url_error}{more}")
        return problems


def load_config(path: str | os.PathLike[str]) -> DashboardConfig:
    """Read and validate a config file, raising ConfigError with file, table and key."""
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file does not exist") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    unknown = set(raw) - TOP_LEVEL_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key {sorted(unknown)[0]!r}")
    projects_raw = table_of(path, raw, "projects")
    envs_raw = table_of(path, raw, "environments")
    fleets_raw = table_of(path, raw, "fleets")
    notify_raw = table_of(path, raw, "notify")
    sso_raw = table_of(path, raw, "sso")
    for kind, names in (
        ("project", projects_raw),
        ("environment", envs_raw),
        ("fleet", fleets_raw),
        ("notifier", notify_raw),
    ):
        for name in names:
            if not NAME.match(name):
                raise ConfigError(
                    f"{path}: {kind} name {name!r} must start with a letter or digit"
                    " and hold only letters, digits, '.', '_' and '-'"
                )
    for name in fleets_raw:
        if len(name) > MAX_FLEET_NAME:
            # "fleet/member" must fit the 100 characters environment names are stored in.
            raise ConfigError(
                f"{path}: fleet name {name[:60]!r}… is longer than {MAX_FLEET_NAME} characters"
            )
        if name in envs_raw:
            raise ConfigError(
                f"{path}: [fleets.{name}] has the name of [environments.{name}]: a fleet's"
                " members are named fleet/member, and both appear in one list"
            )
    projects = {
        name: project_of(path, name, table_of(path, projects_raw, name, f"projects.{name}"))
        for name in projects_raw
    }
    environments = {
        name: environment_of(
            path, name, table_of(path, envs_raw, name, f"environments.{name}"), projects
        )
        for name in envs_raw
    }
    fleets = {
        name: fleet_of(path, name, table_of(path, fleets_raw, name, f"fleets.{name}"), projects)
        for name in fleets_raw
    }
    for fleet in fleets.values():
        environments.update((member.name, member) for member in fleet.members)
    notifiers = {
        name: notifier_of(path, name, table_of(path, notify_raw, name, f"notify.{name}"))
        for name in notify_raw
    }
    return DashboardConfig(
        path=path,
        projects=projects,
        environments=environments,
        fleets=fleets,
        notifiers=notifiers,
        sso=sso_of(path, sso_raw) if "sso" in raw else None,
    )


_cache: dict[Path, tuple[int, DashboardConfig]] = {}
# The config with the discovered members added, per config read, and when that was.
_discovered: dict[int, tuple[float, DashboardConfig]] = {}


def current_config() -> DashboardConfig:
    """Return the config named by settings.DASHBOARD_CONFIG, re-read when the file changes.

    Fleets whose members a query finds get the members the worker last discovered.
    """
    from django.conf import settings

    path = Path(settings.DASHBOARD_CONFIG).resolve()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"{path}: config file does not exist") from exc
    cached = _cache.get(path)
    if cached and cached[0] == mtime:
        config = cached[1]
    else:
        config = load_config(path)
        _cache[path] = (mtime, config)
        _discovered.clear()
    if not any(fleet.discovered for fleet in config.fleets.values()):
        return config
    return _with_discovered(config)


def forget_discovered() -> None:
    """Make the next current_config() read the discovered members again."""
    _discovered.clear()


def _with_discovered(config: DashboardConfig) -> DashboardConfig:
    """Return config with the members stored for its query-discovered fleets."""
    now = time.monotonic()
    seen = _discovered.get(id(config))
    if seen is not None and now - seen[0] < DISCOVERED_TTL:
        return seen[1]
    # The models import Django's app registry, which this module must not need at import.
    from dashboard.models import FleetMember

    names = [fleet.name for fleet in config.fleets.values() if fleet.discovered]
    try:
        rows = list(
            FleetMember.objects.filter(fleet__in=names)
            .order_by("fleet", "name")
            .values_list("fleet", "name")
        )
    except Exception:  # the dashboard's own database is away: pages say so elsewhere
        logger.exception("could not read the discovered fleet members")
        return seen[1] if seen is not None else config
    environments = dict(config.environments)
    for fleet_name, member in rows:
        fleet = config.fleets[fleet_name]
        env = fleet.member(member)
        environments[env.name] = env
    merged = dataclasses.replace(config, environments=environments)
    _discovered.clear()  # one config at a time: the old one's entry would only pin it
    _discovered[id(config)] = (now, merged)
    return merged
