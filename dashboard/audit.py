"""The audit trail: one entry point that appends a hash-chained event, and its verifier."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from dashboard.models import AuditEvent

GENESIS = "0" * 64
SYSTEM = "system"


def canonical(event: AuditEvent) -> str:
    """Return the row's canonical JSON: what its hash covers."""
    created: datetime = event.created_at
    return json.dumps(
        {
            "created_at": created.astimezone(UTC).isoformat(timespec="microseconds"),
            "actor_name": event.actor_name,
            "verb": event.verb,
            "environment": event.environment,
            "action_id": event.action_id,
            "payload": event.payload,
            "ip": event.ip,
            "user_agent": event.user_agent,
            "prev_hash": event.prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )


def event_hash(event: AuditEvent) -> str:
    """Return sha256 over the previous hash and the row's canonical JSON."""
    return hashlib.sha256((event.prev_hash + canonical(event)).encode()).hexdigest()


def record(
    verb: str,
    *,
    actor: Any = None,
    actor_name: str | None = None,
    request: HttpRequest | None = None,
    environment: str = "",
    action_id: int | None = None,
    payload: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain; the actor is a user, or actor_name for the system."""
    if actor is None and actor_name is None:
        raise ValueError("an audit event needs an actor or an actor_name")
    name = actor_name or actor.get_username()
    user = actor if actor is not None and getattr(actor, "pk", None) else None
    ip, agent = _client(request)
    # Round-trip the payload through JSON so the hash covers what the database will return.
    clean_payload = json.loads(json.dumps(payload or {}, default=str))
    for _attempt in range(20):
        try:
            with transaction.atomic():
                last = AuditEvent.objects.order_by("-id").only("hash").first()
                event = AuditEvent(
                    created_at=timezone.now(),
                    actor=user,
                    actor_name=name[:150],
                    verb=verb,
                    environment=environment,
                    action_id=action_id,
                    payload=clean_payload,
                    ip=ip,
                    user_agent=agent,
                    prev_hash=last.hash if last else GENESIS,
                )
                event.hash = event_hash(event)
                event.save()
                return event
        except IntegrityError:
            continue  # another writer extended the chain first; link to its event instead
    raise RuntimeError("could not append to the audit trail: too much contention")


def _client(request: HttpRequest | None) -> tuple[str | None, str]:
    if request is None:
        return None, ""
    return client_ip(request), request.META.get("HTTP_USER_AGENT", "")[:512]


def client_ip(request: HttpRequest) -> str | None:
    """Return the client's address, or None when the server gave none that parses as one."""
    value = request.META.get("REMOTE_ADDR") or ""
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if getattr(settings, "SECURE_PROXY_SSL_HEADER", None) and forwarded.strip():
        # Behind the trusted proxy (BEHIND_PROXY=1) every request comes from the proxy; the last
        # entry is the address the proxy itself saw, the earlier ones the client could forge.
        value = forwarded.split(",")[-1].strip()
    # A unix-socket or misconfigured server can pass anything; PostgreSQL's inet refuses it.
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


@dataclass(frozen=True)
class Verification:
    """The result of walking the chain."""

    verified: int
    broken_at: int | None
    reason: str


def verify() -> Verification:
    """Walk the chain in order and return the first event that does not verify."""
    count = 0
    expected_prev = GENESIS
    for event in _events():
        if event.prev_hash != expected_prev:
            return Verification(
                count, event.pk, "its previous hash does not match the event before it"
            )
        if event_hash(event) != event.hash:
            return Verification(count, event.pk, "its contents do not match its hash")
        expected_prev = event.hash
        count += 1
    return Verification(count, None, "")


def _events() -> Iterator[AuditEvent]:
    return AuditEvent.objects.order_by("id").iterator(chunk_size=2000)
