"""Connection settings every module that reaches an environment's database shares."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import URL

from dashboard.config import secret_spellings

_PASSWORD_FRAGMENT = re.compile(
    r"""(?P<key>\b(?:password|passwd|pwd)\s*[=:]\s*)(?P<value>'[^']*'|"[^"]*"|[^\s,;&)]+)""",
    re.IGNORECASE,
)


def mask_secrets(
    message: str, secrets: str | Iterable[str] | None, *, whole_words: bool = False
) -> str:
    """Remove passwords and any password=... fragments from a message.

    whole_words masks only where a password stands apart from letters and digits, for
    messages we compose from known parts: "role 'bob'" stays readable when bob is also the
    password, and a one-letter password does not blank every such letter.
    """
    for secret in [secrets] if isinstance(secrets, str) else secrets or ():
        for form in secret_spellings(secret):
            if whole_words:
                message = re.sub(rf"(?<![^\W_]){re.escape(form)}(?![^\W_])", "***", message)
            else:
                message = message.replace(form, "***")
    return _PASSWORD_FRAGMENT.sub(lambda m: f"{m.group('key')}***", message)


def _connect_args(url: URL, timeout: float) -> dict[str, Any]:
    """Return the driver's own connect and statement timeouts for this URL."""
    backend, driver = url.get_backend_name(), url.get_driver_name()
    seconds = max(1, int(timeout))
    millis = max(1, int(timeout * 1000))
    if backend == "postgresql" and driver in ("psycopg2", "psycopg"):
        existing = url.query.get("options")
        options = f"-c statement_timeout={millis} -c lock_timeout={millis}"
        options += " -c default_transaction_read_only=on"
        if not isinstance(existing, str):
            # Our `options` replace libpq's PGOPTIONS, which the Alembic child keeps: a
            # search_path there must hold here too, or the two see other version tables
            # (and run lock keys). A URL's own options replace PGOPTIONS in both.
            existing = os.environ.get("PGOPTIONS")
        if isinstance(existing, str) and existing.strip():
            options = f"{existing.strip()} {options}"
        args: dict[str, Any] = {"connect_timeout": seconds, "options": options}
        if "application_name" not in url.query:
            args["application_name"] = "migration-dashboard"
        return args
    if backend == "postgresql" and driver == "pg8000":
        return {"timeout": timeout}
    if backend in ("mysql", "mariadb") and driver == "pymysql":
        return {"connect_timeout": timeout, "read_timeout": timeout, "write_timeout": timeout}
    if backend in ("mysql", "mariadb") and driver == "mysqldb":
        return {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds}
    if backend in ("mysql", "mariadb") and driver == "mysqlconnector":
        return {"connection_timeout": seconds}
    if backend == "sqlite":
        return {"timeout": timeout}
    return {}


# The child's limits travel in its environment (its env.py may read them too, for a driver
# libpq's variables do not reach), in whole milliseconds.
LOCK_TIMEOUT_VARIABLE = "MIGRATION_DASHBOARD_LOCK_TIMEOUT_MS"
STATEMENT_TIMEOUT_VARIABLE = "MIGRATION_DASHBOARD_STATEMENT_TIMEOUT_MS"


@dataclass(frozen=True)
class Limits:
    """How long each statement of a child may wait for a lock, and run (None: no limit)."""

    lock_timeout: float
    statement_timeout: float | None = None

    @property
    def lock_timeout_ms(self) -> int:
        """Return the lock timeout in whole milliseconds, at least 1."""
        return max(1, math.ceil(self.lock_timeout * 1000))

    @property
    def statement_timeout_ms(self) -> int | None:
        """Return the statement timeout in whole milliseconds, or None."""
        if self.statement_timeout is None:
            return None
        return max(1, math.ceil(self.statement_timeout * 1000))

    def environ(self) -> dict[str, str]:
        """Return the variables that hand these limits to tag_child and the child."""
        env = {LOCK_TIMEOUT_VARIABLE: str(self.lock_timeout_ms)}
        if self.statement_timeout_ms is not None:
            env[STATEMENT_TIMEOUT_VARIABLE] = str(self.statement_timeout_ms)
        return env

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Limits | None:
        """Return the limits environ carries, or None when it names no lock timeout."""
        lock = _millis(environ.get(LOCK_TIMEOUT_VARIABLE))
        if lock is None:
            return None
        statement = _millis(environ.get(STATEMENT_TIMEOUT_VARIABLE))
        return cls(lock / 1000, None if statement is None else statement / 1000)


def _millis(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value) or None
