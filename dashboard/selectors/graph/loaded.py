"""Load a project's history statically and keep its layout and lookups per loaded graph."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from dashboard import scripts
from dashboard.config import Project, current_config
from dashboard.drawing import svg
from dashboard.drawing.lanes import Layout, layout

_TOKEN = re.compile(r"\w+")


class GraphNotFound(Exception):
    """The config has no such project, or the project's history no such revision."""


@dataclass
class _Drawn:
    """A loaded graph with its layout and lookups, kept as long as its graph is cached."""

    history: scripts.LoadedHistory
    layout: Layout
    order: list[str]
    index: dict[str, int]
    raw_problems: list[str]
    problems: list[str]
    flagged: set[str]
    # Rows as a page shows them, by (project, revision, focused, badges): drawing 200 rows
    # is most of a page's time, and most rows look the same from one request to the next.
    shown: dict[tuple[object, ...], object] = field(default_factory=dict)


_drawn: dict[tuple[Path, tuple[Path, ...]], _Drawn] = {}
_drawn_lock = threading.Lock()


def load_project_history(project: Project) -> scripts.LoadedHistory:
    """Return the project's history read statically: the web server never runs project code."""
    return scripts.load_project_files(project)


def _project(name: str) -> Project:
    """Return the configured project (raises GraphNotFound, ConfigError)."""
    found = current_config().projects.get(name)
    if found is None:
        raise GraphNotFound(f"There is no project named {name!r} in the config.")
    return found


def _drawn_project(name: str) -> _Drawn:
    """Return a project's drawn history (raises GraphNotFound, ConfigError, ScriptLocationError)."""
    return _drawn_for(load_project_history(_project(name)))


def _drawn_for(history: scripts.LoadedHistory) -> _Drawn:
    """Return the history's layout and lookups, computed once per loaded graph."""
    key = (history.script_location, history.version_locations)
    with _drawn_lock:
        drawn = _drawn.get(key)
    if drawn is not None and drawn.history is history:
        return drawn
    graph = history.graph
    order = svg.newest_first(graph)
    # Alembic imports every file, so a syntax error inside upgrade() stops it as surely as
    # one in the header; load_history leaves the full check to the caller for speed.
    raw = list(graph.problems) + scripts.syntax_problems(history)
    by_path = {item.path: rev for rev, item in graph.revisions.items() if item.path}
    flagged = {rev for rev, item in graph.revisions.items() if item.problems}
    for problem in raw:
        flagged.update(t for t in _TOKEN.findall(problem) if t in graph.revisions)
        flagged.update(rev for path, rev in by_path.items() if problem.startswith(f"{path}:"))
    drawn = _Drawn(
        history=history,
        layout=layout(graph, order=order),
        order=order,
        index={rev: i for i, rev in enumerate(order)},
        raw_problems=raw,
        problems=[_relative_problem(p, history) for p in raw],
        flagged=flagged,
    )
    with _drawn_lock:
        # One entry per script directory: a changed directory replaces its old drawing.
        _drawn[key] = drawn
    return drawn


def _relative_problem(problem: str, history: scripts.LoadedHistory) -> str:
    """Shorten file paths in a problem to paths inside the script location."""
    prefix = str(history.script_location) + os.sep
    return problem.replace(prefix, "")


def _relative_path(path: str, history: scripts.LoadedHistory) -> str:
    if not path:
        return ""
    try:
        return os.path.relpath(path, history.script_location).replace(os.sep, "/")
    except ValueError:
        return path
