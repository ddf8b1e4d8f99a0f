"""Read a revision file's identifiers statically, without running it."""

from __future__ import annotations

import ast
import os
import re
import time
from typing import TYPE_CHECKING, Any

from dashboard.history import Revision
from dashboard.scripts.scan import RACY_NS

if TYPE_CHECKING:
    from dashboard.scripts.records import LoadedHistory

_LEGACY_ID = re.compile(r"([a-f0-9]+)\.py$")

_NAMES = ("revision", "down_revision", "branch_labels", "depends_on")
_SKIPPED = (ast.Expr, ast.Pass)
# Parsing a whole revision file costs as much as Alembic's own load when upgrade() is long
# (the parser, not Python objects, is the cost), while everything Alembic reads sits before
# the first top-level function. So the header is parsed, unless the rest names one of
# Alembic's variables again or the header does not parse on its own.
_HEADER_END = re.compile(rb"^(?:def |async def |class |@)", re.MULTILINE)
_NAMES_AGAIN = re.compile(rb"\b(?:revision|down_revision|branch_labels|depends_on)\b")
_CREATE_DATE = re.compile(r"^Create Date:[ \t]*(.*?)[ \t]*$", re.MULTILINE)
# The full compile of each file by (size, mtime_ns) it had: a page after one edit compiles one.
_compiled: dict[str, tuple[tuple[int, int], str | None]] = {}


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
        if not revision.strip():
            return f"{path}: revision is an empty string; file skipped"
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
    """Return syntax errors anywhere in the history's files, compiling each changed one in full."""
    # Slow on purpose: load_history reads only what Alembic needs to build the graph, so
    # a mistake inside upgrade() or downgrade() only shows up here or when Alembic runs.
    problems: list[str] = []
    settled = time.time_ns() - RACY_NS
    for revision in history.graph.revisions.values():
        path = revision.path
        try:
            stat = os.stat(path)
        except OSError as exc:
            problems.append(f"{path}: cannot be checked: {exc}")
            continue
        seen = (stat.st_size, stat.st_mtime_ns)
        known = _compiled.get(path)
        if known is not None and known[0] == seen:
            problem = known[1]
        else:
            problem = _compile_problem(path)
            if stat.st_mtime_ns < settled:
                _compiled[path] = (seen, problem)
        if problem:
            problems.append(problem)
    return problems


def _compile_problem(path: str) -> str | None:
    """Return the file's first syntax error (or why it cannot be read), or None."""
    try:
        with open(path, "rb") as handle:
            compile(handle.read(), path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        line = f":{exc.lineno}" if exc.lineno else ""
        return f"{path}{line}: syntax error: {exc.msg}"
    except (OSError, ValueError) as exc:
        return f"{path}: cannot be checked: {exc}"
    return None


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
