"""Read a revision file's identifiers statically, without running it."""

from __future__ import annotations

import ast
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dashboard.history import Revision
from dashboard.scripts.constants import Resolver, Unresolved
from dashboard.scripts.placeholders import placeholder
from dashboard.scripts.scan import RACY_NS

if TYPE_CHECKING:
    from dashboard.scripts.records import LoadedHistory

_LEGACY_ID = re.compile(r"([a-f0-9]+)\.py$")

# The module-level literal by which a revision sets its own run's limits, e.g.
# dashboard_limits = {"lock_timeout": "10min", "statement_timeout": "2h"}; read like the
# identifiers, never by running the file.
LIMITS_NAME = "dashboard_limits"
LIMIT_KEYS = ("lock_timeout", "statement_timeout")
MAX_LIMIT = 7 * 24 * 3600.0  # a week, as the config's longest limit
# A duration as PostgreSQL and the dashboard's config write one: "500ms", "5s", "10min", "2h".
_DURATION = re.compile(r"\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|min|h)\s*\Z")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0}

_NAMES = ("revision", "down_revision", "branch_labels", "depends_on", LIMITS_NAME)
_SKIPPED = (ast.Expr, ast.Pass)
# Parsing a whole revision file costs as much as Alembic's own load when upgrade() is long
# (the parser, not Python objects, is the cost), while everything Alembic reads sits before
# the first top-level function. So the header is parsed, unless the rest names one of the
# variables read here again, may run outside a transaction (autocommit_block, CONCURRENTLY, COMMIT),
# or the header does not parse on its own.
_HEADER_END = re.compile(rb"^(?:def |async def |class |@)", re.MULTILINE)
_NAMES_AGAIN = re.compile(
    rb"\b(?:revision|down_revision|branch_labels|depends_on|dashboard_limits)\b"
)
# Looked for with bytes.find: a regex alternation over a long upgrade() costs several times more.
# From the file's start, since a module-level constant can hold the SQL; "**" for keyword
# arguments passed as a dict, which may carry postgresql_concurrently.
_OUTSIDE_HINTS = (b"autocommit_block", b"oncurrently", b"ONCURRENTLY", b"**")
# A COMMIT (or END) in op.execute ends Alembic's transaction early; its words are too common
# (and too many cases) for find, so the regex only runs over files that execute anything.
_EXECUTE_HINT = b"exec"
_ENDS_HINT = re.compile(rb"\b(?:commit|end)\b", re.IGNORECASE)
_EXECUTE_CALLS = ("execute", "exec_driver_sql")
_ENDS_SQL = re.compile(
    r"\s*(?P<what>COMMIT|END)(?:\s+(?:WORK|TRANSACTION))?(?:\s+AND\s+(?:NO\s+)?CHAIN)?\s*",
    re.IGNORECASE,
)
_CONCURRENTLY_WORD = re.compile(r"\bCONCURRENTLY\b", re.IGNORECASE)
# SQL that PostgreSQL refuses inside a transaction block, as written in op.execute("...").
_CONCURRENT_SQL = re.compile(
    r"\b(?P<what>CREATE\s+(?:UNIQUE\s+)?INDEX|DROP\s+INDEX"
    r"|REINDEX\s+(?:\([^)]*\)\s*)?(?:INDEX|TABLE|SCHEMA|DATABASE|SYSTEM)"
    r"|(?P<detach>DETACH\s+PARTITION)\s+\S+)\s+CONCURRENTLY\b",
    re.IGNORECASE,
)
_INDEX_CALLS = {"create_index": "CREATE INDEX", "Index": "CREATE INDEX", "drop_index": "DROP INDEX"}
_CREATE_DATE = re.compile(r"^Create Date:[ \t]*(.*?)[ \t]*$", re.MULTILINE)
# The full compile of each file by (size, mtime_ns) it had: a page after one edit compiles one.
_compiled: dict[str, tuple[tuple[int, int], str | None]] = {}


def parse_revision_file(
    path: str, data: bytes, *, resolver: Resolver | None = None
) -> Revision | str:
    """Read one revision file's identifiers statically; return a Revision or a problem."""
    parsed = _parse(path, data)
    if isinstance(parsed, str):
        return parsed
    return _from_tree(path, *parsed, resolver or Resolver(()))


def read_revision_file(path: str, data: bytes, resolver: Resolver) -> Revision | str:
    """Read a revision file as load_history does: one that does not parse becomes a placeholder."""
    parsed = _parse(path, data)
    if isinstance(parsed, str):
        return placeholder(path, data, parsed)
    return _from_tree(path, *parsed, resolver)


def _from_tree(path: str, tree: ast.Module, walk: bool, resolver: Resolver) -> Revision | str:
    values, problems = _module_values(tree)
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

    read = _Reader(tree, resolver, problems)
    if "down_revision" in values:
        down_revisions = read.ids(values["down_revision"], "down_revision")
    else:
        problems.append("down_revision is not set")
        down_revisions = ()
    created = _CREATE_DATE.search(docstring)
    limits = _limits(values[LIMITS_NAME], problems) if LIMITS_NAME in values else ()
    upgrade, downgrade = _outside_transaction(tree) if walk else ((), ())
    return Revision(
        revision=revision,
        down_revisions=down_revisions,
        depends_on=read.ids(values.get("depends_on"), "depends_on"),
        branch_labels=read.ids(values.get("branch_labels"), "branch_labels"),
        message=docstring.split("\n\n", 1)[0],
        docstring=docstring,
        create_date=created.group(1) if created else None,
        path=path,
        problems=tuple(problems),
        upgrade_outside_transaction=upgrade,
        downgrade_outside_transaction=downgrade,
        limits=limits,
    )


@dataclass(frozen=True)
class Marks:
    """What a revision file says about how it runs, whatever its ids; see parse_revision_file."""

    upgrade_outside_transaction: tuple[str, ...]
    downgrade_outside_transaction: tuple[str, ...]
    limits: tuple[tuple[str, str], ...]
    problems: tuple[str, ...]  # of its dashboard_limits only


def read_marks(path: str, data: bytes) -> Marks | str:
    """Read how a revision file runs (for Alembic's loader, which reads none); or a syntax problem."""
    parsed = _parse(path, data)
    if isinstance(parsed, str):
        return parsed
    tree, walk = parsed
    values, found = _module_values(tree)
    problems = [p for p in found if p.startswith(LIMITS_NAME)]
    limits = _limits(values[LIMITS_NAME], problems) if LIMITS_NAME in values else ()
    upgrade, downgrade = _outside_transaction(tree) if walk else ((), ())
    return Marks(upgrade, downgrade, limits, tuple(problems))


def _module_values(tree: ast.Module) -> tuple[dict[str, ast.expr], list[str]]:
    """Return the module-level values of the names read here, and the problems binding them."""
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
    return values, problems


def _parse(path: str, data: bytes) -> tuple[ast.Module, bool] | str:
    """Return the file's tree and whether its functions may run outside a transaction."""
    cut = _HEADER_END.search(data)
    # Functions only follow the cut: without one, no function can run anything.
    outside = cut is not None and (
        any(data.find(hint) >= 0 for hint in _OUTSIDE_HINTS)
        or (data.find(_EXECUTE_HINT, cut.start()) >= 0 and _ENDS_HINT.search(data) is not None)
    )
    if cut is not None and not outside and not _NAMES_AGAIN.search(data, cut.start()):
        try:
            return ast.parse(data[: cut.start()], filename=path), False
        except (SyntaxError, ValueError):
            pass  # e.g. the cut fell inside a string; the whole file decides
    try:
        return ast.parse(data, filename=path), outside
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
        if revision.unreadable:
            continue  # its syntax error is the graph's own problem already
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


@dataclass
class _Reader:
    """Read identifier values of one file, through constants the application defines."""

    tree: ast.Module
    resolver: Resolver
    problems: list[str]

    def ids(self, node: ast.expr | None, name: str) -> tuple[str, ...]:
        """Return a None/str/sequence value as Alembic's util.to_tuple would, or flag it."""
        if node is None:
            return ()
        value = _literal(node)
        if value is _NOT_LITERAL:
            try:
                value = self.resolver.value(node, self.tree)
            except Unresolved as why:
                self.problems.append(f"{name} is not a literal: {ast.unparse(node)}; {why}")
                return ()
        return _as_ids(value, node, name, self.problems)


def _as_ids(value: Any, node: ast.expr, name: str, problems: list[str]) -> tuple[str, ...]:
    """Return a None/str/sequence value as Alembic's util.to_tuple would, or flag it."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, tuple | list | set | frozenset) and all(isinstance(v, str) for v in value):
        return tuple(value)
    problems.append(f"{name} must be None, a string or a sequence of strings: {ast.unparse(node)}")
    return ()


def limit_seconds(duration: str) -> float:
    """Return a limit's duration ("500ms", "5s", "10min", "2h") in seconds; ValueError if none."""
    match = _DURATION.match(duration)
    if match is None:
        raise ValueError(f"not a duration: {duration!r}")
    return float(match["number"]) * _DURATION_UNITS[match["unit"]]


def _limits(node: ast.expr, problems: list[str]) -> tuple[tuple[str, str], ...]:
    """Return dashboard_limits as sorted (name, duration) pairs, flagging what is not one."""
    value = _literal(node)
    if value is _NOT_LITERAL:
        problems.append(f"{LIMITS_NAME} is not a literal: {ast.unparse(node)}")
        return ()
    if not isinstance(value, dict):
        problems.append(
            f'{LIMITS_NAME} must be a dict such as {{"lock_timeout": "10min"}}: {ast.unparse(node)}'
        )
        return ()
    limits: dict[str, str] = {}
    for key, duration in value.items():
        if key not in LIMIT_KEYS:
            problems.append(
                f"{LIMITS_NAME} has an unknown key {key!r}: it takes {' and '.join(LIMIT_KEYS)}"
            )
            continue
        try:
            seconds = limit_seconds(duration) if isinstance(duration, str) else None
        except ValueError:
            seconds = None
        if seconds is None:
            problems.append(
                f'{LIMITS_NAME}["{key}"] must be a duration such as "10min" or "2h"'
                f" (ms, s, min or h), not {duration!r}"
            )
        elif not 0.001 <= seconds <= MAX_LIMIT:
            problems.append(f'{LIMITS_NAME}["{key}"] must be at least 1ms and at most 168h')
        else:
            limits[key] = duration.strip()
    return tuple(sorted(limits.items()))


_Functions = dict[str, ast.FunctionDef | ast.AsyncFunctionDef]


def _outside_transaction(tree: ast.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Return what upgrade() and downgrade() run outside a transaction, through what they call."""
    functions: _Functions = {}
    constants: dict[str, ast.expr] = {}  # module-level names an op.execute() may pass as its SQL
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    constants[target.id] = node.value
    scanned: dict[str, tuple[list[tuple[int, str]], set[str]]] = {}

    def reached(name: str) -> tuple[str, ...]:
        found: set[tuple[int, str]] = set()
        todo, seen = [name], set()
        while todo:
            current = todo.pop()
            if current in seen or current not in functions:
                continue
            seen.add(current)
            if current not in scanned:
                scanned[current] = _scan_function(functions[current], constants)
            items, calls = scanned[current]
            found.update(items)
            todo.extend(calls)
        return tuple(dict.fromkeys(text for _, text in sorted(found)))

    return reached("upgrade"), reached("downgrade")


def _scan_function(
    function: ast.FunctionDef | ast.AsyncFunctionDef, constants: dict[str, ast.expr]
) -> tuple[list[tuple[int, str]], set[str]]:
    """Return one function's steps outside a transaction (line, why) and the names it calls."""
    items: list[tuple[int, str]] = []
    calls: set[str] = set()
    docstrings: set[int] = set()
    for node in ast.walk(function):  # breadth first: a function comes before its docstring
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
        elif isinstance(node, ast.Attribute) and node.attr == "autocommit_block":
            # Called directly or through an alias (block = ctx.autocommit_block; with block():).
            items.append((node.lineno, f"autocommit_block at line {node.lineno}"))
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):
                calls.add(node.func.id)
            why = _concurrently(node)
            if why:
                items.append((node.lineno, why))
            items.extend(_executed(node, constants))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docstrings:
                continue
            if node.value == "autocommit_block":  # getattr(context, "autocommit_block")
                items.append((node.lineno, f"autocommit_block at line {node.lineno}"))
            elif match := _CONCURRENT_SQL.search(node.value):
                items.append(
                    (node.lineno, f"{_what(match)} CONCURRENTLY in SQL at line {node.lineno}")
                )
    return items, calls


def _what(match: re.Match[str]) -> str:
    return "DETACH PARTITION" if match["detach"] else " ".join(match["what"].split()).upper()


def _executed(call: ast.Call, constants: dict[str, ast.expr]) -> list[tuple[int, str]]:
    """Return what the SQL an execute() call passes ends or runs outside the transaction."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if name not in _EXECUTE_CALLS:
        return []
    # Its string constants in order, with module-level names it passes read as their values.
    texts: list[tuple[str, bool]] = []  # (text, whether the function's own walk reads it)
    todo: list[tuple[ast.AST, bool]] = [(arg, True) for arg in [*call.args, *call.keywords]]
    resolved: set[str] = set()
    while todo:
        expr, own = todo.pop(0)
        for node in ast.walk(expr):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                texts.append((node.value, own))
            elif isinstance(node, ast.Name) and node.id in constants and node.id not in resolved:
                resolved.add(node.id)
                todo.append((constants[node.id], False))
    if not texts:
        return []
    line, callee = call.lineno, ast.unparse(func)
    items: list[tuple[int, str]] = []
    joined = "".join(text for text, _ in texts)
    for text in dict.fromkeys([joined, *(text for text, _ in texts)]):
        ends = _ends_transaction(text)
        if ends:
            why = f"{ends} in {callee} at line {line}: what ran before it stays applied"
            items.append((line, why))
            break
    if any(own and _CONCURRENT_SQL.search(text) for text, own in texts):
        return items  # the walk over the function reports it at the constant's line
    match = next(
        filter(None, (_CONCURRENT_SQL.search(t) for t in [joined, *(t for t, _ in texts)])), None
    )
    if match:
        items.append((line, f"{_what(match)} CONCURRENTLY in SQL at line {line}"))
    elif any(_CONCURRENTLY_WORD.search(text) for text, _ in texts):
        items.append((line, f"CONCURRENTLY in SQL at line {line}"))
    return items


def _ends_transaction(sql: str) -> str:
    """Return the COMMIT or END that one of sql's statements is, or ""."""
    # Inside a dollar-quoted body (DO $$ BEGIN ... END; $$) a bare END closes a block, not a
    # transaction, so such SQL is only read as a whole.
    statements = [sql.strip().rstrip(";")] if "$" in sql else sql.split(";")
    for statement in statements:
        match = _ENDS_SQL.fullmatch(statement)
        if match:
            return match["what"].upper()
    return ""


def _concurrently(call: ast.Call) -> str:
    """Say how a call passing postgresql_concurrently runs CONCURRENTLY, or return ""."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    what = _INDEX_CALLS.get(name, "")
    flag: ast.expr | None = None
    unread = False  # keyword arguments passed as **something this cannot read
    for keyword in call.keywords:
        if keyword.arg == "postgresql_concurrently":
            flag = keyword.value
        elif keyword.arg is None:
            given = keyword.value
            if not isinstance(given, ast.Dict):
                unread = True
                continue
            for key, value in zip(given.keys, given.values, strict=True):
                if key is None:  # {**other}
                    unread = True
                elif isinstance(key, ast.Constant) and key.value == "postgresql_concurrently":
                    flag = value
                elif not isinstance(key, ast.Constant):
                    unread = True
    line = call.lineno
    if flag is None:
        if unread and what:
            return f"{what} maybe CONCURRENTLY (keyword arguments not read) at line {line}"
        return ""
    unique = next((k.value for k in call.keywords if k.arg == "unique"), None)
    if what == "CREATE INDEX" and isinstance(unique, ast.Constant) and unique.value is True:
        what = "CREATE UNIQUE INDEX"
    if isinstance(flag, ast.Constant):
        if flag.value is not True:
            return ""
        if what:
            return f"{what} CONCURRENTLY (postgresql_concurrently=True) at line {line}"
        return f"postgresql_concurrently=True in {name or 'a call'}() at line {line}"
    shown = ast.unparse(flag)
    return f"{what or name or 'a call'} CONCURRENTLY if {shown} (postgresql_concurrently={shown}) at line {line}"
