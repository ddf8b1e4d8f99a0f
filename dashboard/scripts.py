"""Read an Alembic script directory into a history.Graph without running its files."""

from __future__ import annotations

import ast
import configparser
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from dashboard.history import Graph, Revision

_LEGACY_ID = re.compile(r"([a-f0-9]+)\.py$")
_SEPARATORS = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}
_LEGACY_SPLIT = re.compile(r", *|(?: +)")

_NAMES = ("revision", "down_revision", "branch_labels", "depends_on")
_SKIPPED = (ast.Expr, ast.Pass)
# Parsing a whole revision file costs as much as Alembic's own load when upgrade() is long
# (the parser, not Python objects, is the cost), while everything Alembic reads sits before
# the first top-level function. So the header is parsed, unless the rest names one of
# Alembic's variables again or the header does not parse on its own.
_HEADER_END = re.compile(rb"^(?:def |async def |class |@)", re.MULTILINE)
_NAMES_AGAIN = re.compile(rb"\b(?:revision|down_revision|branch_labels|depends_on)\b")
_CREATE_DATE = re.compile(r"^Create Date:[ \t]*(.*?)[ \t]*$", re.MULTILINE)

ALEMBIC_TIMEOUT = 120.0


class ScriptLocationError(Exception):
    """The script directory or its alembic.ini cannot be read at all."""


@dataclass(frozen=True)
class ScriptSettings:
    """Where a project's revision files live, read from alembic.ini like Alembic does."""

    script_location: Path
    version_locations: tuple[Path, ...]
    recursive: bool = False
    sourceless: bool = False
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadedHistory:
    """A project's revision graph with the fingerprint of the files it came from."""

    graph: Graph
    fingerprint: str
    script_location: Path
    version_locations: tuple[Path, ...]
    problems: tuple[str, ...] = field(default=())


class _File(NamedTuple):
    """One revision file as found by the scan, in Alembic's load order."""

    relpath: str
    path: str
    size: int
    mtime_ns: int


# Builds the named tuple without its Python-level __new__; the scan makes thousands.
_new_file = tuple.__new__


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


def read_settings(
    script_location: Path | None = None, *, alembic_ini: Path | None = None
) -> ScriptSettings:
    """Return where revision files live, from alembic.ini's [alembic] section if given."""
    # Relative paths in the ini are taken from its folder; Alembic takes them from the
    # working directory, which is that folder when it is run the usual way.
    problems: list[str] = []
    options: dict[str, str] = {}
    base = Path.cwd()
    if alembic_ini is not None:
        ini = Path(alembic_ini).absolute()
        base = ini.parent
        parser = configparser.ConfigParser({"here": base.as_posix()})
        try:
            with ini.open(encoding="utf-8") as handle:
                parser.read_file(handle)
        except (OSError, configparser.Error, UnicodeDecodeError) as exc:
            raise ScriptLocationError(f"cannot read {ini}: {exc}") from exc
        if parser.has_section("alembic"):
            try:
                options = {key: parser.get("alembic", key) for key in parser.options("alembic")}
            except configparser.Error as exc:
                raise ScriptLocationError(f"cannot read {ini}: {exc}") from exc
        else:
            problems.append(f"{ini} has no [alembic] section")
    if script_location is None:
        if "script_location" not in options:
            raise ScriptLocationError("no script_location given and none in alembic.ini")
        script = _location(options["script_location"], base, problems)
    else:
        script = Path(script_location).absolute()
    if not script.is_dir():
        raise ScriptLocationError(f"script location {script} is not a directory")

    version_locations = _version_locations(options, base, problems)
    if version_locations is None:
        locations: tuple[Path, ...] = ((script / "versions").absolute(),)
    else:
        locations = tuple(_location(v, base, problems) for v in version_locations if v)
    return ScriptSettings(
        script_location=script,
        version_locations=locations,
        recursive=options.get("recursive_version_locations") == "true",
        sourceless=options.get("sourceless") == "true",
        problems=tuple(problems),
    )


def _location(value: str, base: Path, problems: list[str]) -> Path:
    if not os.path.isabs(value) and ":" in value:
        problems.append(
            f"location {value!r} is a package resource; only folders can be read without"
            " importing the package"
        )
    return (base / value).absolute()


def _version_locations(
    options: dict[str, str], base: Path, problems: list[str]
) -> list[str] | None:
    """Split version_locations the way Config.get_version_locations_list does."""
    raw = options.get("version_locations")
    if not raw:
        return None
    for name in ("path_separator", "version_path_separator"):
        if name in options:
            separator = _SEPARATORS.get(options[name])
            if separator is None:
                problems.append(
                    f"{options[name]!r} is not a valid value for {name}; expected"
                    " 'space', 'newline', 'os', ':', ';'"
                )
                return [raw.strip()]
            return [part.strip() for part in raw.split(separator) if part]
    return _LEGACY_SPLIT.split(raw)


def _scan(settings: ScriptSettings) -> tuple[list[_File], list[str], list[str]]:
    """List revision files in Alembic's load order; return files, notes and blocking problems."""
    files: list[_File] = []
    notes: list[str] = []
    problems: list[str] = []
    seen: set[str] = set()
    # The same test as Alembic's file name patterns, without a regex per file.
    skip = (".#", "__init__")
    suffixes = (".py", ".pyc", ".pyo") if settings.sourceless else (".py",)
    for location in settings.version_locations:
        if not location.is_dir():
            notes.append(f"version location {location} does not exist")
            continue
        real = os.path.realpath(location)
        prefix = os.path.relpath(location, settings.script_location).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        before = len(files)
        stack: list[tuple[str, str, str]] = [(str(location), real + os.sep, prefix)]
        while stack:
            folder, real_folder, rel = stack.pop()
            try:
                names, folders = _list_folder(folder, suffixes, skip)
            except OSError as exc:
                problems.append(f"cannot list {folder}: {exc}")
                continue
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
    return files, notes, problems


def _list_folder(
    folder: str, suffixes: tuple[str, ...], skip: tuple[str, ...]
) -> tuple[list[tuple[str, os.stat_result, bool]], list[str]]:
    """Return a folder's candidate files (sorted, with their stat) and its subfolders."""
    found: list[tuple[str, os.stat_result, bool]] = []
    folders: list[str] = []
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
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
    return found, folders


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
    files, _, _ = _scan(read_settings(script_location, alembic_ini=alembic_ini))
    return fingerprint_files(files)


def parse_revision_file(path: str, data: bytes) -> Revision | str:
    """Read one revision file's identifiers statically; return a Revision or a problem."""
    tree = _parse(path, data)
    if isinstance(tree, str):
        return tree
    values: dict[str, ast.expr] = {}
    problems: list[str] = []
    for node in tree.body:
        # The common `name = value` and `name: type = value` shapes, without the general walk.
        if type(node) is ast.Assign and len(node.targets) == 1:
            target = node.targets[0]
            if type(target) is ast.Name:
                if target.id in _NAMES:
                    values[target.id] = node.value
                continue
        elif type(node) is ast.AnnAssign and type(node.target) is ast.Name:
            if node.value is not None and node.target.id in _NAMES:
                values[node.target.id] = node.value
            continue
        elif type(node) in _SKIPPED:
            continue
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name.partition(".")[0]) in _NAMES:
                    problems.append(_bound_elsewhere(alias.asname or alias.name, node))
            continue
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name in _NAMES:
                problems.append(_bound_elsewhere(node.name, node))
            continue
        _collect(node, values, problems, top=True)
    docstring = (ast.get_docstring(tree, clean=False) or "").strip()
    filename = os.path.basename(path)

    if "revision" in values:
        revision = _literal(values["revision"])
        if not isinstance(revision, str):
            shown = ast.unparse(values["revision"])
            kind = "a string" if revision is not _NOT_LITERAL else "a literal"
            return f"{path}: revision is not {kind}: {shown}"
    else:
        legacy = _LEGACY_ID.match(filename)
        if not legacy:
            return f"{path}: no revision id (no module-level `revision = ...`); file skipped"
        revision = legacy.group(1)

    if "down_revision" in values:
        down_revisions = _ids(values["down_revision"], "down_revision", problems)
    else:
        problems.append("down_revision is not set")
        down_revisions = ()
    created = _CREATE_DATE.search(docstring)
    return Revision(
        revision=revision,
        down_revisions=down_revisions,
        depends_on=_ids(values.get("depends_on"), "depends_on", problems),
        branch_labels=_ids(values.get("branch_labels"), "branch_labels", problems),
        message=docstring.split("\n\n", 1)[0],
        docstring=docstring,
        create_date=created.group(1) if created else None,
        path=path,
        problems=tuple(problems),
    )


def _parse(path: str, data: bytes) -> ast.Module | str:
    cut = _HEADER_END.search(data)
    if cut is not None and not _NAMES_AGAIN.search(data, cut.start()):
        try:
            return ast.parse(data[: cut.start()], filename=path)
        except (SyntaxError, ValueError):
            pass  # e.g. the cut fell inside a string; the whole file decides
    try:
        return ast.parse(data, filename=path)
    except SyntaxError as exc:
        return f"{path}:{exc.lineno}: syntax error: {exc.msg}"
    except ValueError as exc:
        return f"{path}: cannot be parsed: {exc}"


def syntax_problems(history: LoadedHistory) -> list[str]:
    """Return syntax errors anywhere in the history's files, compiling each one in full."""
    # Slow on purpose: load_history reads only what Alembic needs to build the graph, so
    # a mistake inside upgrade() or downgrade() only shows up here or when Alembic runs.
    problems: list[str] = []
    for revision in history.graph.revisions.values():
        try:
            with open(revision.path, "rb") as handle:
                compile(handle.read(), revision.path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            problems.append(f"{revision.path}:{exc.lineno}: syntax error: {exc.msg}")
        except (OSError, ValueError) as exc:
            problems.append(f"{revision.path}: cannot be checked: {exc}")
    return problems


def _collect(node: ast.stmt, values: dict[str, ast.expr], problems: list[str], top: bool) -> None:
    """Record module-level assignments to Alembic's names; flag ones made conditionally."""
    pairs: list[tuple[ast.expr, ast.expr | None]] = []
    if isinstance(node, ast.Assign):
        pairs = [(target, node.value) for target in node.targets]
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        pairs = [(node.target, node.value)]
    elif isinstance(node, ast.AugAssign):
        pairs = [(node.target, None)]
    elif isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While | ast.TryStar):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                _collect(child, values, problems, top=False)
            elif isinstance(child, ast.ExceptHandler):
                for stmt in child.body:
                    _collect(stmt, values, problems, top=False)
        return
    for target, value in pairs:
        for name, expr in _unpack(target, value):
            if name not in _NAMES:
                continue
            if not top:
                problems.append(
                    f"{name} is assigned inside a block (line {node.lineno}); its value"
                    " depends on running the file"
                )
            values[name] = expr if expr is not None else target


def _bound_elsewhere(name: str, node: ast.stmt) -> str:
    return (
        f"{name} is bound by {type(node).__name__} (line {node.lineno}); its value depends on"
        " running the file"
    )


def _unpack(target: ast.expr, value: ast.expr | None) -> list[tuple[str, ast.expr | None]]:
    if isinstance(target, ast.Name):
        return [(target.id, value)]
    if isinstance(target, ast.Tuple | ast.List):
        if isinstance(value, ast.Tuple | ast.List) and len(value.elts) == len(target.elts):
            return [
                pair for t, v in zip(target.elts, value.elts, strict=True) for pair in _unpack(t, v)
            ]
        return [pair for t in target.elts for pair in _unpack(t, None)]
    return []


class _NotLiteral:
    pass


_NOT_LITERAL: Any = _NotLiteral()


def _literal(node: ast.expr) -> Any:
    if type(node) is ast.Constant:
        return node.value
    if type(node) is ast.Tuple and all(type(e) is ast.Constant for e in node.elts):
        return tuple(e.value for e in node.elts)  # type: ignore[attr-defined]
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL


def _ids(node: ast.expr | None, name: str, problems: list[str]) -> tuple[str, ...]:
    """Return a None/str/sequence value as Alembic's util.to_tuple would, or flag it."""
    if node is None:
        return ()
    value = _literal(node)
    if value is _NOT_LITERAL:
        problems.append(f"{name} is not a literal: {ast.unparse(node)}")
        return ()
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, tuple | list | set | frozenset) and all(isinstance(v, str) for v in value):
        return tuple(value)
    problems.append(f"{name} must be None, a string or a sequence of strings: {ast.unparse(node)}")
    return ()


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


_ALEMBIC_LOADER = r"""
import json, sys
from pathlib import Path
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.script.base import Script

ini, location, out = sys.argv[1:4]
config = Config(ini) if ini else Config()
if location:
    config.set_main_option("script_location", location.replace("%", "%%"))
scripts = ScriptDirectory.from_config(config)

def ids(value):
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]

revisions, problems = [], []
def record(script):
    module = script.module
    revisions.append({
        "revision": str(script.revision),
        "down_revisions": ids(module.down_revision),
        "depends_on": ids(getattr(module, "depends_on", None)),
        "branch_labels": ids(getattr(module, "branch_labels", None)),
        "docstring": module.__doc__ if isinstance(module.__doc__, str) else "",
        "path": str(script.path),
    })

try:
    locations = [Path(v) for v in scripts._version_locations if Path(v).exists()]
    listing = Script._list_py_dir
    load = Script._from_path
except AttributeError:
    for script in scripts._load_revisions():
        record(script)
else:
    seen = set()
    for folder in locations:
        for path in listing(scripts, folder):
            real = Path(path).resolve()
            if real in seen:
                continue
            seen.add(real)
            try:
                script = load(scripts, real)
                if script is not None:
                    record(script)
            except BaseException as exc:
                problems.append(f"{real}: {type(exc).__name__}: {exc}")
with open(out, "w", encoding="utf-8") as handle:
    json.dump({"revisions": revisions, "problems": problems}, handle)
"""


def load_history_with_alembic(
    script_location: Path | None = None,
    *,
    alembic_ini: Path | None = None,
    python: str = sys.executable,
    timeout: float = ALEMBIC_TIMEOUT,
) -> LoadedHistory:
    """Return the graph as Alembic's own loader sees it, from a subprocess of `python`."""
    # For projects whose identifiers are not literals. The revision files are executed, so
    # this belongs in the worker, never in a web request.
    settings = read_settings(script_location, alembic_ini=alembic_ini)
    entry = _entry(script_location, alembic_ini)
    with entry.lock:
        files, notes, scan_problems = _scan(settings)
        stamp = fingerprint_files(files)
        cached = entry.alembic.get((python, stamp))
        if cached is not None:
            return cached
        ini = str(Path(alembic_ini).absolute()) if alembic_ini else ""
        location = "" if alembic_ini and script_location is None else str(settings.script_location)
        revisions: list[Revision] = []
        problems = list(settings.problems)
        ran = False
        with tempfile.TemporaryDirectory(prefix="alembic-history-") as tmp:
            out = os.path.join(tmp, "history.json")
            cwd = (
                str(Path(alembic_ini).absolute().parent)
                if alembic_ini
                else str(settings.script_location.parent)
            )
            try:
                done = subprocess.run(
                    [python, "-c", _ALEMBIC_LOADER, ini, location, out],
                    cwd=cwd,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                problems.append(f"Alembic's loader did not run: {exc}")
                done = None
            if done is not None and done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                problems.append(f"Alembic's loader failed: {tail[0]}")
            elif done is not None:
                with open(out, encoding="utf-8") as handle:
                    answer = json.load(handle)
                problems.extend(answer["problems"])
                revisions = [_from_alembic(item) for item in answer["revisions"]]
                ran = True
        graph = Graph(revisions, problems, notes=notes + scan_problems)
        history = LoadedHistory(
            graph=graph,
            fingerprint=stamp,
            script_location=settings.script_location,
            version_locations=settings.version_locations,
            problems=tuple(graph.problems),
        )
        if ran:
            entry.alembic[(python, stamp)] = history
        return history


def _from_alembic(item: dict[str, Any]) -> Revision:
    docstring = (item.get("docstring") or "").strip()
    created = _CREATE_DATE.search(docstring)
    return Revision(
        revision=item["revision"],
        down_revisions=tuple(item["down_revisions"]),
        depends_on=tuple(item["depends_on"]),
        branch_labels=tuple(item["branch_labels"]),
        message=re.split("\n\n", docstring)[0],
        docstring=docstring,
        create_date=created.group(1) if created else None,
        path=item["path"],
    )
