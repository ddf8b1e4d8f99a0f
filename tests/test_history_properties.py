"""Generated histories, written as real revision files, read by us and by Alembic itself."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import HeadMaintainer
from alembic.script import ScriptDirectory
from alembic.util import to_tuple
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard.history import AmbiguousDowngrade, Graph, HistoryError
from dashboard.scripts import load_history
from tests.genhistory import RevisionSpec, write_project

HEX = "0123456789abcdef"
FOLDERS = ("", "", "2023", "2024/01", "2024/02", "legacy/old")
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def histories(draw: st.DrawFn) -> list[RevisionSpec]:
    """Draw a revision history: runs, branches, merges, extra bases, labels, depends_on."""
    count = draw(st.integers(min_value=1, max_value=14))
    nested = draw(st.booleans())
    specs: list[RevisionSpec] = []
    heads: list[str] = []
    labels: dict[str, str] = {}
    for index in range(count):
        rev = draw(
            st.text(HEX, min_size=4, max_size=12).filter(
                lambda r: r not in {s.revision for s in specs}
            )
        )
        kind = (
            "base"
            if not specs
            else draw(st.sampled_from(["base", "run", "run", "run", "branch", "merge"]))
        )
        down: tuple[str, ...] = ()
        if kind == "run":
            down = (draw(st.sampled_from(heads)),)
        elif kind == "branch":
            down = (draw(st.sampled_from([s.revision for s in specs])),)
        elif kind == "merge":
            pool = heads if len(heads) >= 2 else [s.revision for s in specs]
            down = tuple(draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True)))
        branch_labels: tuple[str, ...] = ()
        if draw(st.integers(0, 4)) == 0:
            label = f"lbl{len(labels)}"
            labels[label] = rev
            branch_labels = (label,)
        depends: tuple[str, ...] = ()
        if specs and draw(st.integers(0, 5)) == 0:
            names = [s.revision for s in specs] + [lbl for lbl in labels if labels[lbl] != rev]
            depends = tuple(draw(st.lists(st.sampled_from(names), min_size=1, max_size=2)))
        specs.append(
            RevisionSpec(
                revision=rev,
                down_revisions=down,
                branch_labels=branch_labels,
                depends_on=depends,
                message=f"step {index}",
                folder=draw(st.sampled_from(FOLDERS)) if nested else "",
            )
        )
        heads = [h for h in heads if h not in down] + [rev]
    return specs


@contextmanager
def project(specs: list[RevisionSpec]) -> Iterator[tuple[Graph, ScriptDirectory]]:
    """Write the history to a temporary project; yield our graph and Alembic's scripts."""
    with tempfile.TemporaryDirectory(prefix="history-prop-") as tmp:
        ini = write_project(Path(tmp), specs)
        loaded = load_history(alembic_ini=ini)
        script = ScriptDirectory.from_config(Config(str(ini)))
        yield loaded.graph, script


class RecordedHeads(HeadMaintainer):
    """Alembic's own head bookkeeping, with the version table left out."""

    def __init__(self, heads: tuple[str, ...]) -> None:
        self.heads = set(heads)

    def _insert_version(self, version: str) -> None:
        assert version not in self.heads
        self.heads.add(version)

    def _delete_version(self, version: str) -> None:
        self.heads.remove(version)

    def _update_version(self, from_: str, to_: str) -> None:
        assert to_ not in self.heads
        self.heads.remove(from_)
        self.heads.add(to_)


def alembic_plan(
    script: ScriptDirectory, current: tuple[str, ...], target: str, direction: str
) -> dict[str, Any]:
    """Return what `alembic upgrade|downgrade target` computes from these heads."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if direction == "upgrade":
                steps = script._upgrade_revs(target, current)  # type: ignore[arg-type]
            else:
                steps = script._downgrade_revs(target, current)  # type: ignore[arg-type]
            heads = RecordedHeads(current)
            for step in steps:
                heads.update_to_step(step)
        except Exception as exc:  # noqa: BLE001 - any refusal counts, whatever its type
            return {"error": f"{type(exc).__name__}: {exc}"}
    return {
        "steps": [
            (
                step.revision.revision,
                "upgrade" if step.is_upgrade else "downgrade",
                tuple(step.from_revisions_no_deps),
                tuple(step.to_revisions_no_deps),
                str(step),
            )
            for step in steps
        ],
        "heads": sorted(heads.heads),
        "ambiguous": any("ambiguous" in str(w.message) for w in caught),
    }


def our_plan(graph: Graph, current: tuple[str, ...], target: str, direction: str) -> dict[str, Any]:
    try:
        steps = graph.plan(current, target, direction)  # type: ignore[arg-type]
        heads = graph.heads_after(current, steps)
    except HistoryError as exc:
        return {"error": exc}
    return {
        "steps": [
            (s.revision, s.direction, s.from_revisions, s.to_revisions, str(s)) for s in steps
        ],
        "heads": sorted(heads),
    }


@SETTINGS
@given(histories())
def test_graph_matches_alembic(specs: list[RevisionSpec]) -> None:
    with project(specs) as (graph, script):
        revision_map = script.revision_map
        assert graph.problems == []
        assert graph.heads == tuple(script.get_heads())
        assert graph.effective_heads == tuple(script.get_heads(consider_depends_on=True))
        assert graph.bases == tuple(script.get_bases())
        assert graph.topological() == [s.revision for s in script.walk_revisions()]
        for rev in revision_map._revision_map.values():
            if rev is None or rev.revision not in graph.revisions:
                continue
            ours = graph.revisions[rev.revision]
            assert ours.down_revisions == rev._versioned_down_revisions
            assert ours.depends_on == to_tuple(rev.module.depends_on, default=())
            assert graph.dependencies(rev.revision) == tuple(
                dict.fromkeys(rev._resolved_dependencies)
            )
            assert set(ours.branch_labels) == set(rev._orig_branch_labels)
            assert set(graph.labels_of(rev.revision)) == rev.branch_labels
            assert graph.is_branch_point(rev.revision) == rev.is_branch_point
            assert graph.is_merge_point(rev.revision) == rev.is_merge_point
            assert graph.is_head(rev.revision) == rev.is_head
            assert graph.is_base(rev.revision) == rev.is_base
            assert ours.message == rev.doc
            expected_ancestors = {r.revision for r in revision_map._get_ancestor_nodes([rev])} - {
                rev.revision
            }
            assert graph.ancestors(rev.revision) == expected_ancestors


def targets(specs: list[RevisionSpec]) -> st.SearchStrategy[str]:
    revisions = [s.revision for s in specs]
    labels = [label for s in specs for label in s.branch_labels]
    choices = [
        st.sampled_from(revisions),
        st.sampled_from(revisions).map(lambda r: r[:4]),
        st.sampled_from(["heads", "head", "base", "-1", "+1", "-2", "+2"]),
    ]
    if labels:
        choices.append(
            st.tuples(st.sampled_from(labels), st.sampled_from(["", "@head", "@base", "@-1"])).map(
                "".join
            )
        )
    return st.one_of(choices)


def assert_resolves_like_alembic(graph: Graph, script: ScriptDirectory, target: str) -> None:
    """Check resolve() against RevisionMap.get_revisions for targets that are not relative."""
    if target.lstrip("+-").isdigit() or "@-" in target:
        return
    try:
        expected: tuple[str, ...] | str = tuple(
            r.revision for r in script.revision_map.get_revisions(target) if r is not None
        )
    except Exception as exc:  # noqa: BLE001
        expected = f"error {exc}"
    try:
        got: tuple[str, ...] | str = graph.resolve(target)
    except HistoryError as exc:
        got = f"error {exc}"
    if isinstance(expected, str):
        assert isinstance(got, str), (target, expected, got)
    else:
        assert got == expected, target


@SETTINGS
@given(histories(), st.data())
def test_plans_match_alembic(specs: list[RevisionSpec], data: st.DataObject) -> None:
    revisions = [s.revision for s in specs]
    with project(specs) as (graph, script):
        for _ in range(6):
            start = data.draw(
                st.one_of(
                    st.just(()),
                    st.lists(st.sampled_from(revisions), max_size=3, unique=True).map(tuple),
                    targets(specs).map(lambda t: ("reached", t)),
                )
            )
            if start and start[0] == "reached":
                reached = alembic_plan(script, (), start[1], "upgrade")
                if "error" in reached:
                    continue
                start = tuple(data.draw(st.permutations(reached["heads"])))
            current: tuple[str, ...] = start
            target = data.draw(targets(specs))
            assert_resolves_like_alembic(graph, script, target)
            direction = data.draw(st.sampled_from(["upgrade", "downgrade"]))
            expected = alembic_plan(script, current, target, direction)
            got = our_plan(graph, current, target, direction)
            context = f"{direction} to {target!r} from {current}: {expected} vs {got}"
            if "error" in expected:
                assert "error" in got, context
            elif expected["ambiguous"]:
                assert isinstance(got.get("error"), AmbiguousDowngrade), context
            else:
                assert "error" not in got, context
                assert got["steps"] == expected["steps"], context
                assert got["heads"] == expected["heads"], context
