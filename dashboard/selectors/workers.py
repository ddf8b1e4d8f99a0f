"""Whether any worker is alive, from the beats the workers record."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Count, Max, Q
from django.utils import timezone

from dashboard.models import WorkerBeat
from dashboard.runner.monitor import heartbeat_limit


@dataclass(frozen=True)
class WorkerLiveness:
    """How many workers beat within the heartbeat limit, and when the newest beat came."""

    seen: int
    newest_beat_at: datetime | None
    newest_beat_age_s: float | None
    limit: float

    @property
    def ok(self) -> bool:
        """Say whether at least one worker beat within the limit."""
        return self.seen > 0

    @property
    def newest_beat_utc(self) -> str:
        """Return when the newest beat came, as pages show it, or "" when none ever did."""
        if self.newest_beat_at is None:
            return ""
        return f"{self.newest_beat_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"

    def as_json(self) -> dict[str, Any]:
        """Return the liveness as /healthz and /readyz report it."""
        age = self.newest_beat_age_s
        return {
            "seen": self.seen,
            "newest_beat_age_s": round(age, 1) if age is not None else None,
            "ok": self.ok,
        }


def worker_liveness() -> WorkerLiveness:
    """Return how many workers beat within the heartbeat limit and the newest beat's age."""
    limit = heartbeat_limit()
    now = timezone.now()
    found = WorkerBeat.objects.aggregate(
        seen=Count("pk", filter=Q(seen_at__gte=now - timedelta(seconds=limit))),
        newest=Max("seen_at"),
    )
    newest = found["newest"]
    return WorkerLiveness(
        seen=found["seen"],
        newest_beat_at=newest,
        newest_beat_age_s=max(0.0, (now - newest).total_seconds()) if newest else None,
        limit=limit,
    )
