"""Keep one loaded history per script directory; re-parse only the files that changed."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dashboard.history import Graph, Revision
from dashboard.scripts.ini import ScriptSettings, read_settings
from dashboard.scripts.parse import parse_revision_file
from dashboard.scripts.scan import _File, _scan, fingerprint_files


@dataclass(frozen=True)
class LoadedHistory:
    """A project's revision graph with the fingerprint of the files it came from."""

    graph: Graph
    fingerprint: str
    script_location: Path
    version_locations: tuple[Path, ...]
    problems: tuple[str, ...] = field(default=())


@dataclass
class _Entry:
    """The cached state of one script directory."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    settings: ScriptSettings | None = None
    files: list[_File] = field(default_factory=list)
    history: LoadedHistory | None = None
    parsed: dict[str, tuple[int, int, Revision | str]] = field(default_factory=dict)
    alembic: dict[tuple[str, str], LoadedHistory] = field(default_factory=dict)
    checked_at: float = 0.0


_entries: dict[tuple[str | None, str | None], _Entry] = {}
_entries_lock = threading.Lock()


def _read(path: str, size: int) -> bytes | str:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.read(fd, size + 1)
            if len(data) > size:  # the file grew since its stat
                parts = [data]
                while chunk := os.read(fd, 65536):
                    parts.append(chunk)
                data = b"".join(parts)
        finally:
            os.close(fd)
    except OSError as exc:
        return f"{path}: cannot be read: {exc}"
    return data


def _entry(script_location: Path | None, alembic_ini: Path | None) -> _Entry:
    key = (
        str(Path(script_location).absolute()) if script_location is not None else None,
        str(Path(alembic_ini).absolute()) if alembic_ini is not None else None,
    )
    with _entries_lock:
        entry = _entries.get(key)
        if entry is None:
            entry = _entries[key] = _Entry()
        return entry


def load_history(
    script_location: Path | None = None,
    *,
    alembic_ini: Path | None = None,
    max_age: float = 0.0,
) -> LoadedHistory:
    """Return the project's graph, re-parsing only files changed since the last look."""
    # Every call stats each file, unless a look taken less than `max_age` seconds ago is
    # trusted instead (for pages that poll).
    entry = _entry(script_location, alembic_ini)
    if max_age > 0:
        with entry.lock:
            if entry.history is not None and time.monotonic() - entry.checked_at < max_age:
                return entry.history
    settings = read_settings(script_location, alembic_ini=alembic_ini)
    with entry.lock:
        checked_at = time.monotonic()
        files, notes, scan_problems = _scan(settings)
        if entry.history is not None and entry.settings == settings and entry.files == files:
            entry.checked_at = checked_at
            return entry.history
        parsed: dict[str, tuple[int, int, Revision | str]] = {}
        revisions: list[Revision] = []
        problems = list(settings.problems) + scan_problems
        for f in files:
            known = entry.parsed.get(f.path)
            if known is not None and known[0] == f.size and known[1] == f.mtime_ns:
                result = known[2]
            else:
                data = _read(f.path, f.size)
                result = data if isinstance(data, str) else parse_revision_file(f.path, data)
            parsed[f.path] = (f.size, f.mtime_ns, result)
            if isinstance(result, str):
                problems.append(result)
            else:
                revisions.append(result)
        graph = Graph(revisions, problems, notes=notes)
        history = LoadedHistory(
            graph=graph,
            fingerprint=fingerprint_files(files),
            script_location=settings.script_location,
            version_locations=settings.version_locations,
            problems=tuple(graph.problems),
        )
        entry.settings, entry.files, entry.parsed, entry.history = settings, files, parsed, history
        entry.checked_at = checked_at
        return history


def clear_cache() -> None:
    """Forget every cached script directory."""
    with _entries_lock:
        _entries.clear()
