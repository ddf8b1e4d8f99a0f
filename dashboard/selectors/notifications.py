"""Reads for the notifications page: deliveries newest first, with each notifier's state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.paginator import Page, Paginator
from django.urls import reverse

from dashboard.config import ConfigError, current_config
from dashboard.models import NotificationDelivery

PER_PAGE = 50
STATUSES = tuple(value for value, _label in NotificationDelivery.Status.choices)


@dataclass(frozen=True)
class NotifierRow:
    """One configured notifier: its format, events and filters, and its variables' names."""

    name: str
    format: str
    events: list[str]
    filters: list[str]
    url_env: str
    pending: int
    failed: int


@dataclass(frozen=True)
class DeliveryList:
    """One page of deliveries, the configured notifiers, and the status filter."""

    page: Page[Any]
    notifiers: list[NotifierRow]
    config_error: str
    status: str
    previous_url: str | None
    next_url: str | None


def delivery_list(*, page: str | int | None = 1, status: str = "") -> DeliveryList:
    """Return the deliveries newest first (optionally of one status) and the notifiers."""
    status = status if status in STATUSES else ""
    rows = NotificationDelivery.objects.defer("body").order_by("-created_at", "-id")
    if status:
        rows = rows.filter(status=status)
    current = Paginator(rows, PER_PAGE).get_page(page)
    notifiers, problem = _notifiers()
    base = reverse("notifications") + (f"?status={status}&" if status else "?")
    return DeliveryList(
        page=current,
        notifiers=notifiers,
        config_error=problem,
        status=status,
        previous_url=f"{base}page={current.previous_page_number()}"
        if current.has_previous()
        else None,
        next_url=f"{base}page={current.next_page_number()}" if current.has_next() else None,
    )


def _notifiers() -> tuple[list[NotifierRow], str]:
    try:
        config = current_config()
    except ConfigError as exc:
        return [], str(exc)
    counts: dict[tuple[str, str], int] = {}
    for name, state in NotificationDelivery.objects.filter(
        status__in=[NotificationDelivery.Status.PENDING, NotificationDelivery.Status.FAILED]
    ).values_list("notifier", "status"):
        counts[name, state] = counts.get((name, state), 0) + 1
    rows = [
        NotifierRow(
            name=n.name,
            format=n.format,
            events=sorted(n.events),
            filters=[*n.environments, *(f"fleet {f}" for f in n.fleets)],
            url_env=n.url_env,
            pending=counts.get((n.name, NotificationDelivery.Status.PENDING), 0),
            failed=counts.get((n.name, NotificationDelivery.Status.FAILED), 0),
        )
        for n in sorted(config.notifiers.values(), key=lambda n: n.name)
    ]
    return rows, ""
