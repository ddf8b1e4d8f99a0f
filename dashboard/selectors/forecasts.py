"""How long a plan's revisions took where they ran before, and what the whole plan may take.

The forecast of one revision is the median of its newest successful time on each environment
(any environment, this one included: a redo there is the best guess); the plan's is their sum.
Failed, interrupted, cancelled and retried runs never count. A revision flagged "took long" has a
successful time above LONG_REVISION_S somewhere: one slow environment is worth a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import median

from django.db.models import F, Window
from django.db.models.functions import RowNumber

from dashboard.config import ConfigError, current_config
from dashboard.history import HistoryError
from dashboard.models import Action, RevisionRun
from dashboard.scripts import ScriptLocationError
from dashboard.selectors.actions import project_graph
from dashboard.selectors.targets import RequestPage

LONG_REVISION_S = 60.0
# Newest successful runs looked at per plan: each is one environment's newest of one revision,
# so this only bounds a plan of hundreds of revisions on dozens of environments.
SEEN_ROWS_LIMIT = 2000


@dataclass(frozen=True)
class Seen:
    """One environment's newest successful run of one revision."""

    environment: str
    duration_s: float
    at: datetime  # when it finished

    @property
    def text(self) -> str:
        """Say it for a page: "staging 4 min 12 s"."""
        return f"{self.environment} {seconds_text(self.duration_s)}"

    def as_json(self) -> dict[str, object]:
        """Return it for the JSON API."""
        return {
            "environment": self.environment,
            "duration_s": round(self.duration_s, 3),
            "at": self.at.isoformat(),
        }


@dataclass(frozen=True)
class RevisionForecast:
    """One plan revision: the times seen for it, and its forecast (None: never run anywhere)."""

    revision: str
    seen: list[Seen]

    @property
    def short(self) -> str:
        return self.revision[:12]

    @property
    def forecast_s(self) -> float | None:
        return float(median(s.duration_s for s in self.seen)) if self.seen else None

    @property
    def forecast_text(self) -> str:
        return seconds_text(self.forecast_s) if self.forecast_s is not None else ""

    @property
    def never_run(self) -> bool:
        return not self.seen

    @property
    def took_long(self) -> bool:
        return any(s.duration_s > LONG_REVISION_S for s in self.seen)

    @property
    def seen_text(self) -> str:
        """Say the times seen: "staging 4 min 12 s, qa 3 min 58 s", or that there are none."""
        return ", ".join(s.text for s in self.seen) or "never run anywhere"


@dataclass(frozen=True)
class PlanForecast:
    """A plan's revisions with their times seen, and the forecast for the whole plan."""

    revisions: list[RevisionForecast]
    # What the plan is, for the page: "" on an action's page, "an upgrade to heads" on a request's.
    covers: str = ""

    @property
    def forecast_s(self) -> float | None:
        """Return the sum of the revisions' forecasts; None when none of them ever ran."""
        known = [r.forecast_s for r in self.revisions if r.forecast_s is not None]
        return float(sum(known)) if known else None

    @property
    def never_run(self) -> list[RevisionForecast]:
        return [r for r in self.revisions if r.never_run]

    @property
    def took_long(self) -> list[RevisionForecast]:
        return [r for r in self.revisions if r.took_long]

    @property
    def lower_bound(self) -> bool:
        """Say whether the forecast leaves out revisions that never ran anywhere."""
        return self.forecast_s is not None and bool(self.never_run)

    @property
    def shown(self) -> bool:
        return bool(self.revisions)

    @property
    def text(self) -> str:
        """Say the forecast in one sentence for the page."""
        total = self.forecast_s
        count = len(self.never_run)
        if total is None:
            return "No forecast: no revision of this plan ever ran anywhere."
        said = f"Forecast: about {seconds_text(total)}"
        if count:
            said = f"Forecast: at least {seconds_text(total)}"
            said += f" ({count} {'revision' if count == 1 else 'revisions'} never ran anywhere)"
        return f"{said}, from the newest successful runs on each environment."


def seconds_text(seconds: float) -> str:
    """Say a run time: "0.4 s", "42 s", "4 min 12 s", "1 h 5 min"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def plan_revisions(action: Action) -> list[str]:
    """Return the revisions the action's plan runs, in order (none for a stamp)."""
    if action.direction == Action.Direction.STAMP or not action.plan:
        return []
    return [rev for rev in action.plan if isinstance(rev, str)]


def _newest_succeeded(project: str, direction: str, revisions: Sequence[str]) -> list[RevisionRun]:
    """Return the newest successful run of each revision per environment, in one query.

    The (project, revision, direction) index finds the rows; each revision has a few per
    environment, so the cost follows the plan and the environments, not the history.
    """
    if not revisions:
        return []
    newest = Window(
        RowNumber(),
        partition_by=[F("revision"), F("environment")],
        order_by=[F("started_at").desc(), F("id").desc()],
    )
    rows = (
        RevisionRun.objects.filter(
            project=project,
            direction=direction,
            revision__in=list(dict.fromkeys(revisions)),
            outcome=RevisionRun.Outcome.SUCCEEDED,
        )
        .annotate(newest=newest)
        .filter(newest=1)
        .order_by("-finished_at", "environment")
        .only("environment", "revision", "duration_s", "finished_at")
    )
    return list(rows[:SEEN_ROWS_LIMIT])


def revisions_forecast(
    project: str, direction: str, revisions: Sequence[str], *, covers: str = ""
) -> PlanForecast:
    """Return the times seen for these revisions in that direction, and their forecast."""
    seen: dict[str, list[Seen]] = {rev: [] for rev in revisions}
    if direction in (Action.Direction.UPGRADE, Action.Direction.DOWNGRADE):
        for row in _newest_succeeded(project, direction, revisions):
            seen[row.revision].append(Seen(row.environment, row.duration_s, row.finished_at))
    return PlanForecast(
        revisions=[RevisionForecast(rev, seen[rev]) for rev in dict.fromkeys(revisions)],
        covers=covers,
    )


def action_forecast(action: Action) -> PlanForecast:
    """Return the forecast of the action's whole plan, revision by revision."""
    return revisions_forecast(action.project, action.direction, plan_revisions(action))


def plan_forecast_seconds(action: Action) -> float | None:
    """Return the forecast for the action's whole plan in seconds; None when none of it ever ran.

    A stamp, or a plan with nothing to run, takes no time: 0.0.
    """
    if not plan_revisions(action):
        return 0.0
    return action_forecast(action).forecast_s


def request_forecast(page: RequestPage) -> PlanForecast:
    """Return the forecast of what the request page's direction may run from its heads, in order.

    That is the whole way: an upgrade to heads, or a rollback to base; a nearer target runs
    the first of these only. Unknown heads, a stamp or an unreadable history show nothing.
    """
    if page.direction not in (Action.Direction.UPGRADE, Action.Direction.DOWNGRADE):
        return PlanForecast(revisions=[])
    if page.queue_behind is not None:
        heads = list(page.queue_behind.ends_at)
    elif page.heads_known:
        heads = list(page.heads)
    else:
        return PlanForecast(revisions=[])
    try:
        project = current_config().projects.get(page.project)
        graph = project_graph(project) if project is not None else None
    except (ConfigError, ScriptLocationError, OSError):
        graph = None
    if graph is None:
        return PlanForecast(revisions=[])
    down = page.direction == Action.Direction.DOWNGRADE
    try:
        steps = graph.plan(heads, "base" if down else "heads", "downgrade" if down else "upgrade")
    except HistoryError:
        return PlanForecast(revisions=[])  # the request form says why
    revisions = [step.revision for step in steps]
    covers = "a rollback to base" if down else "an upgrade to heads"
    return revisions_forecast(page.project, page.direction, revisions, covers=covers)


def forecast_item(action: Action) -> dict[str, object]:
    """Return the action's forecast for its JSON item: forecast_s and per plan revision seen."""
    if not plan_revisions(action):
        return {"forecast_s": 0.0, "forecast_lower_bound": False, "revisions": []}
    forecast = action_forecast(action)
    total = forecast.forecast_s
    return {
        "forecast_s": round(total, 3) if total is not None else None,
        "forecast_lower_bound": forecast.lower_bound,
        "revisions": [
            {
                "revision": rev.revision,
                "seen": [seen.as_json() for seen in rev.seen],
                "forecast_s": round(rev.forecast_s, 3) if rev.forecast_s is not None else None,
                "never_run": rev.never_run,
                "took_long": rev.took_long,
            }
            for rev in forecast.revisions
        ],
    }
