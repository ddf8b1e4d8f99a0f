"""Plan through Alembic's RevisionMap: build it, translate its errors, replay its heads."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

from dashboard.history.errors import (
    AmbiguousDowngrade,
    AmbiguousRevision,
    AmbiguousUpgrade,
    BrokenHistory,
    CycleDetected,
    HistoryError,
    MultipleHeads,
    NotOnBranch,
    OverlappingHeads,
    RangeNotAncestor,
    UnknownRevision,
    UnplannableStep,
)
from dashboard.history.order import _NotClosed, walk_order
from dashboard.history.records import Direction, Step
from dashboard.history.structure import _dedupe

if TYPE_CHECKING:
    from alembic.script.revision import RevisionMap

    from dashboard.history.structure import GraphStructure as Graph


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


@cache
def _walking_map_class() -> type[RevisionMap]:
    """Return Alembic's RevisionMap, telling where each branch of an ambiguous walk ends."""
    from alembic.script.revision import RevisionError, RevisionMap

    class AmbiguousWalk(RevisionError):
        """Alembic's "Ambiguous walk", able to tell the revisions each way of walking reaches."""

        def __init__(self, find_ends: Callable[[], tuple[list[str], dict[str, int]]]) -> None:
            super().__init__("Ambiguous walk")
            self._find_ends = find_ends
            self._found: tuple[list[str], dict[str, int]] | None = None

        def _computed(self) -> tuple[list[str], dict[str, int]]:
            # Only an upgrade's message asks, so a downgrade never pays for the walk.
            if self._found is None:
                self._found = self._find_ends()
            return self._found

        @property
        def ends(self) -> list[str]:
            """Return the explicit targets that run exactly as many revisions as asked."""
            return self._computed()[0]

        @property
        def misfits(self) -> dict[str, int]:
            """Return the other revisions the walk reaches, with how many revisions each runs."""
            return self._computed()[1]

    class WalkingRevisionMap(RevisionMap):
        def _walk(
            self,
            start: Any,
            steps: int,
            branch_label: str | None = None,
            no_overwalk: bool = True,
        ) -> Any:
            try:
                return super()._walk(start, steps, branch_label, no_overwalk)
            except RevisionError as exc:
                if type(exc) is not RevisionError or str(exc) != "Ambiguous walk":
                    raise
                raise AmbiguousWalk(
                    lambda: self._fitting_ends(start, steps, branch_label, no_overwalk)
                ) from None

        def _fitting_ends(
            self, start: Any, steps: int, branch_label: str | None, no_overwalk: bool
        ) -> tuple[list[str], dict[str, int]]:
            """Split the walk's ends into those an upgrade reaches in `steps` and the rest."""
            ends = self._walk_ends(start, steps, branch_label, no_overwalk)
            if steps <= 0:
                return ends, {}
            node = self.get_revision(start) if isinstance(start, str) else start
            lower = (node.revision,) if node is not None else ()
            fitting: list[str] = []
            misfits: dict[str, int] = {}
            for end in ends:
                # Walking up a merge counts one way in; upgrading to it runs every way.
                runs = len(list(self.iterate_revisions(end, lower, implicit_base=True)))
                if runs == steps:
                    fitting.append(end)
                else:
                    misfits[end] = runs
            return fitting, misfits

        def _walk_ends(
            self, start: Any, steps: int, branch_label: str | None, no_overwalk: bool
        ) -> list[str]:
            """Walk every branch as _walk walks one; return where those of full length end."""
            frontier: list[Any] = [self.get_revision(start) if isinstance(start, str) else start]
            for _ in range(abs(steps)):
                reached: dict[Any, Any] = {}
                for node in frontier:
                    children: Any
                    if steps > 0:
                        up = self.get_revisions(self.bases if node is None else node.nextrev)
                        children = self.filter_for_lineage(up, branch_label) if branch_label else up
                    elif node == "base":
                        children = ()
                    else:
                        down = self.heads if node is None else node.down_revision
                        children = self.get_revisions(down) or ("base",)
                    # A branch too short for the walk is no choice; Alembic would refuse it.
                    for child in children or (() if no_overwalk else (node,)):
                        # Ways that meet again walk on as one, or every merge doubles the walk.
                        reached.setdefault(getattr(child, "revision", child), child)
                frontier = list(reached.values())
            names = (n if isinstance(n, str) else n.revision for n in frontier if n is not None)
            return list(dict.fromkeys(names))

    return WalkingRevisionMap


def _build_alembic_map(graph: Graph) -> RevisionMap:
    """Build Alembic's RevisionMap from our revisions, with a linear-time topological sort."""
    from alembic.script.revision import Revision as AlembicRevision

    map_class = _walking_map_class()
    revisions = [
        AlembicRevision(
            rev.revision,
            rev.down_revisions or None,
            dependencies=rev.depends_on or None,
            branch_labels=rev.branch_labels,
        )
        for rev in graph.revisions.values()
    ]
    revision_map = map_class(lambda: revisions)
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
        ambiguous = (
            f"{direction} {target} from {', '.join(current) or 'base'} is ambiguous: the walk"
            " passes a branch or merge point."
        )
        if direction == "downgrade":
            choices = _walk_choices(graph, current, target)
            return AmbiguousDowngrade(
                f"{ambiguous} Name an explicit target instead, one of: {choices}"
            )
        # Upgrades offer where the walk ends up each branch, never the revisions below.
        choices = _upgrade_choices(graph, getattr(exc, "ends", ()))
        misfits: dict[str, int] = getattr(exc, "misfits", {})
        if not choices and misfits:
            runs = ", ".join(f"{rev} runs {misfits[rev]}" for rev in _upgrade_order(graph, misfits))
            steps = target.rpartition("+")[2]
            return AmbiguousUpgrade(
                f"{ambiguous} No single target runs exactly {steps} revisions: {runs}."
            )
        if not choices:
            return AmbiguousUpgrade(f"{ambiguous} No branch has that many revisions to walk.")
        return AmbiguousUpgrade(f"{ambiguous} Name an explicit target instead, one of: {choices}")
    if message.startswith("Ambiguous upgrade"):
        choices = ", ".join(f"{head}@{target}" for head in current)
        return AmbiguousUpgrade(
            f"upgrade {target} from several heads is ambiguous; name the branch, one of: {choices}"
        )
    if "overlaps with other requested revisions" in message:
        return OverlappingHeads(message)
    return UnplannableStep(f"Alembic cannot plan {direction} to {target}: {message}")


def _walk_choices(graph: Graph, current: tuple[str, ...], target: str) -> str:
    """Return explicit per-branch targets to offer instead of an ambiguous relative downgrade."""
    choices: list[str] = []
    for head in current:
        if head in graph.revisions:
            choices.extend(graph.parents(head) or ("base",))
    return ", ".join(_dedupe(choices)) or "base"


def _upgrade_choices(graph: Graph, ends: Iterable[str]) -> str:
    """Return the revisions the walk reaches up each branch, in load order, as explicit targets."""
    return ", ".join(_upgrade_order(graph, ends))


def _upgrade_order(graph: Graph, ends: Iterable[str]) -> list[str]:
    """Return `ends` in load order, any the graph does not hold last."""
    reached = set(ends)
    ordered = [rev for rev in graph.revisions if rev in reached]
    return ordered + sorted(reached - set(ordered))
