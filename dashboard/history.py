"""Hold an Alembic revision graph in memory: heads, bases, ancestry, resolution and plans."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from alembic.script.revision import RevisionMap

Direction = Literal["upgrade", "downgrade"]

# Alembic refuses these characters in revision ids (Revision.verify_rev_id).
ILLEGAL_ID_CHARS = frozenset("@-+:")
_RELATIVE = re.compile(r"(?:(.+?)@)?(\w+)?((?:\+|-)\d+)")


class HistoryError(Exception):
    """A revision history question that cannot be answered as asked."""


class UnknownRevision(HistoryError):
    """A revision, prefix or branch label names nothing in the history."""


class AmbiguousRevision(HistoryError):
    """A revision prefix matches several revisions."""


class NotOnBranch(HistoryError):
    """A revision was asked for on a branch it does not belong to."""


class MultipleHeads(HistoryError):
    """A single head was asked for where the history has several."""


class CycleDetected(HistoryError):
    """The history's parent or dependency links form a loop."""


class BrokenHistory(HistoryError):
    """The history has problems that stop Alembic from loading it, so nothing can be planned."""


class RangeNotAncestor(HistoryError):
    """The target is not reachable from the current heads in the asked direction."""


class AmbiguousDowngrade(HistoryError):
    """Alembic would have to guess which branch to downgrade; name one explicitly."""


class AmbiguousUpgrade(HistoryError):
    """Alembic would have to guess which branch to upgrade; name one explicitly."""


class OverlappingHeads(HistoryError):
    """The current heads or targets include a revision and one of its ancestors."""


class UnplannableStep(HistoryError):
    """Alembic could not plan or record a step from these heads."""


@dataclass(frozen=True)
class Revision:
    """One revision file as read from disk."""

    revision: str
    down_revisions: tuple[str, ...]
    depends_on: tuple[str, ...] = ()
    branch_labels: tuple[str, ...] = ()
    message: str = ""
    docstring: str = ""
    create_date: str | None = None
    path: str = ""
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    """One migration Alembic would run, as in its "Running upgrade A -> B, message" line."""

    revision: str
    direction: Direction
    from_revisions: tuple[str, ...]
    to_revisions: tuple[str, ...]
    message: str = ""

    def __str__(self) -> str:
        text = (
            f"{self.direction} {', '.join(self.from_revisions)} -> {', '.join(self.to_revisions)}"
        )
        return f"{text}, {self.message}" if self.message else text

    @property
    def log_line(self) -> str:
        """Return the line Alembic logs just before running this step."""
        return f"Running {self}"


def _dedupe(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


class Graph:
    """An Alembic revision graph built from parsed revisions, in Alembic's load order."""

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
                # Alembic warns and keeps the file it loaded last, in the first one's place.
                self.problems.append(
                    f"revision {rev.revision} is defined twice: {previous.path} and {rev.path}"
                    f" (Alembic uses {rev.path})"
                )
            self.revisions[rev.revision] = rev
            if rev.problems:
                self._blocking.extend(f"{rev.path or rev.revision}: {p}" for p in rev.problems)
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
            dependencies[rid] = tuple(resolved)
            for target in _dedupe(resolved):
                if target not in parents[rid]:
                    dependents[target].append(rid)
        self._parents = parents
        self._dependencies = dependencies
        self._children = {rev: tuple(kids) for rev, kids in children.items()}
        self._dependents = {rev: tuple(deps) for rev, deps in dependents.items()}

        self.heads: tuple[str, ...] = tuple(r for r, kids in self._children.items() if not kids)
        self.effective_heads: tuple[str, ...] = tuple(
            r for r in self.heads if not self._dependents[r]
        )
        self.bases: tuple[str, ...] = tuple(
            r.revision for r in self.revisions.values() if not r.down_revisions
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
        """Return whether no revision names `rev` as its down_revision."""
        return not self.children(rev)

    def is_base(self, rev: str) -> bool:
        """Return whether `rev` has no down_revision."""
        return not self._get(rev).down_revisions

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
                cached = walk_order(
                    set(self.revisions), self.effective_heads, self._position, parents
                )
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
            while node_or_none is not None:
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

    def _key_lookup(self, key: str) -> str | None:
        """Return the revision a full id or branch label names, as Alembic's map keys do."""
        if key in self.revisions:
            return key
        return self._label_owner.get(key)

    def _shares_lineage(self, rev: str, other: str) -> bool:
        if rev == other:
            return True
        return other in self.ancestors(
            rev, include_dependencies=False
        ) or other in self.descendants(rev, include_dependencies=False)

    def _resolve_branch(self, label: str) -> str:
        found = self._key_lookup(label)
        if found is not None:
            return found
        try:
            return self._lookup(label)
        except UnknownRevision:
            raise UnknownRevision(f"No such branch: {label!r}") from None

    def _lookup(self, ident: str, branch: str | None = None) -> str:
        """Return the revision `ident` names: a full id, a label or a unique id prefix."""
        branch_rev = self._resolve_branch(branch) if branch else None
        found = self._key_lookup(ident)
        if found is None:
            keys = [
                k
                for k in (*self.revisions, *self._label_owner)
                if len(k) > 3 and k.startswith(ident)
            ]
            if branch_rev is not None:
                keys = [
                    k for k in keys if self._shares_lineage(self._key_lookup(k) or k, branch_rev)
                ]
            if not keys:
                hint = (
                    "; please ensure at least four characters are present for partial"
                    " revision identifier matches"
                    if len(ident) < 4
                    else ""
                )
                raise UnknownRevision(f"No such revision or branch {ident!r}{hint}")
            if len(keys) > 1:
                shown = ", ".join(repr(k) for k in keys[:3])
                raise AmbiguousRevision(f"Multiple revisions start with {ident!r}: {shown}...")
            found = self._key_lookup(keys[0]) or keys[0]
        if branch_rev is not None and not self._shares_lineage(found, branch_rev):
            raise NotOnBranch(f"Revision {found} is not a member of branch {branch!r}")
        return found

    def _heads_on(self, label: str) -> tuple[str, ...]:
        """Return the heads that share lineage with the revision a label or id names."""
        anchor = self._lookup(label)
        return tuple(h for h in self.heads if self._shares_lineage(h, anchor))

    def resolve(self, spec: str) -> tuple[str, ...]:
        """Return the ids a full id, prefix, label, head(s), base or label@... names."""
        label: str | None = None
        ident = spec
        if "@" in spec:
            label, ident = spec.split("@", 1)
        if _RELATIVE.fullmatch(spec):
            raise UnknownRevision(f"{spec!r} is relative; plan() resolves relative targets")
        if ident == "heads":
            heads = self._heads_on(label) if label else self.effective_heads
            return tuple(self._lookup(h, label) for h in heads)
        if ident == "head":
            heads = self._heads_on(label) if label else self.heads
            if len(heads) > 1:
                argument = f"{label}@head" if label else "head"
                raise MultipleHeads(
                    f"Multiple heads are present for given argument {argument!r};"
                    f" {', '.join(heads)}"
                )
            return tuple(self._lookup(h, label) for h in heads)
        if ident == "base":
            return ()
        if not ident:
            raise UnknownRevision(f"No such revision or branch {spec!r}")
        return (self._lookup(ident, label),)

    def _alembic_map(self) -> RevisionMap:
        """Return Alembic's own RevisionMap over these revisions, built once."""
        if self._blocking:
            raise BrokenHistory(
                "nothing can be planned until these problems are fixed: "
                + "; ".join(self._blocking[:5])
            )
        with self._lock:
            if self._alembic is None:
                self._alembic = _build_alembic_map(self)
            return self._alembic

    def plan(self, current_heads: Iterable[str], target: str, direction: Direction) -> list[Step]:
        """Return the steps `alembic upgrade|downgrade target` would run, in Alembic's order."""
        current = tuple(current_heads)
        revision_map = self._alembic_map()
        if direction == "downgrade":
            self._refuse_ambiguous_downgrade(current, target)
        try:
            if direction == "upgrade":
                found = list(revision_map.iterate_revisions(target, current, implicit_base=True))
                found.reverse()
            else:
                found = list(
                    revision_map.iterate_revisions(current, target, select_for_downgrade=True)
                )
        except Exception as exc:  # noqa: BLE001 - Alembic raises assertions and key errors too
            raise _translate(exc, target, direction, current, self) from exc
        steps = [self._step(rev.revision, direction) for rev in found]
        self.heads_after(current, steps)
        return steps

    def _step(self, rev: str, direction: Direction) -> Step:
        revision = self.revisions[rev]
        down = tuple(revision.down_revisions)
        if direction == "upgrade":
            return Step(rev, direction, down, (rev,), revision.message)
        return Step(rev, direction, (rev,), down, revision.message)

    def _refuse_ambiguous_downgrade(self, current: tuple[str, ...], target: str) -> None:
        match = _RELATIVE.match(target)  # Alembic matches the start only
        if not match or len(set(current)) < 2:
            return
        label, symbol, relative = match.groups()
        if label is None and symbol is None and int(relative) < 0:
            choices = ", ".join(f"{head}@{relative}" for head in current)
            raise AmbiguousDowngrade(
                f"downgrade {target} from several heads ({', '.join(current)}) is ambiguous:"
                " Alembic would pick a branch by the order of rows in the version table."
                f" Name the branch instead, one of: {choices}"
            )

    def pending(self, current_heads: Iterable[str]) -> list[str]:
        """Return the revisions `alembic upgrade heads` would run from these heads, in order."""
        return [step.revision for step in self.plan(current_heads, "heads", "upgrade")]

    def heads_after(self, current_heads: Iterable[str], plan: Sequence[Step]) -> tuple[str, ...]:
        """Return the version table's heads after running `plan`, like Alembic's HeadMaintainer."""
        parents = self._normalized_parents()
        heads = set(current_heads)
        # The other heads rarely change from one step to the next, so neither do their ancestors.
        seen: dict[frozenset[str], set[str]] = {}

        def ancestors(revs: Iterable[str]) -> set[str]:
            key = frozenset(revs)
            found = seen.get(key)
            if found is None:
                if len(seen) > 8:
                    seen.clear()
                found = seen[key] = self._ancestor_set(key)
            return found

        for step in plan:
            try:
                _apply_step(heads, step, parents, ancestors)
            except (_Conflict, KeyError, IndexError) as exc:
                raise UnplannableStep(
                    f"Alembic cannot record {step} in the version table from heads"
                    f" {', '.join(sorted(heads)) or '(none)'}"
                ) from exc
        return tuple(sorted(heads, key=lambda r: self._position.get(r, -1)))

    def _ancestor_set(self, revs: Iterable[str]) -> set[str]:
        """Return `revs` and all their ancestors through normalized down revisions."""
        parents = self._normalized_parents()
        return self._closure(revs, lambda r: parents.get(r, ()))

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
                }
                for rev in self.revisions.values()
            ],
            "problems": list(self.problems),
        }


def walk_order(
    todo: set[str],
    heads: Iterable[str],
    position: Mapping[str, int],
    parents: Mapping[str, tuple[str, ...]],
) -> list[str]:
    """Order `todo` from heads down exactly as RevisionMap._topological_sort does."""
    return _Walk(todo, heads, position, parents).run()


class _NotClosed(Exception):
    """The set to walk has a gap, so the counter shortcut does not apply."""


_NO_TIP = 1 << 62


# Alembic walks down one branch tip at a time and, when the candidate lies under another
# tip, switches to the first such tip in its list, recomputing full ancestor sets as it goes
# (quadratic on long branched histories). Within a set closed between its heads and bases,
# "lies under another tip" is the same as "still has an unwalked child", which a counter
# answers. Which tip to switch to is the smallest slot among tips above the candidate.
# Unbranched runs are walked top-down, so the unwalked part of a run is its lower end and
# only its top can be a tip: the smallest slot is remembered per run top until a walk step
# splits or drops that slot (slots only ever move down, so the answer can only grow).
class _Walk:
    """Alembic's topological walk without its repeated ancestor sets."""

    def __init__(
        self,
        todo: set[str],
        heads: Iterable[str],
        position: Mapping[str, int],
        parents: Mapping[str, tuple[str, ...]],
    ) -> None:
        self.parents = parents
        self.remaining = set(todo)
        self.waiting = dict.fromkeys(self.remaining, 0)
        self.children: dict[str, list[str]] = {}
        up_count = dict.fromkeys(self.remaining, 0)
        for rev in self.remaining:
            for parent in parents[rev]:
                if parent in self.waiting:
                    self.waiting[parent] += 1
                    up_count[rev] += 1
                    self.children.setdefault(parent, []).append(rev)
        self._build_runs(up_count)
        self.tips = sorted({h for h in heads if h in self.remaining}, key=position.__getitem__)
        # Slots keep their number when their tip moves down, so list order is number order.
        self.slots = list(range(len(self.tips)))
        self.slot_of = dict(zip(self.tips, self.slots, strict=True))
        self.next_slot = len(self.tips)
        self.version: dict[int, int] = {}
        self.best: dict[str, tuple[int, int]] = {}

    def _build_runs(self, up_count: Mapping[str, int]) -> None:
        """Split the set into runs where each revision has exactly one child, its only parent."""
        follows: dict[str, str] = {}
        for rev, kids in self.children.items():
            if len(kids) == 1 and up_count[kids[0]] == 1:
                follows[rev] = kids[0]
        continued = set(follows.values())
        self.run_of: dict[str, tuple[int, int]] = {}
        self.runs: list[list[str]] = []
        for rev in self.remaining:
            if rev in continued:
                continue
            run = [rev]
            while run[-1] in follows:
                run.append(follows[run[-1]])
            for index, member in enumerate(run):
                self.run_of[member] = (len(self.runs), index)
            self.runs.append(run)
        self.run_top = [len(run) - 1 for run in self.runs]

    def run(self) -> list[str]:
        order: list[str] = []
        tips, slots = self.tips, self.slots
        index = 0
        while tips:
            candidate = tips[index]
            if self.waiting[candidate]:
                slot = min(
                    (self._lowest_slot(c) for c in self.children[candidate] if c in self.remaining),
                    default=_NO_TIP,
                )
                if slot == _NO_TIP:
                    raise _NotClosed(candidate)
                index = slots.index(slot)
                continue
            order.append(candidate)
            self.remaining.discard(candidate)
            run, place = self.run_of[candidate]
            self.run_top[run] = place - 1
            slot = self.slot_of.pop(candidate)
            candidate_parents = self.parents[candidate]
            for parent in candidate_parents:
                if parent in self.waiting:
                    self.waiting[parent] -= 1
            new_tips = [
                p for p in candidate_parents if p in self.remaining and p not in self.slot_of
            ]
            if not new_tips:
                del tips[index]
                del slots[index]
                index = max(index - 1, 0)
                continue
            if len(candidate_parents) != 1:
                # Some revisions under this slot now sit only under the new slots.
                self.version[slot] = self.version.get(slot, 0) + 1
            tips[index] = new_tips[0]
            self.slot_of[new_tips[0]] = slot
            for tip in new_tips[1:]:
                tips.append(tip)
                slots.append(self.next_slot)
                self.slot_of[tip] = self.next_slot
                self.next_slot += 1
        if self.remaining:
            raise _NotClosed(next(iter(self.remaining)))
        return order

    def _top(self, rev: str) -> str:
        """Return the highest unwalked revision of the run holding `rev`."""
        run, _ = self.run_of[rev]
        return self.runs[run][self.run_top[run]]

    def _lowest_slot(self, start: str) -> int:
        """Return the smallest slot number among tips at or above `start`."""
        live = set(self.slots)
        best, version, remaining, children = self.best, self.version, self.remaining, self.children

        def known(rev: str) -> bool:
            entry = best.get(rev)
            return entry is not None and (
                entry[0] == _NO_TIP or (entry[0] in live and version.get(entry[0], 0) == entry[1])
            )

        first = self._top(start)
        stack = [(first, False)]
        while stack:
            top, expanded = stack.pop()
            if not expanded:
                if known(top):
                    continue
                stack.append((top, True))
                stack.extend((self._top(c), False) for c in children.get(top, ()) if c in remaining)
                continue
            lowest = self.slot_of.get(top, _NO_TIP)
            for child in children.get(top, ()):
                if child in remaining:
                    lowest = min(lowest, best[self._top(child)][0])
            best[top] = (lowest, version.get(lowest, 0))
        return best[first][0]


class _Conflict(Exception):
    """Alembic's HeadMaintainer would fail an assertion on this step."""


def _require(condition: bool) -> None:
    if not condition:
        raise _Conflict


def _apply_step(
    heads: set[str],
    step: Step,
    parents: Mapping[str, tuple[str, ...]],
    ancestors: Callable[[Iterable[str]], set[str]],
) -> None:
    """Update `heads` as Alembic's HeadMaintainer.update_to_step does for a RevisionStep."""
    rev = step.revision
    down = parents.get(rev, ())
    if step.direction == "upgrade":
        if not down or not heads.intersection(down):
            _require(rev not in heads)
            heads.add(rev)
        elif len(down) > 1 and len(heads.intersection(down)) > 1:
            others = heads.difference(down)
            from_revs = set(down)
            if others:
                from_revs -= ancestors(others)
            ordered = list(from_revs)
            for gone in ordered[:-1]:
                heads.remove(gone)
            _require(rev not in heads)
            heads.remove(ordered[-1])
            heads.add(rev)
        else:
            _require(rev not in heads)
            heads.remove(_single_down(heads, down))
            heads.add(rev)
        return
    targets = _unmerge_targets(heads, rev, down, ancestors) if rev in heads and down else ()
    if rev in heads and (not down or not targets):
        heads.remove(rev)
    elif rev in heads and len(down) > 1:
        ordered = list(targets)
        for added in ordered[:-1]:
            _require(added not in heads)
            heads.add(added)
        _require(ordered[-1] not in heads)
        heads.remove(rev)
        heads.add(ordered[-1])
    else:
        target = _single_down(heads, down)
        _require(target not in heads)
        heads.remove(rev)
        heads.add(target)


def _single_down(heads: set[str], down: tuple[str, ...]) -> str:
    """Return the one down revision a plain step moves from or to."""
    if len(down) == 1:
        return down[0]
    present = heads.intersection(down)
    _require(len(present) == 1)
    return next(iter(present))


def _unmerge_targets(
    heads: set[str],
    rev: str,
    down: tuple[str, ...],
    ancestors: Callable[[Iterable[str]], set[str]],
) -> tuple[str, ...]:
    others = heads.difference([rev])
    if others:
        return tuple(set(down).difference(ancestors(others)))
    if len(down) == 1:
        return down  # a revision is never its own strict ancestor
    below: set[str] = set()
    for target in down:
        below.update(ancestors([target]) - {target})
    return tuple(set(down).difference(below))


def _build_alembic_map(graph: Graph) -> RevisionMap:
    """Build Alembic's RevisionMap from our revisions, with a linear-time topological sort."""
    from alembic.script.revision import Revision as AlembicRevision
    from alembic.script.revision import RevisionMap

    revisions = [
        AlembicRevision(
            rev.revision,
            rev.down_revisions or None,
            dependencies=rev.depends_on or None,
            branch_labels=rev.branch_labels,
        )
        for rev in graph.revisions.values()
    ]
    revision_map = RevisionMap(lambda: revisions)
    try:
        revision_map._revision_map  # noqa: B018 - builds the map now, under our error handling
    except Exception as exc:  # noqa: BLE001
        raise BrokenHistory(f"Alembic cannot load this history: {exc}") from exc
    position = {rev: index for index, rev in enumerate(graph.revisions)}
    parents = {rev.revision: rev._normalized_down_revisions for rev in revisions}
    original = revision_map._topological_sort

    def fast_sort(revs: Any, heads: Any) -> list[str]:
        todo = {r.revision for r in revs}
        try:
            return walk_order(todo, [h.revision for h in heads], position, parents)
        except _NotClosed:
            return original(revs, heads)

    revision_map._topological_sort = fast_sort  # type: ignore[method-assign,assignment]
    return revision_map


def _translate(
    exc: Exception, target: str, direction: Direction, current: tuple[str, ...], graph: Graph
) -> HistoryError:
    """Turn an Alembic planning error into ours, with Alembic's command-line wording."""
    from alembic.script import revision as alembic_revision

    message = str(exc) or type(exc).__name__
    if isinstance(exc, alembic_revision.RangeNotAncestorError):
        return RangeNotAncestor(
            f"Destination {target} is not a valid {direction} target from current head(s)"
            f" {', '.join(current) or '(none)'}"
        )
    if isinstance(exc, alembic_revision.MultipleHeads):
        return MultipleHeads(
            f"Multiple head revisions are present for given argument {exc.argument!r};"
            " please specify a specific target revision, '<branchname>@head' to narrow to"
            " a specific head, or 'heads' for all heads"
        )
    if isinstance(exc, alembic_revision.ResolutionError):
        if message.startswith("Multiple revisions start"):
            return AmbiguousRevision(message)
        if "is not a member of branch" in message:
            return NotOnBranch(message)
        return UnknownRevision(message)
    if isinstance(exc, alembic_revision.CycleDetected):
        return CycleDetected(message)
    if message == "Ambiguous walk":
        choices = _walk_choices(graph, current, target)
        return (AmbiguousDowngrade if direction == "downgrade" else AmbiguousUpgrade)(
            f"{direction} {target} from {', '.join(current) or 'base'} is ambiguous: the walk"
            f" passes a branch or merge point. Name an explicit target instead, one of: {choices}"
        )
    if message.startswith("Ambiguous upgrade"):
        choices = ", ".join(f"{head}@{target}" for head in current)
        return AmbiguousUpgrade(
            f"upgrade {target} from several heads is ambiguous; name the branch, one of: {choices}"
        )
    if "overlaps with other requested revisions" in message:
        return OverlappingHeads(message)
    return UnplannableStep(f"Alembic cannot plan {direction} to {target}: {message}")


def _walk_choices(graph: Graph, current: tuple[str, ...], target: str) -> str:
    """Return explicit per-branch targets to offer instead of an ambiguous relative one."""
    choices: list[str] = []
    for head in current:
        if head in graph.revisions:
            choices.extend(graph.parents(head) or ("base",))
    return ", ".join(_dedupe(choices)) or "base"
