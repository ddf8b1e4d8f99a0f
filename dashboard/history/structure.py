"""Link parsed revisions into a graph: parents, children, ancestry, walk order, labels."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from dashboard.history.errors import UnknownRevision
from dashboard.history.order import walk_order
from dashboard.history.records import Revision

if TYPE_CHECKING:
    from alembic.script.revision import RevisionMap

# Alembic refuses these characters in revision ids (Revision.verify_rev_id).
ILLEGAL_ID_CHARS = frozenset("@-+:")


def _dedupe(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


class GraphStructure:
    """The links between parsed revisions: parents, children, ancestry, order and labels."""

    def __init__(
        self,
        revisions: Iterable[Revision],
        problems: Iterable[str] = (),
        *,
        notes: Iterable[str] = (),
    ) -> None:
        self.revisions: dict[str, Revision] = {}
        self.problems: list[str] = []
        self._blocking: list[str] = list(problems)
        self._lock = threading.Lock()
        self._alembic: RevisionMap | None = None
        self._cache: dict[str, Any] = {}

        for rev in revisions:
            previous = self.revisions.get(rev.revision)
            if previous is not None:
                # Alembic warns and keeps the file it loaded last, but the shadowed copy stays
                # among its heads: `upgrade heads` then fails on overlapping revisions.
                self._blocking.append(
                    f"revision {rev.revision} is defined twice: {previous.path} and {rev.path}"
                    f" (Alembic uses {rev.path})"
                )
            self.revisions[rev.revision] = rev
            if rev.unreadable:
                self._blocking.extend(rev.problems)  # each already names the file and line
            elif rev.problems:
                self._blocking.extend(f"{rev.path or rev.revision}: {p}" for p in rev.problems)
        self.unreadable: tuple[str, ...] = tuple(
            rid for rid, rev in self.revisions.items() if rev.unreadable
        )
        if self.unreadable:
            names = ", ".join(
                self.revisions[r].path.rsplit("/", 1)[-1] or r for r in self.unreadable
            )
            self._blocking.insert(
                0,
                f"{names} cannot be parsed: Alembic would refuse to load the whole history, so"
                " nothing can be planned until it is fixed; the graph shows a placeholder whose"
                " down_revision is unknown",
            )
        self._position = {rev: index for index, rev in enumerate(self.revisions)}

        self._label_owner: dict[str, str] = {}
        for rev in self.revisions.values():
            bad = sorted(ILLEGAL_ID_CHARS.intersection(rev.revision))
            if bad:
                self._blocking.append(
                    f"revision id {rev.revision!r} contains {', '.join(bad)}, which Alembic refuses"
                )
            for label in rev.branch_labels:
                owner = self._label_owner.get(label)
                if label in self.revisions or owner is not None:
                    self._blocking.append(
                        f"branch label {label!r} of {rev.revision} is already used by"
                        f" {owner or label}"
                    )
                else:
                    self._label_owner[label] = rev.revision

        parents: dict[str, tuple[str, ...]] = {}
        dependencies: dict[str, tuple[str, ...]] = {}
        children: dict[str, list[str]] = {rev: [] for rev in self.revisions}
        dependents: dict[str, list[str]] = {rev: [] for rev in self.revisions}
        for rev in self.revisions.values():
            rid = rev.revision
            if rid in rev.down_revisions:
                self._blocking.append(f"revision {rid} names itself as its down_revision")
            if rid in rev.depends_on:
                self._blocking.append(f"revision {rid} depends on itself")
            present = []
            for parent in rev.down_revisions:
                if parent in children and parent != rid:
                    present.append(parent)
                else:
                    if parent not in children:
                        self._blocking.append(
                            f"revision {rid} ({rev.path}) names down_revision {parent},"
                            " which does not exist"
                        )
            parents[rid] = _dedupe(present)
            for parent in parents[rid]:
                children[parent].append(rid)
            resolved = []
            for dep in rev.depends_on:
                target = dep if dep in children else self._label_owner.get(dep)
                if target is None:
                    self._blocking.append(
                        f"revision {rid} ({rev.path}) depends on {dep},"
                        " which is neither a revision nor a branch label"
                    )
                elif target != rid:
                    resolved.append(target)
                elif dep != rid:  # a direct self-dependency is reported above
                    self._blocking.append(f"revision {rid} depends on its own branch label {dep!r}")
            dependencies[rid] = tuple(resolved)
            for target in _dedupe(resolved):
                if target not in parents[rid]:
                    dependents[target].append(rid)
        self._parents = parents
        self._dependencies = dependencies
        self._children = {rev: tuple(kids) for rev, kids in children.items()}
        self._dependents = {rev: tuple(deps) for rev, deps in dependents.items()}

        # An unreadable file's parent would look like a head of its own; the ids its text
        # names stand in for the down_revision it cannot be read for.
        probable_parents = {
            p for r in self.unreadable for p in self.revisions[r].probable_parents if p != r
        }
        childless = tuple(r for r, kids in self._children.items() if not kids)
        self.heads: tuple[str, ...] = tuple(r for r in childless if r not in probable_parents)
        self._head_set = frozenset(self.heads)
        # The walk starts from every childless revision, or it would never reach those.
        self._walk_heads = tuple(r for r in childless if not self._dependents[r])
        self.effective_heads: tuple[str, ...] = tuple(
            r for r in self.heads if not self._dependents[r]
        )
        self.bases: tuple[str, ...] = tuple(
            r.revision for r in self.revisions.values() if not r.down_revisions and not r.unreadable
        )
        self._cyclic = self._find_cycles()
        if self._cyclic:
            self._blocking.append(
                "cycle detected among revisions " + ", ".join(sorted(self._cyclic))
            )
        self.problems = self._blocking + self.problems + list(notes)

    def _find_cycles(self) -> set[str]:
        """Return the revisions on or between loops of parent and dependency links."""
        waiting = {
            rev: len(self._parents[rev])
            + len(set(self._dependencies[rev]) - set(self._parents[rev]))
            for rev in self.revisions
        }
        ready = [rev for rev, count in waiting.items() if count == 0]
        while ready:
            rev = ready.pop()
            for child in self._children[rev] + self._dependents[rev]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    ready.append(child)
        stuck = {rev for rev, count in waiting.items() if count > 0}
        if not stuck:
            return stuck
        # Drop revisions that only sit downstream of a loop so the message names the loop.
        below = dict.fromkeys(stuck, 0)
        for rev in stuck:
            for child in self._children[rev] + self._dependents[rev]:
                if child in stuck:
                    below[rev] += 1
        leaves = [rev for rev, count in below.items() if count == 0]
        while leaves:
            rev = leaves.pop()
            stuck.discard(rev)
            for parent in self._upward(rev):
                if parent in below and parent in stuck:
                    below[parent] -= 1
                    if below[parent] == 0:
                        leaves.append(parent)
        return stuck

    def _upward(self, rev: str) -> tuple[str, ...]:
        return _dedupe(self._parents[rev] + self._dependencies[rev])

    def __len__(self) -> int:
        return len(self.revisions)

    def __contains__(self, rev: object) -> bool:
        return rev in self.revisions

    def _get(self, rev: str) -> Revision:
        try:
            return self.revisions[rev]
        except KeyError:
            raise UnknownRevision(f"no revision {rev!r} in this history") from None

    @property
    def blocking_problems(self) -> tuple[str, ...]:
        """Return the problems that would stop Alembic from loading this history."""
        return tuple(self._blocking)

    def parents(self, rev: str) -> tuple[str, ...]:
        """Return the down revisions of `rev` that exist, in declared order."""
        self._get(rev)
        return self._parents[rev]

    def dependencies(self, rev: str) -> tuple[str, ...]:
        """Return the revision ids `rev` depends on, branch labels resolved."""
        self._get(rev)
        return _dedupe(self._dependencies[rev])

    def children(self, rev: str) -> tuple[str, ...]:
        """Return the revisions whose down_revision names `rev`, in load order."""
        self._get(rev)
        return self._children[rev]

    def dependents(self, rev: str) -> tuple[str, ...]:
        """Return the revisions that depend on `rev` without naming it as down_revision."""
        self._get(rev)
        return self._dependents[rev]

    def is_head(self, rev: str) -> bool:
        """Return whether `rev` is among the heads: no revision names it as its down_revision."""
        return not self.children(rev) and rev in self._head_set

    def is_base(self, rev: str) -> bool:
        """Return whether `rev` has no down_revision (a placeholder's is unknown, so no)."""
        revision = self._get(rev)
        return not revision.down_revisions and not revision.unreadable

    def is_branch_point(self, rev: str) -> bool:
        """Return whether several revisions name `rev` as their down_revision."""
        return len(self.children(rev)) > 1

    def is_merge_point(self, rev: str) -> bool:
        """Return whether `rev` names several down revisions."""
        return len(self._get(rev).down_revisions) > 1

    def _closure(self, start: Iterable[str], step: Callable[[str], Iterable[str]]) -> set[str]:
        seen: set[str] = set()
        todo = list(start)
        while todo:
            rev = todo.pop()
            if rev in seen:
                continue
            seen.add(rev)
            todo.extend(step(rev))
        return seen

    def ancestors(self, rev: str, *, include_dependencies: bool = True) -> set[str]:
        """Return every revision that must be applied before `rev`, not `rev` itself."""
        self._get(rev)
        step = self._upward if include_dependencies else self._parents.__getitem__
        return self._closure(step(rev), step)

    def descendants(self, rev: str, *, include_dependencies: bool = True) -> set[str]:
        """Return every revision that needs `rev` applied first, not `rev` itself."""
        self._get(rev)

        def step(r: str) -> tuple[str, ...]:
            if include_dependencies:
                return self._children[r] + self._dependents[r]
            return self._children[r]

        return self._closure(step(rev), step)

    def _normalized_parents(self) -> dict[str, tuple[str, ...]]:
        """Return down revisions plus the dependencies no ancestor already declares."""
        # As RevisionMap._normalize_depends_on, down to building the same set the same way:
        # Alembic walks dependencies in that set's order, and topological() must match it.
        cached = self._cache.get("normalized")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        declarers: dict[str, list[str]] = {}
        for rev, deps in self._dependencies.items():
            for dep in deps:
                declarers.setdefault(dep, []).append(rev)
        result: dict[str, tuple[str, ...]] = {}
        for rev, deps in self._dependencies.items():
            if not deps:
                result[rev] = self._parents[rev]
                continue
            normalized = set(deps)
            others = {d for d in normalized if len(declarers[d]) > 1}
            if others:
                normalized.difference_update(self._declared_by_ancestors(rev, others, declarers))
            result[rev] = _dedupe(self._parents[rev] + tuple(normalized))
        self._cache["normalized"] = result
        return result

    def _declared_by_ancestors(
        self, rev: str, deps: set[str], declarers: Mapping[str, list[str]]
    ) -> set[str]:
        """Return those of `deps` that a strict ancestor of `rev` (by down_revision) declares."""
        wanted = {d: {r for r in declarers[d] if r != rev} for d in deps}
        found: set[str] = set()
        seen: set[str] = set()
        todo = list(self._parents[rev])
        while todo and len(found) < len(wanted):
            node = todo.pop()
            if node in seen:
                continue
            seen.add(node)
            for dep, owners in wanted.items():
                if node in owners:
                    found.add(dep)
            todo.extend(self._parents[node])
        return found

    def topological(self) -> list[str]:
        """Return every revision from heads to bases, in the order of Alembic's walk_revisions."""
        cached = self._cache.get("topological")
        if cached is None:
            parents = self._normalized_parents()
            if self._cyclic:
                cached = self._order_around_cycles(parents)
            else:
                cached = walk_order(set(self.revisions), self._walk_heads, self._position, parents)
            self._cache["topological"] = cached
        return list(cached)

    def _order_around_cycles(self, parents: Mapping[str, tuple[str, ...]]) -> list[str]:
        """Return children before parents where possible, looping revisions last."""
        pending = dict.fromkeys(self.revisions, 0)
        for rev in self.revisions:
            for parent in parents[rev]:
                pending[parent] += 1
        ready = [rev for rev in reversed(self.revisions) if pending[rev] == 0]
        order: list[str] = []
        while ready:
            rev = ready.pop()
            order.append(rev)
            for parent in parents[rev]:
                pending[parent] -= 1
                if pending[parent] == 0:
                    ready.append(parent)
        placed = set(order)
        return order + [rev for rev in self.revisions if rev not in placed]

    def labels_of(self, rev: str) -> tuple[str, ...]:
        """Return the branch labels of `rev`, declared and inherited, as Alembic assigns them."""
        self._get(rev)
        labels = self._inherited_labels()
        return tuple(sorted(labels.get(rev, ())))

    def _inherited_labels(self) -> dict[str, set[str]]:
        """Spread branch labels like RevisionMap._add_branches: up the branch, then down to its fork."""
        cached = self._cache.get("labels")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        labels: dict[str, set[str]] = {}
        for rev in self.revisions.values():
            if rev.branch_labels:
                labels[rev.revision] = set(rev.branch_labels)
        for owner in [r for r in self.revisions if r in labels]:
            spread = labels[owner]
            last = owner
            seen: set[str] = set()
            todo = [owner]
            while todo:
                node = todo.pop()
                if node in seen:
                    continue
                seen.add(node)
                labels.setdefault(node, set()).update(spread)
                todo.extend(self._children[node])
                last = node
            node_or_none: str | None = last
            walked: set[str] = set()  # a broken history can loop back on itself
            while node_or_none is not None and node_or_none not in walked:
                walked.add(node_or_none)
                revision = self.revisions[node_or_none]
                real_children = len(self._children[node_or_none]) + len(
                    self._dependents[node_or_none]
                )
                if real_children > 1 or len(revision.down_revisions) > 1:
                    break
                labels.setdefault(node_or_none, set()).update(spread)
                down = revision.down_revisions
                node_or_none = down[0] if down and down[0] in self.revisions else None
        self._cache["labels"] = labels
        return labels

    def to_json(self) -> dict[str, Any]:
        """Return the graph as plain data for the API."""
        return {
            "heads": list(self.heads),
            "bases": list(self.bases),
            "revisions": [
                {
                    "revision": rev.revision,
                    "down_revisions": list(rev.down_revisions),
                    "depends_on": list(rev.depends_on),
                    "branch_labels": list(rev.branch_labels),
                    "message": rev.message,
                    "create_date": rev.create_date,
                    "path": rev.path,
                    "problems": list(rev.problems),
                    "unreadable": rev.unreadable,
                }
                for rev in self.revisions.values()
            ],
            "problems": list(self.problems),
        }
