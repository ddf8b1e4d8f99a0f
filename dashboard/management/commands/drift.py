"""Check environments' schemas against what their revisions produce now, store and print it."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard.config import ConfigError
from dashboard.drift.differences import describe, from_dicts
from dashboard.models import SchemaCheck
from dashboard.selectors.drift import schema_summary
from dashboard.services import drift

# Schema states a CI gate refuses: drift, and a check that could not say (never a silent pass).
FAILING = {SchemaCheck.State.DRIFT, SchemaCheck.State.NOT_CHECKED, SchemaCheck.State.FAILED}
# States of the models check (`check_models`) that fail the gate: changes no revision covers,
# or a check that broke.
FAILING_MODELS = {SchemaCheck.State.DRIFT, SchemaCheck.State.FAILED}


class Command(BaseCommand):
    # A CI gate: system checks would import every view and URL; config errors exit 2 here.
    requires_system_checks: list[str] = []
    help = (
        "Check the environments' schemas now against the schema their revisions produce, store"
        " the results and print them. With --fail-on-drift, exit 1 when a selected environment"
        " drifted or could not be checked."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--env",
            action="append",
            metavar="NAME",
            dest="environments",
            help="check only this environment (repeatable); default: all",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="print a JSON list of environment, project and schema (state, differences,"
            " checked_at, reason, heads, models)",
        )
        parser.add_argument(
            "--fail-on-drift",
            action="store_true",
            help="exit 1 when a selected environment drifted, could not be checked, or (with"
            " check_models) its models have changes no revision covers",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            checks = drift.schemas_check(
                options["environments"], trigger=SchemaCheck.Trigger.COMMAND
            )
        except drift.UnknownEnvironment as exc:
            raise CommandError(str(exc), returncode=2) from exc
        except ConfigError as exc:
            raise CommandError(f"the config cannot be read: {exc}", returncode=2) from exc
        if options["json"]:
            items = [
                {"environment": c.environment, "project": c.project, "schema": schema_summary(c)}
                for c in checks
            ]
            self.stdout.write(json.dumps(items, indent=2))
        else:
            self.stdout.write(render_checks(checks))
        failing = [c for c in checks if failed(c)]
        if options["fail_on_drift"] and failing:
            names = ", ".join(
                f"{printable(c.environment)} ({c.get_state_display()})" for c in failing
            )
            raise CommandError(f"schema not in sync: {names}", returncode=1)


def failed(check: SchemaCheck) -> bool:
    """Say whether the check fails --fail-on-drift."""
    return check.state in FAILING or check.models_state in FAILING_MODELS


def render_checks(checks: list[SchemaCheck]) -> str:
    """Return one line per environment, then its differences in words, indented."""
    width = max((len(printable(c.environment)) for c in checks), default=0)
    lines = []
    for check in checks:
        lines.append(f"{printable(check.environment).ljust(width)}  {printable(headline(check))}")
        for difference in from_dicts(check.differences):
            words = describe(difference, check.environment)
            lines.append(f"{' ' * width}    - {printable(words)}")
        if check.models_state:
            lines.append(f"{' ' * width}    models: {printable(models_line(check))}")
    return "\n".join(lines)


def printable(text: str) -> str:
    """Escape what a terminal would act on instead of print (escape sequences, carriage
    returns): names and reasons come from databases anyone with DDL rights shapes."""
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def headline(check: SchemaCheck) -> str:
    """Say the check's state, how many differences, and why it could not say more."""
    heads = " ".join(check.heads) or "no revision"
    match check.state:
        case SchemaCheck.State.IN_SYNC:
            return f"in sync at {heads}"
        case SchemaCheck.State.DRIFT:
            count = len(check.differences)
            return f"drift at {heads}: {count} difference{'s' if count != 1 else ''}"
    return f"{check.get_state_display()}: {check.reason}"


def models_line(check: SchemaCheck) -> str:
    """Say what `alembic check` found of the models (check_models)."""
    if check.models_state == SchemaCheck.State.IN_SYNC:
        return "in sync with the revisions"
    if check.models_state == SchemaCheck.State.DRIFT:
        found = "; ".join(str(op) for op in check.models_differences)
        return f"the models have changes no revision covers: {found}"
    return f"check failed: {check.models_reason}"
