"""The audit trail for pages and exports: filtered, newest first, streamed row by row."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from django.db.models import QuerySet
from django.urls import reverse
from django.utils import timezone

from dashboard import audit
from dashboard.config import ConfigError, current_config
from dashboard.models import AuditEvent, SignInRefusals
from dashboard.selectors.actions import Option

PER_PAGE = 50
COUNT_UP_TO = 1000  # the page counts matches this far, so a long trail costs no more to show
MAX_ID = 2**63 - 1  # a page cursor beyond the id column's range is no cursor
EXPORT_CHUNK = 2000
EXPORT_FORMATS = {
    "csv": ("text/csv; charset=utf-8", "csv"),
    "jsonl": ("application/x-ndjson; charset=utf-8", "jsonl"),
}
COLUMNS = (
    "id",
    "created_at",
    "actor",
    "verb",
    "environment",
    "action_id",
    "payload",
    "ip",
    "user_agent",
    "prev_hash",
    "hash",
)
# Spreadsheets run cells that start with these as formulas.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class AuditFilters:
    """What the audit page and its exports are narrowed to; empty means everything."""

    environment: str = ""
    user: str = ""
    verb: str = ""
    date_from: date | None = None
    date_to: date | None = None

    def query(self) -> str:
        """Return the filters as a query string, without the empty ones."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return urlencode({k: str(v) for k, v in values.items() if v})

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class EventRow:
    """One audit event as the page shows it."""

    id: int
    created_at: datetime
    actor: str
    verb: str
    environment: str
    action_id: int | None
    action_url: str
    details: list[tuple[str, str]]
    ip: str
    refused: int = 0  # for a throttled sign-in: how many attempts its block refused in all
    refused_last: datetime | None = None


@dataclass(frozen=True)
class Chain:
    """Whether the trail's hash chain verifies, walked from its last checkpoint."""

    verified: int
    broken_at: int | None
    reason: str
    checked: int = 0  # events walked this time
    since: int | None = None  # the checkpoint event the walk started from


@dataclass(frozen=True)
class AuditPage:
    """Everything the audit page shows."""

    rows: list[EventRow]
    count: int  # the matching events, counted up to COUNT_UP_TO
    more: bool  # whether more than `count` match
    filters: AuditFilters
    environments: list[Option]
    verbs: list[Option]
    csv_url: str
    jsonl_url: str
    previous_url: str | None
    next_url: str | None
    chain: Chain | None


def audit_events(*, filters: AuditFilters) -> QuerySet[AuditEvent]:
    """Return the events matching the filters, newest first."""
    events = AuditEvent.objects.all()
    if filters.environment:
        events = events.filter(environment=filters.environment)
    if filters.user:
        events = events.filter(actor_name=filters.user)
    if filters.verb:
        events = events.filter(verb=filters.verb)
    if filters.date_from:
        events = events.filter(created_at__gte=_start_of(filters.date_from))
    if filters.date_to and filters.date_to < date.max:
        # The "to" day is included: everything before the next day starts (none follows the last).
        events = events.filter(created_at__lt=_start_of(filters.date_to + timedelta(days=1)))
    return events.order_by("-id")


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=timezone.get_current_timezone())


def _row(event: AuditEvent) -> EventRow:
    refusals = _refusals(event)
    return EventRow(
        id=event.pk,
        created_at=event.created_at,
        actor=event.actor_name,
        verb=event.verb,
        environment=event.environment,
        action_id=event.action_id,
        action_url=reverse("action-detail", args=[event.action_id]) if event.action_id else "",
        details=_details(event.payload),
        ip=event.ip or "",
        refused=refusals.count if refusals else 0,
        refused_last=refusals.last_at if refusals else None,
    )


def _refusals(event: AuditEvent) -> SignInRefusals | None:
    try:
        return event.refusals  # type: ignore[no-any-return]
    except SignInRefusals.DoesNotExist:
        return None


def _details(payload: Any) -> list[tuple[str, str]]:
    """Return the payload as key and value pairs, values that are not text as JSON."""
    if not isinstance(payload, dict):
        return [("", json.dumps(payload, ensure_ascii=False))]
    return [
        (str(key), value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        for key, value in sorted(payload.items())
    ]


def audit_page(
    *, filters: AuditFilters, page: str | int | None = None, verify: bool = False
) -> AuditPage:
    """Return a page of matching events from event id `page` down, the options, and the chain."""
    # A keyset pager: each page reads its own rows and the ids next to it, never an OFFSET.
    events = audit_events(filters=filters)
    top = _cursor(page)
    shown = events if top is None else events.filter(id__lte=top)
    current = list(shown.select_related("refusals")[: PER_PAGE + 1])
    older = current[PER_PAGE].pk if len(current) > PER_PAGE else None
    query = filters.query()
    previous_url = None
    if top is not None:
        start = current[0].pk if current else top
        above = list(
            events.filter(id__gt=start).order_by("id").values_list("id", flat=True)[:PER_PAGE]
        )
        if len(above) == PER_PAGE:
            previous_url = f"?{_join(query, f'page={above[-1]}')}"
        elif above:
            previous_url = f"?{query}"  # fewer than a page are newer: the newest page holds them
    count = events[: COUNT_UP_TO + 1].count()
    export = reverse("audit-export")
    return AuditPage(
        rows=[_row(e) for e in current[:PER_PAGE]],
        count=min(count, COUNT_UP_TO),
        more=count > COUNT_UP_TO,
        filters=filters,
        environments=_options("every environment", _environments(), filters.environment),
        verbs=_options(
            "every verb",
            _distinct("verb"),
            filters.verb,
        ),
        csv_url=f"{export}?{_join(query, 'format=csv')}",
        jsonl_url=f"{export}?{_join(query, 'format=jsonl')}",
        previous_url=previous_url,
        next_url=None if older is None else f"?{_join(query, f'page={older}')}",
        chain=chain() if verify else None,
    )


def _cursor(page: str | int | None) -> int | None:
    """Return the id a page starts at, or None for the newest page (also for a bad value)."""
    try:
        top = int(page or 0)
    except ValueError:
        return None
    return top if 0 < top <= MAX_ID else None


def chain() -> Chain:
    """Walk the hash chain from its last checkpoint and say whether it verifies."""
    # This may append a checkpoint, so the next look walks only what came after it.
    verdict = audit.verify_since_checkpoint()
    return Chain(
        verdict.verified, verdict.broken_at, verdict.reason, verdict.checked, verdict.since
    )


def _join(*parts: str) -> str:
    return "&".join(p for p in parts if p)


def _environments() -> list[str]:
    try:
        names = [env.name for env in current_config().ordered_environments()]
    except ConfigError:
        names = []
    return names + [name for name in _distinct("environment") if name not in names]


def _distinct(column: str) -> list[str]:
    """Return the column's non-empty values in order, one index lookup per value."""
    # A DISTINCT reads every row; there are few verbs and environments, and many events.
    values: list[str] = []
    while True:
        after = values[-1] if values else ""
        value = (
            AuditEvent.objects.filter(**{f"{column}__gt": after})
            .order_by(column)
            .values_list(column, flat=True)
            .first()
        )
        if value is None:
            return values
        values.append(value)


def _options(everything: str, values: list[str], selected: str) -> list[Option]:
    if selected and selected not in values:
        values = [*values, selected]
    return [Option("", everything, not selected)] + [
        Option(value, value, value == selected) for value in values
    ]


def export_filename(*, fmt: str) -> str:
    """Return the download's file name, stamped with the time of the export."""
    return f"audit-{timezone.now():%Y%m%dT%H%M%SZ}.{EXPORT_FORMATS[fmt][1]}"


def export_lines(*, filters: AuditFilters, fmt: str) -> Iterator[str]:
    """Yield the matching events as CSV or JSON Lines, one line at a time, newest first."""
    events = audit_events(filters=filters).iterator(chunk_size=EXPORT_CHUNK)
    if fmt == "jsonl":
        for event in events:
            yield json.dumps(_export_item(event), ensure_ascii=False, sort_keys=False) + "\n"
        return
    yield _csv_line(COLUMNS)
    for event in events:
        item = _export_item(event)
        item["payload"] = json.dumps(item["payload"], sort_keys=True, ensure_ascii=False)
        yield _csv_line([_cell(item[column]) for column in COLUMNS])


def _export_item(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.pk,
        "created_at": event.created_at.astimezone(UTC).isoformat(),
        "actor": event.actor_name,
        "verb": event.verb,
        "environment": event.environment,
        "action_id": event.action_id,
        "payload": event.payload,
        "ip": event.ip,
        "user_agent": event.user_agent,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def _cell(value: Any) -> Any:
    """Keep spreadsheets from running a text cell as a formula (OWASP's CSV injection advice)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def _csv_line(values: Any) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue()
