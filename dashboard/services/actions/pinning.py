"""Plan an action from an environment's heads and fingerprint the code it would run."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dashboard import scripts
from dashboard.config import Project
from dashboard.history import Direction, Graph, Revision, Step, UnknownRevision
from dashboard.runner import bundle
from dashboard.scripts import cache, parse
from dashboard.scripts.scan import files_by_location

if TYPE_CHECKING:
    from dashboard.models import Action

# "+2", "head-1", "label@-1": a step count from where the environment is, which a stamp lacks.
_RELATIVE_END = re.compile(r"[+-]\d+$")


class ProjectCodeNeeded(Exception):
    """Reading this project's history means running its code, which only the worker may do."""


class MarksUnreadable(Exception):
    """A plan revision's dashboard_limits cannot be read statically, so no plan is made on a guess."""


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
    return scripts.load_project_files(project)


def current_fingerprint(project: Project) -> str:
    """Return the digest of the bytes of every file a run would load, as they are now."""
    return bundle.bundle_read(project).digest


def current_bundle(
    project: Project, loaded: scripts.LoadedHistory, *, may_run_project_code: bool
) -> tuple[scripts.LoadedHistory, bundle.Bundle]:
    """Read the files a run would load, and return them with a history parsed from those bytes.

    Raises BundleError when no fresh parse matches the bytes read.
    """
    found = bundle.bundle_read(project)
    if not parse_mismatch(project, found, loaded):
        return loaded, found
    # The parse is cached by stat, which an edit keeping size and mtime slips past: the
    # graph must describe the bytes that will be approved, so parse every file again, once.
    cache.forget(project.script_location, alembic_ini=project.alembic_ini)
    loaded = load_project_history(project, may_run_project_code=may_run_project_code)
    changed = parse_mismatch(project, found, loaded)
    if changed:
        if found.manifest and not loaded.file_hashes and loaded.graph.revisions:
            raise bundle.BundleError(
                f"Alembic's loader for project {project.name} did not say which bytes it read"
                " (its Alembic has no alembic.util.pyfiles.load_module_py), so no plan can be"
                " bound to them"
            )
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise bundle.BundleError(
            f"project {project.name}'s revision files changed while the plan was made"
            f" ({', '.join(changed[:3])}{more}); request again"
        )
    return loaded, found


def parse_mismatch(
    project: Project, found: bundle.Bundle, loaded: scripts.LoadedHistory
) -> list[str]:
    """Return the revision files whose bytes in found are not the ones loaded was parsed from."""
    settings = scripts.read_settings(project.script_location, alembic_ini=project.alembic_ini)
    # The bundle names files by their place in the copy; the parse by their real path.
    in_bundle: dict[str, str | None] = {}
    named = set()
    for index, prefix, files in files_by_location(settings):
        for f in files:
            name = f"{bundle.VERSIONS}/{index}/{f.relpath[len(prefix) :]}"
            in_bundle[f.path] = found.manifest.get(name)
            named.add(name)
    # Files of the bundle this listing no longer finds (removed or renamed since it was read).
    gone = [
        name
        for name in found.manifest
        if name.startswith(f"{bundle.VERSIONS}/") and name not in named
    ]
    parsed = loaded.file_hashes
    differ = [
        path
        for path in sorted(in_bundle.keys() | parsed.keys())
        if in_bundle.get(path) is None or in_bundle.get(path) != parsed.get(path)
    ]
    return differ + sorted(gone)


def make_plan(graph: Graph, from_heads: Sequence[str], target: str, direction: Direction) -> Plan:
    """Return exactly the steps `alembic <direction> <target>` would run, in Alembic's order."""
    current = tuple(from_heads)
    steps = graph.plan(current, target, direction)
    return Plan(
        from_heads=current, steps=steps, target_heads=tuple(graph.heads_after(current, steps))
    )


def make_stamp_plan(graph: Graph, from_heads: Sequence[str], target: str) -> Plan:
    """Return `alembic stamp <target>`'s plan: no step runs, the version table gets the target.

    Raises the history's UnknownRevision (and kin) when the target names no revision.
    """
    if _RELATIVE_END.search(target):
        raise UnknownRevision(
            f"{target!r} is relative: a stamp names the revision the schema is at"
        )
    return Plan(from_heads=tuple(from_heads), steps=[], target_heads=graph.resolve(target))


def plan_hash(
    *,
    environment: str,
    direction: str,
    target: str,
    from_heads: Sequence[str],
    plan: Sequence[str],
    sql_sha256: str,
    fingerprint: str,
    target_heads: Sequence[str] = (),
    plan_marks: dict[str, Any] | None = None,
) -> str:
    """Return sha256 over the canonical JSON of everything an approval vouches for."""
    document: dict[str, Any] = {
        "environment": environment,
        "direction": direction,
        "target": target,
        "from_heads": sorted(from_heads),
        "plan": list(plan),
        "sql_sha256": sql_sha256,
        "fingerprint": fingerprint,
        # The run tells Alembic the plan's end (see review.plan_end), so that end is vouched for.
        "target_heads": sorted(target_heads),
    }
    if plan_marks:
        # The run takes its limits from the stored marks, which the approvers saw on the plan.
        # Left out when empty, so every hash made before marks existed still holds.
        document["plan_marks"] = plan_marks
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def action_plan_hash(action: Action) -> str:
    """Return the plan hash of the action's stored fields, as an approver's hash must be."""
    return plan_hash(
        environment=action.environment,
        direction=action.direction,
        target=action.target,
        from_heads=action.from_heads,
        plan=action.plan,
        sql_sha256=action.sql_sha256,
        fingerprint=action.fingerprint,
        target_heads=action.target_heads,
        plan_marks=action.plan_marks,
    )


def plan_marks(
    loaded: scripts.LoadedHistory,
    found: bundle.Bundle,
    revisions: Sequence[str],
    direction: str,
    *,
    parsed_here: bool,
) -> dict[str, dict[str, Any]]:
    """Return what each plan revision's approved bytes say about how it runs, for those that say.

    {revision: {"non_transactional": [why, ...], "limits": {"lock_timeout": "10min"}}}, with
    non_transactional of the plan's direction. parsed_here says the graph is the static
    parser's, already of these bytes; Alembic's loader reads no marks, so they are read here.
    Raises MarksUnreadable for a dashboard_limits the static parser would have flagged.
    """
    way: Direction = "downgrade" if direction == "downgrade" else "upgrade"
    marks: dict[str, dict[str, Any]] = {}
    for rev in revisions:
        in_graph = loaded.graph.revisions.get(rev)
        if in_graph is None:
            continue
        read: Revision | parse.Marks | str | None = in_graph
        if not parsed_here:
            sha = loaded.file_hashes.get(in_graph.path)
            data = found.contents.get(sha) if sha else None
            read = parse.read_marks(in_graph.path, data) if data is not None else None
            if isinstance(read, parse.Marks) and read.problems:
                raise MarksUnreadable(f"{in_graph.path}: {read.problems[0]}")
        if not isinstance(read, Revision | parse.Marks):
            continue  # unread or unparsable: such a plan was refused before it got here
        outside = (
            read.downgrade_outside_transaction
            if way == "downgrade"
            else read.upgrade_outside_transaction
        )
        if outside or read.limits:
            marks[rev] = {"non_transactional": list(outside), "limits": dict(read.limits)}
    return marks
