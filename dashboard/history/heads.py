"""Tell accidental heads from labelled branches, and where each head is already applied."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from dashboard.history.structure import GraphStructure

SHORT = 12
UNREAD_SHOWN = 5  # a fleet of hundreds never read: name a few, count the rest


@dataclass(frozen=True)
class HeadPlace:
    """One head of an accidental fork: its labels and the places that applied it."""

    revision: str
    path: str
    # Places (environments, fleets) whose version table holds this head or a later revision.
    applied: tuple[str, ...]
    # Places that applied part of this head's own branch but not the head itself.
    partly: tuple[str, ...]

    @property
    def nowhere(self) -> bool:
        """Return whether no place applied any revision of this head's own branch."""
        return not self.applied and not self.partly


@dataclass(frozen=True)
class Reparent:
    """Editing one unapplied file instead of merging: its new down_revision."""

    head: str
    revision: str  # the first revision of the unapplied branch: the file to edit
    path: str
    down_revisions: tuple[str, ...]  # as declared now
    new_down_revision: str


@dataclass(frozen=True)
class HeadsFork:
    """Heads no branch label separates: Alembic's `upgrade head` refuses them."""

    labels: tuple[str, ...]  # the labels they share (none for the unlabelled trunk)
    heads: tuple[HeadPlace, ...]
    reparent: Reparent | None
    # Places with no successful read: any head may be applied there, so none is "nowhere".
    unread: tuple[str, ...] = ()

    def merge_command(self, alembic_ini: str | None = None) -> str:
        """Return the `alembic merge` command that joins these heads."""
        config = f"-c {shlex.quote(alembic_ini)} " if alembic_ini else ""
        ids = " ".join(head.revision for head in self.heads)
        return f'alembic {config}merge -m "merge heads" {ids}'

    def where_text(self, *, known: bool = True) -> str:
        """Return "a1b2 on dev, qa; c3d4 nowhere" (or the bare heads when nothing is known)."""
        parts = []
        nowhere = "nowhere read" if self.unread else "nowhere"
        for head in self.heads:
            short = head.revision[:SHORT]
            if not known:
                parts.append(short)
                continue
            text = f"{short} on {', '.join(head.applied)}" if head.applied else f"{short} {nowhere}"
            if head.partly:
                text += f" (part of its branch on {', '.join(head.partly)})"
            parts.append(text)
        if known and self.unread:
            parts.append(f"unknown on {self.unread_text()}")
        return "; ".join(parts)

    def unread_text(self) -> str:
        """Return "prod, t01" (or "t01, t02, t03 and 7 more"): the places never read."""
        shown = self.unread[:UNREAD_SHOWN]
        more = len(self.unread) - len(shown)
        return ", ".join(shown) + (f" and {more} more" if more else "")

    def reparent_text(self) -> str:
        """Say which file to re-parent, or "" when merging is the only safe way."""
        move = self.reparent
        if move is None:
            return ""
        now = repr(move.down_revisions[0]) if move.down_revisions else "None"
        return (
            f"{move.head[:SHORT]} is applied nowhere, so re-parenting it is safe instead: in"
            f" {move.path or move.revision} set down_revision = {move.new_down_revision!r}"
            f" (instead of {now})"
        )


@dataclass(frozen=True)
class HeadsReport:
    """The history's heads, and those of them that are accidental forks."""

    heads: tuple[str, ...]
    forks: tuple[HeadsFork, ...]
    known: bool  # whether the places that applied each head were known

    @property
    def ok(self) -> bool:
        """Return whether every head is alone on its branch or separated by a label."""
        return not self.forks

    def lines(self, alembic_ini: str | None = None) -> list[str]:
        """Return the report as sentences, one fork after another."""
        found: list[str] = []
        for fork in self.forks:
            on = f" on branch {', '.join(fork.labels)}" if fork.labels else ""
            unknown = "" if self.known else " (no stored snapshots say where they are applied)"
            found.append(
                f"{len(fork.heads)} heads{on} that no branch label separates:"
                f" {fork.where_text(known=self.known)}{unknown}."
            )
            found.append(f"Join them with: {fork.merge_command(alembic_ini)}")
            if fork.reparent_text():
                found.append(f"Or: {fork.reparent_text()}.")
            elif self.known and fork.unread:
                found.append(
                    f"Nothing was read from {fork.unread_text()} yet: either head may be applied"
                    " there, so merging is the only safe way."
                )
        return found


def heads_report(
    graph: GraphStructure,
    applied: Mapping[str, Iterable[Sequence[str]]] | None = None,
    unread: Iterable[str] = (),
) -> HeadsReport:
    """Group the heads by their branch labels; a group of several is an accidental fork.

    Two heads are separated when one carries a label (declared, or inherited from a labelled
    ancestor as Alembic assigns them) the other does not: `label@head` then names each. applied
    maps each place (an environment, a fleet) to the heads of its databases' version tables;
    None when nothing is known of where the history is applied. unread names the places
    (environments, fleet members) no read succeeded in: re-parenting is never offered then.
    """
    # What `alembic heads` lists (depended-on heads count too), but a file that cannot be
    # parsed: its parents and labels are unknown, and the history's problems name it already.
    heads = tuple(h for h in graph.heads if not graph.revisions[h].unreadable)
    by_labels: dict[tuple[str, ...], list[str]] = {}
    for head in heads:
        by_labels.setdefault(graph.labels_of(head), []).append(head)
    places = _applied_sets(graph, applied or {})
    never = tuple(unread)
    forks = tuple(
        _fork(graph, labels, members, places, known=applied is not None, unread=never)
        for labels, members in by_labels.items()
        if len(members) > 1
    )
    return HeadsReport(heads=heads, forks=forks, known=applied is not None)


def _applied_sets(
    graph: GraphStructure, applied: Mapping[str, Iterable[Sequence[str]]]
) -> dict[str, set[str]]:
    """Return each place's applied revisions: its heads and all they need, unknown ones left out."""
    found: dict[str, set[str]] = {}
    for place, databases in applied.items():
        revs: set[str] = set()
        for version_heads in databases:
            for head in version_heads:
                if head in graph.revisions:
                    revs.add(head)
                    revs |= graph.ancestors(head)
        found[place] = revs
    return found


def _fork(
    graph: GraphStructure,
    labels: tuple[str, ...],
    members: list[str],
    places: Mapping[str, set[str]],
    *,
    known: bool,
    unread: tuple[str, ...],
) -> HeadsFork:
    lines = {head: {head} | graph.ancestors(head, include_dependencies=False) for head in members}
    own: dict[str, set[str]] = {}
    for head in members:
        others = set().union(*(lines[other] for other in members if other != head))
        own[head] = lines[head] - others
    heads = []
    for head in members:
        applied = tuple(place for place, revs in places.items() if head in revs)
        partly = tuple(
            place for place, revs in places.items() if head not in revs and revs & own[head]
        )
        heads.append(HeadPlace(head, graph.revisions[head].path, applied, partly))
    nowhere = [place for place in heads if place.nowhere]
    reparent = None
    # "Applied nowhere" holds only when every place was read: an unread one may hold it.
    if known and not unread and len(members) == 2 and len(nowhere) == 1:
        head = nowhere[0].revision
        other = next(m for m in members if m != head)
        reparent = _reparent(graph, head, own[head], other)
    return HeadsFork(labels=labels, heads=tuple(heads), reparent=reparent, unread=unread)


def _reparent(graph: GraphStructure, head: str, own: set[str], onto: str) -> Reparent | None:
    """Return the edit that moves a head's own branch on top of `onto`, when one file does it."""
    roots = [
        rev
        for rev in own
        if not graph.revisions[rev].down_revisions
        or not set(graph.revisions[rev].down_revisions) <= own
    ]
    if len(roots) != 1:
        return None
    root = graph.revisions[roots[0]]
    # A merge at the root would lose a parent; let a person decide there.
    if len(root.down_revisions) > 1:
        return None
    return Reparent(
        head=head,
        revision=root.revision,
        path=root.path,
        down_revisions=root.down_revisions,
        new_down_revision=onto,
    )
