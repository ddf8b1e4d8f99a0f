"""The environment of a child that runs a project's code before anyone approved it."""

from __future__ import annotations

from collections.abc import Mapping, Set

# What an interpreter and a revision's imports may need to start: paths, locale, time zone.
PASSED = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH"}
)
PASSED_PREFIXES = ("LC_", "PYTHON")  # PYTHONPATH, PYTHONWARNINGS, PYTHONUTF8, ...


def allowed_environment(
    inherited: Mapping[str, str], *, refused: Set[str] = frozenset()
) -> dict[str, str]:
    """Return the few variables such a child gets: nothing of the dashboard's own."""
    # An allowlist: the caller's environment holds the dashboard's DATABASE_URL, SECRET_KEY
    # and every environment's URL, none of which a revision file may read.
    env = {
        name: value
        for name, value in inherited.items()
        if (name in PASSED or name.startswith(PASSED_PREFIXES)) and name not in refused
    }
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONIOENCODING="utf-8")
    return env
