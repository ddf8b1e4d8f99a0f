"""Sign-in throttling: refuse attempts after repeated failures for a username or an address."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.forms import UsernameField
from django.http import HttpRequest
from django.utils import timezone

from dashboard import audit
from dashboard.models import AuditEvent

DEFAULT_MAX_FAILURES = 5
DEFAULT_WINDOW = 15 * 60
FAILED = "auth.sign_in_failed"
SUCCEEDED = "auth.sign_in"
THROTTLED = "auth.sign_in_throttled"
USERNAME_MAX = 150


@dataclass(frozen=True)
class Throttle:
    """Why a sign-in attempt is refused, and for how long."""

    by: str  # "username" or "ip": which count reached the limit
    failures: int
    retry_after: int  # seconds until the count falls below the limit

    @property
    def message(self) -> str:
        """Return the sentence the sign-in form shows."""
        minutes = max(1, math.ceil(self.retry_after / 60))
        return f"Too many failed sign-ins; try again in {minutes} minute{'s' * (minutes != 1)}."


def max_failures() -> int:
    """Return how many failures open the throttle (settings.DASHBOARD_SIGNIN_MAX_FAILURES)."""
    return int(getattr(settings, "DASHBOARD_SIGNIN_MAX_FAILURES", DEFAULT_MAX_FAILURES))


def window() -> timedelta:
    """Return how far back failures count (settings.DASHBOARD_SIGNIN_WINDOW, in seconds)."""
    return timedelta(seconds=float(getattr(settings, "DASHBOARD_SIGNIN_WINDOW", DEFAULT_WINDOW)))


def signin_throttle(*, username: str, ip: str | None) -> Throttle | None:
    """Return why an attempt for this username from this address is refused, or None."""
    limit = max_failures()
    if limit <= 0:
        return None
    now = timezone.now()
    since = now - window()
    # The audit trail already records every failure with its username and address, and every
    # process (web workers on several machines) shares it, unlike a per-process cache.
    failures = AuditEvent.objects.filter(verb=FAILED, created_at__gte=since)
    tried = _tried(username)
    by_name = failures.filter(actor_name=tried)
    # Signing in proves the password: that user's earlier failures stop counting, nobody else's.
    last_success = (
        AuditEvent.objects.filter(verb=SUCCEEDED, actor_name=tried, created_at__gte=since)
        .order_by("-id")
        .values_list("id", flat=True)
        .first()
    )
    if last_success is not None:
        by_name = by_name.filter(id__gt=last_success)
    counts = [("username", by_name)]
    if ip:
        counts.append(("ip", failures.filter(ip=ip)))
    for by, events in counts:
        times = list(events.order_by("-created_at").values_list("created_at", flat=True)[:limit])
        if len(times) >= limit:
            return Throttle(by=by, failures=len(times), retry_after=_retry_after(times[-1], now))
    return None


def signin_refuse(*, username: str, throttle: Throttle, request: HttpRequest) -> None:
    """Record a refused attempt in the audit trail (the password was never checked)."""
    tried = _tried(username)
    audit.record(
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


def _tried(username: str) -> str:
    """Return the name the failure receiver (dashboard.signals) records for this input."""
    # The form strips and normalises the name before authenticating: "ann " counts as "ann".
    name = UsernameField(max_length=USERNAME_MAX).to_python(username) or ""
    # The form refuses NULs before any lookup, but PostgreSQL refuses them in a query too.
    return name.replace("\x00", "\ufffd")[:USERNAME_MAX] or "(blank)"


def _retry_after(oldest_counted: datetime, now: datetime) -> int:
    """Return the seconds until the oldest counted failure leaves the window."""
    return max(1, math.ceil((oldest_counted + window() - now).total_seconds()))
