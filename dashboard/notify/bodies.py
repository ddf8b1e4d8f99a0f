"""Notification bodies: the signed JSON document and Slack's one-line text, from plain facts."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from dashboard.databases.connect import mask_secrets

MAX_DETAIL = 300
# Anything that looks like a URL (a database's, a receiver's): never in a body, with or
# without its password.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://\S+")
# SQLAlchemy and drivers append the statement and its parameters to errors.
_SQL_TAIL = re.compile(r"\s*[\[(](?:SQL|parameters|Background on this error)\b.*", re.DOTALL)


@dataclass(frozen=True)
class Facts:
    """What a notification tells: the event, where, which action or rollout, who, and detail."""

    event: str
    at: str  # ISO 8601, UTC
    actor: str
    environment: str = ""
    project: str = ""
    fleet: str | None = None
    action: dict[str, Any] | None = None  # id, direction, target, status, url
    rollout: dict[str, Any] | None = None  # id, fleet, direction, target, status, url
    detail: dict[str, Any] = field(default_factory=dict)


def clean_text(text: str) -> str:
    """Return an error's first line without URLs, passwords or SQL, at most MAX_DETAIL long."""
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    first = _SQL_TAIL.sub("", first)
    first = _URL.sub("<url>", first)
    first = mask_secrets(first, None)
    return first if len(first) <= MAX_DETAIL else first[: MAX_DETAIL - 1] + "…"


def json_body(facts: Facts, *, delivery: int) -> str:
    """Return the json format's body: one document with every fact, keys sorted."""
    document = {
        "event": facts.event,
        "delivery": delivery,
        "at": facts.at,
        "environment": facts.environment or None,
        "project": facts.project or None,
        "fleet": facts.fleet,
        "action": facts.action,
        "rollout": facts.rollout,
        "actor": facts.actor,
        "detail": facts.detail,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def slack_body(facts: Facts) -> str:
    """Return the slack format's body: {"text": one readable line}."""
    return json.dumps({"text": one_line(facts)}, ensure_ascii=True)


def one_line(facts: Facts) -> str:
    """Say the event in one line, e.g. "staging: action #12 upgrade to heads failed: …"."""
    detail = facts.detail
    if facts.rollout is not None:
        rollout = facts.rollout
        subject = (
            f"fleet {rollout['fleet']}: rollout #{rollout['id']} {rollout['direction']}"
            f" to {rollout['target']}"
        )
        link = rollout.get("url")
        said = _ROLLOUT_WORDS.get(facts.event, facts.event)
    elif facts.action is not None:
        action = facts.action
        subject = (
            f"{facts.environment}: action #{action['id']} {action['direction']}"
            f" to {action['target']}"
        )
        link = action.get("url")
        said = _ACTION_WORDS.get(facts.event, facts.event)
    else:
        subject, link, said = facts.environment, None, _ACTION_WORDS.get(facts.event, facts.event)
    line = f"{subject} {said}"
    if facts.event == "drift_found":
        line += f" ({detail.get('differences', 0)} difference(s))"
    elif facts.event == "awaiting_approval":
        line += f" (requested by {detail.get('requested_by') or facts.actor})"
    elif facts.event in ("approved", "rollout_approved", "rollout_requested"):
        line += f" by {facts.actor}"
    if detail.get("error"):
        line += f": {detail['error']}"
    elif detail.get("reason") and facts.event.startswith("rollout_"):
        line += f": {detail['reason']}"
    if link:
        line += f" <{link}|open>"
    return line


_ACTION_WORDS = {
    "awaiting_approval": "awaits approval",
    "approved": "was approved",
    "started": "started",
    "succeeded": "succeeded",
    "failed": "failed",
    "interrupted": "was interrupted",
    "drift_found": "schema drift found",
}
_ROLLOUT_WORDS = {
    "rollout_requested": "was requested",
    "rollout_approved": "was approved",
    "rollout_paused": "paused",
    "rollout_succeeded": "succeeded",
    "rollout_failed": "failed",
    "rollout_cancelled": "was cancelled",
}
