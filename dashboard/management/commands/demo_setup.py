"""Create the demo: environments at different revisions (by running Alembic) and three users."""

import secrets
import sqlite3
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from sqlalchemy.engine import make_url

from dashboard import runner
from dashboard.config import current_config
from dashboard.history import Graph
from dashboard.scripts import load_history
from dashboard.services import drift, users

USERS = (("admin", "admin"), ("operator", "operator"), ("approver", "approver"))
# The demo environment whose schema drifts out of the box, as a hand-made hotfix would leave it
# (its description in demo/dashboard.toml says so).
DRIFTED = "staging"
HAND_MADE = "ALTER TABLE users ADD COLUMN nickname VARCHAR(40)"


def first_parent_ancestor(graph: Graph, rev: str, steps: int) -> str:
    """Walk down first parents from rev, at most steps times."""
    for _ in range(steps):
        parents = graph.revisions[rev].down_revisions
        if not parents:
            break
        rev = parents[0]
    return rev


def side_branch_tip(graph: Graph) -> str | None:
    """Return the last revision of a labelled side branch before it merges, if any."""
    for rev in graph.topological():
        if graph.is_merge_point(rev):
            for parent in graph.revisions[rev].down_revisions:
                if graph.labels_of(parent):
                    return parent
    return None


def demo_targets(graph: Graph, envs: list[str]) -> dict[str, str]:
    """Choose where each demo environment sits: dev at heads, then further and further behind."""
    head = graph.heads[0]
    targets = {"dev": "heads", "staging": first_parent_ancestor(graph, head, 2)}
    targets["prod"] = first_parent_ancestor(graph, head, 4)
    targets["qa"] = side_branch_tip(graph) or first_parent_ancestor(graph, head, 1)
    return {env: targets.get(env, "heads") for env in envs}


def add_by_hand(path: str) -> None:
    """Change a demo SQLite database outside Alembic, as someone fixing prod by hand would."""
    with sqlite3.connect(path) as conn:
        conn.execute(HAND_MADE)
    conn.close()


class Command(BaseCommand):
    help = "Set up the demo environments (SQLite files) and users; keeps what already exists."

    def handle(self, *args: Any, **options: Any) -> None:
        config = current_config()
        for project in config.projects.values():
            graph = load_history(project.script_location, alembic_ini=project.alembic_ini).graph
            envs = config.environments_of(project.name)
            targets = demo_targets(graph, [e.name for e in envs])
            for env in envs:
                url = env.database_url()
                path = make_url(url).database
                if make_url(url).get_backend_name() != "sqlite" or not path:
                    continue
                if Path(path).exists():
                    self.stdout.write(f"{env.name}: keeping {path}")
                    continue
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                result = runner.upgrade(project, url, targets[env.name])
                if result.returncode != 0:
                    raise CommandError(
                        f"{env.name}: alembic upgrade failed:\n" + "\n".join(result.output_tail)
                    )
                self.stdout.write(f"{env.name}: created at {targets[env.name]}")
                if env.name == DRIFTED:
                    add_by_hand(path)
                    self.stdout.write(f"{env.name}: added users.nickname by hand (schema drift)")
        # Check every schema once now so the badges show at once; the worker keeps them fresh.
        for check in drift.schemas_check():
            count = f" ({len(check.differences)})" if check.differences else ""
            self.stdout.write(f"{check.environment}: schema {check.get_state_display()}{count}")
        created = []
        for username, role in USERS:
            if users.user_exists(username=username):
                continue
            password = secrets.token_urlsafe(12)
            users.user_set_role(username=username, role=role, password=password)
            created.append((username, role, password))
        if created:
            self.stdout.write("\nDemo users (shown once; `make demo-reset` makes new ones):")
            for username, role, password in created:
                self.stdout.write(f"  {username:<9} {password}   ({role})")
        else:
            self.stdout.write(
                "Demo users already exist (admin, operator, approver); their passwords are unchanged."
            )
