"""Notifiers: [notify.NAME] tables naming a receiver's variable, the format and the events wanted."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dashboard.config.base import ConfigError, NotConfigured, check_keys, get_value

NOTIFY_KEYS = {"url_env", "format", "events", "environments", "fleets", "secret_env", "base_url"}
FORMATS = ("slack", "json")
ACTION_EVENTS = (
    "awaiting_approval",
    "approved",
    "started",
    "succeeded",
    "failed",
    "interrupted",
    "drift_found",
)
ROLLOUT_EVENTS = (
    "rollout_requested",
    "rollout_approved",
    "rollout_paused",
    "rollout_succeeded",
    "rollout_failed",
    "rollout_cancelled",
)
EVENTS = ACTION_EVENTS + ROLLOUT_EVENTS
MAX_NAME = 100  # the length deliveries store it in
# A variable's name, as a shell would take it: the value is read from os.environ at send time.
VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class Notifier:
    """One receiver: where its URL and secret come from, its format, events and filters."""

    name: str
    url_env: str
    format: str
    events: frozenset[str]
    environments: tuple[str, ...] = ()
    fleets: tuple[str, ...] = ()
    secret_env: str | None = None
    base_url: str | None = None  # the dashboard's address, for links to an action's page

    @property
    def secret_variables(self) -> set[str]:
        """Return the variables holding this receiver's URL and secret."""
        return {name for name in (self.url_env, self.secret_env) if name}

    def url(self) -> str:
        """Return the receiver's URL from its variable, or raise NotConfigured."""
        value = os.environ.get(self.url_env, "").strip()
        if not value:
            raise NotConfigured(f"not configured: {self.url_env} is not set")
        if urlsplit(value).scheme not in ("http", "https"):
            # Never quote the value: a webhook URL is a credential.
            raise NotConfigured(f"not configured: {self.url_env} is no http(s) URL")
        return value

    def secret(self) -> bytes | None:
        """Return the signing secret from its variable (None without one), or raise NotConfigured."""
        if self.secret_env is None:
            return None
        value = os.environ.get(self.secret_env, "")
        if not value:
            raise NotConfigured(f"not configured: {self.secret_env} is not set")
        return value.encode()

    def wants(self, event: str, *, environment: str = "", fleet: str | None = None) -> bool:
        """Say whether this receiver takes the event about this environment or fleet."""
        if event not in self.events:
            return False
        if not self.environments and not self.fleets:
            return True
        if environment and any(fnmatchcase(environment, p) for p in self.environments):
            return True
        return bool(fleet) and any(fnmatchcase(fleet or "", p) for p in self.fleets)


def notifier_of(path: Path, name: str, table: dict[str, Any]) -> Notifier:
    """Read one [notify.NAME] table, raising ConfigError naming the key."""
    where = f"notify.{name}"
    if len(name) > MAX_NAME:
        raise ConfigError(
            f"{path}: notifier name {name[:60]!r}… is longer than {MAX_NAME} characters"
        )
    check_keys(path, where, table, NOTIFY_KEYS)
    url_env = get_value(path, where, table, "url_env", str, None)
    if url_env is None:
        raise ConfigError(
            f"{path}: [{where}] needs url_env, the variable holding the receiver's URL"
            " (a webhook URL is a credential: never in the file)"
        )
    _check_variable(path, where, "url_env", url_env)
    fmt = get_value(path, where, table, "format", str, None)
    if fmt not in FORMATS:
        raise ConfigError(f"{path}: [{where}] format must be one of {', '.join(FORMATS)}")
    events = _strings(path, where, table, "events")
    if not events:
        raise ConfigError(f"{path}: [{where}] events must name at least one of {', '.join(EVENTS)}")
    for event in events:
        if event not in EVENTS:
            raise ConfigError(
                f"{path}: [{where}] unknown event {event[:40]!r}: known are {', '.join(EVENTS)}"
            )
    secret_env = get_value(path, where, table, "secret_env", str, None)
    if secret_env is not None:
        _check_variable(path, where, "secret_env", secret_env)
    elif fmt == "json":
        raise ConfigError(
            f"{path}: [{where}] needs secret_env, the variable holding the secret the json"
            " format's X-Dashboard-Signature is made with"
        )
    base_url = get_value(path, where, table, "base_url", str, None)
    if base_url is not None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{path}: [{where}] base_url must be an http(s) URL")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ConfigError(
                f"{path}: [{where}] base_url must hold no user, password, query or fragment"
            )
        base_url = base_url.rstrip("/")
    return Notifier(
        name=name,
        url_env=url_env,
        format=fmt,
        events=frozenset(events),
        environments=tuple(_strings(path, where, table, "environments")),
        fleets=tuple(_strings(path, where, table, "fleets")),
        secret_env=secret_env,
        base_url=base_url,
    )


def _strings(path: Path, where: str, table: dict[str, Any], key: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{path}: [{where}] {key} must be a list of strings")
    if any("\x00" in item for item in value):
        raise ConfigError(f"{path}: [{where}] {key} must not hold a NUL character")
    return value


def _check_variable(path: Path, where: str, key: str, value: str) -> None:
    if not VARIABLE.match(value):
        # Not quoted: someone may have pasted the URL or the secret itself here.
        raise ConfigError(
            f"{path}: [{where}] {key} must name an environment variable (letters, digits, _),"
            " not hold its value"
        )
