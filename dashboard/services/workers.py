"""Worker beats: each worker process says it is alive, so pages can tell when none is."""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

from django.db import IntegrityError
from django.utils import timezone

from dashboard.models import WorkerBeat

# Beats of workers that died without a clean stop are kept this long, then swept.
BEAT_RETENTION = timedelta(days=1)


def worker_name() -> str:
    """Return this process's name as its beat and the actions it runs record it: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_beat_record(*, name: str, started_at: datetime) -> None:
    """Record that the named worker is alive now."""
    now = timezone.now()
    if WorkerBeat.objects.filter(name=name).update(seen_at=now):
        return
    try:
        WorkerBeat.objects.create(name=name, started_at=started_at, seen_at=now)
    except IntegrityError:  # another thread of this worker created it meanwhile
        WorkerBeat.objects.filter(name=name).update(seen_at=now)


def worker_beat_remove(*, name: str) -> None:
    """Forget the named worker: it stopped cleanly."""
    WorkerBeat.objects.filter(name=name).delete()


def worker_beats_prune(*, older_than: timedelta = BEAT_RETENTION) -> int:
    """Delete the beats of workers silent for longer than older_than; return how many."""
    deleted, _ = WorkerBeat.objects.filter(seen_at__lt=timezone.now() - older_than).delete()
    return deleted
