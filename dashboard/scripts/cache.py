"""Keep one loaded history per script directory; re-parse only the files that changed."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dashboard.history import Graph, Revision
from dashboard.scripts import constants
from dashboard.scripts.constants import Resolver, Source
from dashboard.scripts.ini import ScriptSettings, read_settings
from dashboard.scripts.parse import read_revision_file
from dashboard.scripts.placeholders import placeholder
from dashboard.scripts.records import LoadedHistory
from dashboard.scripts.scan import RACY_NS, Scan, _File, _scan, fingerprint_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Stamps:
    """The folders' and files' stats of a full scan, to tell by stat alone that none changed."""

    folders: tuple[tuple[str, int], ...]
    # Per directory, (name, size, mtime_ns) of its revision files.
    files: tuple[tuple[str, tuple[tuple[str, int, int], ...]], ...]
    # The application modules (or their absence) that constants were read from.
    sources: tuple[Source, ...] = ()

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
        return constants.still_true(self.sources)


def _stamps(scan: Scan, started_ns: int, sources: tuple[Source, ...]) -> _Stamps | None:
    """Return the stamps of a scan begun at started_ns, or None if it cannot be trusted."""
    if scan.folders is None:
        return None
    newest = max(
        [m for _, m in scan.folders]
        + [f.mtime_ns for f in scan.files]
        + [mtime for _, _, mtime in sources]
    )
    if newest > started_ns - RACY_NS:
        return None
    by_folder: dict[str, list[tuple[str, int, int]]] = {}
    for f in scan.files:
        folder, name = os.path.split(f.path)
        by_folder.setdefault(folder, []).append((name, f.size, f.mtime_ns))
    return _Stamps(
        folders=tuple(scan.folders),
        files=tuple((folder, tuple(entries)) for folder, entries in by_folder.items()),
        sources=sources,
    )


@dataclass(frozen=True)
class _Parsed:
    """One file's parse (a Revision, or the problem that kept it out) and the stat it was of."""

    size: int
    mtime_ns: int
    parsed_at_ns: int
    result: Revision | str
    sha256: str | None  # of the bytes parsed; None when the file could not be read
    sources: tuple[Source, ...] = ()  # application modules its constants were read from

    def holds_for(self, f: _File, checked: dict[Source, bool]) -> bool:
        """Tell whether this parse still describes the file as the scan found it."""
        # A file modified within RACY_NS of its parse may have changed again in the same tick.
        if not (
            self.size == f.size
            and self.mtime_ns == f.mtime_ns
            and f.mtime_ns < self.parsed_at_ns - RACY_NS
        ):
            return False
        for source in self.sources:
            held = checked.get(source)
            if held is None:
                held = checked[source] = source[2] < self.parsed_at_ns - RACY_NS and (
                    constants.still_true((source,))
                )
            if not held:
                return False
        return True


@dataclass
class _Entry:
    """The cached state of one script directory."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    settings: ScriptSettings | None = None
    files: list[_File] = field(default_factory=list)
    stamps: _Stamps | None = None
    history: LoadedHistory | None = None
    parsed: dict[str, _Parsed] = field(default_factory=dict)
    alembic: dict[tuple[str, str], LoadedHistory] = field(default_factory=dict)
    source_root: Path | None = None


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


def _key(script_location: Path | None, alembic_ini: Path | None) -> tuple[str | None, str | None]:
    return (
        str(Path(script_location).absolute()) if script_location is not None else None,
        str(Path(alembic_ini).absolute()) if alembic_ini is not None else None,
    )


def _entry(script_location: Path | None, alembic_ini: Path | None) -> _Entry:
    key = _key(script_location, alembic_ini)
    with _entries_lock:
        entry = _entries.get(key)
        if entry is None:
            entry = _entries[key] = _Entry()
        return entry


class ProjectFiles(Protocol):
    """Where a configured project's files are: what a static read of its history needs."""

    @property
    def script_location(self) -> Path | None: ...
    @property
    def alembic_ini(self) -> Path | None: ...
    @property
    def source_root(self) -> Path | None: ...


def load_project_files(project: ProjectFiles) -> LoadedHistory:
    """Return a configured project's history, read statically as load_history reads it."""
    return load_history(
        project.script_location, alembic_ini=project.alembic_ini, source_root=project.source_root
    )


def load_history(
    script_location: Path | None = None,
    *,
    alembic_ini: Path | None = None,
    source_root: Path | None = None,
) -> LoadedHistory:
    """Return the project's graph, re-parsing only files changed since the last look.

    Constants a revision imports from the application are read from source_root and the
    folders above the script directory (see constants.search_roots), never by running them.
    """
    entry = _entry(script_location, alembic_ini)
    settings = read_settings(script_location, alembic_ini=alembic_ini)
    with entry.lock:
        same = entry.settings == settings and entry.source_root == source_root
        previous = entry.history if same else None
        if previous is not None and entry.stamps is not None and entry.stamps.still_true():
            return previous
        started_ns = time.time_ns()
        scan = _scan(settings)
        files = scan.files
        roots = constants.search_roots(
            settings.script_location, alembic_ini=alembic_ini, source_root=source_root
        )
        known_parses = entry.parsed if same else {}
        parsed: dict[str, _Parsed] = {}
        checked: dict[Source, bool] = {}
        for f in files:
            known = known_parses.get(f.path)
            if known is not None and known.holds_for(f, checked):
                parsed[f.path] = known
            else:
                data = _read(f.path, f.size)
                if isinstance(data, str):
                    parsed[f.path] = _Parsed(f.size, f.mtime_ns, started_ns, data, None)
                else:
                    resolver = Resolver(roots)
                    result = _read_revision(f.path, data, resolver)
                    sha = hashlib.sha256(data).hexdigest()
                    sources = tuple(sorted(resolver.sources.values()))
                    parsed[f.path] = _Parsed(f.size, f.mtime_ns, started_ns, result, sha, sources)
        # A re-parse that found the same bytes (a racy file read again) keeps the history.
        unchanged = all(
            (old := known_parses.get(path)) is not None
            and (
                new is old
                or (
                    new.result == old.result
                    and new.sha256 == old.sha256
                    and new.sources == old.sources
                )
            )
            for path, new in parsed.items()
        )
        history = previous
        if history is None or not unchanged or entry.files != files:
            history = _history(settings, scan, [parsed[f.path] for f in files])
        entry.settings, entry.files, entry.parsed, entry.history = settings, files, parsed, history
        entry.source_root = source_root
        entry.stamps = _stamps(scan, started_ns, _sources(parsed.values()))
        return history


def _read_revision(path: str, data: bytes, resolver: Resolver) -> Revision | str:
    """Read one revision file; one the reader fails on stands as a placeholder, never a 500."""
    try:
        return read_revision_file(path, data, resolver)
    except RecursionError:
        return placeholder(path, data, f"{path}: its header nests too deeply to read")
    except Exception as exc:  # one file's header must not take the whole history down
        logger.exception("reading %s failed", path)
        return placeholder(path, data, f"{path}: its header cannot be read ({type(exc).__name__})")


def _sources(parses: Iterable[_Parsed]) -> tuple[Source, ...]:
    """Return every application module the parses read constants from, once each."""
    return tuple(sorted({source for parse in parses for source in parse.sources}))


def _fingerprint(files: list[_File], sources: tuple[Source, ...]) -> str:
    """Return the revision files' fingerprint, folding in the application modules read."""
    digest = fingerprint_files(files)
    if not sources:
        return digest  # as scan.fingerprint computes it without parsing
    extra = hashlib.sha256(digest.encode())
    for path, size, mtime_ns in sources:
        extra.update(f"{path}\0{size}\0{mtime_ns}\n".encode())
    return extra.hexdigest()


def _history(settings: ScriptSettings, scan: Scan, files: list[_Parsed]) -> LoadedHistory:
    """Build the graph from parsed files (a string is a file's problem) and fingerprint it."""
    results = [f.result for f in files]
    problems = list(settings.problems) + scan.problems
    problems += [result for result in results if isinstance(result, str)]
    revisions = [result for result in results if not isinstance(result, str)]
    graph = Graph(revisions, problems, notes=scan.notes)
    sources = _sources(files)
    return LoadedHistory(
        graph=graph,
        fingerprint=_fingerprint(scan.files, sources),
        script_location=settings.script_location,
        version_locations=settings.version_locations,
        problems=tuple(graph.problems),
        file_hashes={
            f.path: parse.sha256 for f, parse in zip(scan.files, files, strict=True) if parse.sha256
        },
        constant_sources=tuple(path for path, size, _ in sources if size >= 0),
    )


def forget(script_location: Path | None = None, *, alembic_ini: Path | None = None) -> None:
    """Forget what is cached of one script directory, so the next load reads every file."""
    key = _key(script_location, alembic_ini)
    with _entries_lock:
        _entries.pop(key, None)
    constants.forget_modules()  # an edit that kept size and mtime is read again too


def clear_cache() -> None:
    """Forget every cached script directory."""
    with _entries_lock:
        _entries.clear()
    constants.forget_modules()
