"""Read constants a revision imports from the application, from its modules' literals alone."""

from __future__ import annotations

import ast
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dashboard.scripts.bindings import Binding, Bindings, bindings_of
from dashboard.scripts.scan import RACY_NS

# Folders above the script directory looked in for the application's package, and the files
# whose presence marks a project's root (the walk stops there).
MAX_LEVELS = 3
ROOT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")
# Module boundaries one value may cross: revision -> cli -> a re-export -> its source.
MAX_HOPS = 4
# The work one value may take: names looked up, modules parsed, the size of a module parsed
# and the length of a string or sequence built (an application module is input, not trusted).
MAX_STEPS = 10_000
MAX_MODULES = 64
MAX_MODULE_BYTES = 1 << 20
MAX_LENGTH = 100_000
_END = sys.maxsize  # a position after every statement: the module as it stands once run

logger = logging.getLogger(__name__)

# (path, size, mtime_ns) of a file a value was read from, or (path, -1, -1) of one looked
# for and not found: either changing means the value must be read again.
Source = tuple[str, int, int]


class Unresolved(Exception):
    """A value that cannot be read without running code; the message says which name and why."""


class _NotLiteral(Unresolved):
    """An expression of a kind that only running the module gives a value."""


class _Absent(Exception):
    """A name the scope does not bind (the caller says where else to look, or why not)."""


@dataclass(frozen=True)
class _ModuleRef:
    """A module (or namespace package) found on the search roots, by its dotted name."""

    name: str
    path: str | None  # None for a namespace package


@dataclass(frozen=True)
class _Frame:
    """Where an expression is read: a module's names as they stand before statement `at`."""

    bindings: Bindings
    module: _ModuleRef | None  # None: the revision file
    at: int
    hops: int


def search_roots(
    script_location: Path, *, alembic_ini: Path | None = None, source_root: Path | None = None
) -> tuple[Path, ...]:
    """Return the folders an application package is looked for in, first match winning."""
    roots: list[Path] = []
    if source_root is not None:
        roots.append(Path(source_root))
    if alembic_ini is not None:
        roots.append(Path(alembic_ini).absolute().parent)  # Alembic's prepend_sys_path "."
    folder = Path(script_location).absolute().parent
    for _ in range(MAX_LEVELS):
        roots.append(folder)
        if os.path.isdir(folder / "src"):  # os.path: an unreadable folder is no error here
            roots.append(folder / "src")
        if any(os.path.exists(folder / m) for m in ROOT_MARKERS) or folder.parent == folder:
            break
        folder = folder.parent
    return tuple(dict.fromkeys(roots))


# path -> ((size, mtime_ns), its bindings or why not); a module edited within RACY_NS is not kept.
_modules: dict[str, tuple[tuple[int, int], Bindings | str]] = {}
_modules_lock = threading.Lock()


class Resolver:
    """Read values a revision file builds from imported constants, noting the files read."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = tuple(str(root) for root in roots)
        self.sources: dict[str, Source] = {}
        self._parsed: set[str] = set()  # module files read for this revision file
        self._resolving: list[tuple[tuple[str, str, int], str]] = []  # (module, name, at), shown
        self._steps = 0

    def value(self, expr: ast.expr, tree: ast.Module) -> Any:
        """Return the value expr has where the revision module evaluates it; raise Unresolved."""
        # Python reads a statement's names as the statements before it left them.
        at = next((i for i, node in enumerate(tree.body) if _holds(node, expr)), _END)
        self._resolving.clear()
        self._parsed.clear()
        self._steps = 0
        try:
            return self._eval(expr, _Frame(bindings_of(tree, None), None, at, 0))
        except Unresolved:
            raise
        except RecursionError:
            raise Unresolved("its value nests too deeply to read") from None
        except Exception as exc:  # a bug here must cost one value, never the whole history
            logger.exception("reading a constant failed")
            raise Unresolved(f"reading it failed ({type(exc).__name__})") from None

    def _eval(self, expr: ast.expr, frame: _Frame) -> Any:
        self._steps += 1
        if self._steps > MAX_STEPS:
            raise Unresolved(f"reading it takes more than {MAX_STEPS} steps")
        if isinstance(expr, ast.Constant):
            return expr.value
        if isinstance(expr, ast.Tuple | ast.List | ast.Set):
            items: list[Any] = []
            for element in expr.elts:
                if isinstance(element, ast.Starred):
                    inner = self._eval(element.value, frame)
                    if not isinstance(inner, tuple | list):
                        raise Unresolved(f"{ast.unparse(element)} does not unpack a sequence")
                    items.extend(inner)
                else:
                    items.append(self._eval(element, frame))
            return tuple(items) if isinstance(expr, ast.Tuple) else items
        if isinstance(expr, ast.Name):
            return self._name(expr.id, frame)
        if isinstance(expr, ast.Attribute):
            base = self._eval(expr.value, frame)
            if not isinstance(base, _ModuleRef):
                raise Unresolved(f"{ast.unparse(expr.value)} is not a module")
            return self._attribute(base, expr.attr, frame.hops)
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            left = self._eval(expr.left, frame)
            right = self._eval(expr.right, frame)
            if isinstance(left, str) and isinstance(right, str):
                return _bounded(left + right)
            if isinstance(left, tuple) and isinstance(right, tuple):
                return _bounded(left + right)
            if isinstance(left, list) and isinstance(right, list):
                return _bounded(left + right)
            raise Unresolved(f"{ast.unparse(expr)} does not add two strings or two sequences")
        if isinstance(expr, ast.JoinedStr):
            parts = []
            for piece in expr.values:
                if isinstance(piece, ast.Constant):
                    parts.append(str(piece.value))
                    continue
                inner = None
                if (
                    isinstance(piece, ast.FormattedValue)
                    and piece.conversion == -1
                    and piece.format_spec is None
                ):
                    inner = self._eval(piece.value, frame)
                if not isinstance(inner, str):
                    raise Unresolved(f"{ast.unparse(expr)} formats more than plain strings")
                parts.append(inner)
            return _bounded("".join(parts))
        raise _NotLiteral(f"{ast.unparse(expr)} is not a literal, a name or a module's constant")

    def _name(self, name: str, frame: _Frame) -> Any:
        try:
            return self._lookup(name, frame)
        except _Absent:
            where = _shown(frame.module)
            if any(at >= frame.at for at, _ in frame.bindings.values.get(name, ())):
                raise Unresolved(f"{name} is used in {where} before it is assigned") from None
            raise Unresolved(
                f"{name} is not imported or assigned at module level in {where}"
            ) from None

    def _lookup(self, name: str, frame: _Frame) -> Any:
        """Return what name is bound to before frame.at: its latest binding or star import."""
        module = frame.module
        key = (module.path or module.name if module else "", name, frame.at)
        shown = f"{module.name}.{name}" if module else name
        for index, (seen, _) in enumerate(self._resolving):
            if seen == key:
                chain = " -> ".join(label for _, label in self._resolving[index + 1 :])
                raise Unresolved(
                    f"{name} in {_shown(module)} refers to itself through {chain} -> {shown}"
                )
        if frame.hops > MAX_HOPS:
            raise Unresolved(f"{name} is re-exported through more than {MAX_HOPS} modules")
        found = frame.bindings
        events: list[tuple[int, Binding]] = [
            (at, binding) for at, binding in found.values.get(name, ()) if at < frame.at
        ]
        events += [(at, ("star", base)) for at, base in found.stars if at < frame.at]
        self._resolving.append((key, shown))
        try:
            for at, binding in sorted(events, key=lambda event: event[0], reverse=True):
                if binding[0] != "star":
                    inner = _Frame(found, module, at, frame.hops)
                    return self._binding(binding, name, inner)
                starred = self._module(binding[1])
                if starred is not None and starred.path is not None:
                    try:
                        return self._member(starred, name, frame.hops + 1)
                    except _Absent:
                        continue
            raise _Absent(name)
        finally:
            self._resolving.pop()

    def _member(self, module: _ModuleRef, name: str, hops: int) -> Any:
        """Return a name as the module binds it once run; raise _Absent if it binds none."""
        return self._lookup(name, _Frame(self._bindings(module), module, _END, hops))

    def _binding(self, binding: Binding, name: str, frame: _Frame) -> Any:
        kind, detail = binding
        module = frame.module
        where = _shown(module)
        if kind == "dynamic":
            raise Unresolved(f"{name} {detail} in {where}; its value depends on running it")
        if kind == "module":
            found = self._module(detail)
            if found is None:
                raise self._missing(detail)
            return found
        if kind == "from":
            base, attr = detail
            if module is not None and base == module.name:
                # `from . import cli` in a package's __init__: its submodule, not a loop.
                sub = self._module(f"{base}.{attr}")
                if sub is not None:
                    return sub
            found = self._module(base)
            if found is None:
                raise self._missing(base)
            return self._attribute(found, attr, frame.hops)
        # A literal assigned in this module: read it here, with the names bound before it.
        try:
            return self._eval(detail, frame)
        except _NotLiteral:
            if module is None:
                raise
            raise Unresolved(
                f"{name} in {where} is {ast.unparse(detail)}, which is not a literal"
            ) from None

    def _attribute(self, module: _ModuleRef, attr: str, hops: int) -> Any:
        """Return module.attr: a name the module binds, else its submodule (as Python does)."""
        if module.path is not None:
            try:
                return self._member(module, attr, hops + 1)
            except _Absent:
                pass
        sub = self._module(f"{module.name}.{attr}")
        if sub is not None:
            return sub
        raise Unresolved(f"{_shown(module)} defines no {attr} at module level")

    def _missing(self, name: str) -> Unresolved:
        where = f" in {', '.join(self.roots)}" if self.roots else ""
        return Unresolved(
            f"module {name} is not found{where} (set the project's source_root to the"
            " folder that holds it)"
        )

    def _module(self, name: str) -> _ModuleRef | None:
        """Find a module by dotted name on the roots: a .py file, a package or a namespace."""
        parts = name.split(".")
        if not all(part.isidentifier() for part in parts):
            return None
        namespace = False
        for root in self.roots:
            base = os.path.join(root, *parts)
            # As Python's path finder: a package before a module, a namespace only if neither.
            for candidate in (os.path.join(base, "__init__.py"), base + ".py"):
                if self._exists(candidate):
                    return _ModuleRef(name, candidate)
            namespace = namespace or os.path.isdir(base)
        return _ModuleRef(name, None) if namespace else None

    def _exists(self, path: str) -> bool:
        try:
            stat = os.stat(path)
        except OSError:
            self.sources.setdefault(path, (path, -1, -1))
            return False
        self.sources[path] = (path, stat.st_size, stat.st_mtime_ns)
        return True

    def _bindings(self, module: _ModuleRef) -> Bindings:
        path = module.path
        if path is None:
            return Bindings()  # a namespace package binds nothing but its submodules
        source = self.sources.get(path)
        stamp = (source[1], source[2]) if source else (-1, -1)
        if path not in self._parsed:
            if len(self._parsed) >= MAX_MODULES:
                raise Unresolved(f"reading it takes more than {MAX_MODULES} modules")
            self._parsed.add(path)
        if stamp[0] > MAX_MODULE_BYTES:
            raise Unresolved(f"{_shown(module)} is larger than {MAX_MODULE_BYTES} bytes")
        with _modules_lock:
            known = _modules.get(path)
        if known is not None and known[0] == stamp:
            result = known[1]
        else:
            result = _read_module(module.name, path)
            if 0 <= stamp[1] < time.time_ns() - RACY_NS:
                with _modules_lock:
                    _modules[path] = (stamp, result)
        if isinstance(result, str):
            raise Unresolved(result)
        return result


def _read_module(name: str, path: str) -> Bindings | str:
    """Parse one application module (never run it) into its bindings, or say why not."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_MODULE_BYTES + 1)
        if len(data) > MAX_MODULE_BYTES:
            return f"{path} is larger than {MAX_MODULE_BYTES} bytes"
        tree = ast.parse(data, filename=path)
    except SyntaxError as exc:
        return f"{path}:{exc.lineno}: syntax error: {exc.msg}"
    except (OSError, ValueError) as exc:
        return f"{path} cannot be read: {exc}"
    except (RecursionError, MemoryError):
        return f"{path} nests too deeply to read"
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    return bindings_of(tree, package or None)


def _holds(node: ast.AST, expr: ast.expr) -> bool:
    return any(child is expr for child in ast.walk(node))


def _bounded(value: Any) -> Any:
    """Return a built string or sequence, unless it is longer than any identifier needs."""
    if len(value) > MAX_LENGTH:
        raise Unresolved(f"its value grows past {MAX_LENGTH} characters or items")
    return value


def _shown(module: _ModuleRef | None) -> str:
    if module is None:
        return "the revision file"
    return f"{module.name} ({module.path})" if module.path else module.name


def forget_modules() -> None:
    """Forget every application module's parse, so the next read parses them again."""
    with _modules_lock:
        _modules.clear()


def still_true(sources: Iterable[Source]) -> bool:
    """Tell whether every file a value was read from (or looked for) is as it was."""
    for path, size, mtime_ns in sources:
        try:
            stat = os.stat(path)
        except OSError:
            if size != -1:
                return False
            continue
        if size == -1 or (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
            return False
    return True
