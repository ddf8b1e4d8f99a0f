"""Watch a running action for the worker: stream its output, heartbeat it, notice a cancel."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import F, TextField, Value
from django.db.models.functions import Concat
from django.utils import timezone

from dashboard.models import Action
from dashboard.runner.process import ProgressStep, parse_progress

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.5  # seconds between writes of new log lines and checks for a cancel
HEARTBEAT_INTERVAL = 2.0  # seconds between heartbeats
MAX_LOG_CHARS = 1_000_000
DEFAULT_HEARTBEAT_LIMIT = 60.0
BLOCKERS_INTERVAL = 1.0  # seconds between writes of a changed blockers list
WATCH_INTERVAL = 1.0  # seconds between looks for the sessions in the run's way
WATCH_JOIN = 1.0  # seconds stop() waits for a look still running; its answer is dropped
# Grows at every look; the page adds the time since blockers_at, so it is no news by itself.
VOLATILE_BLOCKER_KEYS = frozenset({"xact_age_s"})


@dataclass(frozen=True)
class StepMark:
    """When the runner saw one step's "Running upgrade A -> B" line."""

    step: ProgressStep
    at: datetime
    clock: float  # time.monotonic() then: durations do not jump with the wall clock


@dataclass(frozen=True)
class AttemptSteps:
    """The steps one run of Alembic announced, and when its child exited."""

    attempt: int
    marks: tuple[StepMark, ...]
    ended_at: datetime
    ended_clock: float


def heartbeat_limit() -> float:
    """Return the seconds of silence after which a running action counts as interrupted."""
    return float(getattr(settings, "DASHBOARD_HEARTBEAT_LIMIT", DEFAULT_HEARTBEAT_LIMIT))


class RunMonitor:
    """Stream a running action's output into its row, heartbeat it and watch for a cancel.

    Alembic's child must be started from the task's own thread (its parent-death signal
    follows that thread), so the database writes happen here, in a helper thread, batched.
    """

    def __init__(
        self,
        action_id: int,
        *,
        known_revisions: Collection[str],
        flush_interval: float = FLUSH_INTERVAL,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        give_up_after: float | None = None,
        watch: Callable[[], list[dict[str, Any]]] | None = None,
        watch_interval: float = WATCH_INTERVAL,
    ) -> None:
        self.action_id = action_id
        self.known_revisions = frozenset(known_revisions)
        self.flush_interval = flush_interval
        self.heartbeat_interval = heartbeat_interval
        # Stop the run before another worker may declare it interrupted and start the next.
        self.give_up_after = heartbeat_limit() * 0.8 if give_up_after is None else give_up_after
        self.cancel = threading.Event()
        # Set when the row stopped being "running" under us (housekeeping declared it interrupted).
        self.lost = threading.Event()
        self.steps = 0
        self._marks: list[StepMark] = []
        self._attempt = 0
        self._exited: tuple[datetime, float] | None = None
        self._lines: list[str] = []
        self._written_steps = 0
        self._log_chars = 0
        self._truncated = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_heartbeat = time.monotonic()
        self._blockers: list[dict[str, Any]] = []
        self._blockers_at: datetime | None = None
        self._blockers_dirty = False
        self._blockers_written = 0.0  # monotonic time of the last blockers write
        self._thread = threading.Thread(
            target=self._loop, name=f"action-{action_id}-monitor", daemon=True
        )
        self.watch = watch
        self.watch_interval = watch_interval
        # Its own thread: a look that hangs on a busy server must not delay the heartbeats.
        self._watcher = threading.Thread(
            target=self._watch_loop, name=f"action-{action_id}-blockers", daemon=True
        )

    def line(self, line: str) -> None:
        """Take one output line from the runner; count it when it announces a step."""
        step = parse_progress(line, self.known_revisions)
        with self._lock:
            if step is not None:
                self.steps += 1
                self._marks.append(StepMark(step, timezone.now(), time.monotonic()))
            if self._truncated:
                return
            if self._log_chars + len(line) > MAX_LOG_CHARS:
                self._truncated = True
                line = f"(log truncated after {MAX_LOG_CHARS} characters)"
            self._lines.append(line)
            self._log_chars += len(line) + 1

    def child_exited(self) -> None:
        """Note that this attempt's Alembic child has exited: its last step ends now."""
        with self._lock:
            self._exited = (timezone.now(), time.monotonic())

    def take_attempt(self) -> AttemptSteps:
        """Return this attempt's steps and their end, and start counting the next attempt's."""
        with self._lock:
            ended_at, ended_clock = self._exited or (timezone.now(), time.monotonic())
            self._attempt += 1
            taken = AttemptSteps(self._attempt, tuple(self._marks), ended_at, ended_clock)
            self._marks.clear()
            self._exited = None
        return taken

    def set_blockers(self, items: list[dict[str, Any]]) -> None:
        """Take the sessions now in the run's way; a changed list reaches the row with a flush."""
        with self._lock:
            if _steady(items) == _steady(self._blockers):
                return
            self._blockers = list(items)
            self._blockers_at = timezone.now()
            self._blockers_dirty = True

    def should_cancel(self) -> bool:
        """Say whether someone asked to cancel the action; the runner polls this."""
        return self.cancel.is_set()

    def start(self) -> None:
        """Start heartbeating and flushing in the helper thread."""
        self._thread.start()
        if self.watch is not None:
            self._watcher.start()

    def stop(self) -> None:
        """Stop the helper threads and write what is left; the last blockers stay on the row."""
        self._stop.set()
        self._thread.join()
        if self._watcher.is_alive():
            self._watcher.join(WATCH_JOIN)
        self._flush(heartbeat=True, final=True)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.flush_interval):
                due = time.monotonic() - self._last_heartbeat >= self.heartbeat_interval
                self._flush(heartbeat=due)
                self._watch_for_cancel()
        finally:
            connection.close()  # this thread's own connection

    def _watch_loop(self) -> None:
        watch = self.watch
        if watch is None:
            return
        try:
            while not self._stop.is_set():
                try:
                    items = watch()
                except Exception:  # looked for again at the next tick
                    logger.exception("could not look at what is in action %s's way", self.action_id)
                else:
                    if not self._stop.is_set():  # a look that outlived the run is not news
                        self.set_blockers(items)
                self._stop.wait(self.watch_interval)
        finally:
            connection.close()  # a watch may have used this thread's own connection

    def _watch_for_cancel(self) -> None:
        if self.cancel.is_set():
            return
        try:
            wanted = Action.objects.filter(pk=self.action_id, cancel_requested=True).exists()
        except Exception:  # asked again at the next tick
            logger.exception("could not check action %s for a cancel request", self.action_id)
            return
        if wanted:
            self.cancel.set()

    def _flush(self, *, heartbeat: bool, final: bool = False) -> None:
        with self._lock:
            lines = list(self._lines)
            steps = self.steps
            blockers_due = self._blockers_dirty and (
                final or time.monotonic() - self._blockers_written >= BLOCKERS_INTERVAL
            )
            blockers, blockers_at = self._blockers, self._blockers_at
        if not lines and steps == self._written_steps and not heartbeat and not blockers_due:
            return
        changes: dict[str, Any] = {"progress_done": steps}
        if blockers_due:
            changes["blockers"] = blockers
            changes["blockers_at"] = blockers_at
        if lines:
            text = "".join(f"{line}\n" for line in lines)
            changes["log"] = Concat(F("log"), Value(text), output_field=TextField())
        if heartbeat:
            changes["heartbeat_at"] = timezone.now()
        try:
            running = Action.objects.filter(pk=self.action_id, status=Action.Status.RUNNING)
            updated = running.update(**changes)
            if updated == 0 and not self.lost.is_set():
                # Our heartbeats stopped reaching the database for longer than the limit, so the
                # run was declared interrupted and another may start here: stop this one.
                logger.warning("action %s is no longer running in the database", self.action_id)
                self.lost.set()
                self.cancel.set()
            if heartbeat:
                self._last_heartbeat = time.monotonic()
        except Exception:
            # A database hiccup must not stop the run; the lines wait for the next try.
            logger.exception("could not record progress of action %s", self.action_id)
            silent = time.monotonic() - self._last_heartbeat
            if silent > self.give_up_after and not self.lost.is_set():
                logger.error(
                    "action %s: no heartbeat reached the database for %.0f s; stopping Alembic",
                    self.action_id,
                    silent,
                )
                self.lost.set()
                self.cancel.set()
            return
        with self._lock:
            del self._lines[: len(lines)]
            if blockers_due:
                self._blockers_written = time.monotonic()
                # A newer list that came in meanwhile is written with a later flush.
                self._blockers_dirty = self._blockers is not blockers
        self._written_steps = steps


def _steady(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the blockers without what changes at every look."""
    return [{k: v for k, v in item.items() if k not in VOLATILE_BLOCKER_KEYS} for item in items]
