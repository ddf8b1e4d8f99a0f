"""Plan an action from an environment's heads and fingerprint the code it would run."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from dashboard import scripts
from dashboard.config import Project
from dashboard.history import Direction, Graph, Step
from dashboard.runner import bundle


class ProjectCodeNeeded(Exception):
    """Reading this project's history means running its code, which only the worker may do."""


@dataclass(frozen=True)
class Plan:
    """The steps Alembic will run from from_heads to a target, and the heads they leave."""

    from_heads: tuple[str, ...]
    steps: list[Step]
    target_heads: tuple[str, ...]

    @property
    def revisions(self) -> list[str]:
        """Return the revision ids in the order Alembic runs them."""
        return [step.revision for step in self.steps]


def load_project_history(project: Project, *, may_run_project_code: bool) -> scripts.LoadedHistory:
    """Return the project's graph and fingerprint, refusing Alembic's loader outside the worker."""
    if project.loader == "alembic":
        if not may_run_project_code:
            raise ProjectCodeNeeded(
                f"project {project.name} is read with Alembic's own loader, which runs its code;"
                " plan its actions from the command line (manage.py action request)"
            )
        return scripts.load_history_with_alembic(
            project.script_location,
            alembic_ini=project.alembic_ini,
            python=project.python or sys.executable,
        )
    return scripts.load_history(project.script_location, alembic_ini=project.alembic_ini)


def current_fingerprint(project: Project) -> str:
    """Return the digest of the bytes of every file a run would load, as they are now."""
    return bundle.bundle_read(project).digest


def current_bundle(project: Project, loaded: scripts.LoadedHistory) -> bundle.Bundle:
    """Read the files a run would load, refusing bytes other than those the history was read from."""
    found = bundle.bundle_read(project)
    if found.revisions_stamp != loaded.fingerprint:
        raise bundle.BundleError(
            f"project {project.name}'s revision files changed while the plan was made"
        )
    return found


def make_plan(graph: Graph, from_heads: Sequence[str], target: str, direction: Direction) -> Plan:
    """Return exactly the steps `alembic <direction> <target>` would run, in Alembic's order."""
    current = tuple(from_heads)
    steps = graph.plan(current, target, direction)
    return Plan(
        from_heads=current, steps=steps, target_heads=tuple(graph.heads_after(current, steps))
    )


def plan_hash(
    *,
    environment: str,
    direction: str,
    target: str,
    from_heads: Sequence[str],
    plan: Sequence[str],
    sql_sha256: str,
    fingerprint: str,
) -> str:
    """Return sha256 over the canonical JSON of everything an approval vouches for."""
    document = {
        "environment": environment,
        "direction": direction,
        "target": target,
        "from_heads": sorted(from_heads),
        "plan": list(plan),
        "sql_sha256": sql_sha256,
        "fingerprint": fingerprint,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()
