#!/usr/bin/env python
"""Django's command-line utility for the migration dashboard."""

import gc
import os
import secrets
import sys

# CI gates: their exit 1 means "heads found" or "not current", so a setup error exits 2.
GATES = frozenset({"heads", "revisions", "status"})
# Of those, the ones that sign nothing and may run with no SECRET_KEY (a CI job has none).
KEYLESS = frozenset({"heads", "revisions"})
SETUP_ERROR = 2


def main() -> None:
    """Run a management command."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command in GATES:
        _set_up(keyless=command in KEYLESS)
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


def _set_up(*, keyless: bool) -> None:
    """Load the settings before the command runs; a bad setup exits 2, never 1."""
    import django
    from django.core.exceptions import ImproperlyConfigured

    throwaway = keyless and not os.environ.get("SECRET_KEY")
    if throwaway:
        # Random and gone once the settings are read: nothing is signed, no child inherits it.
        os.environ["SECRET_KEY"] = secrets.token_urlsafe(50)
    # What the set-up allocates lives as long as the process: collecting it during the imports
    # is wasted work (about a twentieth of a gate's run), so collect only what comes after.
    gc.disable()
    try:
        django.setup()
    except ImproperlyConfigured as exc:
        print(f"error: the dashboard is not set up: {exc}", file=sys.stderr)
        sys.exit(SETUP_ERROR)
    finally:
        if throwaway:
            os.environ.pop("SECRET_KEY", None)
        gc.freeze()
        gc.enable()


if __name__ == "__main__":
    main()
