"""Sign-in throttling: per username and address with backoff, and a fixed ceiling per address."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.forms import UsernameField
from django.db import transaction
from django.db.models import F, Q
from django.http import HttpRequest
from django.utils import timezone

from dashboard import audit
from dashboard.models import SignInRefusals, SignInThrottle

DEFAULT_MAX_FAILURES = 5
DEFAULT_WINDOW = 15 * 60
ADDRESS_FACTOR = 10  # the address ceiling, in per-user limits, unless set on its own
MAX_WAIT = timedelta(hours=24)  # backoff stops doubling here (or at the window, if longer)
SWEEP_BATCH = 100
FAILED = "auth.sign_in_failed"
SUCCEEDED = "auth.sign_in"
SIGNED_OUT = "auth.sign_out"
THROTTLED = "auth.sign_in_throttled"
USERNAME_MAX = 150
USER = SignInThrottle.Scope.USER
ADDRESS = SignInThrottle.Scope.ADDRESS


@dataclass(frozen=True)
class Throttle:
    """Why a sign-in attempt is refused, and for how long."""

    by: str  # "username" (that name from that address) or "ip" (the whole address)
    failures: int
    retry_after: int  # seconds until the block ends
    key: int  # the SignInThrottle row that blocks

    @property
    def message(self) -> str:
        """Return the sentence the sign-in form shows."""
        minutes = max(1, math.ceil(self.retry_after / 60))
        return f"Too many failed sign-ins; try again in {minutes} minute{'s' * (minutes != 1)}."


def max_failures() -> int:
    """Return how many failures of one name from one address block it (0: no throttling)."""
    return int(getattr(settings, "DASHBOARD_SIGNIN_MAX_FAILURES", DEFAULT_MAX_FAILURES))


def address_max_failures() -> int:
    """Return how many failures from one address block every name from it (0: no ceiling)."""
    value = getattr(settings, "DASHBOARD_SIGNIN_ADDRESS_MAX_FAILURES", None)
    return ADDRESS_FACTOR * max_failures() if value is None else int(value)


def window() -> timedelta:
    """Return how long failures count, and the first block lasts (DASHBOARD_SIGNIN_WINDOW)."""
    return timedelta(seconds=float(getattr(settings, "DASHBOARD_SIGNIN_WINDOW", DEFAULT_WINDOW)))


def signin_throttle(*, username: str, ip: str | None) -> Throttle | None:
    """Return why an attempt for this username from this address is refused, or None."""
    if max_failures() <= 0:
        return None
    now = timezone.now()
    network = _network(ip)
    keys = Q(scope=USER, username=_tried(username), address=network)
    if network:
        keys |= Q(scope=ADDRESS, username="", address=network)
    blocking = (
        SignInThrottle.objects.filter(keys, blocked_until__gt=now)
        .order_by("-blocked_until")
        .first()
    )
    if blocking is None or blocking.blocked_until is None:
        return None
    return Throttle(
        by="username" if blocking.scope == USER else "ip",
        failures=blocking.failures,
        retry_after=max(1, math.ceil((blocking.blocked_until - now).total_seconds())),
        key=blocking.pk,
    )


def signin_refuse(*, username: str, throttle: Throttle, request: HttpRequest) -> None:
    """Count a refused attempt; the block's first refusal is recorded in the audit trail."""
    now = timezone.now()
    tried = _tried(username)
    with transaction.atomic():
        # Locking the key makes exactly one of several concurrent first refusals record it.
        key = SignInThrottle.objects.select_for_update().filter(pk=throttle.key).first()
        if key is not None and key.refusals_id is not None:
            SignInRefusals.objects.filter(pk=key.refusals_id).update(
                count=F("count") + 1, last_at=now
            )
            return
        event = audit.record(
            THROTTLED,
            actor_name=tried,
            request=request,
            payload={
                "username": tried,
                "by": throttle.by,
                "failures": throttle.failures,
                "retry_after": throttle.retry_after,
            },
        )
        until = now + timedelta(seconds=throttle.retry_after)
        if key is not None and key.blocked_until is not None:
            until = key.blocked_until
        refusals = SignInRefusals.objects.create(event=event, count=1, last_at=now, until=until)
        if key is not None:
            key.refusals = refusals
            key.save(update_fields=["refusals"])


def signin_failed(
    *,
    username: str,
    request: HttpRequest | None,
    method: str | None = None,
    reason: str | None = None,
    groups: list[str] | None = None,
    keys: tuple[str, ...] = (USER, ADDRESS),
) -> None:
    """Record a failed sign-in (never the password) and count it against its keys.

    A sign-in through the identity provider says so (method), why it was refused, and for a
    refusal for want of a role, the groups the provider sent. Keys says which throttles count
    it: the name from the address, the whole address, or none.
    """
    tried = _tried(username)
    payload: dict[str, Any] = {"username": tried}
    if method is not None:
        payload.update(method=method, reason=reason)
    if groups is not None:
        payload["groups"] = groups
    audit.record(FAILED, actor_name=tried, request=request, payload=payload)
    limit = max_failures()
    if limit <= 0 or not keys:
        return
    now = timezone.now()
    network = _network(audit.client_ip(request) if request is not None else None)
    ceiling = address_max_failures()
    # Always the name's key first, then the address's: one order, so no two writers deadlock.
    with transaction.atomic():
        if USER in keys:
            _count_failure(scope=USER, username=tried, address=network, limit=limit, now=now)
        if ADDRESS in keys and network and ceiling > 0:
            _count_failure(scope=ADDRESS, username="", address=network, limit=ceiling, now=now)
    _sweep(now)


def signin_succeeded(*, user: Any, request: HttpRequest | None, method: str | None = None) -> None:
    """Record a sign-in (and its method when not a password) and forget that name's failures."""
    payload = {"method": method} if method is not None else None
    audit.record(SUCCEEDED, actor=user, request=request, payload=payload)
    network = _network(audit.client_ip(request) if request is not None else None)
    # The address's own count stays: one person's success says nothing about the others' tries.
    SignInThrottle.objects.filter(
        scope=USER, username=_tried(user.get_username()), address=network
    ).delete()


def signin_ended(*, user: Any, request: HttpRequest | None) -> None:
    """Record a sign-out."""
    audit.record(SIGNED_OUT, actor=user, request=request)


def _count_failure(
    *, scope: str, username: str, address: str, limit: int, now: datetime
) -> SignInThrottle:
    span = window()
    key, created = SignInThrottle.objects.select_for_update().get_or_create(
        scope=scope,
        username=username,
        address=address,
        defaults={"failures": 0, "forget_at": now + span},
    )
    if not created and key.forget_at <= now:
        key.failures = 0
        key.blocked_until = None
        key.refusals = None
        key.forget_at = now + span  # a fixed window from the first failure it counts
    key.failures += 1
    if key.failures >= limit:
        if scope == USER:
            wait = _backoff(key.failures - limit, span)
            # Remember the level for as long again: a failure right after the block doubles it.
            key.forget_at = now + 2 * wait
        else:
            # One window, never doubled: one person behind a shared address must not lock the
            # others out for longer and longer. The count is forgotten when the block ends.
            wait = span
            key.forget_at = now + wait
        key.blocked_until = now + wait
        key.refusals = None  # a new block: its first refusal records a new audit event
    key.save()
    return key


def _backoff(level: int, span: timedelta) -> timedelta:
    """Return the wait after `level` failures past the limit: the window, doubled each time."""
    cap = max(span, MAX_WAIT)
    return min(span * 2 ** min(level, 32), cap)


def _sweep(now: datetime) -> None:
    """Delete a few forgotten keys, skipping any another sign-in holds."""
    with transaction.atomic():
        stale = list(
            SignInThrottle.objects.filter(forget_at__lt=now)
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)[:SWEEP_BATCH]
        )
        if stale:
            SignInThrottle.objects.filter(pk__in=stale).delete()


def _network(ip: str | None) -> str:
    """Return the key of an address: itself for IPv4, its /64 for IPv6 (one host owns it all)."""
    if not ip:
        return ""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _tried(username: str) -> str:
    """Return the name a failure is recorded and counted under for this input."""
    # The form strips and normalises the name before authenticating: "ann " counts as "ann".
    name = UsernameField(max_length=USERNAME_MAX).to_python(username) or ""
    # The form refuses NULs before any lookup, but PostgreSQL refuses them in a query too.
    return name.replace("\x00", "\ufffd")[:USERNAME_MAX] or "(blank)"
