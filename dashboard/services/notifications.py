"""Notifications: audit events become deliveries after commit; the worker's sender posts them."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from dashboard.config import ConfigError, DashboardConfig, NotConfigured, Notifier, current_config
from dashboard.models import Action, AuditEvent, NotificationDelivery, Rollout
from dashboard.notify import bodies

if TYPE_CHECKING:
    from dashboard.notify import send

logger = logging.getLogger(__name__)

# The audit verbs that may notify, and the event each becomes.
VERB_EVENTS = {
    "action.prepared": "awaiting_approval",
    "action.approved": "approved",
    "action.started": "started",
    "action.succeeded": "succeeded",
    "action.failed": "failed",
    "action.interrupted": "interrupted",
    "schema.drift_found": "drift_found",
    "rollout.requested": "rollout_requested",
    "rollout.approved": "rollout_approved",
    "rollout.paused": "rollout_paused",
    "rollout.succeeded": "rollout_succeeded",
    "rollout.failed": "rollout_failed",
    "rollout.cancelled": "rollout_cancelled",
}
# Attempts and the waits after each failed one: 10 s, 30 s, 2 min, 10 min, then given up.
BACKOFF = (10.0, 30.0, 120.0, 600.0)
MAX_ATTEMPTS = len(BACKOFF) + 1
# A claimed delivery is another sender's again after this long: well past any attempt's
# deadline (DASHBOARD_NOTIFY_TIMEOUT), which is why a longer deadline makes it longer.
LEASE = timedelta(seconds=60)
LEASE_DEADLINES = 3
Status = NotificationDelivery.Status


def notify_after_commit(event: AuditEvent) -> None:
    """Make the deliveries an audit event calls for once its transaction commits."""
    if event.verb in VERB_EVENTS:
        # robust: a failure here is logged and never reaches the action that recorded it.
        transaction.on_commit(partial(deliveries_create, event), robust=True)


def deliveries_create(
    event: AuditEvent, *, config: DashboardConfig | None = None
) -> list[NotificationDelivery]:
    """Create one pending delivery per notifier that wants this event; never raise."""
    try:
        return _create(event, config)
    except Exception:
        logger.exception("could not create the notifications of audit event %s", event.pk)
        return []


def _create(event: AuditEvent, config: DashboardConfig | None) -> list[NotificationDelivery]:
    if config is None:
        try:
            config = current_config()
        except ConfigError:
            return []  # pages and the worker report the broken config
    if not config.notifiers:
        return []
    name = event_of(event)
    if name is None:
        return []
    facts = facts_of(event, name, config)
    wanting = [
        n
        for n in config.notifiers.values()
        if n.wants(name, environment=facts.environment, fleet=facts.fleet)
    ]
    made = []
    for notifier in wanting:
        with transaction.atomic():
            row, created = NotificationDelivery.objects.get_or_create(
                notifier=notifier.name,
                # The event's hash: the same event never reaches one receiver twice.
                dedupe_key=f"audit:{event.hash}",
                defaults={
                    "event": name,
                    "environment": facts.environment[:100],
                    "action_id": facts.action["id"] if facts.action else None,
                    "rollout_id": facts.rollout["id"] if facts.rollout else None,
                    "next_attempt_at": timezone.now(),
                },
            )
            if created:
                row.body = body_for(notifier, facts, delivery=row.pk)
                row.save(update_fields=["body"])
                made.append(row)
    return made


def event_of(event: AuditEvent) -> str | None:
    """Return the notify event an audit event is, or None (an approval short of enough)."""
    name = VERB_EVENTS.get(event.verb)
    payload = event.payload if isinstance(event.payload, dict) else {}
    if name == "awaiting_approval":
        # Prepared: reviewable now, if someone must approve and the SQL could be rendered.
        if payload.get("sql_failed"):
            return None
        if event.action_id is None:
            return None
        action = Action.objects.filter(pk=event.action_id).only("status", "approvals_required")
        found = action.first()
        if found is None or found.approvals_required == 0:
            return None
        return name if found.status == Action.Status.REQUESTED else None
    if name in ("approved", "rollout_approved"):
        approvals, required = payload.get("approvals", 0), payload.get("required", 0)
        if not (isinstance(approvals, int) and isinstance(required, int)):
            return None
        return name if approvals >= required else None
    return name


def facts_of(event: AuditEvent, name: str, config: DashboardConfig) -> bodies.Facts:
    """Gather what a notification says about an event, from its row and its action or rollout."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    at = event.created_at.astimezone(UTC).isoformat(timespec="seconds")
    base: dict[str, Any] = {"event": name, "at": at, "actor": event.actor_name}
    if name.startswith("rollout_"):
        return _rollout_facts(payload, base)
    env = config.environments.get(event.environment)
    environment = event.environment
    project = env.project if env else ""
    fleet = env.fleet if env else None
    action = None
    detail: dict[str, Any] = {}
    if event.action_id is not None:
        found = Action.objects.filter(pk=event.action_id).first()
        if found is not None:
            project = found.project
            action = {
                "id": found.pk,
                "direction": found.direction,
                "target": found.target,
                "status": found.status,
                "url": _page("action-detail", found.pk),
            }
            if found.rollout_id is not None:
                action["rollout"] = found.rollout_id
            detail["requested_by"] = found.requested_by_name
    if name in ("failed", "interrupted") and payload.get("error"):
        detail["error"] = bodies.clean_text(str(payload["error"]))
    if name in ("succeeded", "failed") and isinstance(payload.get("duration_s"), int | float):
        detail["duration_s"] = payload["duration_s"]
    if name == "approved":
        detail["approvals"] = payload.get("approvals")
    if name == "drift_found":
        detail["differences"] = payload.get("differences", 0)
        items = payload.get("items") or []
        detail["items"] = [bodies.clean_text(str(item)) for item in items[:10]]
    return bodies.Facts(
        **base,
        environment=environment,
        project=project,
        fleet=fleet,
        action=action,
        detail=detail,
    )


def _rollout_facts(payload: dict[str, Any], base: dict[str, Any]) -> bodies.Facts:
    rollout_id = payload.get("rollout")
    found = Rollout.objects.filter(pk=rollout_id).first() if isinstance(rollout_id, int) else None
    detail: dict[str, Any] = {}
    rollout = None
    fleet = None
    project = ""
    if found is not None:
        fleet, project = found.fleet, found.project
        rollout = {
            "id": found.pk,
            "fleet": found.fleet,
            "direction": found.direction,
            "target": found.target,
            "status": found.status,
            "url": _page("rollout-detail", found.pk),
        }
        if found.paused_reason and base["event"] == "rollout_paused":
            detail["reason"] = bodies.clean_text(found.paused_reason)
        if found.error and base["event"] == "rollout_failed":
            detail["error"] = bodies.clean_text(found.error)
    for key in ("wave", "members", "counts"):
        if key in payload:
            detail[key] = payload[key]
    if isinstance(payload.get("failed"), list):
        detail["failed_members"] = [str(name)[:100] for name in payload["failed"][:20]]
    return bodies.Facts(**base, project=project, fleet=fleet, rollout=rollout, detail=detail)


def _page(name: str, pk: int) -> str:
    """Return a page's path; body_for makes it a link under the notifier's base_url, if any."""
    return reverse(name, args=[pk])


def body_for(notifier: Notifier, facts: bodies.Facts, *, delivery: int) -> str:
    """Render the facts in the notifier's format, with links only under its base_url."""
    facts = _with_links(facts, notifier.base_url)
    if notifier.format == "slack":
        return bodies.slack_body(facts)
    return bodies.json_body(facts, delivery=delivery)


def _with_links(facts: bodies.Facts, base_url: str | None) -> bodies.Facts:
    def linked(item: dict[str, Any] | None) -> dict[str, Any] | None:
        if item is None:
            return None
        path = item.get("url")
        return {**item, "url": f"{base_url}{path}" if base_url and path else None}

    return dataclasses.replace(facts, action=linked(facts.action), rollout=linked(facts.rollout))


def deliveries_send_due(*, limit: int = 20, config: DashboardConfig | None = None) -> list[int]:
    """Claim and attempt the deliveries that are due, one after another; return their ids."""
    claimed = deliveries_claim_due(limit=limit)
    for pk in claimed:
        delivery_attempt(delivery_id=pk, config=config)
    return claimed


def deliveries_claim_due(*, limit: int, skip: Collection[int] = ()) -> list[int]:
    """Claim up to limit due deliveries, oldest first, but none of skip; return their ids."""
    now = timezone.now()
    due = list(
        NotificationDelivery.objects.filter(status=Status.PENDING, next_attempt_at__lte=now)
        .exclude(pk__in=list(skip))
        .order_by("next_attempt_at", "id")
        .values_list("pk", "next_attempt_at")[:limit]
    )
    return [pk for pk, at in due if delivery_claim(pk, at, now=now)]


def delivery_claim(pk: int, due_at: datetime | None, *, now: datetime | None = None) -> bool:
    """Take a due delivery for this sender: another sender that read it too finds it moved."""
    now = now or timezone.now()
    moved = NotificationDelivery.objects.filter(
        pk=pk, status=Status.PENDING, next_attempt_at=due_at
    ).update(next_attempt_at=now + lease())
    return moved == 1


def lease() -> timedelta:
    """Return how long a claim holds: LEASE, or three attempt deadlines if that is longer."""
    return max(LEASE, timedelta(seconds=LEASE_DEADLINES * _timeouts()[1]))


def delivery_attempt(
    *, delivery_id: int, config: DashboardConfig | None = None
) -> NotificationDelivery:
    """Post a claimed delivery once and record the attempt, unless its claim ran out meanwhile."""
    delivery = NotificationDelivery.objects.get(pk=delivery_id)
    # The claim's own values: a sender that claims the row after this one changes them.
    held_until, attempts = delivery.next_attempt_at, delivery.attempts
    deadline = timedelta(seconds=_timeouts()[1])
    if delivery.status != Status.PENDING or held_until is None:
        return delivery  # delivered or given up by another sender meanwhile
    if held_until - timezone.now() < deadline:
        logger.warning(
            "notification %s: its claim runs out before an attempt could end; left to the next",
            delivery.pk,
        )
        return delivery
    outcome = _post(delivery, config)
    now = timezone.now()
    delivery.attempts = attempts + 1
    delivery.response_status = outcome.status
    delivery.last_error = outcome.error
    if outcome.delivered:
        delivery.status = Status.DELIVERED
        delivery.delivered_at = now
        delivery.next_attempt_at = None
    elif delivery.attempts >= MAX_ATTEMPTS:
        delivery.status = Status.FAILED
        delivery.next_attempt_at = None
    else:
        delivery.next_attempt_at = now + timedelta(seconds=BACKOFF[delivery.attempts - 1])
    # Saved only while the claim holds: a row claimed again is the other sender's to count.
    saved = NotificationDelivery.objects.filter(
        pk=delivery.pk, status=Status.PENDING, attempts=attempts, next_attempt_at=held_until
    ).update(
        attempts=delivery.attempts,
        response_status=delivery.response_status,
        last_error=delivery.last_error,
        status=delivery.status,
        delivered_at=delivery.delivered_at,
        next_attempt_at=delivery.next_attempt_at,
    )
    if not saved:
        logger.warning(
            "notification %s to %s (%s) lost its claim during the attempt (%s); not counted",
            delivery.pk,
            delivery.notifier,
            delivery.event,
            outcome.error or "delivered",
        )
        return NotificationDelivery.objects.get(pk=delivery.pk)
    if not outcome.delivered:
        logger.warning(
            "notification %s to %s (%s) failed, attempt %s: %s",
            delivery.pk,
            delivery.notifier,
            delivery.event,
            delivery.attempts,
            outcome.error,
        )
    return delivery


def _timeouts() -> tuple[float, float]:
    """Return the attempt's connect timeout and its whole deadline, in seconds."""
    from dashboard.notify import send

    connect = getattr(settings, "DASHBOARD_NOTIFY_CONNECT_TIMEOUT", send.CONNECT_TIMEOUT)
    return float(connect), float(getattr(settings, "DASHBOARD_NOTIFY_TIMEOUT", send.TOTAL_TIMEOUT))


def _post(delivery: NotificationDelivery, config: DashboardConfig | None) -> send.Outcome:
    # Only the sender posts: everything that audits (CLI reads too) skips importing urllib3.
    from dashboard.notify import send

    try:
        config = config or current_config()
    except ConfigError:
        return send.Outcome(None, "the config cannot be read")
    notifier = config.notifiers.get(delivery.notifier)
    if notifier is None:
        return send.Outcome(None, f"no notifier {delivery.notifier} in the config")
    try:
        url, secret = notifier.url(), notifier.secret()
    except NotConfigured as exc:
        return send.Outcome(None, str(exc))  # names the variable, never its value
    connect, total = _timeouts()
    return send.post(
        url,
        delivery.body.encode(),
        secret=secret,
        headers={"X-Dashboard-Event": delivery.event, "X-Dashboard-Delivery": str(delivery.pk)},
        connect_timeout=connect,
        total_timeout=total,
    )


def deliveries_prune(*, older_than: timedelta) -> int:
    """Delete delivered and given-up deliveries created before the retention period."""
    cutoff = timezone.now() - older_than
    deleted, _ = NotificationDelivery.objects.filter(
        status__in=[Status.DELIVERED, Status.FAILED], created_at__lt=cutoff
    ).delete()
    return deleted
