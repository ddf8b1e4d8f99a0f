"""Read schema checks for pages, the API and the command line."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.db.models import Subquery
from django.urls import reverse
from django.utils import timezone

from dashboard import roles
from dashboard.config import ConfigError, Environment, current_config
from dashboard.drift.differences import by_table, describe, from_dicts
from dashboard.history import HistoryError
from dashboard.models import Action, SchemaCheck, Snapshot
from dashboard.scripts import ScriptLocationError
from dashboard.selectors.actions import project_graph
from dashboard.selectors.schema_tables import LiveTable, live_tables
from dashboard.services.drift import CONCLUSIVE, PENDING_LIMIT
from dashboard.templatetags.dashboard_tags import ago

State = SchemaCheck.State
# Environments whose latest checks one statement finds: bounds its size and parameters.
NEWEST_BATCH = 200
# What a badge or a warning reads of a check. Never the live schema (hundreds of KB on a big
# database, for every environment of every overview poll), the adoption or the models' list.
BADGE_COLUMNS = (
    "id",
    "environment",
    "project",
    "state",
    "reason",
    "heads",
    "differences",
    "checked_at",
)
STAMP_COLUMNS = (*BADGE_COLUMNS, "adoption")  # what a stamp's pages say it matches
MODELS_COLUMNS = (*BADGE_COLUMNS, "models_state", "models_differences")
# The API's `schema` says everything but the live schema.
API_COLUMNS = tuple(f.name for f in SchemaCheck._meta.concrete_fields if f.name != "live_schema")
# What a stored JSON value of an unexpected shape is said to be, instead of a server error.
NOT_UNDERSTOOD = "stored shape not understood"
# What a pending check no worker finished in time is said to be (as schema_checks_abandon
# records it once it runs).
ABANDONED = f"no worker finished this check within {int(PENDING_LIMIT.total_seconds() // 60)} min"


def latest_checks(
    environments: Iterable[str], *, conclusive: bool = False, columns: Sequence[str] | None = None
) -> dict[str, SchemaCheck]:
    """Return each environment's latest finished (or conclusive) check, by name; absent: none.

    With columns, only those are read (the others are deferred).
    """
    names = tuple(dict.fromkeys(environments))
    wanted = tuple(columns) if columns is not None else None
    found: dict[str, SchemaCheck] = {}
    for start in range(0, len(names), NEWEST_BATCH):
        sql, params = _latest_sql(names[start : start + NEWEST_BATCH], conclusive, wanted)
        found.update((row.environment, row) for row in SchemaCheck.objects.raw(sql, params))
    return found


@lru_cache(maxsize=64)
def _latest_sql(
    names: tuple[str, ...], conclusive: bool, columns: tuple[str, ...] | None
) -> tuple[str, tuple[Any, ...]]:
    """Compile the query for these environments' latest checks once per process."""
    # One uncorrelated subquery per environment, each reading only that environment's rows
    # (index environment, -checked_at): the cost follows the number of checks kept, where a
    # subquery correlated row by row grew with its square (seconds at a month of hourly checks).
    if conclusive:
        finished = SchemaCheck.objects.filter(state__in=CONCLUSIVE)
    else:
        finished = SchemaCheck.objects.exclude(state=State.PENDING)
    newest = [
        Subquery(finished.filter(environment=name).order_by("-checked_at", "-id").values("id")[:1])
        for name in names
    ]
    # django-stubs types an __in lookup's values as plain values; expressions are allowed too.
    rows = SchemaCheck.objects.filter(id__in=newest)  # type: ignore[misc]
    if columns is not None:
        rows = rows.only(*columns)
    sql, params = rows.query.sql_with_params()
    return sql, tuple(params)


def schema_summary(check: SchemaCheck | None) -> dict[str, Any]:
    """Return the API's `schema` object for an environment's latest check."""
    if check is None:
        return {
            "state": State.NOT_CHECKED.value,
            "differences": [],
            "checked_at": None,
            "reason": "no schema check has run yet",
            "heads": [],
            "models": None,
        }
    odd: list[str] = []
    rows, understood = _difference_rows(check.differences)
    if not understood:
        odd.append("differences")
    heads, understood = _strings(check.heads)
    if not understood:
        odd.append("heads")
    summary: dict[str, Any] = {
        "state": check.state,
        "differences": [d.as_dict() for d in from_dicts(rows)],
        "checked_at": _iso(check.checked_at),
        "reason": check.reason,
        "heads": heads,
        "models": None,
    }
    if check.models_state:
        operations, understood = _strings(check.models_differences)
        if not understood:
            odd.append("models")
        summary["models"] = {
            "state": check.models_state,
            "operations": operations,
            "reason": check.models_reason,
        }
    if isinstance(check.adoption, dict) and check.adoption:
        summary["adoption"] = dict(check.adoption)
    elif check.adoption:
        odd.append("adoption")
    if odd:
        said = f"{NOT_UNDERSTOOD}: {', '.join(odd)}"
        summary["reason"] = f"{check.reason}; {said}" if check.reason else said
    return summary


def schema_summaries(envs: Iterable[Environment]) -> dict[str, dict[str, Any]]:
    """Return the API's `schema` object of each environment, by name (never its live schema)."""
    envs = list(envs)
    latest = _latest_of(envs, columns=API_COLUMNS)
    return {env.name: schema_summary(latest.get(env.name)) for env in envs}


def _iso(moment: datetime | None) -> str | None:
    """Write a moment as the API writes a snapshot's read_at: UTC with a Z."""
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


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
    # When the latest check could not say: the drift the last check that could found.
    last_known: str = ""  # "drift (2)"
    last_known_at: datetime | None = None
    last_known_ago: str = ""


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
class SchemaProgress:
    """Whether a worker is still on an environment's check: what the pending section polls."""

    environment: str
    checking: bool
    requested_by: str
    poll_url: str


@dataclass(frozen=True)
class SchemaPanel:
    """The environment page's schema section: latest result, differences, live schema, adoption."""

    environment: str
    badge: SchemaBadge
    check: SchemaCheck | None  # the latest finished check
    heads: tuple[str, ...]  # the latest finished check's heads
    checking: bool
    progress: SchemaProgress
    # What the differences, tables, adoption and models below come from, when not `check`:
    # the last check that compared, because the latest could not ("" otherwise).
    earlier: str
    # A pending check no worker finished: who asked for it and when ("" otherwise).
    abandoned: str
    groups: tuple[TableDifferences, ...]
    count: int  # how many differences the groups hold
    tables: tuple[LiveTable, ...]
    missing_tables: tuple[str, ...]
    adoption: Adoption | None
    models: ModelsNote | None
    may_check: bool
    check_url: str
    trigger_label: str
    not_understood: tuple[str, ...] = ()  # the stored parts whose shape is not understood


@dataclass(frozen=True)
class DriftWarning:
    """Why a request or approval should look twice: the environment's schema drifted."""

    environment: str
    count: int | None  # None: the stored differences' shape is not understood
    differences: str  # "2 differences"
    url: str
    checked_ago: str
    # When the latest check could not say, what it said instead ("failed (timed out)").
    latest_problem: str = ""


@dataclass(frozen=True)
class StampMatch:
    """What the latest check that compared says a stamp should record, and whether it does."""

    environment: str
    exact: str  # the revision the schema matches exactly; "" when no check matched one
    checked_ago: str
    problem: str  # the warning an approver must see; "" when the target is the match


@dataclass(frozen=True)
class SchemaNotes:
    """What a request or approval page says of the environment's schema above its plan."""

    warning: DriftWarning | None = None
    stamp: StampMatch | None = None


@dataclass
class _Checks:
    """One environment's checks as pages weigh them."""

    # The newest finished check; or, for a pending one no worker finished since, that one
    # as failed (unsaved).
    latest: SchemaCheck | None
    finished: SchemaCheck | None  # the newest finished check stored
    known: SchemaCheck | None  # the newest conclusive check (drift or in sync)
    checking: SchemaCheck | None  # a pending check a worker may still finish
    abandoned: SchemaCheck | None  # the pending check no worker finished, shown as latest


def may_check_schema(user: Any) -> bool:
    """Say whether the user may ask for a schema check now: operators and above."""
    return roles.role_of(user) in CHECKING_ROLES


def schema_badges(environments: Iterable[Environment]) -> dict[str, SchemaBadge]:
    """Return every environment's badge (never checked included), by name."""
    checks = _checks_of(list(environments), columns=BADGE_COLUMNS)
    return {name: _badge(found) for name, found in checks.items()}


def badge_for(
    check: SchemaCheck | None, *, checking: bool = False, known: SchemaCheck | None = None
) -> SchemaBadge:
    """Return the badge of a check (None: never checked); known: the last conclusive one."""
    if check is None:
        return SchemaBadge(
            state=State.NOT_CHECKED.value,
            label=State.NOT_CHECKED.label,
            why=NEVER_CHECKED,
            count=0,
            checked_at=None,
            checked_ago="",
            checking=checking,
        )
    count = _count(check.differences)
    label = check.get_state_display()
    why = check.reason if check.state in (State.NOT_CHECKED, State.FAILED) else ""
    if check.state == State.DRIFT:
        label = f"{label} ({count})" if count is not None else label
        why = NOT_UNDERSTOOD if count is None else ""
    last = known if known is not None and known is not check and _drifted(known) else None
    return SchemaBadge(
        state=check.state,
        label=label,
        why=why,
        count=count or 0,
        checked_at=check.checked_at,
        checked_ago=ago(check.checked_at),
        checking=checking,
        last_known=_drift_label(last) if last is not None else "",
        last_known_at=last.checked_at if last is not None else None,
        last_known_ago=ago(last.checked_at) if last is not None else "",
    )


def schema_progress(*, environment: str) -> SchemaProgress | None:
    """Say whether a worker is still on the environment's check; None when not configured."""
    env = current_config().environments.get(environment)
    if env is None:
        return None
    live, _ = _pending_of([env]).get(environment, (None, None))
    return _progress(environment, live)


def schema_panel(*, environment: str, user: Any) -> SchemaPanel | None:
    """Return the environment page's schema section, or None when the config does not have it."""
    env = current_config().environments.get(environment)
    if env is None:
        return None
    checks = _checks_of([env], columns=None)[environment]
    check, shown = checks.finished, checks.known
    odd: list[str] = []
    rows, understood = _difference_rows(shown.differences if shown is not None else [])
    if not understood:
        odd.append("differences")
    differences = from_dicts(rows)
    tables, understood = live_tables(
        shown.live_schema if shown is not None else {}, differences, environment
    )
    if not understood:
        odd.append("live schema")
    adoption, understood = _adoption(shown.adoption if shown is not None else {})
    if not understood:
        odd.append("adoption")
    heads, understood = _strings(check.heads if check is not None else [])
    if not understood:
        odd.append("heads")
    models, understood = _models_note(shown, _script_heads(environment, env.project))
    if not understood:
        odd.append("models")
    present = {table.name for table in tables}
    abandoned = checks.abandoned
    return SchemaPanel(
        environment=environment,
        badge=_badge(checks),
        check=check,
        heads=tuple(heads),
        checking=checks.checking is not None,
        progress=_progress(environment, checks.checking),
        earlier=_earlier(shown) if shown is not None and shown is not checks.latest else "",
        abandoned=_asked(abandoned) if abandoned is not None else "",
        groups=tuple(
            TableDifferences(
                table=table,
                rows=tuple(DifferenceRow(d.kind, d.name, describe(d, environment)) for d in rows),
            )
            for table, rows in by_table(differences)
        ),
        count=len(differences),
        tables=tables,
        missing_tables=tuple(
            describe(d, environment)
            for d in differences
            if d.kind == "add_table" and d.table not in present
        ),
        adoption=adoption,
        models=models,
        may_check=may_check_schema(user),
        check_url=reverse("environment-schema-check", args=[environment]),
        trigger_label=check.get_trigger_display() if check is not None else "",
        not_understood=tuple(odd),
    )


def drift_warning(*, environment: str) -> DriftWarning | None:
    """Return the warning for a request or approval on a drifted environment; None when not."""
    env = _environment(environment)
    if env is None:
        return None
    return _warning(environment, _checks_of([env], columns=BADGE_COLUMNS)[environment])


def request_notes(*, environment: str, direction: str, target: str = "") -> SchemaNotes:
    """Return what the request page says of the schema: drift, or for a stamp what it matches."""
    if direction != Action.Direction.STAMP:
        return SchemaNotes(warning=drift_warning(environment=environment))
    env = _environment(environment)
    if env is None:
        return SchemaNotes()
    return SchemaNotes(stamp=_stamp_match(env, target, _resolve(env, target) if target else None))


def action_notes(*, action: Action) -> SchemaNotes:
    """Return what an action's page says of the schema; nothing once it finished (history)."""
    if action.is_finished:
        return SchemaNotes()
    if action.direction != Action.Direction.STAMP:
        return SchemaNotes(warning=drift_warning(environment=action.environment))
    env = _environment(action.environment)
    if env is None:
        return SchemaNotes()
    heads = [str(head) for head in action.target_heads] or None
    return SchemaNotes(stamp=_stamp_match(env, action.target, heads))


def project_models_note(*, project: str, heads: Iterable[str]) -> ModelsNote | None:
    """Return what the newest check at the project's heads said of its models, when they drift."""
    try:
        config = current_config()
    except ConfigError:
        return None
    wanted = sorted(heads)
    at_heads = [
        check
        for check in _latest_of(config.environments_of(project), columns=MODELS_COLUMNS).values()
        if check.models_state and check.checked_at and sorted(_strings(check.heads)[0]) == wanted
    ]
    if not at_heads:
        return None
    # The newest word at the heads counts, drift or not: a later clean check answers an old one.
    newest = max(at_heads, key=lambda c: (c.checked_at, c.pk))
    return _models_note(newest, wanted)[0]


def _environment(name: str) -> Environment | None:
    try:
        return current_config().environments.get(name)
    except ConfigError:
        return None


def _latest_of(
    envs: Iterable[Environment], *, conclusive: bool = False, columns: Sequence[str] | None
) -> dict[str, SchemaCheck]:
    """Return the latest finished checks of these environments made for their current project."""
    projects = {env.name: env.project for env in envs}
    # A check made while the environment belonged to another project compared another history.
    return {
        name: check
        for name, check in latest_checks(projects, conclusive=conclusive, columns=columns).items()
        if check.project == projects[name]
    }


def _pending_of(
    envs: Iterable[Environment],
) -> dict[str, tuple[SchemaCheck | None, SchemaCheck | None]]:
    """Return each environment's pending checks: one a worker may still finish, and the newest
    one none did within PENDING_LIMIT (its worker died, or none runs)."""
    projects = {env.name: env.project for env in envs}
    cutoff = timezone.now() - PENDING_LIMIT
    found: dict[str, tuple[SchemaCheck | None, SchemaCheck | None]] = {}
    rows = (
        SchemaCheck.objects.filter(environment__in=projects, state=State.PENDING)
        .only("id", "environment", "project", "trigger", "requested_by", "created_at")
        .order_by("created_at", "id")
    )
    for pending in rows:
        if pending.project != projects[pending.environment]:
            continue
        live, stale = found.get(pending.environment, (None, None))
        if pending.created_at >= cutoff:
            live = live or pending  # the oldest: the one a worker picks first
        else:
            stale = pending
        found[pending.environment] = (live, stale)
    return found


def _checks_of(envs: list[Environment], *, columns: Sequence[str] | None) -> dict[str, _Checks]:
    """Return each environment's latest, last conclusive and pending checks, by name."""
    latest = _latest_of(envs, columns=columns)
    pending = _pending_of(envs)
    found: dict[str, _Checks] = {}
    for env in envs:
        finished = latest.get(env.name)
        live, stale = pending.get(env.name, (None, None))
        shown = finished
        abandoned = None
        if live is None and stale is not None and _newer(stale, finished):
            shown = abandoned = _as_failed(stale)
        conclusive = shown is not None and shown.state in CONCLUSIVE
        found[env.name] = _Checks(
            latest=shown,
            finished=finished,
            known=shown if conclusive else None,
            checking=live,
            abandoned=abandoned,
        )
    # Only where the latest could not say: then the last that could still counts.
    unsaid = [
        env for env in envs if found[env.name].latest is not None and not found[env.name].known
    ]
    if unsaid:
        for name, check in _latest_of(unsaid, conclusive=True, columns=columns).items():
            found[name].known = check
    return found


def _newer(pending: SchemaCheck, finished: SchemaCheck | None) -> bool:
    """Say whether a pending check was asked for after the finished one was made."""
    return (
        finished is None or finished.checked_at is None or pending.created_at > finished.checked_at
    )


def _as_failed(pending: SchemaCheck) -> SchemaCheck:
    """Return a pending check no worker finished as the failed check it is (never saved)."""
    return SchemaCheck(
        environment=pending.environment,
        project=pending.project,
        trigger=pending.trigger,
        requested_by=pending.requested_by,
        state=State.FAILED,
        reason=ABANDONED,
        checked_at=pending.created_at,
        created_at=pending.created_at,
    )


def _badge(checks: _Checks) -> SchemaBadge:
    return badge_for(checks.latest, checking=checks.checking is not None, known=checks.known)


def _progress(environment: str, pending: SchemaCheck | None) -> SchemaProgress:
    return SchemaProgress(
        environment=environment,
        checking=pending is not None,
        requested_by=pending.requested_by if pending is not None else "",
        poll_url=reverse("environment-schema-progress", args=[environment]),
    )


def _warning(environment: str, checks: _Checks) -> DriftWarning | None:
    known, latest = checks.known, checks.latest
    if known is None or not _drifted(known):
        return None
    count = _count(known.differences)
    return DriftWarning(
        environment=environment,
        count=count,
        differences=_differences_text(count),
        url=reverse("environment", args=[environment]) + "#schema",
        checked_ago=ago(known.checked_at),
        latest_problem=_could_not_say(latest) if latest is not None and latest is not known else "",
    )


def _could_not_say(check: SchemaCheck) -> str:
    """Say what a check that did not compare the schemas said: "failed (timed out)"."""
    done = "could not run" if check.state == State.NOT_CHECKED else "failed"
    return f"{done} ({check.reason})" if check.reason else done


def _stamp_match(env: Environment, target: str, heads: Sequence[str] | None) -> StampMatch:
    """Say what the last check that compared matched this database to, and if target is it."""
    known = _checks_of([env], columns=STAMP_COLUMNS)[env.name].known
    exact = _exact_of(known)
    named = target
    if heads is not None and list(heads) != [target]:
        named = f"{target} ({', '.join(heads)})"
    if exact and (not target or set(heads or [target]) == {exact}):
        problem = ""
    elif exact:
        problem = (
            f"Target {named} is not the revision the schema matches ({exact}): the stamp would"
            " record a revision whose tables this database does not have."
        )
    elif target:
        problem = (
            f"No check matched this database to {named}: the stamp would record a revision"
            " nobody has shown its tables are at. Check its schema first."
        )
    else:
        problem = (
            "No check matched this database to a revision exactly: pick the revision you know"
            " its tables are at, or check its schema first."
        )
    return StampMatch(
        environment=env.name,
        exact=exact,
        checked_ago=ago(known.checked_at) if known is not None and exact else "",
        problem=problem,
    )


def _exact_of(check: SchemaCheck | None) -> str:
    found = check.adoption if check is not None else None
    exact = found.get("exact") if isinstance(found, dict) else None
    return exact if isinstance(exact, str) else ""


def _resolve(env: Environment, target: str) -> list[str] | None:
    """Return the revisions a stamp target names ("heads": every head); None when unknown."""
    try:
        return list(project_graph(current_config().projects[env.project]).resolve(target))
    except (ConfigError, KeyError, ScriptLocationError, HistoryError):
        return None


def _drifted(check: SchemaCheck) -> bool:
    return check.state == State.DRIFT


def _drift_label(check: SchemaCheck) -> str:
    count = _count(check.differences)
    return f"{check.get_state_display()} ({count if count is not None else '?'})"


def _earlier(check: SchemaCheck) -> str:
    """Say which check the differences shown come from, when the latest could not compare."""
    said = _drift_label(check) if _drifted(check) else check.get_state_display()
    return f"{said}, checked {ago(check.checked_at)}"


def _asked(pending: SchemaCheck) -> str:
    by = f" by {pending.requested_by}" if pending.requested_by else ""
    return f"asked{by} {ago(pending.created_at)}"


def _differences_text(count: int | None) -> str:
    if count is None:
        return f"differences ({NOT_UNDERSTOOD})"
    return f"{count} difference{'s' if count != 1 else ''}"


def _count(differences: Any) -> int | None:
    """Return how many differences are stored; None when they are not a list."""
    return len(differences) if isinstance(differences, list) else None


def _difference_rows(value: Any) -> tuple[list[dict[str, Any]], bool]:
    """Return the stored differences that are objects, and whether all of them were."""
    if not isinstance(value, list):
        return [], False
    rows = [row for row in value if isinstance(row, dict)]
    return rows, len(rows) == len(value)


def _strings(value: Any) -> tuple[list[str], bool]:
    """Return a stored list of names as strings, and whether it was one."""
    if not isinstance(value, list):
        return [], False
    return [str(item) for item in value], all(isinstance(item, str) for item in value)


def _int(value: Any) -> int | None:
    """Return a stored count as an int; None when it is none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _models_note(
    check: SchemaCheck | None, heads: list[str] | None
) -> tuple[ModelsNote | None, bool]:
    """Return the models note of a check whose models drift, at the heads as last seen."""
    if check is None or check.models_state != State.DRIFT.value:
        return None, True
    checked, heads_understood = _strings(check.heads)
    operations, understood = _strings(check.models_differences)
    if heads is not None and sorted(checked) != heads:
        return None, True  # the history moved on since: what it said is about older heads
    note = ModelsNote(
        environment=check.environment,
        heads=tuple(checked),
        operations=tuple(operations),
        checked_at=check.checked_at,
        checked_ago=ago(check.checked_at),
    )
    return note, understood and heads_understood


def _script_heads(environment: str, project: str) -> list[str] | None:
    """Return the script directory's heads as the environment's latest read saw them."""
    snapshot = (
        Snapshot.objects.filter(environment=environment, project=project)
        .order_by("-read_at", "-id")
        .only("script_heads")
        .first()
    )
    return sorted(snapshot.script_heads) if snapshot is not None and snapshot.script_heads else None


def _adoption(found: Any) -> tuple[Adoption | None, bool]:
    """Return a stored adoption match, and whether its whole shape was understood."""
    if not found:
        return None, True
    if not isinstance(found, dict):
        return None, False
    understood = True
    closest = found.get("closest", [])
    if not isinstance(closest, list):
        closest, understood = [], False
    candidates = []
    for candidate in closest:
        count = _int(candidate.get("count", 0)) if isinstance(candidate, dict) else None
        if count is None:  # a candidate without a count says nothing worth showing
            understood = False
            continue
        rows, items_understood = _difference_rows(candidate.get("items", []))
        understood = understood and items_understood
        revision = str(candidate.get("revision", ""))
        candidates.append(
            Candidate(
                revision=revision,
                short=revision[:12],
                count=count,
                items=tuple(describe(d, "") for d in from_dicts(rows)),
            )
        )
    compared, of = _int(found.get("compared", 0)), _int(found.get("of", 0))
    exact = found.get("exact") or None
    if compared is None or of is None or not isinstance(exact, str | None):
        understood = False
    return Adoption(
        exact=exact if isinstance(exact, str) else None,
        closest=tuple(candidates),
        compared=compared or 0,
        of=of or 0,
        error=str(found.get("error", "")),
    ), understood
