"""The worker's notification sender: threads of their own, so no receiver ever delays a run."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.db import connection

from dashboard.services import notifications

logger = logging.getLogger(__name__)

POLL_INTERVAL = 1.0  # seconds between looks for due deliveries
SENDERS = 4  # attempts at once: one dead receiver holds one of them, not the others' events
PRUNE_EVERY = 3600.0


class NotificationSender:
    """Look for due deliveries every second and post them from a small pool of threads."""

    def __init__(self, *, interval: float = POLL_INTERVAL, senders: int = SENDERS) -> None:
        self.interval = interval
        self.senders = senders
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="notify-sender", daemon=True)
        self._pool = ThreadPoolExecutor(max_workers=senders, thread_name_prefix="notify-post")
        self._busy: set[int] = set()
        self._lock = threading.Lock()
        self._pruned_at = 0.0

    def start(self) -> None:
        """Start looking in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop looking; an attempt in flight ends within its timeout, its delivery is kept."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 5)
        # Not waiting for posts in flight: a claimed delivery is due again once its lease ends.
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.look_once()
                except Exception:  # the dashboard's database away: the next look tries again
                    logger.exception("could not look for due notifications")
        finally:
            connection.close()  # this thread's own connection

    def look_once(self) -> list[int]:
        """Claim what is due, as many as there are free senders, and hand each to the pool."""
        self._prune()
        with self._lock:
            free = self.senders - len(self._busy)
            busy = set(self._busy)
        if free <= 0:
            return []
        # Never our own posts in flight: claiming one again would post it twice.
        claimed = notifications.deliveries_claim_due(limit=free, skip=busy)
        for pk in claimed:
            with self._lock:
                self._busy.add(pk)
            self._pool.submit(self._attempt, pk)
        return claimed

    def _attempt(self, pk: int) -> None:
        try:
            notifications.delivery_attempt(delivery_id=pk)
        except Exception:  # its lease ends and it is tried again
            logger.exception("could not attempt notification %s", pk)
        finally:
            connection.close()  # each pool thread's own connection, opened per attempt
            with self._lock:
                self._busy.discard(pk)

    def _prune(self) -> None:
        now = time.monotonic()
        if self._pruned_at and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        days = int(getattr(settings, "DASHBOARD_RETENTION_DAYS", 30))
        try:
            notifications.deliveries_prune(older_than=timedelta(days=days))
        except Exception:
            logger.exception("could not prune old notifications")
