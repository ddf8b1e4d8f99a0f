"""How a plan's revisions run, for its pages: steps outside a transaction, their own limits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dashboard.config import ConfigError, Environment, current_config
from dashboard.history import Direction, Graph, Revision
from dashboard.models import Action
from dashboard.scripts import ScriptLocationError
from dashboard.scripts.parse import LIMIT_KEYS, limit_seconds
from dashboard.selectors.actions import project_graph, short
from dashboard.selectors.targets import RequestPage


@dataclass(frozen=True)
class MarkedRevision:
    """One revision that runs outside a transaction or with its own limits, said in sentences."""

    revision: str
    short: str
    message: str
    outside: list[str]
    limits: list[str]


@dataclass(frozen=True)
class LeftBehind:
    """An invalid index a failed run left on the environment."""

    text: str
    definition: str


@dataclass(frozen=True)
class PlanMarks:
    """What a plan's (or a request's) revisions say about how they run, and what a run left."""

    revisions: list[MarkedRevision] = field(default_factory=list)
    left_behind: list[LeftBehind] = field(default_factory=list)
    # Above the list: what it covers (a request's page lists what the direction may run).
    note: str = ""

    @property
    def shown(self) -> bool:
        """Say whether there is anything to show."""
        return bool(self.revisions or self.left_behind)


def action_marks(action: Action) -> PlanMarks:
    """Return the stored marks of the action's plan, in run order, and the indexes it left."""
    stored = action.plan_marks if isinstance(action.plan_marks, dict) else {}
    plan = [rev for rev in action.plan if isinstance(rev, str)] if action.plan else []
    env, graph = _environment_and_graph(action.environment)
    revisions = []
    for rev in [*plan, *(r for r in stored if r not in plan)]:
        marks = stored.get(rev)
        if not isinstance(marks, dict):
            continue
        outside = [str(why) for why in marks.get("non_transactional") or [] if why]
        found = marks.get("limits")
        limits: dict[str, Any] = found if isinstance(found, dict) else {}
        revisions.append(_marked(rev, graph, outside, limits, env))
    return PlanMarks(
        revisions=[r for r in revisions if r.outside or r.limits],
        left_behind=_left_behind(action.invalid_indexes),
    )


def request_marks(page: RequestPage) -> PlanMarks:
    """Return the marks of the revisions the request page's direction may run from its heads."""
    if page.direction not in (Action.Direction.UPGRADE, Action.Direction.DOWNGRADE):
        return PlanMarks()  # a stamp runs no revision
    env, graph = _environment_and_graph(page.environment)
    if graph is None:
        return PlanMarks()
    if page.queue_behind is not None:
        heads: list[str] | None = list(page.queue_behind.ends_at)
    else:
        heads = list(page.heads) if page.heads_known else None
    way: Direction = "downgrade" if page.direction == Action.Direction.DOWNGRADE else "upgrade"
    may_run = _may_run(graph, heads, way)
    revisions = []
    for rev in graph.topological():
        if rev not in may_run:
            continue
        revision = graph.revisions[rev]
        outside = list(revision.outside_transaction(way))
        if outside or revision.limits:
            revisions.append(_marked(rev, graph, outside, dict(revision.limits), env))
    action = "an upgrade" if way == "upgrade" else "a rollback"
    if heads is None:
        note = "The heads are not known yet, so every revision that says how it runs is listed"
    else:
        note = f"Of the revisions {action} from here may run, these say how they run"
    return PlanMarks(
        revisions=revisions, note=f"{note}; the action's page lists those its plan runs."
    )


def _may_run(graph: Graph, heads: Sequence[str] | None, way: str) -> set[str]:
    """Return the revisions a plan in that direction can run from heads (all when unknown)."""
    if heads is None:
        return set(graph.revisions)
    applied: set[str] = set()
    for head in heads:
        if head in graph.revisions:
            applied |= {head, *graph.ancestors(head)}
    if way == "downgrade":
        return applied
    return set(graph.revisions) - applied


def _environment_and_graph(name: str) -> tuple[Environment | None, Graph | None]:
    """Return the environment as configured and its project's graph, each None if unreadable."""
    try:
        config = current_config()
    except ConfigError:
        return None, None
    env = config.environments.get(name)
    project = config.projects.get(env.project) if env is not None else None
    if project is None:
        return env, None
    try:
        return env, project_graph(project)
    except (ScriptLocationError, OSError):
        return env, None


def _marked(
    rev: str,
    graph: Graph | None,
    outside: Iterable[str],
    limits: dict[str, Any],
    env: Environment | None,
) -> MarkedRevision:
    revision: Revision | None = graph.revisions.get(rev) if graph is not None else None
    return MarkedRevision(
        revision=rev,
        short=short(rev),
        message=revision.message if revision is not None else "",
        outside=[f"runs outside a transaction: {why} — {_consequence(why)}" for why in outside],
        limits=[_limit_sentence(key, str(limits[key]), env) for key in LIMIT_KEYS if key in limits],
    )


def _consequence(why: str) -> str:
    """Say what a failure of such a step leaves, by the kind the parser named."""
    if why.startswith("autocommit_block"):
        return "Alembic commits what ran before it, and what runs inside it is not rolled back"
    if why.startswith("DROP INDEX"):
        return "if it fails it can leave the index invalid"
    if why.startswith(("CREATE", "REINDEX")) and "CONCURRENTLY" in why:
        return "if it fails it can leave an invalid index"
    return "if it fails it is not rolled back"


def _limit_sentence(key: str, duration: str, env: Environment | None) -> str:
    """Say what the revision's limit does to the environment's own for the run."""
    # The environment's limits in seconds; None where the server's own setting applies.
    current = getattr(env, key, None) if env is not None else None
    try:
        seconds: float | None = limit_seconds(duration)
    except ValueError:
        seconds = None
    if not isinstance(current, int | float) or seconds is None:
        verb = "sets"
    elif seconds > current:
        verb = "raises"
    elif seconds < current:
        verb = "lowers"
    else:
        verb = "keeps"
    return f"{verb} {key} to {duration} for this run"


def _left_behind(found: object) -> list[LeftBehind]:
    rows = []
    for item in found if isinstance(found, list) else []:
        if not isinstance(item, dict) or not item.get("index"):
            continue
        table = f" on {item['table']}" if item.get("table") else ""
        rows.append(
            LeftBehind(
                text=f"left behind: invalid index {item['index']}{table} — drop it and build it"
                " again",
                definition=str(item.get("definition") or ""),
            )
        )
    return rows
