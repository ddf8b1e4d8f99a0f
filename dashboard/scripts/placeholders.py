"""Stand in for a revision file that does not parse, so the graph keeps its place."""

from __future__ import annotations

import os
import re

from dashboard.history import Revision

_LEGACY_ID = re.compile(r"([a-f0-9]+)\.py$")
# Alembic's default file name, "%(rev)s_%(slug)s.py".
_SHAPED_NAME = re.compile(r"([^_.\s@:+-]+)_.*\.py$")
# What a placeholder for a file that does not parse reads from its text, line by line.
_REVISION_LINE = re.compile(
    r"^revision\s*(?::[^=\n]*)?=\s*(['\"])(?P<id>[^'\"\s@:+-]+)\1\s*(?:#.*)?$", re.MULTILINE
)
_DOWN_LINE = re.compile(r"^down_revision\s*(?::[^=\n]*)?=(?P<ids>.*)$", re.MULTILINE)
_REVISES_LINE = re.compile(r"^Revises:(?P<ids>.*)$", re.MULTILINE)
_QUOTED_ID = re.compile(r"(['\"])([^'\"\s@:+-]+)\1")
_ID_IN_LINE = re.compile(r"[^\s,@:+-]+")


def placeholder(path: str, data: bytes, problem: str) -> Revision:
    """Return the node that stands for a revision file that does not parse."""
    text = data.decode("utf-8", "replace")
    filename = os.path.basename(path)
    # Its own revision line (the id its children name), else Alembic's file name shape.
    found = _REVISION_LINE.search(text)
    shaped = _SHAPED_NAME.match(filename) or _LEGACY_ID.match(filename)
    if found:
        revision = found["id"]
    elif shaped:
        revision = shaped.group(1)
    else:
        revision = re.sub(r"\W", "_", filename.removesuffix(".py")) or "_"
    parents: tuple[str, ...] = ()
    if down := _DOWN_LINE.search(text):
        parents = tuple(m[1] for m in _QUOTED_ID.findall(down["ids"]))
    elif down := _REVISES_LINE.search(text):
        parents = tuple(_ID_IN_LINE.findall(down["ids"]))
    return Revision(
        revision=revision,
        down_revisions=(),
        message="(this file cannot be parsed)",
        path=path,
        problems=(problem,),
        unreadable=True,
        probable_parents=tuple(p for p in parents if p != revision),
    )
