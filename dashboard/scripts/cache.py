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
from dashboard.scripts.scan import Scan, _File, _scan, fingerprint_files

# A scan is trusted for the stat-only check only if nothing it saw was modified this close to
# it: timestamps are coarse, so a change within the same tick would otherwise go unseen
# (git's "racy" rule).
RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class _Stamps:
    """The folders' and files' stats of a full scan, to tell by stat alone that none changed."""

    folders: tuple[tuple[str, int], ...]
    # Per directory, (name, size, mtime_ns) of its revision files.
    files: tuple[tuple[str, tuple[tuple[str, int, int], ...]], ...]

    def still_true(self) -> bool:
        """Tell whether no folder's listing and no file changed since these were taken."""
        # A folder's mtime moves when an entry is added, removed or renamed in it; a file's
        # size or mtime when it is written. This skips the listing and parsing a scan does.
        try:
            for folder, mtime_ns in self.folders:
                if os.stat(folder).st_mtime_ns != mtime_ns:
                    return False
            for folder, entries in self.files:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    for name, size, mtime_ns in entries:
                        stat = os.stat(name, dir_fd=fd)
                        if stat.st_size != size or stat.st_mtime_ns != mtime_ns:
                            return False
                finally:
                    os.close(fd)
        except OSError:
            return False
        return True


def _stamps(scan: Scan, started_ns: int) -> _Stamps | None:
    """Return the stamps of a scan begun at started_ns, or None if it cannot be trusted."""
    if scan.folders is None:
        return None
    newest = max([m for _, m in scan.folders] + [f.mtime_ns for f in scan.files])
    if newest > started_ns - RACY_NS:
        return None
    by_folder: dict[str, list[tuple[str, int, int]]] = {}
    for f in scan.files:
        folder, name = os.path.split(f.path)
        by_folder.setdefault(folder, []).append((name, f.size, f.mtime_ns))
    return _Stamps(
        folders=tuple(scan.folders),
        files=tuple((folder, tuple(entries)) for folder, entries in by_folder.items()),
    )


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
    stamps: _Stamps | None = None
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
        previous = entry.history if entry.settings == settings else None
        if previous is not None and entry.stamps is not None and entry.stamps.still_true():
            entry.checked_at = checked_at
            return previous
        started_ns = time.time_ns()
        scan = _scan(settings)
        files, notes, scan_problems = scan.files, scan.notes, scan.problems
        if previous is not None and entry.files == files:
            entry.stamps = _stamps(scan, started_ns)
            entry.checked_at = checked_at
            return previous
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
        entry.stamps = _stamps(scan, started_ns)
        entry.checked_at = checked_at
        return history


def clear_cache() -> None:
    """Forget every cached script directory."""
    with _entries_lock:
        _entries.clear()
