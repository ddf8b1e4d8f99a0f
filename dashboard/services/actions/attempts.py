"""How an action's run is bounded and retried: its lock limits, the run lock wait, the backoff."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from dashboard.config import Environment, parse_duration, render_duration
from dashboard.databases import runlock, sessions
from dashboard.models import Action
from dashboard.runner.monitor import RunMonitor

RETRY_BACKOFF = 2.0  # seconds before the first retry, doubled before each later one
RETRY_JITTER = 0.25  # each delay is drawn within this fraction of it, so retries spread out
SLEEP_STEP = 0.1  # seconds between looks for a cancel during a backoff
LIMIT_KEYS = ("lock_timeout", "statement_timeout")


class StopWaiting(Exception):
    """The action was cancelled, or lost its heartbeat, while it waited for the run lock."""


def run_limits(env: Environment, action: Action) -> tuple[sessions.Limits, list[str]]:
    """Return the limits of the whole run, raised by any plan revision that asks, and notes why.

    A revision's marks (plan_marks[rev]["limits"]) can only raise the environment's limits,
    to the largest any revision asks; no statement_timeout is larger than any.
    """
    lock, statement = env.lock_timeout, env.statement_timeout
    by: dict[str, str] = {}
    notes: list[str] = []
    marks = action.plan_marks if isinstance(action.plan_marks, dict) else {}
    for revision in action.plan:
        mark = marks.get(revision)
        asked = mark.get("limits") if isinstance(mark, dict) else None
        if not isinstance(asked, dict):
            continue
        for key in LIMIT_KEYS:
            if key not in asked:
                continue
            try:
                seconds = parse_duration(asked[key])
            except ValueError as exc:
                notes.append(f"revision {revision}'s {key} mark is ignored: {exc}")
                continue
            if key == "lock_timeout" and seconds > lock:
                lock, by[key] = seconds, revision
            elif key == "statement_timeout" and statement is not None and seconds > statement:
                statement, by[key] = seconds, revision
    raised = {"lock_timeout": lock, "statement_timeout": statement}
    for key, revision in by.items():
        notes.append(
            f"revision {revision} raises {key} to {_duration(raised[key])} for the whole run"
            f" ({env.name}'s is {_duration(getattr(env, key))})"
        )
    return sessions.Limits(lock, statement), notes


def limits_text(limits: sessions.Limits) -> str:
    """Say a run's limits: "lock_timeout 5s, statement_timeout none"."""
    return (
        f"lock_timeout {_duration(limits.lock_timeout)},"
        f" statement_timeout {_duration(limits.statement_timeout)}"
    )


def backoff(retry: int) -> float:
    """Return the seconds before retry number retry (1, 2, ...): 2 s, 4 s, 8 s ... ± 25 %."""
    base = RETRY_BACKOFF * 2 ** (retry - 1)
    return base * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)  # noqa: S311 (not a secret)


def sleep_unless(seconds: float, stop: Callable[[], bool]) -> bool:
    """Sleep seconds unless stop() turns true first; return whether it did."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if stop():
            return True
        time.sleep(min(SLEEP_STEP, left))
    return stop()


def no_retry_reason(
    *, backend: str, action: Action, after_heads: Sequence[str] | None, leftover: str
) -> str:
    """Say why a run that a lock timeout ended must not be tried again on its own, or return ""."""
    if backend in ("mysql", "mariadb"):
        return (
            "not retried: MariaDB/MySQL commits each DDL statement as it runs, so the failed"
            " step's statements before the timeout may have stayed even where the heads did not"
            " move; check the schema before running it again"
        )
    if backend != "postgresql":
        return "not retried: only PostgreSQL runs are retried"
    if after_heads is None:
        return "not retried: the heads could not be read afterwards"
    if set(after_heads) != set(action.from_heads):
        return "not retried: part of the plan stayed applied"
    if leftover:
        return "not retried: a session of the run could not be stopped"
    marks = action.plan_marks if isinstance(action.plan_marks, dict) else {}
    for revision in action.plan:
        mark = marks.get(revision)
        outside = mark.get("non_transactional") if isinstance(mark, dict) else None
        if outside:
            why = outside[0] if isinstance(outside, list) else str(outside)
            return (
                f"not retried: revision {revision} runs outside a transaction ({why}),"
                " so what it did may not have rolled back"
            )
    return ""


def describe_in_the_way(items: Sequence[dict[str, Any]]) -> str:
    """Say which sessions stand in the way: "pid 42 (user bob, idle in transaction for 6 s, ...)"."""
    described = []
    for item in items[:3]:
        parts = []
        if item.get("user"):
            parts.append(f"user {item['user']}")
        if item.get("application"):
            parts.append(f"application {item['application']}")
        state = item.get("state") or ""
        age = item.get("xact_age_s")
        if state and age is not None:
            parts.append(f"{state} for {age:g} s")
        elif state:
            parts.append(state)
        if item.get("lock") and item.get("table"):
            parts.append(f"holds {item['lock']} on {item['table']}")
        noun = item.get("noun", "pid")
        described.append(f"{noun} {item.get('pid')} ({', '.join(parts)})")
    more = f" and {len(items) - 3} more" if len(items) > 3 else ""
    return "; ".join(described) + more


class LockWait:
    """What a run saw while it waited for the run lock: its holder, and since when."""

    def __init__(self, environment: str) -> None:
        self.environment = environment
        self.holder: dict[str, Any] | None = None
        self.started: float | None = None
        # The lock while the run holds it; set when a look found it gone (its connection ended).
        self.held: runlock.Held | None = None
        self.lost = threading.Event()

    def check_held(self, monitor: RunMonitor) -> None:
        """Stop the run, as at a time limit, when the run lock it holds is no longer there."""
        held = self.held
        if held is None or self.lost.is_set() or held.still_held():
            return
        if self.held is not held:
            return  # given back while we looked: the run is over
        self.lost.set()
        monitor.line(
            f"dashboard: the run lock of {self.environment} was lost (its connection ended);"
            " stopping the run"
        )
        monitor.cancel.set()

    def lost_text(self, rest: str) -> str:
        """Say that the run lock went during the run, then rest ("; where it is now")."""
        return (
            f"the run lock of {self.environment} was lost during the run (its connection ended);"
            f" the run was stopped{rest}"
        )

    def shown(self, in_the_way: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Return what stands in the run's way: the lock's holder while it waits, then the rest."""
        holder = self.holder
        return ([{**holder, "kind": "run_lock"}] if holder is not None else []) + in_the_way

    def seen(self, monitor: RunMonitor, holder: dict[str, Any]) -> None:
        """Take one look at the holder (hold()'s on_wait); raise StopWaiting when cancelled."""
        if monitor.should_cancel():
            raise StopWaiting
        if self.started is None:
            self.started = time.monotonic()
        changed = self.holder is None or self.holder.get("pid") != holder.get("pid")
        self.holder = holder
        if changed:
            monitor.line(
                f"waiting for the run lock of {self.environment}: held by"
                f" {runlock.describe(holder)}"
            )
            monitor.set_blockers(self.shown([]))

    def taken(self, monitor: RunMonitor) -> None:
        """Say the lock came, if the run had to wait for it, and clear the holder."""
        if self.started is None:
            return
        monitor.line(
            f"took the run lock of {self.environment} after"
            f" {time.monotonic() - self.started:.1f} s of waiting"
        )
        self.holder = None
        monitor.set_blockers([])

    @property
    def waited(self) -> bool:
        """Say whether the run had to wait for the lock."""
        return self.started is not None


def _duration(seconds: float | None) -> str:
    return "none" if seconds is None else render_duration(seconds)
