"""A module's top-level bindings in statement order, read from its tree (never run)."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

# What a name is bound to: ("expr", node), ("from", (module, name)), ("module", name) or
# ("dynamic", why only running the module gives its value).
Binding = tuple[str, Any]
_COMPOUND = (ast.If, ast.Try, ast.TryStar, ast.With, ast.For, ast.While, ast.Match)


@dataclass
class Bindings:
    """One module's top-level bindings in statement order: each name's, and its star imports."""

    values: dict[str, list[tuple[int, Binding]]] = field(default_factory=dict)
    stars: list[tuple[int, str]] = field(default_factory=list)

    def add(self, name: str, at: int, binding: Binding) -> None:
        """Note that statement `at` binds name."""
        self.values.setdefault(name, []).append((at, binding))


def bindings_of(tree: ast.Module, package: str | None) -> Bindings:
    """Return a module's top-level bindings, each with the index of the statement making it."""
    found = Bindings()
    for at, node in enumerate(tree.body):
        _bind(node, at, package, found)
    return found


def _bind(node: ast.stmt, at: int, package: str | None, found: Bindings) -> None:
    if isinstance(node, _COMPOUND):
        for child in ast.walk(node):
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                found.add(
                    child.id, at, ("dynamic", f"is assigned inside a block (line {node.lineno})")
                )
            elif isinstance(child, ast.Import | ast.ImportFrom):
                for alias in child.names:
                    bound = alias.asname or alias.name.partition(".")[0]
                    found.add(
                        bound, at, ("dynamic", f"is imported inside a block (line {node.lineno})")
                    )
        return
    if isinstance(node, ast.Assign):
        for target in node.targets:
            _assign(target, node.value, found, at, node.lineno)
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        _assign(node.target, node.value, found, at, node.lineno)
    elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
        found.add(node.target.id, at, ("dynamic", f"is changed by {ast.unparse(node)}"))
    elif isinstance(node, ast.Import):
        for alias in node.names:
            if alias.asname:
                found.add(alias.asname, at, ("module", alias.name))
            else:
                top_name = alias.name.partition(".")[0]
                found.add(top_name, at, ("module", top_name))
    elif isinstance(node, ast.ImportFrom):
        base = _absolute(node.module, node.level, package)
        for alias in node.names:
            if alias.name == "*":
                if base is not None:
                    found.stars.append((at, base))
                continue
            bound = alias.asname or alias.name
            if base is None:
                found.add(
                    bound, at, ("dynamic", f"comes from a relative import (line {node.lineno})")
                )
            else:
                found.add(bound, at, ("from", (base, alias.name)))
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        found.add(node.name, at, ("dynamic", f"is a {type(node).__name__[:-3].lower()}"))


def _assign(target: ast.expr, value: ast.expr, found: Bindings, at: int, line: int) -> None:
    if isinstance(target, ast.Name):
        found.add(target.id, at, ("expr", value))
    elif isinstance(target, ast.Tuple | ast.List):
        if isinstance(value, ast.Tuple | ast.List) and len(value.elts) == len(target.elts):
            for t, v in zip(target.elts, value.elts, strict=True):
                _assign(t, v, found, at, line)
            return
        for child in ast.walk(target):
            if isinstance(child, ast.Name):
                found.add(child.id, at, ("dynamic", f"is unpacked from a value (line {line})"))


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
