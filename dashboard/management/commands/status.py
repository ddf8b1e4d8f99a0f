"""Read environments now, store snapshots and print where each one stands (a CI gate too)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard.config import ConfigError, current_config
from dashboard.models import Snapshot
from dashboard.services import status

if TYPE_CHECKING:
    from dashboard.selectors import fleets

COLUMNS = ("environment", "project", "state", "heads", "pending", "latency", "detail")
MEMBER_COLUMNS = ("member", "state", "heads", "pending", "read at", "detail")
# Members not current that a failing --fail-unless-current names; the counts say the rest.
NAMED_NOT_CURRENT = 10


class Command(BaseCommand):
    # A CI gate: system checks would import every view and URL; config errors exit 2 here.
    requires_system_checks: list[str] = []
    help = (
        "Read the environments' version tables now, store snapshots and print their states. "
        "With --fail-unless-current, exit 1 unless every selected environment is current. "
        "With --fleet NAME, read that fleet's members and print their counts by state."
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
            "--fleet",
            metavar="NAME",
            help="read every member of this fleet and print its counts by state and its members",
        )
        parser.add_argument(
            "--stored",
            action="store_true",
            help="with --fleet: print the members' latest snapshots without reading them now",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="print a JSON list of environment, project, heads, state, pending, error,"
            " latency_ms, read_at (with --fleet: the fleet as GET /api/fleets/NAME gives it)",
        )
        parser.add_argument(
            "--fail-unless-current",
            action="store_true",
            help="exit 1 when a selected environment (with --fleet: a member) is not current",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["fleet"] is not None:
            if options["environments"]:
                raise CommandError("--fleet and --env do not go together", returncode=2)
            self.handle_fleet(options)
            return
        if options["stored"]:
            raise CommandError("--stored goes with --fleet", returncode=2)
        try:
            snapshots = status.status_refresh(environments=options["environments"])
        except status.UnknownEnvironment as exc:
            raise CommandError(str(exc), returncode=2) from exc
        except ConfigError as exc:
            raise CommandError(f"the config cannot be read: {exc}", returncode=2) from exc
        if options["json"]:
            from dashboard.selectors.status import snapshot_item

            self.stdout.write(json.dumps([snapshot_item(s) for s in snapshots], indent=2))
        else:
            self.stdout.write(render_table(snapshots))
        behind = [s for s in snapshots if s.state != Snapshot.State.CURRENT]
        if options["fail_unless_current"] and behind:
            names = ", ".join(f"{s.environment} ({s.get_state_display()})" for s in behind)
            raise CommandError(f"not current: {names}", returncode=1)

    def handle_fleet(self, options: dict[str, Any]) -> None:
        """Read a fleet's members (unless --stored) and print them; fail unless all are current."""
        # Only here: the fleet selectors bring the schema checks, which a CI gate never needs.
        from dashboard.selectors import fleets
        from dashboard.selectors.status import STATE_LABELS

        name = options["fleet"]
        try:
            members = fleets.member_names(name=name)
            if members is not None and not options["stored"]:
                status.status_refresh(environments=members)
            found = fleets.fleet_status(name=name) if members is not None else None
            if found is None:
                known = ", ".join(sorted(current_config().fleets)) or "none"
                raise CommandError(f"no fleet named {name!r} (configured: {known})", returncode=2)
        except ConfigError as exc:
            raise CommandError(f"the config cannot be read: {exc}", returncode=2) from exc
        if options["json"]:
            self.stdout.write(json.dumps(fleets.fleet_json(found), indent=2))
        else:
            self.stdout.write(counts_line(found))
            for problem in found.problems:
                self.stdout.write(f"problem: {problem}")
            self.stdout.write(render_members(found.members))
        if options["fail_unless_current"]:
            behind = found.not_current
            if not found.members:
                raise CommandError(f"fleet {name} has no members", returncode=1)
            if behind:
                named = ", ".join(
                    f"{m.member} ({STATE_LABELS[m.state]})" for m in behind[:NAMED_NOT_CURRENT]
                )
                more = len(behind) - NAMED_NOT_CURRENT
                raise CommandError(
                    f"{len(behind)} of {len(found.members)} members of fleet {name} not current"
                    f" ({counts_text(found)}): {named}{f' and {more} more' if more > 0 else ''}",
                    returncode=1,
                )


def counts_text(found: fleets.FleetStatus) -> str:
    """Return a fleet's counts by state in words: "9 current, 2 behind"."""
    return ", ".join(f"{c.count} {c.label}" for c in found.counts) or "no members"


def counts_line(found: fleets.FleetStatus) -> str:
    """Return a fleet's first line: its name, project, size and counts."""
    total = len(found.members)
    return (
        f"fleet {found.fleet.name} (project {found.fleet.project}):"
        f" {total} member{'s' if total != 1 else ''}: {counts_text(found)}"
    )


def render_members(members: tuple[fleets.MemberStatus, ...]) -> str:
    """Return a fleet's members as an aligned plain-text table."""
    from dashboard.selectors.status import STATE_LABELS

    rows = [
        (
            m.member,
            STATE_LABELS[m.state],
            " ".join(m.heads) or "-",
            str(len(m.snapshot.pending)) if m.snapshot is not None else "-",
            f"{m.snapshot.read_at:%Y-%m-%d %H:%M:%S}" if m.snapshot is not None else "-",
            m.snapshot.detail if m.snapshot is not None else "not read yet",
        )
        for m in members
    ]
    return aligned(MEMBER_COLUMNS, rows)


def aligned(columns: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """Return rows under their column names, every column but the last padded to one width."""
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns) - 1)]
    lines = []
    for row in [columns, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


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
    return aligned(COLUMNS, rows)
