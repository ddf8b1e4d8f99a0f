"""List a script directory's revision files in Alembic's load order and fingerprint them."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from dashboard.scripts.ini import ScriptSettings, read_settings


class _File(NamedTuple):
    """One revision file as found by the scan, in Alembic's load order."""

    relpath: str
    path: str
    size: int
    mtime_ns: int


# What was read of a file modified this close before the read is not trusted afterwards:
# timestamps are coarse, so a change within the same tick would otherwise go unseen
# (git's "racy" rule).
RACY_NS = 2_000_000_000

# Builds the named tuple without its Python-level __new__; the scan makes thousands.
_new_file = tuple.__new__


class Scan(NamedTuple):
    """What a scan found: files in load order, notes, blocking problems, folders listed."""

    files: list[_File]
    notes: list[str]
    problems: list[str]
    # (folder, mtime_ns) of every folder listed; None when a location was missing or unlistable,
    # since then no folder's mtime would tell that the listing changed.
    folders: list[tuple[str, int]] | None


def _scan(settings: ScriptSettings) -> Scan:
    """List revision files in Alembic's load order, with the folders' mtimes as listed."""
    files: list[_File] = []
    notes: list[str] = []
    problems: list[str] = []
    folders_seen: list[tuple[str, int]] | None = []
    seen: set[str] = set()
    # The same test as Alembic's file name patterns, without a regex per file.
    skip = (".#", "__init__")
    suffixes = (".py", ".pyc", ".pyo") if settings.sourceless else (".py",)
    for location in settings.version_locations:
        if not location.is_dir():
            notes.append(f"version location {location} does not exist")
            folders_seen = None
            continue
        real = os.path.realpath(location)
        prefix = os.path.relpath(location, settings.script_location).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        before = len(files)
        stack: list[tuple[str, str, str]] = [(str(location), real + os.sep, prefix)]
        while stack:
            folder, real_folder, rel = stack.pop()
            try:
                names, folders, mtime_ns = _list_folder(folder, suffixes, skip)
            except OSError as exc:
                problems.append(f"cannot list {folder}: {exc}")
                folders_seen = None
                continue
            if folders_seen is not None:
                folders_seen.append((folder, mtime_ns))
            for name, stat, is_link in names:
                if is_link:
                    path = os.path.realpath(os.path.join(folder, name))
                    try:
                        stat = os.stat(path)
                    except OSError as exc:
                        problems.append(f"cannot read {path}: {exc}")
                        continue
                else:
                    path = real_folder + name
                if path in seen:
                    notes.append(f"{path} is loaded twice; ignored (as Alembic does)")
                    continue
                seen.add(path)
                files.append(_new_file(_File, (rel + name, path, stat.st_size, stat.st_mtime_ns)))
            if not settings.recursive:
                break
            for name in sorted(folders, reverse=True):
                if name.endswith("__pycache__"):
                    continue
                stack.append(
                    (os.path.join(folder, name), f"{real_folder}{name}{os.sep}", f"{rel}{name}/")
                )
        if len(files) == before:
            notes.append(f"no revision files in {location}")
    if settings.sourceless:
        files, compiled = _drop_compiled(files)
        problems.extend(compiled)
    return Scan(files, notes, problems, folders_seen)


def _list_folder(
    folder: str, suffixes: tuple[str, ...], skip: tuple[str, ...]
) -> tuple[list[tuple[str, os.stat_result, bool]], list[str], int]:
    """Return a folder's candidate files (sorted, with their stat), subfolders and mtime."""
    found: list[tuple[str, os.stat_result, bool]] = []
    folders: list[str] = []
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # Taken before listing: an entry added meanwhile moves the mtime past this one.
        mtime_ns = os.fstat(fd).st_mtime_ns
        # Listing by descriptor lets each stat look up one name instead of the whole path.
        with os.scandir(fd) as entries:
            for entry in entries:
                name = entry.name
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                if is_dir:
                    folders.append(name)
                elif name.endswith(suffixes) and not name.startswith(skip) and "\n" not in name:
                    try:
                        stat = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # removed while we listed it
                    found.append((name, stat, entry.is_symlink()))
    finally:
        os.close(fd)
    found.sort()
    return found, folders, mtime_ns


def _drop_compiled(files: list[_File]) -> tuple[list[_File], list[str]]:
    """Keep .py files; report compiled files Alembic would load in place of missing sources."""
    sources = {f.path for f in files if f.path.endswith(".py")}
    kept: list[_File] = []
    problems: list[str] = []
    for f in files:
        if f.path.endswith(".py"):
            kept.append(f)
        elif f.path[:-1] not in sources and not (
            f.path.endswith(".pyo") and f.path[:-1] + "c" in {g.path for g in files}
        ):
            problems.append(f"{f.path}: compiled revision without source cannot be read")
    return kept, problems


def fingerprint_files(files: Iterable[_File]) -> str:
    """Return the sha256 hex digest over sorted (relpath, size, mtime_ns)."""
    digest = hashlib.sha256()
    for relpath, size, mtime in sorted((f.relpath, f.size, f.mtime_ns) for f in files):
        digest.update(f"{relpath}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


def fingerprint(script_location: Path | None = None, *, alembic_ini: Path | None = None) -> str:
    """Return the fingerprint of a script directory's revision files as they are now."""
    return fingerprint_files(_scan(read_settings(script_location, alembic_ini=alembic_ini)).files)


def files_by_location(settings: ScriptSettings) -> list[tuple[int, str, list[_File]]]:
    """Return (index, relpath prefix, files) per version location, in Alembic's load order.

    Together the files are exactly the full scan's, so fingerprint_files over them matches
    the fingerprint the history was loaded with.
    """
    grouped: list[tuple[int, str, list[_File]]] = []
    seen: set[str] = set()
    for index, location in enumerate(settings.version_locations):
        prefix = os.path.relpath(location, settings.script_location).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        alone = dataclasses.replace(settings, version_locations=(location,))
        # A file reached again through a later location is loaded once, from the first.
        files = [f for f in _scan(alone).files if f.path not in seen]
        seen.update(f.path for f in files)
        grouped.append((index, prefix, files))
    return grouped
