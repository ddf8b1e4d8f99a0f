"""Resolve revision names and plan migrations on a revision graph, as Alembic does."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from dashboard.history.errors import (
    AmbiguousDowngrade,
    AmbiguousRevision,
    BrokenHistory,
    MultipleHeads,
    NotOnBranch,
    UnknownRevision,
    UnplannableStep,
)
from dashboard.history.plans import _apply_step, _build_alembic_map, _Conflict, _translate
from dashboard.history.records import Direction, Step
from dashboard.history.structure import GraphStructure

if TYPE_CHECKING:
    from alembic.script.revision import RevisionMap

_RELATIVE = re.compile(r"(?:(.+?)@)?(\w+)?((?:\+|-)\d+)")


class Graph(GraphStructure):
    """An Alembic revision graph built from parsed revisions, in Alembic's load order."""

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
        current = list(current_heads)
        if self._at_heads(current):
            return []  # a CI gate's usual answer, without importing Alembic to plan nothing
        return [step.revision for step in self.plan(current, "heads", "upgrade")]

    def _at_heads(self, current: list[str]) -> bool:
        """Say whether these are exactly the heads, which no dependency links: nothing to run."""
        return (
            not self._blocking
            and len(current) == len(set(current))
            and set(current) == self._head_set
            and self.heads == self.effective_heads
        )

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
