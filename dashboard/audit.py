"""The audit trail: one entry point that appends a hash-chained event, and its verifiers."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

from dashboard.models import AuditEvent

GENESIS = "0" * 64
SYSTEM = "system"
CHECKPOINT = "audit.verified"
# The page's check records a checkpoint once it walked this many events past the last one: its
# cost stays near this, however long the trail, and checkpoints add at most 0.1 % to it.
CHECKPOINT_EVERY = 1000
CHECKPOINT_CANDIDATES = 10  # newest checkpoints tried before walking from the first event
_MAC_SALT = "dashboard.audit.checkpoint"


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
                # Registered inside the block: a retried append drops it with the savepoint.
                from dashboard.services import notifications  # not at the top: CLI reads audit too

                notifications.notify_after_commit(event)
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

    verified: int  # events known good: those the checkpoint vouches for, then those walked
    broken_at: int | None
    reason: str
    checked: int = 0  # events this walk re-hashed
    since: int | None = None  # the checkpoint event the walk started from; None: the first event


@dataclass(frozen=True)
class Checkpoint:
    """A verified-up-to claim: every event up to up_to_id verified, ending with up_to_hash."""

    event_id: int
    up_to_id: int
    up_to_hash: str
    verified: int


def verify() -> Verification:
    """Walk the whole chain from its first event and return the first event that does not verify."""
    return _walk(None)[0]


def verify_since_checkpoint(*, record_checkpoint: bool = True) -> Verification:
    """Walk the chain from the last trustworthy checkpoint; record a new one past enough events."""
    start = _trusted_checkpoint()
    result, last = _walk(start)
    if (
        record_checkpoint
        and result.broken_at is None
        and last is not None
        and result.checked >= CHECKPOINT_EVERY
    ):
        newest = AuditEvent.objects.filter(verb=CHECKPOINT).order_by("-id").values("id").first()
        # Another page load may have recorded one meanwhile; one is enough.
        if newest is None or start is None or newest["id"] <= start.event_id:
            _record_checkpoint(last, result.verified)
    return result


def _walk(start: Checkpoint | None) -> tuple[Verification, AuditEvent | None]:
    """Check every event after the start in order; return the verdict and the last good event."""
    count = start.verified if start else 0
    expected_prev = start.up_to_hash if start else GENESIS
    since = start.event_id if start else None
    events = AuditEvent.objects.order_by("id")
    if start is not None:
        events = events.filter(id__gt=start.up_to_id)
    checked = 0
    last = None
    for event in events.iterator(chunk_size=2000):
        reason = ""
        if event.prev_hash != expected_prev:
            reason = "its previous hash does not match the event before it"
        elif event_hash(event) != event.hash:
            reason = "its contents do not match its hash"
        elif event.verb == CHECKPOINT:
            reason = _false_claim(event)
        if reason:
            return Verification(count, event.pk, reason, checked + 1, since), last
        expected_prev = event.hash
        count += 1
        checked += 1
        last = event
    return Verification(count, None, "", checked, since), last


def _trusted_checkpoint() -> Checkpoint | None:
    """Return the newest checkpoint signed with our key whose row and named row still verify."""
    candidates = AuditEvent.objects.filter(verb=CHECKPOINT).order_by("-id")
    for event in candidates[:CHECKPOINT_CANDIDATES]:
        claim = _claim(event)
        # The key is what a writer behind the dashboard's back lacks: without it, no shortcut.
        if claim is None or not _signed(claim, event.payload.get("mac")):
            continue
        if event_hash(event) != event.hash:
            continue  # changed since: the walk from an older checkpoint reports it
        named = AuditEvent.objects.filter(pk=claim.up_to_id).first()
        if named is None or named.hash != claim.up_to_hash or event_hash(named) != named.hash:
            continue
        return claim
    return None


def _claim(event: AuditEvent) -> Checkpoint | None:
    payload = event.payload
    if not isinstance(payload, dict):
        return None
    up_to_id, up_to_hash, verified = (
        payload.get(k) for k in ("up_to_id", "up_to_hash", "verified")
    )
    if not (
        isinstance(up_to_id, int) and isinstance(up_to_hash, str) and isinstance(verified, int)
    ):
        return None
    if not 0 < up_to_id < event.pk or verified < 1:
        return None
    return Checkpoint(event.pk, up_to_id, up_to_hash, verified)


def _false_claim(event: AuditEvent) -> str:
    """Return why a checkpoint claims what is not so, or "" (the dashboard never writes one)."""
    claim = _claim(event)
    if claim is None:
        return "it is a checkpoint that names no earlier event"
    named = AuditEvent.objects.filter(pk=claim.up_to_id).values_list("hash", flat=True).first()
    if named != claim.up_to_hash:
        return f"it is a checkpoint naming a hash event {claim.up_to_id} does not have"
    return ""


def _record_checkpoint(last: AuditEvent, verified: int) -> None:
    claim = Checkpoint(0, last.pk, last.hash, verified)
    record(
        CHECKPOINT,
        actor_name=SYSTEM,
        payload={
            "up_to_id": claim.up_to_id,
            "up_to_hash": claim.up_to_hash,
            "verified": claim.verified,
            "mac": _mac(claim, settings.SECRET_KEY),
        },
    )


def _mac(claim: Checkpoint, secret: str | bytes) -> str:
    value = f"{claim.up_to_id}:{claim.up_to_hash}:{claim.verified}"
    return salted_hmac(_MAC_SALT, value, secret=secret, algorithm="sha256").hexdigest()


def _signed(claim: Checkpoint, mac: Any) -> bool:
    """Say whether the checkpoint was signed with the current key or a fallback one."""
    if not isinstance(mac, str):
        return False
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return any(constant_time_compare(mac, _mac(claim, key)) for key in keys)
