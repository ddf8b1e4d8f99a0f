"""Print a project's revision graph as a text drawing, or as the graph API's JSON."""

import json
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard import scripts
from dashboard.config import ConfigError, current_config
from dashboard.drawing.lanes import graph_as_text


class Command(BaseCommand):
    # A CI gate: system checks would import every view and URL; config errors exit 2 here.
    requires_system_checks: list[str] = []
    help = (
        "Print a project's revisions as a text graph (heads first, in Alembic's walk order), or with --json the"
        " document GET /api/projects/<name>/graph returns. Projects configured with"
        ' loader = "alembic" are read by Alembic itself, in a subprocess of their python.'
    )

    def add_arguments(self, parser: CommandParser) -> None:
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--project", metavar="NAME", help="a project from the config")
        where.add_argument(
            "--script-location",
            metavar="DIR",
            type=Path,
            help="a script directory, its revisions in DIR/versions",
        )
        where.add_argument(
            "--alembic-ini",
            metavar="FILE",
            type=Path,
            help="an alembic.ini, honouring its version_locations and recursive setting",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="print heads, bases, revisions and problems as JSON",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            history = self.history(options)
        except (ConfigError, scripts.ScriptLocationError) as exc:
            raise CommandError(f"the revision history cannot be read: {exc}") from exc
        graph = history.graph
        # Alembic imports every file: a syntax error anywhere in one stops it.
        problems = graph.problems + scripts.syntax_problems(history)
        if options["json"]:
            self.stdout.write(json.dumps({**graph.to_json(), "problems": problems}, indent=2))
            return
        heads, bases = len(graph.heads), len(graph.bases)
        self.stdout.write(
            f"{history.script_location}: {len(graph)} revision{'s' * (len(graph) != 1)},"
            f" {heads} head{'s' * (heads != 1)}, {bases} base{'s' * (bases != 1)}\n"
        )
        self.stdout.write(graph_as_text(graph) or "(no revisions)\n", ending="")
        if problems:
            self.stdout.write(f"\n{len(problems)} problem(s):")
            for problem in problems:
                self.stdout.write(f"  - {problem}")

    def history(self, options: dict[str, Any]) -> scripts.LoadedHistory:
        """Return the history the options name, read as its project's config says."""
        name = options["project"]
        if name is None:
            return scripts.load_history(
                options["script_location"], alembic_ini=options["alembic_ini"]
            )
        config = current_config()
        project = config.projects.get(name)
        if project is None:
            known = ", ".join(sorted(config.projects)) or "none"
            raise CommandError(f"no project named {name!r}; configured projects: {known}")
        # As services.actions.pinning.load_project_history(may_run_project_code=True) reads it,
        # without importing the action services a read never needs (this is a CI step too).
        if project.loader == "alembic":
            return scripts.load_history_with_alembic(
                project.script_location,
                alembic_ini=project.alembic_ini,
                python=project.python or sys.executable,
            )
        return scripts.load_project_files(project)
