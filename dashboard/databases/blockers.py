"""Find the sessions that stand in a run's way on PostgreSQL: blockers, lock holders, old transactions.

Read-only and bounded: one query on pg_stat_activity and pg_locks per look, through the same
timeouts as the version reads. The dashboard only shows what it finds; it never ends a session.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dashboard.config import BadDatabaseURL, parse_database_url, url_secrets, with_installed_driver
from dashboard.databases.versions import _engine, mask_secrets

logger = logging.getLogger(__name__)

MAX_QUERY = 200  # characters of a blocker's query shown
MAX_ITEMS = 20  # a busy table has many short readers; the most telling ones come first
# The dashboard's own short, bounded sessions: version reads and run lock connections. They are
# listed only when the run actually waits on one; another action's Alembic child is listed.
OWN_APPLICATIONS = ("migration-dashboard", "migration-dashboard run lock")
# The most telling kind first: a session the run waits on beats one that only holds a lock.
KIND_ORDER = ("blocking", "lock_holder", "old_transaction")
# Strongest first, so the lock shown is the one most likely in the way.
LOCK_STRENGTH = (
    "AccessExclusiveLock",
    "ExclusiveLock",
    "ShareRowExclusiveLock",
    "ShareLock",
    "ShareUpdateExclusiveLock",
    "RowExclusiveLock",
    "RowShareLock",
    "AccessShareLock",
)

_LOOK = sa.text(
    """
WITH tagged AS (
    SELECT pid FROM pg_stat_activity
    WHERE application_name = :tag AND datname = current_database()
      AND pid <> pg_backend_pid()
),
waited AS (
    SELECT DISTINCT l.relation FROM pg_locks l JOIN tagged t ON t.pid = l.pid
    WHERE NOT l.granted AND l.relation IS NOT NULL
),
blockers AS (
    SELECT DISTINCT unnest(pg_blocking_pids(pid)) AS pid FROM tagged
),
named AS (
    SELECT c.oid FROM pg_class c
    WHERE c.relname = ANY(CAST(:tables AS text[])) AND pg_table_is_visible(c.oid)
),
watched AS (
    -- the named tables, and the tables of named indexes (DROP INDEX locks its table too)
    SELECT oid FROM named
    UNION SELECT i.indrelid FROM pg_index i JOIN named n ON n.oid = i.indexrelid
),
held AS (
    SELECT l.pid, l.mode, c.relname, (l.relation IN (SELECT relation FROM waited)) AS waited
    FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
    WHERE l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND (l.relation IN (SELECT oid FROM watched) OR l.relation IN (SELECT relation FROM waited))
)
SELECT a.pid, a.usename, a.application_name, host(a.client_addr) AS client_addr,
       a.client_hostname, a.state,
       EXTRACT(EPOCH FROM (now() - a.xact_start))::float8 AS xact_age_s,
       a.query, COALESCE(a.xact_start, a.query_start, a.backend_start) AS since,
       (a.pid IN (SELECT pid FROM blockers)) AS blocking,
       h.mode, h.relname, COALESCE(h.waited, false) AS waited
FROM pg_stat_activity a LEFT JOIN held h ON h.pid = a.pid
WHERE a.pid <> pg_backend_pid()
  AND (a.pid IN (SELECT pid FROM blockers)
       OR (a.pid NOT IN (SELECT pid FROM tagged)
           AND COALESCE(a.application_name, '') <> ALL(CAST(:own AS text[]))))
  AND (a.pid IN (SELECT pid FROM blockers)
       OR h.pid IS NOT NULL
       OR (a.datname = current_database() AND a.backend_type = 'client backend'
           AND a.xact_start < now() - make_interval(secs => :older_than)))
"""
)

_LITERAL = re.compile(r"'(?:[^']|'')*'")
_NAME = r'(?:"(?:[^"]|"")+"|[\w$]+)'
_QUALIFIED = rf"{_NAME}(?:\s*\.\s*{_NAME})*"
_STATEMENTS = [
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        rf"\bALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(?P<name>{_QUALIFIED})",
        rf"\bCREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
        rf"(?:{_QUALIFIED}\s+)?ON\s+(?:ONLY\s+)?(?P<name>{_QUALIFIED})",
        rf"\bDROP\s+(?:TABLE|INDEX)\s+(?:CONCURRENTLY\s+)?(?:IF\s+EXISTS\s+)?"
        rf"(?P<names>{_QUALIFIED}(?:\s*,\s*{_QUALIFIED})*)",
        rf"\bTRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?(?P<names>{_QUALIFIED}(?:\s*,\s*{_QUALIFIED})*)",
        rf"\bUPDATE\s+(?:ONLY\s+)?(?P<name>{_QUALIFIED})\s+SET\b",
        rf"\bINSERT\s+INTO\s+(?P<name>{_QUALIFIED})",
        rf"\bDELETE\s+FROM\s+(?:ONLY\s+)?(?P<name>{_QUALIFIED})",
        rf"\bREFERENCES\s+(?P<name>{_QUALIFIED})",
        rf"\bCOMMENT\s+ON\s+TABLE\s+(?P<name>{_QUALIFIED})",
        rf"\bCOMMENT\s+ON\s+COLUMN\s+(?P<column>{_QUALIFIED})",
    )
]
_PARTS = re.compile(_NAME)


def in_the_way(
    url: str,
    *,
    tag: str,
    tables: Collection[str],
    older_than: float = 60.0,
    timeout: float = 5.0,
) -> list[dict[str, Any]]:
    """List the sessions in the way of the run tagged tag on tables; PostgreSQL only, never raise."""
    try:
        parsed = parse_database_url(with_installed_driver(url))
    except BadDatabaseURL:
        return []
    if parsed.get_backend_name() != "postgresql":
        return []
    secrets = url_secrets(parsed)
    try:
        with _engine(parsed, timeout).connect() as conn:
            rows = conn.execute(
                _LOOK,
                {
                    "tag": tag,
                    "tables": sorted(set(tables)),
                    "older_than": float(older_than),
                    "own": list(OWN_APPLICATIONS),
                },
            ).mappings()
            found = [dict(row) for row in rows]
            conn.rollback()
    except Exception as exc:  # the run goes on without the list; the log says why
        logger.warning(
            "could not list the sessions in the way of %s: %s",
            tag,
            mask_secrets(_first_line(exc), secrets),
        )
        return []
    return _items(found, secrets)


def tables_in_sql(sql: str) -> list[str]:
    """Return the tables (and dropped indexes) that SQL changes or references, in order, once each."""
    text = _LITERAL.sub("''", _without_comments(sql))
    hits: list[tuple[int, str]] = []
    for statement in _STATEMENTS:
        for match in statement.finditer(text):
            kind, value = next((k, v) for k, v in match.groupdict().items() if v is not None)
            if kind == "name":
                hits.append((match.start(), _parts(value)[-1]))
            elif kind == "names":
                hits.extend((match.start(), _parts(part)[-1]) for part in _split_names(value))
            elif len(parts := _parts(value)) >= 2:  # COMMENT ON COLUMN table.column
                hits.append((match.start(), parts[-2]))
    return list(dict.fromkeys(name for _, name in sorted(hits, key=lambda hit: hit[0])))


def _items(rows: list[dict[str, Any]], secrets: list[str]) -> list[dict[str, Any]]:
    """Fold the rows (one per lock held) into one item per pid, the most telling first."""
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_pid.setdefault(int(row["pid"]), []).append(row)
    items: list[dict[str, Any]] = []
    for pid, locks in by_pid.items():
        first = locks[0]
        lock = min(locks, key=_lock_rank)
        if first["blocking"]:
            kind = "blocking"
        elif lock["mode"] is not None:
            kind = "lock_holder"
        else:
            kind = "old_transaction"
        age = first["xact_age_s"]
        since = first["since"]
        items.append(
            {
                "kind": kind,
                "pid": pid,
                "user": first["usename"] or "",
                "application": first["application_name"] or "",
                "client": first["client_addr"] or first["client_hostname"] or "local",
                "state": first["state"] or "",
                "xact_age_s": None if age is None else round(float(age), 1),
                "query": _shown_query(first["query"] or "", secrets),
                "lock": lock["mode"] or "",
                "table": lock["relname"] or "",
                "since": since.isoformat() if isinstance(since, datetime) else None,
            }
        )
    items.sort(key=lambda item: (KIND_ORDER.index(item["kind"]), -(item["xact_age_s"] or 0.0)))
    return items[:MAX_ITEMS]


def _lock_rank(row: dict[str, Any]) -> tuple[int, int]:
    """Rank a held lock: the one on what the run waits for, then the strongest."""
    mode = row["mode"]
    strength = LOCK_STRENGTH.index(mode) if mode in LOCK_STRENGTH else len(LOCK_STRENGTH)
    return (0 if row["waited"] else 1, strength if mode is not None else len(LOCK_STRENGTH) + 1)


def _shown_query(query: str, secrets: list[str]) -> str:
    """Return a query as shown: passwords and literals masked, then cut."""
    masked = _LITERAL.sub("'…'", mask_secrets(query, secrets))
    masked = " ".join(masked.split())
    if len(masked) > MAX_QUERY:
        masked = masked[: MAX_QUERY - 1] + "…"
    return masked


def _without_comments(sql: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", sql, flags=re.DOTALL)
    return re.sub(r"--[^\n]*", " ", text)


def _parts(qualified: str) -> list[str]:
    return [_unquote(part) for part in _PARTS.findall(qualified)]


def _split_names(names: str) -> list[str]:
    return re.findall(_QUALIFIED, names)


def _unquote(name: str) -> str:
    """Return an identifier as the catalog spells it: quoted kept, unquoted folded."""
    if name.startswith('"'):
        return name[1:-1].replace('""', '"')
    return name.lower()


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
