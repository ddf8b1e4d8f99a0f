"""Read schema checks for pages, the API and the command line."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.db.models import Subquery
from django.urls import reverse

from dashboard import roles
from dashboard.config import ConfigError, Environment, current_config
from dashboard.drift.differences import by_table, describe, from_dicts
from dashboard.models import Action, SchemaCheck, Snapshot
from dashboard.selectors.schema_tables import LiveTable, live_table
from dashboard.templatetags.dashboard_tags import ago

# Environments whose latest checks one statement finds: bounds its size and parameters.
NEWEST_BATCH = 200


def latest_checks(environments: Iterable[str]) -> dict[str, SchemaCheck]:
    """Return each environment's latest finished schema check, by name (absent: never checked)."""
    names = tuple(dict.fromkeys(environments))
    found: dict[str, SchemaCheck] = {}
    for start in range(0, len(names), NEWEST_BATCH):
        sql, params = _latest_sql(names[start : start + NEWEST_BATCH])
        found.update((row.environment, row) for row in SchemaCheck.objects.raw(sql, params))
    return found


@lru_cache(maxsize=32)
def _latest_sql(names: tuple[str, ...]) -> tuple[str, tuple[Any, ...]]:
    """Compile the query for these environments' latest finished checks once per process."""
    # One uncorrelated subquery per environment, each reading only that environment's rows
    # (index environment, -created_at): the cost follows the number of checks kept, where a
    # subquery correlated row by row grew with its square (seconds at a month of hourly checks).
    finished = SchemaCheck.objects.exclude(state=SchemaCheck.State.PENDING)
    newest = [
        Subquery(finished.filter(environment=name).order_by("-checked_at", "-id").values("id")[:1])
        for name in names
    ]
    # django-stubs types an __in lookup's values as plain values; expressions are allowed too.
    rows = SchemaCheck.objects.filter(id__in=newest)  # type: ignore[misc]
    sql, params = rows.query.sql_with_params()
    return sql, tuple(params)


def pending_check(environment: str) -> SchemaCheck | None:
    """Return the environment's check that a worker has not finished yet, if any."""
    return (
        SchemaCheck.objects.filter(environment=environment, state=SchemaCheck.State.PENDING)
        .order_by("created_at", "id")
        .first()
    )


def schema_summary(check: SchemaCheck | None) -> dict[str, Any]:
    """Return the API's `schema` object for an environment's latest check."""
    if check is None:
        return {
            "state": SchemaCheck.State.NOT_CHECKED.value,
            "differences": [],
            "checked_at": None,
            "reason": "no schema check has run yet",
            "heads": [],
            "models": None,
        }
    summary: dict[str, Any] = {
        "state": check.state,
        "differences": list(check.differences),
        "checked_at": check.checked_at.isoformat() if check.checked_at else None,
        "reason": check.reason,
        "heads": list(check.heads),
        "models": None,
    }
    if check.models_state:
        summary["models"] = {
            "state": check.models_state,
            "operations": list(check.models_differences),
            "reason": check.models_reason,
        }
    if check.adoption:
        summary["adoption"] = dict(check.adoption)
    return summary


# --- pages ---------------------------------------------------------------------------------

NEVER_CHECKED = "no check yet"
# The roles that may ask for a check now: operators and above (it reads, never writes).
CHECKING_ROLES = (roles.OPERATOR, roles.APPROVER, roles.ADMIN)


# The overview caches its HTML by value (templatetags/fragments.py): a badge holds only values.


@dataclass(frozen=True)
class SchemaBadge:
    """An environment's schema state beside its revision state, and how old the check is."""

    state: str  # in_sync, drift, not_checked or check_failed
    label: str  # "in sync", "drift (2)", "not checked", "check failed"
    why: str  # the reason for not_checked and check_failed; "" otherwise
    count: int
    checked_at: datetime | None
    checked_ago: str  # "5 minutes ago"; "" when never checked
    checking: bool = False  # a check has been asked for and not finished


@dataclass(frozen=True)
class DifferenceRow:
    """One difference in plain words, with Alembic's operation name."""

    kind: str
    name: str
    words: str


@dataclass(frozen=True)
class TableDifferences:
    """The differences of one table."""

    table: str
    rows: tuple[DifferenceRow, ...]


@dataclass(frozen=True)
class Candidate:
    """One revision an unversioned database was compared with, and how far it is from it."""

    revision: str
    short: str
    count: int
    items: tuple[str, ...]


@dataclass(frozen=True)
class Adoption:
    """What an environment without a version table matches: one revision exactly, or the closest."""

    exact: str | None
    closest: tuple[Candidate, ...]
    compared: int
    of: int
    error: str


@dataclass(frozen=True)
class ModelsNote:
    """What `alembic check` said of the project's models at the heads."""

    environment: str
    heads: tuple[str, ...]
    operations: tuple[str, ...]
    checked_at: datetime | None
    checked_ago: str


@dataclass(frozen=True)
class SchemaPanel:
    """The environment page's schema section: latest result, differences, live schema, adoption."""

    environment: str
    badge: SchemaBadge
    check: SchemaCheck | None  # the latest finished check
    checking: bool
    groups: tuple[TableDifferences, ...]
    tables: tuple[LiveTable, ...]
    missing_tables: tuple[str, ...]
    adoption: Adoption | None
    models: ModelsNote | None
    may_check: bool
    check_url: str
    poll_url: str
    trigger_label: str
    requested_by: str  # who asked for the pending check

    @property
    def poll(self) -> bool:
        """Say whether the section asks again: while a check is pending."""
        return self.checking


@dataclass(frozen=True)
class DriftWarning:
    """Why a request or approval should look twice: the environment's schema drifted."""

    environment: str
    count: int
    url: str
    checked_ago: str


def may_check_schema(user: Any) -> bool:
    """Say whether the user may ask for a schema check now: operators and above."""
    return roles.role_of(user) in CHECKING_ROLES


def schema_badges(environments: Iterable[Environment]) -> dict[str, SchemaBadge]:
    """Return every environment's badge (never checked included), by name."""
    envs = list(environments)
    names = [env.name for env in envs]
    latest = _latest_of(envs)
    checking = set(
        SchemaCheck.objects.filter(environment__in=names, state=SchemaCheck.State.PENDING)
        .values_list("environment", flat=True)
        .distinct()
    )
    return {name: badge_for(latest.get(name), checking=name in checking) for name in names}


def badge_for(check: SchemaCheck | None, *, checking: bool = False) -> SchemaBadge:
    """Return the badge of a finished check (None: never checked)."""
    if check is None:
        return SchemaBadge(
            state=SchemaCheck.State.NOT_CHECKED.value,
            label=SchemaCheck.State.NOT_CHECKED.label,
            why=NEVER_CHECKED,
            count=0,
            checked_at=None,
            checked_ago="",
            checking=checking,
        )
    count = len(check.differences)
    label = check.get_state_display()
    if check.state == SchemaCheck.State.DRIFT:
        label = f"{label} ({count})"
    shows_why = check.state in (SchemaCheck.State.NOT_CHECKED, SchemaCheck.State.FAILED)
    return SchemaBadge(
        state=check.state,
        label=label,
        why=check.reason if shows_why else "",
        count=count,
        checked_at=check.checked_at,
        checked_ago=ago(check.checked_at),
        checking=checking,
    )


def schema_panel(*, environment: str, user: Any) -> SchemaPanel | None:
    """Return the environment page's schema section, or None when the config does not have it."""
    env = current_config().environments.get(environment)
    if env is None:
        return None
    check = _latest_of([env]).get(environment)
    pending = pending_check(environment)
    differences = from_dicts(check.differences) if check is not None else []
    live = check.live_schema.get("tables", []) if check is not None else []
    tables = tuple(live_table(table, differences, environment) for table in live)
    present = {table.name for table in tables}
    return SchemaPanel(
        environment=environment,
        badge=badge_for(check, checking=pending is not None),
        check=check,
        checking=pending is not None,
        groups=tuple(
            TableDifferences(
                table=table,
                rows=tuple(DifferenceRow(d.kind, d.name, describe(d, environment)) for d in rows),
            )
            for table, rows in by_table(differences)
        ),
        tables=tables,
        missing_tables=tuple(
            describe(d, environment)
            for d in differences
            if d.kind == "add_table" and d.table not in present
        ),
        adoption=_adoption(check.adoption) if check is not None and check.adoption else None,
        models=_models_note(check, _script_heads(environment, env.project)),
        may_check=may_check_schema(user),
        check_url=reverse("environment-schema-check", args=[environment]),
        poll_url=reverse("environment-schema", args=[environment]),
        trigger_label=check.get_trigger_display() if check is not None else "",
        requested_by=pending.requested_by if pending is not None else "",
    )


def drift_warning(*, environment: str) -> DriftWarning | None:
    """Return the warning for a request or approval on a drifted environment; None when not."""
    try:
        env = current_config().environments.get(environment)
    except ConfigError:
        return None
    check = _latest_of([env]).get(environment) if env is not None else None
    if check is None or check.state != SchemaCheck.State.DRIFT:
        return None
    return DriftWarning(
        environment=environment,
        count=len(check.differences),
        url=reverse("environment", args=[environment]) + "#schema",
        checked_ago=ago(check.checked_at),
    )


def action_drift_warning(*, action: Action) -> DriftWarning | None:
    """Return the drift warning for an action's page; none once it finished (its plan is history)."""
    if action.is_finished:
        return None
    return drift_warning(environment=action.environment)


def project_models_note(*, project: str, heads: Iterable[str]) -> ModelsNote | None:
    """Return what the newest check at the project's heads said of its models, when they drift."""
    try:
        config = current_config()
    except ConfigError:
        return None
    wanted = sorted(heads)
    at_heads = [
        check
        for check in _latest_of(config.environments_of(project)).values()
        if check.models_state and check.checked_at and sorted(check.heads) == wanted
    ]
    if not at_heads:
        return None
    # The newest word at the heads counts, drift or not: a later clean check answers an old one.
    newest = max(at_heads, key=lambda c: (c.checked_at, c.pk))
    return _models_note(newest, wanted)


def _latest_of(envs: Iterable[Environment]) -> dict[str, SchemaCheck]:
    """Return the latest finished checks of these environments made for their current project."""
    projects = {env.name: env.project for env in envs}
    # A check made while the environment belonged to another project compared another history.
    return {
        name: check
        for name, check in latest_checks(projects).items()
        if check.project == projects[name]
    }


def _models_note(check: SchemaCheck | None, heads: list[str] | None) -> ModelsNote | None:
    """Return the models note of a check whose models drift, at the heads as last seen."""
    if check is None or check.models_state != SchemaCheck.State.DRIFT.value:
        return None
    if heads is not None and sorted(check.heads) != heads:
        return None  # the history moved on since: what it said is about older heads
    return ModelsNote(
        environment=check.environment,
        heads=tuple(check.heads),
        operations=tuple(str(op) for op in check.models_differences),
        checked_at=check.checked_at,
        checked_ago=ago(check.checked_at),
    )


def _script_heads(environment: str, project: str) -> list[str] | None:
    """Return the script directory's heads as the environment's latest read saw them."""
    snapshot = (
        Snapshot.objects.filter(environment=environment, project=project)
        .order_by("-read_at", "-id")
        .only("script_heads")
        .first()
    )
    return sorted(snapshot.script_heads) if snapshot is not None and snapshot.script_heads else None


def _adoption(found: dict[str, Any]) -> Adoption:
    return Adoption(
        exact=found.get("exact") or None,
        closest=tuple(
            Candidate(
                revision=str(c.get("revision", "")),
                short=str(c.get("revision", ""))[:12],
                count=int(c.get("count", 0)),
                items=tuple(describe(d, "") for d in from_dicts(c.get("items", []))),
            )
            for c in found.get("closest", [])
        ),
        compared=int(found.get("compared", 0)),
        of=int(found.get("of", 0)),
        error=str(found.get("error", "")),
    )
