"""Find the members of fleets whose members a query names, and record what changed."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from dashboard import audit
from dashboard.config import (
    Fleet,
    NotConfigured,
    current_config,
    forget_discovered,
    member_name_problem,
    parse_database_url,
    url_secrets,
)
from dashboard.databases import discovery
from dashboard.databases.connect import mask_secrets
from dashboard.models import FleetDiscovery, FleetMember
from dashboard.services import queue

logger = logging.getLogger(__name__)
DISCOVERY_TICK = 30.0  # seconds between the worker's looks for fleets whose discovery is due
APPEARED = "fleet.member_appeared"
VANISHED = "fleet.member_vanished"
# Invalid names named in a discovery's error, at most; the rest are counted.
MAX_NAMED_PROBLEMS = 5
MAX_ERROR = 2000


class UnknownFleet(Exception):
    """No fleet of that name is configured, or its members are not found by a query."""


@dataclass(frozen=True)
class Discovery:
    """What one look for a fleet's members found: who came, who went, and what went wrong."""

    fleet: str
    members: tuple[str, ...] = ()  # every member after the look
    appeared: tuple[str, ...] = ()
    vanished: tuple[str, ...] = ()
    # Why the query failed; the members then stay as they were.
    error: str = ""
    # Rows the query returned that cannot be members; the others are.
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """Say whether the query ran and its answer became the members."""
        return not self.error


def fleets_discover(*, fleets: Sequence[str] | None = None) -> list[Discovery]:
    """Run the named query-discovered fleets' queries (default: all); store the members."""
    config = current_config()
    discovered = {name: f for name, f in config.fleets.items() if f.discovered}
    if fleets is None:
        selected = [discovered[name] for name in sorted(discovered)]
    else:
        unknown = [name for name in dict.fromkeys(fleets) if name not in discovered]
        if unknown:
            known = ", ".join(sorted(discovered)) or "none"
            raise UnknownFleet(
                f"no fleet named {', '.join(map(repr, unknown))} whose members a query finds"
                f" (configured: {known})"
            )
        selected = [discovered[name] for name in dict.fromkeys(fleets)]
    found = []
    for fleet in selected:
        try:
            found.append(fleet_discover(fleet))
        except Exception as exc:  # one fleet's trouble (its row, the audit) never stops the rest
            logger.exception("could not discover the members of fleet %s", fleet.name)
            found.append(Discovery(fleet=fleet.name, error=f"could not record the members: {exc}"))
    if any(d.appeared or d.vanished for d in found):
        forget_discovered()
    return found


def fleet_discover(fleet: Fleet) -> Discovery:
    """Run one fleet's query and store its members; a failed query keeps the old ones."""
    names, problems, error = _query(fleet)
    now = timezone.now()
    with transaction.atomic():
        # One look at a time per fleet: two workers at once would both audit the same change.
        FleetDiscovery.objects.get_or_create(fleet=fleet.name, defaults={"looked_at": now})
        looked = FleetDiscovery.objects.select_for_update().get(fleet=fleet.name)
        existing = set(FleetMember.objects.filter(fleet=fleet.name).values_list("name", flat=True))
        if error:
            looked.looked_at, looked.error = now, error[:MAX_ERROR]
            looked.save(update_fields=["looked_at", "error"])
            return Discovery(fleet=fleet.name, members=tuple(sorted(existing)), error=error)
        appeared = sorted(set(names) - existing)
        vanished = sorted(existing - set(names))
        FleetMember.objects.bulk_create(
            [FleetMember(fleet=fleet.name, name=name, discovered_at=now) for name in appeared],
            ignore_conflicts=True,
        )
        if vanished:
            FleetMember.objects.filter(fleet=fleet.name, name__in=vanished).delete()
        looked.looked_at = now
        looked.error = _problems_text(problems)[:MAX_ERROR]
        looked.members = len(names)
        looked.save(update_fields=["looked_at", "error", "members"])
        for verb, changed in ((APPEARED, appeared), (VANISHED, vanished)):
            if changed:
                audit.record(
                    verb,
                    actor_name=audit.SYSTEM,
                    payload={"fleet": fleet.name, "members": changed, "count": len(changed)},
                )
    return Discovery(
        fleet=fleet.name,
        members=tuple(sorted(names)),
        appeared=tuple(appeared),
        vanished=tuple(vanished),
        problems=tuple(problems),
    )


def _query(fleet: Fleet) -> tuple[list[str], list[str], str]:
    """Return the valid member names, why the others are left out, and the query's error."""
    try:
        url = fleet.discovery_database_url()
    except NotConfigured as exc:
        return [], [], f"discovery database: {exc}"
    secrets = _secrets(fleet, url)
    query = fleet.schemas_query if fleet.source == "schemas_query" else fleet.names_query
    try:
        rows = discovery.query_names(url, query or "", timeout=fleet.policy.timeout)
    except discovery.DiscoveryError as exc:
        return [], [], mask_secrets(f"discovery query failed: {exc}", secrets)
    names, problems = [], []
    schema = fleet.source == "schemas_query"
    for name in dict.fromkeys(rows):
        problem = member_name_problem(name, schema=schema)
        if problem:
            # A row is whatever the query selects: mask the passwords this fleet knows.
            problems.append(mask_secrets(problem, secrets))
        else:
            names.append(name)
    return names, problems, ""


def _secrets(fleet: Fleet, url: str) -> set[str]:
    """Return the passwords of the discovery database and of the members' URL template."""
    secrets = set(url_secrets(parse_database_url(url)))
    if fleet.password_env and (password := os.environ.get(fleet.password_env)):
        secrets.add(password)
    return secrets


def _problems_text(problems: Sequence[str]) -> str:
    """Return the left-out rows as one text: the first few named, the rest counted."""
    text = "; ".join(problems[:MAX_NAMED_PROBLEMS])
    if len(problems) > MAX_NAMED_PROBLEMS:
        text += f"; and {len(problems) - MAX_NAMED_PROBLEMS} more rows left out"
    return text


def due_fleets() -> list[str]:
    """Return the query-discovered fleets whose discovery_interval has passed since their last look."""
    config = current_config()
    looked = dict(FleetDiscovery.objects.values_list("fleet", "looked_at"))
    now = timezone.now()
    return [
        name
        for name, fleet in sorted(config.fleets.items())
        if fleet.discovered
        and (
            name not in looked or now - looked[name] >= timedelta(seconds=fleet.discovery_interval)
        )
    ]


def fleets_discover_due() -> list[Discovery]:
    """Discover the fleets that are due, then read the new members so they have a snapshot."""
    names = due_fleets()
    if not names:
        return []
    found = fleets_discover(fleets=names)
    appeared = [f"{d.fleet}/{member}" for d in found for member in d.appeared]
    if appeared:
        from dashboard.services import status  # it reads the config this module just changed

        try:
            status.status_refresh(environments=appeared)
        except Exception:  # the periodic refresh reads them next
            logger.exception("could not read the new members of %s", ", ".join(names))
    return found


def schedule_periodic_discovery(*, delay: float = 0.0) -> bool:
    """Enqueue the periodic look for fleets whose discovery is due unless one waits."""
    return queue.schedule_once("discover_fleets_periodically", delay=delay)
