"""Read environments now, store snapshots and print where each one stands (a CI gate too)."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard.config import ConfigError
from dashboard.models import Snapshot
from dashboard.selectors.status import snapshot_item
from dashboard.services import status

COLUMNS = ("environment", "project", "state", "heads", "pending", "latency", "detail")


class Command(BaseCommand):
    help = (
        "Read the environments' version tables now, store snapshots and print their states. "
        "With --fail-unless-current, exit 1 unless every selected environment is current."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--env",
            action="append",
            metavar="NAME",
            dest="environments",
            help="read only this environment (repeatable); default: all",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="print a JSON list of environment, project, heads, state, pending, error,"
            " latency_ms, read_at",
        )
        parser.add_argument(
            "--fail-unless-current",
            action="store_true",
            help="exit 1 when a selected environment is not current",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            snapshots = status.status_refresh(environments=options["environments"])
        except status.UnknownEnvironment as exc:
            raise CommandError(str(exc), returncode=2) from exc
        except ConfigError as exc:
            raise CommandError(f"the config cannot be read: {exc}", returncode=2) from exc
        if options["json"]:
            self.stdout.write(json.dumps([snapshot_item(s) for s in snapshots], indent=2))
        else:
            self.stdout.write(render_table(snapshots))
        behind = [s for s in snapshots if s.state != Snapshot.State.CURRENT]
        if options["fail_unless_current"] and behind:
            names = ", ".join(f"{s.environment} ({s.get_state_display()})" for s in behind)
            raise CommandError(f"not current: {names}", returncode=1)


def render_table(snapshots: list[Snapshot]) -> str:
    """Return the snapshots as an aligned plain-text table."""
    rows = [
        (
            s.environment,
            s.project,
            s.get_state_display(),
            " ".join(s.heads) or "-",
            str(len(s.pending)),
            f"{s.latency_ms:.0f} ms" if s.latency_ms is not None else "-",
            s.detail,
        )
        for s in snapshots
    ]
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS) - 1)]
    lines = []
    for row in [COLUMNS, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)
