"""Read constants a revision imports from the application, from its modules' literals alone."""

from __future__ import annotations

import ast
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dashboard.scripts.scan import RACY_NS

# Folders above the script directory looked in for the application's package, and the files
# whose presence marks a project's root (the walk stops there).
MAX_LEVELS = 3
ROOT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")
# Module boundaries one value may cross: revision -> cli -> a re-export -> its source.
MAX_HOPS = 4
_COMPOUND = (ast.If, ast.Try, ast.TryStar, ast.With, ast.For, ast.While, ast.Match)

# (path, size, mtime_ns) of a file a value was read from, or (path, -1, -1) of one looked
# for and not found: either changing means the value must be read again.
Source = tuple[str, int, int]


class Unresolved(Exception):
    """A value that cannot be read without running code; the message says which name and why."""


class _NotLiteral(Unresolved):
    """An expression of a kind that only running the module gives a value."""


@dataclass(frozen=True)
class _ModuleRef:
    """A module (or namespace package) found on the search roots, by its dotted name."""

    name: str
    path: str | None  # None for a namespace package


@dataclass
class _Bindings:
    """One module's top-level names: what binds each, and the star imports that may add more."""

    values: dict[str, tuple[str, Any]] = field(default_factory=dict)
    stars: list[str] = field(default_factory=list)


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
        if (folder / "src").is_dir():
            roots.append(folder / "src")
        if any((folder / marker).exists() for marker in ROOT_MARKERS) or folder.parent == folder:
            break
        folder = folder.parent
    return tuple(dict.fromkeys(roots))


def bindings_of(tree: ast.Module, package: str | None) -> _Bindings:
    """Return a module's top-level bindings, as they stand once the module has run."""
    found = _Bindings()
    for node in tree.body:
        _bind(node, package, found, top=True)
    return found


def _bind(node: ast.stmt, package: str | None, found: _Bindings, *, top: bool) -> None:
    values = found.values
    if isinstance(node, _COMPOUND):
        for child in ast.walk(node):
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                values[child.id] = ("dynamic", f"is assigned inside a block (line {node.lineno})")
            elif isinstance(child, ast.Import | ast.ImportFrom):
                for alias in child.names:
                    bound = alias.asname or alias.name.partition(".")[0]
                    values[bound] = ("dynamic", f"is imported inside a block (line {node.lineno})")
        return
    if isinstance(node, ast.Assign):
        for target in node.targets:
            _assign(target, node.value, values, node.lineno)
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        _assign(node.target, node.value, values, node.lineno)
    elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
        values[node.target.id] = ("dynamic", f"is changed by {ast.unparse(node)}")
    elif isinstance(node, ast.Import):
        for alias in node.names:
            if alias.asname:
                values[alias.asname] = ("module", alias.name)
            else:
                top_name = alias.name.partition(".")[0]
                values[top_name] = ("module", top_name)
    elif isinstance(node, ast.ImportFrom):
        base = _absolute(node.module, node.level, package)
        for alias in node.names:
            if alias.name == "*":
                if base is not None:
                    found.stars.append(base)
                continue
            bound = alias.asname or alias.name
            if base is None:
                values[bound] = ("dynamic", f"comes from a relative import (line {node.lineno})")
            else:
                values[bound] = ("from", (base, alias.name))
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        values[node.name] = ("dynamic", f"is a {type(node).__name__[:-3].lower()}")


def _assign(
    target: ast.expr, value: ast.expr, values: dict[str, tuple[str, Any]], line: int
) -> None:
    if isinstance(target, ast.Name):
        values[target.id] = ("expr", value)
    elif isinstance(target, ast.Tuple | ast.List):
        if isinstance(value, ast.Tuple | ast.List) and len(value.elts) == len(target.elts):
            for t, v in zip(target.elts, value.elts, strict=True):
                _assign(t, v, values, line)
            return
        for child in ast.walk(target):
            if isinstance(child, ast.Name):
                values[child.id] = ("dynamic", f"is unpacked from a value (line {line})")


def _absolute(module: str | None, level: int, package: str | None) -> str | None:
    """Return a from-import's absolute module name, or None if relative to no package."""
    if level == 0:
        return module
    if package is None:
        return None
    parts = package.split(".")
    if level - 1 >= len(parts):
        return None
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{module}" if module else base


# path -> ((size, mtime_ns), its bindings or why not); a module edited within RACY_NS is not kept.
_modules: dict[str, tuple[tuple[int, int], _Bindings | str]] = {}
_modules_lock = threading.Lock()


class Resolver:
    """Read values a revision file builds from imported constants, noting the files read."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = tuple(str(root) for root in roots)
        self.sources: dict[str, Source] = {}

    def value(self, expr: ast.expr, tree: ast.Module) -> Any:
        """Return the value expr has at the end of the revision module's run; raise Unresolved."""
        return self._eval(expr, bindings_of(tree, None), "the revision file", 0)

    def _eval(self, expr: ast.expr, scope: _Bindings, where: str, hops: int) -> Any:
        if isinstance(expr, ast.Constant):
            return expr.value
        if isinstance(expr, ast.Tuple | ast.List | ast.Set):
            items: list[Any] = []
            for element in expr.elts:
                if isinstance(element, ast.Starred):
                    inner = self._eval(element.value, scope, where, hops)
                    if not isinstance(inner, tuple | list):
                        raise Unresolved(f"{ast.unparse(element)} does not unpack a sequence")
                    items.extend(inner)
                else:
                    items.append(self._eval(element, scope, where, hops))
            return tuple(items) if isinstance(expr, ast.Tuple) else items
        if isinstance(expr, ast.Name):
            return self._name(expr.id, scope, where, hops)
        if isinstance(expr, ast.Attribute):
            base = self._eval(expr.value, scope, where, hops)
            if not isinstance(base, _ModuleRef):
                raise Unresolved(f"{ast.unparse(expr.value)} is not a module")
            return self._attribute(base, expr.attr, hops)
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            left = self._eval(expr.left, scope, where, hops)
            right = self._eval(expr.right, scope, where, hops)
            if isinstance(left, str) and isinstance(right, str):
                return left + right
            if isinstance(left, tuple) and isinstance(right, tuple):
                return left + right
            if isinstance(left, list) and isinstance(right, list):
                return left + right
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
                    inner = self._eval(piece.value, scope, where, hops)
                if not isinstance(inner, str):
                    raise Unresolved(f"{ast.unparse(expr)} formats more than plain strings")
                parts.append(inner)
            return "".join(parts)
        raise _NotLiteral(f"{ast.unparse(expr)} is not a literal, a name or a module's constant")

    def _name(self, name: str, scope: _Bindings, where: str, hops: int) -> Any:
        binding = scope.values.get(name)
        if binding is None:
            for star in scope.stars:
                module = self._module(star)
                if module is not None:
                    found = self._bindings(module)
                    if name in found.values:
                        return self._binding(found.values[name], name, found, module, hops + 1)
            raise Unresolved(f"{name} is not imported or assigned at module level in {where}")
        return self._binding(binding, name, scope, None, hops, where)

    def _binding(
        self,
        binding: tuple[str, Any],
        name: str,
        scope: _Bindings,
        module: _ModuleRef | None,
        hops: int,
        where: str | None = None,
    ) -> Any:
        kind, detail = binding
        where = where or _shown(module)
        if hops > MAX_HOPS:
            raise Unresolved(f"{name} is re-exported through more than {MAX_HOPS} modules")
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
            return self._attribute(found, attr, hops)
        # A literal assigned in this module: read it here, where its own names are bound.
        try:
            return self._eval(detail, scope, where, hops)
        except _NotLiteral:
            if module is None:
                raise
            raise Unresolved(
                f"{name} in {where} is {ast.unparse(detail)}, which is not a literal"
            ) from None

    def _attribute(self, module: _ModuleRef, attr: str, hops: int) -> Any:
        """Return module.attr: a name the module binds, else its submodule (as Python does)."""
        if module.path is not None:
            found = self._bindings(module)
            if attr in found.values:
                return self._binding(found.values[attr], attr, found, module, hops + 1)
        sub = self._module(f"{module.name}.{attr}")
        if sub is not None:
            return sub
        if module.path is not None:
            found = self._bindings(module)
            for star in found.stars:
                starred = self._module(star)
                if starred is not None and attr in self._bindings(starred).values:
                    return self._attribute(starred, attr, hops + 1)
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

    def _bindings(self, module: _ModuleRef) -> _Bindings:
        path = module.path
        if path is None:
            return _Bindings()  # a namespace package binds nothing but its submodules
        source = self.sources.get(path)
        stamp = (source[1], source[2]) if source else (-1, -1)
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


def _read_module(name: str, path: str) -> _Bindings | str:
    """Parse one application module (never run it) into its bindings, or say why not."""
    try:
        with open(path, "rb") as handle:
            tree = ast.parse(handle.read(), filename=path)
    except SyntaxError as exc:
        return f"{path}:{exc.lineno}: syntax error: {exc.msg}"
    except (OSError, ValueError) as exc:
        return f"{path} cannot be read: {exc}"
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    return bindings_of(tree, package or None)


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
