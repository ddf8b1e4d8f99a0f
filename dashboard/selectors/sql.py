"""Offline SQL as HTML for review: escaped first, then keywords, strings and comments marked."""

from __future__ import annotations

import re

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

_SQL_TOKEN = re.compile(
    r"(?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))"
    r"|(?P<dollar>(?P<tag>\$[A-Za-z_]*\$).*?(?:(?P=tag)|\Z))"
    r"|(?P<string>'(?:[^']|'')*(?:'|\Z))"
    r"|(?P<quoted>\"(?:[^\"]|\"\")*(?:\"|\Z)|`[^`]*(?:`|\Z))"
    r"|(?P<word>\b[A-Za-z_][A-Za-z0-9_$]*)"
    r"|(?P<number>\b\d+(?:\.\d+)?\b)",
    re.DOTALL,
)
# The words Alembic's offline SQL uses, on every supported dialect.
_SQL_KEYWORD_TEXT = """
ADD ALL ALTER AND AS ASC AUTOINCREMENT AUTO_INCREMENT BEGIN BETWEEN BIGINT BOOLEAN BY
CASCADE CASE CHECK COLLATE COLUMN COMMENT COMMIT CONCURRENTLY CONSTRAINT CREATE DATE
DATETIME DEFAULT DEFERRABLE DELETE DESC DISTINCT DO DROP ELSE END ENGINE ENUM EXISTS
FALSE FOREIGN FROM FUNCTION GRANT GROUP HAVING IF IN INDEX INNER INSERT INT INTEGER
INTO IS JOIN KEY LEFT LIKE LIMIT LOCK NOT NULL NUMERIC ON OR ORDER PRIMARY REFERENCES
RENAME REPLACE RESTRICT RETURNING REVOKE ROLLBACK SCHEMA SELECT SEQUENCE SERIAL SET
SMALLINT TABLE TEXT THEN TIME TIMESTAMP TO TRANSACTION TRIGGER TRUE TYPE UNIQUE UPDATE
USING VALUES VARCHAR VIEW WHEN WHERE WITH WITHOUT ZONE
"""
_SQL_KEYWORDS = frozenset(_SQL_KEYWORD_TEXT.split())


_SQL_CLASSES = {
    "comment": "sql-com",
    "dollar": "sql-str",
    "string": "sql-str",
    "quoted": "sql-id",
    "number": "sql-num",
}


def highlight_sql(sql: str) -> SafeString:
    """Return the SQL as HTML: every piece escaped, then keywords, strings and comments in spans."""
    parts: list[str] = []
    position = 0
    for match in _SQL_TOKEN.finditer(sql):
        parts.append(escape(sql[position : match.start()]))
        text = match.group()
        kind = match.lastgroup
        if kind == "word":
            css = "sql-kw" if text.upper() in _SQL_KEYWORDS else None
        else:
            css = _SQL_CLASSES[kind or "number"]
        parts.append(f'<span class="{css}">{escape(text)}</span>' if css else escape(text))
        position = match.end()
    parts.append(escape(sql[position:]))
    return mark_safe("".join(parts))  # noqa: S308 - every piece of the input went through escape()
