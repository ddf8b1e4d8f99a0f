"""Check a script directory for heads no branch label separates: a pre-merge CI hook."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

# Light on purpose: CI runs this on every push. No environment database is connected to.
from dashboard import scripts
from dashboard.config import ConfigError, DashboardConfig, Project, current_config
from dashboard.selectors.heads_guard import project_report

USAGE_ERROR = 2


class Command(BaseCommand):
    # A CI gate: system checks would import every view and URL; config errors exit 2 here.
    requires_system_checks: list[str] = []
    help = (
        "With --check, exit 1 when the history has several heads that no branch label"
        " separates (Alembic's `upgrade head` refuses them), naming where each is applied"
        " (from stored snapshots, for a configured project) and the `alembic merge` command"
        " that joins them; exit 0 on one head, or on branches that labels separate."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check",
            action="store_true",
            help="exit 1 on accidental heads (without it, only print the report)",
        )
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--project", metavar="NAME", help="a project from the config")
        where.add_argument("--script-location", metavar="DIR", type=Path, help="a script directory")
        where.add_argument(
            "--alembic-ini", metavar="FILE", type=Path, help="an alembic.ini naming one"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        config, project = self.project(options)
        try:
            if project is not None:
                history = scripts.load_project_files(project)
            else:
                history = scripts.load_history(
                    options["script_location"], alembic_ini=options["alembic_ini"]
                )
        except (scripts.ScriptLocationError, OSError) as exc:
            raise CommandError(
                f"the revision history cannot be read: {exc}", returncode=USAGE_ERROR
            ) from exc
        graph = history.graph
        problems = list(graph.blocking_problems) + scripts.syntax_problems(history)
        if not graph.revisions and graph.problems:
            raise CommandError(
                f"no revisions read from {history.script_location}: {graph.problems[0]}",
                returncode=USAGE_ERROR,
            )
        if project is None:
            ini = str(options["alembic_ini"]) if options["alembic_ini"] else None
            report = project_report(Project("", history.script_location), history, None)
        else:
            ini = str(project.alembic_ini) if project.alembic_ini else None
            report = project_report(project, history, config)
        lines = report.lines(ini)
        if problems:
            lines.append(f"The history has {len(problems)} problem(s) Alembic would refuse:")
            lines += [f"  - {problem}" for problem in problems]
        if not lines:
            count = len(report.heads)
            if count > 1:
                shape = f"{count} heads, each on its own labelled branch"
            else:
                shape = "1 head" if count else "no revisions"
            self.stdout.write(f"OK: {history.script_location} has {shape}")
            return
        self.stdout.write("\n".join(lines))
        if options["check"]:
            sys.exit(1)

    def project(self, options: dict[str, Any]) -> tuple[DashboardConfig | None, Project | None]:
        """Return the config and the project --project names, or the one a path belongs to."""
        name = options["project"]
        try:
            config = current_config()
        except ConfigError as exc:
            if name is not None:
                raise CommandError(
                    f"the config cannot be read: {exc}", returncode=USAGE_ERROR
                ) from exc
            return None, None
        if name is not None:
            found = config.projects.get(name)
            if found is None:
                known = ", ".join(sorted(config.projects)) or "none"
                raise CommandError(
                    f"no project named {name!r}; configured projects: {known}",
                    returncode=USAGE_ERROR,
                )
            return config, found
        # A path a configured project reads: its snapshots say where each head is applied.
        for found in config.projects.values():
            if _same(options["alembic_ini"], found.alembic_ini) or (
                options["script_location"] is not None
                and found.alembic_ini is None
                and _same(options["script_location"], found.script_location)
            ):
                return config, found
        return None, None


def _same(given: Path | None, configured: Path | None) -> bool:
    if given is None or configured is None:
        return False
    try:
        return given.resolve() == Path(configured).resolve()
    except OSError:
        return False
