"""Fleet status for the fleet page, the API and the CLI, from stored snapshots: never reads a member."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.core.paginator import Paginator
from django.urls import reverse

from dashboard import roles
from dashboard.config import Environment, Fleet, current_config
from dashboard.models import FleetDiscovery, SchemaCheck, Snapshot
from dashboard.selectors import drift as drift_selectors
from dashboard.selectors import status as status_selectors
from dashboard.selectors.status import (
    STATE_LABELS,
    UNREAD,
    EnvironmentCell,
    RevisionGroup,
    StateCount,
)
from dashboard.templatetags.dashboard_tags import ago

PER_PAGE = 50
# Longest text filter kept: a member name has at most 60 characters.
MAX_TEXT = 100
# The revision filter's value for members whose latest read found no heads.
NO_REVISION = "-"
# The roles that may read a whole fleet now: operators and above (it reads, never writes).
REFRESHING_ROLES = (roles.OPERATOR, roles.APPROVER, roles.ADMIN)
SORTS = {
    "name": "name",
    "-name": "name, Z to A",
    "state": "state, worst first",
    "read": "oldest read first",
    "-read": "newest read first",
}
# Worst first: what cannot be read, then what cannot be planned, then what waits for a run.
SEVERITY = {
    str(Snapshot.State.UNREACHABLE): 0,
    str(Snapshot.State.NOT_CONFIGURED): 1,
    str(Snapshot.State.INVALID): 2,
    str(Snapshot.State.UNKNOWN): 3,
    UNREAD: 4,
    str(Snapshot.State.UNINITIALIZED): 5,
    str(Snapshot.State.BEHIND): 6,
    str(Snapshot.State.CURRENT): 7,
}
DRIFT = str(SchemaCheck.State.DRIFT)
SCHEMA_STATES = {
    str(SchemaCheck.State.DRIFT): "drift",
    str(SchemaCheck.State.IN_SYNC): "in sync",
    str(SchemaCheck.State.FAILED): "check failed",
    str(SchemaCheck.State.NOT_CHECKED): "not checked",
}
SOURCES = {
    "names": "names in the config",
    "urls_env": "URLs from an environment variable",
    "names_query": "databases a query finds",
    "schemas_query": "schemas a query finds",
}


@dataclass(frozen=True)
class FleetFilters:
    """Which members the fleet page, the API or the CLI shows, in which order."""

    state: str = ""  # a snapshot state or "unread"
    revision: str = ""  # heads joined by ",", a head's prefix, or "-" for none
    text: str = ""  # part of the member's name
    schema: str = ""  # a schema check state
    sort: str = "name"
    page: str = "1"

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> FleetFilters:
        """Read the filters from GET (or POST) parameters; an unknown value is left out."""
        state = params.get("state", "")
        schema = params.get("schema", "")
        sort = params.get("sort", "name")
        return cls(
            state=state if state in STATE_LABELS else "",
            revision=params.get("revision", "").strip()[:MAX_TEXT],
            text=params.get("q", "").strip()[:MAX_TEXT],
            schema=schema if schema in SCHEMA_STATES else "",
            sort=sort if sort in SORTS else "name",
            page=params.get("page", "1")[:12],
        )

    def query(self, **changes: str) -> str:
        """Return these filters as a query string ("" for none), with changes applied."""
        values = {
            "state": self.state,
            "revision": self.revision,
            "q": self.text,
            "schema": self.schema,
            "sort": self.sort if self.sort != "name" else "",
            **changes,
        }
        if values.get("page") == "1":
            del values["page"]  # the first page is the page without one
        return urlencode({key: value for key, value in values.items() if value})


@dataclass(frozen=True)
class MemberStatus:
    """One member as its latest snapshot and schema check left it."""

    environment: Environment
    snapshot: Snapshot | None
    badge: drift_selectors.SchemaBadge | None

    @property
    def member(self) -> str:
        return self.environment.member or self.environment.name

    @property
    def state(self) -> str:
        return status_selectors.member_state(self.snapshot)

    @property
    def heads(self) -> list[str]:
        return list(self.snapshot.heads) if self.snapshot is not None else []

    def matches(self, filters: FleetFilters) -> bool:
        """Say whether the member passes every filter."""
        if filters.state and self.state != filters.state:
            return False
        if filters.text and filters.text.lower() not in self.member.lower():
            return False
        if filters.schema and (self.badge is None or self.badge.state != filters.schema):
            return False
        if filters.revision:
            heads = self.heads
            if filters.revision == NO_REVISION:
                return not heads
            key = status_selectors.revision_key(heads)
            return key == filters.revision or any(h.startswith(filters.revision) for h in heads)
        return True


@dataclass(frozen=True)
class FleetStatus:
    """A fleet, its members' latest state, those the filters keep, and its config problems."""

    fleet: Fleet
    members: tuple[MemberStatus, ...]
    matched: tuple[MemberStatus, ...]
    counts: tuple[StateCount, ...]
    problems: tuple[str, ...]

    def count_of(self, state: str) -> int:
        """Return how many members are in a state ("unread" too)."""
        return next((c.count for c in self.counts if c.state == state), 0)

    @property
    def not_current(self) -> list[MemberStatus]:
        """Return the members that are not current (never read ones too), in name order."""
        return [m for m in self.members if m.state != Snapshot.State.CURRENT]


@dataclass(frozen=True)
class Option:
    """One choice of a filter's select."""

    value: str
    label: str
    selected: bool


@dataclass(frozen=True)
class MemberRow:
    """One line of the fleet page: the member's short name and its environment's cell."""

    member: str
    cell: EnvironmentCell


@dataclass(frozen=True)
class FleetPage:
    """Everything the fleet page shows."""

    name: str
    project: str
    description: str
    source: str
    parallel: int
    on_error: str
    waves: str
    total: int
    matched: int
    counts: tuple[StateCount, ...]
    drift: int
    drift_url: str
    revisions: tuple[RevisionGroup, ...]
    rows: tuple[MemberRow, ...]
    filters: FleetFilters
    state_options: tuple[Option, ...]
    revision_options: tuple[Option, ...]
    schema_options: tuple[Option, ...]
    sort_options: tuple[Option, ...]
    page_number: int
    page_count: int
    first_shown: int
    last_shown: int
    previous_url: str
    next_url: str
    # This very page (filters and page number): what its poll asks for again.
    self_url: str
    problems: tuple[str, ...]
    discovered_at: datetime | None
    discovered_ago: str
    may_refresh: bool
    refresh_url: str


def may_refresh_fleet(user: Any) -> bool:
    """Say whether the user may read a whole fleet now: operators and above."""
    return roles.role_of(user) in REFRESHING_ROLES


def member_names(*, name: str) -> list[str] | None:
    """Return the environment names of a fleet's members; None when the config has no such fleet."""
    config = current_config()
    if name not in config.fleets:
        return None
    return [env.name for env in config.members_of(name)]


def fleet_status(*, name: str, filters: FleetFilters | None = None) -> FleetStatus | None:
    """Return a fleet's members from their latest snapshots; None when the config has no such fleet.

    Raises ConfigError when the config cannot be read.
    """
    config = current_config()
    fleet = config.fleets.get(name)
    if fleet is None:
        return None
    envs = config.members_of(name)
    # One statement per batch of members for snapshots, and as few for schema checks.
    latest = status_selectors.latest_of(envs)
    badges = drift_selectors.schema_badges(envs)
    members = tuple(MemberStatus(env, latest.get(env.name), badges.get(env.name)) for env in envs)
    filters = filters or FleetFilters()
    matched = [m for m in members if m.matches(filters)]
    return FleetStatus(
        fleet=fleet,
        members=members,
        matched=tuple(_sorted(matched, filters.sort)),
        counts=status_selectors.state_counts(name, (m.state for m in members)),
        problems=status_selectors.fleet_problems(fleet, envs),
    )


def fleet_page(*, name: str, filters: FleetFilters, user: Any) -> FleetPage | None:
    """Return one page of a fleet's members as the filters choose; None for an unknown fleet."""
    found = fleet_status(name=name, filters=filters)
    if found is None:
        return None
    fleet = found.fleet
    page = Paginator(found.matched, PER_PAGE).get_page(filters.page)
    path = reverse("fleet", args=[name])
    discovery = FleetDiscovery.objects.filter(fleet=name).first() if fleet.discovered else None
    problems = found.problems
    if discovery is not None and discovery.error:
        problems = (*problems, f"the last look for members failed: {discovery.error}")
    elif fleet.discovered and discovery is None:
        problems = (*problems, "no worker has looked for this fleet's members yet")
    drift = sum(1 for m in found.members if m.badge is not None and m.badge.state == DRIFT)
    revisions = status_selectors.revision_groups(name, (m.heads for m in found.members))
    return FleetPage(
        name=name,
        project=fleet.project,
        description=fleet.description,
        source=SOURCES.get(fleet.source, fleet.source),
        parallel=fleet.parallel,
        on_error=fleet.on_error,
        waves=", ".join(map(str, fleet.waves)),
        total=len(found.members),
        matched=len(found.matched),
        counts=found.counts,
        drift=drift,
        drift_url=status_selectors.fleet_url(name, schema=DRIFT),
        revisions=tuple(revisions),
        rows=tuple(_row(member) for member in page.object_list),
        filters=filters,
        state_options=_options(
            "every state",
            [(c.state, f"{c.label} ({c.count})") for c in found.counts],
            filters.state,
        ),
        revision_options=_options(
            "every revision",
            [(g.revision or NO_REVISION, f"{g.short} ({g.count})") for g in revisions],
            filters.revision,
        ),
        schema_options=_options("any schema", list(SCHEMA_STATES.items()), filters.schema),
        sort_options=tuple(
            Option(value=value, label=label, selected=value == filters.sort)
            for value, label in SORTS.items()
        ),
        page_number=page.number,
        page_count=page.paginator.num_pages,
        first_shown=page.start_index(),
        last_shown=page.end_index(),
        previous_url=_page_url(path, filters, page.previous_page_number())
        if page.has_previous()
        else "",
        next_url=_page_url(path, filters, page.next_page_number()) if page.has_next() else "",
        self_url=_page_url(path, filters, page.number),
        problems=problems,
        discovered_at=discovery.looked_at if discovery is not None else None,
        discovered_ago=ago(discovery.looked_at) if discovery is not None else "",
        may_refresh=may_refresh_fleet(user),
        refresh_url=reverse("fleet-refresh", args=[name]),
    )


def fleet_item(*, name: str, filters: FleetFilters | None = None) -> dict[str, Any] | None:
    """Return a fleet as the API's JSON: counts by state and the members the filters keep."""
    found = fleet_status(name=name, filters=filters)
    return fleet_json(found) if found is not None else None


def fleet_json(found: FleetStatus) -> dict[str, Any]:
    """Return a fleet's status as JSON: name, project, counts by state, the members kept."""
    return {
        "fleet": found.fleet.name,
        "project": found.fleet.project,
        "total": len(found.members),
        "counts": {state: found.count_of(state) for state in STATE_LABELS},
        "matched": len(found.matched),
        "members": [member_item(m) for m in found.matched],
        "problems": list(found.problems),
    }


def member_item(member: MemberStatus) -> dict[str, Any]:
    """Return one member as JSON: state (null when never read), heads, pending, read_at."""
    snapshot = member.snapshot
    return {
        "name": member.member,
        "environment": member.environment.name,
        "state": snapshot.state if snapshot is not None else None,
        "heads": member.heads,
        "pending": list(snapshot.pending) if snapshot is not None else [],
        "detail": snapshot.detail if snapshot is not None else "not read yet",
        "read_at": _iso(snapshot.read_at) if snapshot is not None else None,
        "schema": member.badge.state if member.badge is not None else None,
    }


def _sorted(members: list[MemberStatus], sort: str) -> list[MemberStatus]:
    # Ties keep name order: members arrive sorted by name and Python's sort is stable.
    key = sort.lstrip("-")
    reverse_order = sort.startswith("-")
    if key == "state":
        return sorted(members, key=lambda m: SEVERITY.get(m.state, -1))
    if key == "read":
        # Never read is the oldest read of all.
        read = [m for m in members if m.snapshot is not None]
        unread = [m for m in members if m.snapshot is None]
        read.sort(key=lambda m: m.snapshot.read_at, reverse=reverse_order)  # type: ignore[union-attr]
        return [*read, *unread] if reverse_order else [*unread, *read]
    return list(reversed(members)) if reverse_order else members


def _row(member: MemberStatus) -> MemberRow:
    return MemberRow(
        member=member.member,
        cell=status_selectors.cell_of(member.environment, member.snapshot, member.badge),
    )


def _options(everything: str, choices: list[tuple[str, str]], chosen: str) -> tuple[Option, ...]:
    options = [Option(value="", label=everything, selected=not chosen)]
    options += [Option(value=v, label=label, selected=v == chosen) for v, label in choices]
    if chosen and not any(o.value == chosen for o in options):
        # A revision typed into the address stays visible, so the page says what it filters.
        options.append(Option(value=chosen, label=chosen, selected=True))
    return tuple(options)


def _page_url(path: str, filters: FleetFilters, number: int) -> str:
    query = filters.query(page=str(number))
    return f"{path}?{query}" if query else path


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
