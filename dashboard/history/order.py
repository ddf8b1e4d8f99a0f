"""Walk revisions from heads to bases in the order of Alembic's topological sort."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


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
