"""Create the demo: environments and a fleet's tenants at different revisions (by running Alembic)
and three users."""

import os
import secrets
import shutil
import sqlite3
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from sqlalchemy.engine import make_url

from dashboard import runner
from dashboard.config import Environment, Project, current_config
from dashboard.history import Graph
from dashboard.scripts import load_project_files
from dashboard.services import drift, users

USERS = (("admin", "admin"), ("operator", "operator"), ("approver", "approver"))
# The demo environment whose schema drifts out of the box, as a hand-made hotfix would leave it
# (its description in demo/dashboard.toml says so).
DRIFTED = "staging"
HAND_MADE = "ALTER TABLE users ADD COLUMN nickname VARCHAR(40)"
# The demo tenant broken on purpose (the fleet's description in demo/dashboard.toml says so): a
# users table made by hand and no version table, so its first revision fails at CREATE TABLE users.
BROKEN_TENANT = "initech"
HAND_MADE_TABLE = "CREATE TABLE users (id INTEGER PRIMARY KEY, email VARCHAR(255) NOT NULL)"
# Where the demo tenants sit: "base" (an empty version table), "first" (the first revision),
# "side" (the side branch's tip) or steps behind the heads; every other tenant is at the heads.
# The rollout's members run in name order, so acme (behind) is the canary and initech is in wave 2.
TENANT_PLACES: dict[str, str | int] = {
    "acme": 4,
    "globex": "base",
    "massive": 2,
    "oscorp": "first",
    "soylent": "side",
    "tyrell": 4,
    "umbrella": "base",
    "wayne": 2,
}
MAX_PARALLEL = 4  # Alembic processes creating tenants at once


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


def tenant_target(graph: Graph, member: str) -> str:
    """Return the revision a demo tenant is created at (heads unless TENANT_PLACES says else)."""
    place = TENANT_PLACES.get(member, "heads")
    if isinstance(place, int):
        return first_parent_ancestor(graph, graph.heads[0], place)
    if place == "first":
        return graph.bases[0]
    if place == "side":
        return side_branch_tip(graph) or first_parent_ancestor(graph, graph.heads[0], 1)
    return place


def make_by_hand(path: Path) -> None:
    """Make a users table outside Alembic, as someone starting a tenant by hand would."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    with sqlite3.connect(partial) as conn:
        conn.execute(HAND_MADE_TABLE)
    conn.close()
    os.replace(partial, path)


def upgrade_into(project: Project, target: str, paths: list[Path]) -> None:
    """Create SQLite files at target: Alembic upgrades the first, the others are its copies."""
    template = paths[0].with_name(f".{target}.partial")
    template.unlink(missing_ok=True)
    try:
        result = runner.upgrade(project, f"sqlite:///{template}", target)
        if result.returncode != 0:
            raise CommandError(
                f"{paths[0].stem}: alembic upgrade failed:\n" + "\n".join(result.output_tail)
            )
        for path in paths:
            # Whole files only, so a run that stops half way leaves nothing to keep next time.
            partial = path.with_name(path.name + ".partial")
            shutil.copyfile(template, partial)
            os.replace(partial, path)
    finally:
        template.unlink(missing_ok=True)


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
            graph = load_project_files(project).graph
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
            for fleet in config.fleets_of(project.name):
                self.create_members(project, graph, fleet.name, config.members_of(fleet.name))
        # Check every environment's schema once now so the badges show at once; the worker keeps
        # them, and the fleets' members, fresh (a reference per tenant revision would be slow).
        standalone = [env.name for env in config.standalone_environments()]
        for check in drift.schemas_check(standalone):
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

    def create_members(
        self, project: Project, graph: Graph, fleet: str, members: Iterable[Environment]
    ) -> None:
        """Create a fleet's missing SQLite members, each revision once, in parallel; keep the rest."""
        wanted: dict[str, list[Path]] = {}
        kept = 0
        for member in members:
            url = make_url(member.database_url())
            if url.get_backend_name() != "sqlite" or not url.database:
                continue
            path = Path(url.database)
            if path.exists():
                kept += 1
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if member.member == BROKEN_TENANT:
                make_by_hand(path)
                self.stdout.write(
                    f"{member.name}: created broken (a hand-made users table, no version table)"
                )
                continue
            wanted.setdefault(tenant_target(graph, member.member or ""), []).append(path)
        if kept:
            self.stdout.write(f"{fleet}: keeping {kept} members")
        if not wanted:
            return
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(wanted))) as pool:
            jobs = [pool.submit(upgrade_into, project, t, paths) for t, paths in wanted.items()]
            for job in jobs:
                job.result()
        for target, paths in wanted.items():
            names = ", ".join(f"{fleet}/{p.stem}" for p in paths)
            self.stdout.write(f"{names}: created at {target}")
