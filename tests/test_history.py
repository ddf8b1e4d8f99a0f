"""The revision graph on small hand-made histories, checked against Alembic's RevisionMap."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from alembic.script.revision import Revision as AlembicRevision
from alembic.script.revision import RevisionMap

from dashboard.history import (
    AmbiguousDowngrade,
    AmbiguousRevision,
    AmbiguousUpgrade,
    BrokenHistory,
    Graph,
    HistoryError,
    MultipleHeads,
    NotOnBranch,
    RangeNotAncestor,
    Revision,
    Step,
    UnknownRevision,
)
from dashboard.history.plans import _walking_map_class
from tests.genhistory import RevisionSpec, write_project


def rev(
    revision: str,
    *down: str,
    labels: tuple[str, ...] = (),
    depends_on: tuple[str, ...] = (),
    path: str = "",
) -> Revision:
    return Revision(
        revision,
        tuple(down),
        depends_on=depends_on,
        branch_labels=labels,
        message=f"make {revision}",
        path=path or f"versions/{revision}.py",
    )


def alembic_map(revisions: list[Revision]) -> RevisionMap:
    """Return Alembic's own map of the same revisions, for comparison."""
    return RevisionMap(
        lambda: [
            AlembicRevision(
                r.revision,
                r.down_revisions or None,
                dependencies=r.depends_on or None,
                branch_labels=r.branch_labels,
            )
            for r in revisions
        ]
    )


def walk(revisions: list[Revision]) -> list[str]:
    """Return Alembic's walk_revisions order for these revisions."""
    return [
        r.revision
        for r in alembic_map(revisions).iterate_revisions(
            "heads", "base", inclusive=True, assert_relative_length=False
        )
    ]


DIAMOND = [rev("a"), rev("b1", "a"), rev("b2", "a"), rev("c", "b1", "b2"), rev("d", "c")]

# Alembic's tests/test_revision.py MultipleBranchTest shape.
MULTIPLE_BRANCHES = [
    rev("a"),
    rev("b1", "a"),
    rev("b2", "a"),
    rev("cb1", "b1"),
    rev("cb2", "b2"),
    rev("d1cb1", "cb1"),
    rev("d2cb1", "cb1"),
    rev("d1cb2", "cb2"),
    rev("d2cb2", "cb2"),
    rev("d3cb2", "cb2"),
    rev("d1d2cb2", "d1cb2", "d2cb2"),
]

# Alembic's LabeledBranchTest shape: two labelled bases.
LABELED = [
    rev("a", labels=("abranch",)),
    rev("b", "a"),
    rev("somelongername", "b"),
    rev("c", "somelongername"),
    rev("d"),
    rev("e", "d", labels=("ebranch",)),
    rev("someothername", "e"),
    rev("f", "someothername"),
]


def test_linear_history_has_one_head_one_base_and_runs_in_order() -> None:
    graph = Graph([rev("a"), rev("b", "a"), rev("c", "b")])
    assert graph.heads == ("c",)
    assert graph.bases == ("a",)
    assert graph.topological() == ["c", "b", "a"]
    assert graph.ancestors("c") == {"a", "b"}
    assert graph.descendants("a") == {"b", "c"}
    assert graph.is_head("c") and not graph.is_head("b")
    assert graph.is_base("a") and not graph.is_base("b")
    assert graph.pending(["a"]) == ["b", "c"]
    assert graph.pending([]) == ["a", "b", "c"]
    assert graph.pending(["c"]) == []


def test_diamond_marks_branch_and_merge_points_and_walks_like_alembic() -> None:
    graph = Graph(DIAMOND)
    assert graph.is_branch_point("a")
    assert graph.is_merge_point("c")
    assert not graph.is_merge_point("d")
    assert graph.children("a") == ("b1", "b2")
    assert graph.parents("c") == ("b1", "b2")
    assert graph.topological() == ["d", "c", "b1", "b2", "a"] == walk(DIAMOND)


def test_branches_walk_depth_first_then_finish_at_the_branch_point() -> None:
    graph = Graph(MULTIPLE_BRANCHES)
    assert graph.heads == ("d1cb1", "d2cb1", "d3cb2", "d1d2cb2")
    assert graph.topological() == walk(MULTIPLE_BRANCHES)
    assert graph.topological()[-1] == "a"


def test_load_order_decides_the_walk_between_independent_heads() -> None:
    first = [rev("a"), rev("x", "a"), rev("y", "a")]
    second = [rev("a"), rev("y", "a"), rev("x", "a")]
    assert Graph(first).topological() == walk(first) == ["x", "y", "a"]
    assert Graph(second).topological() == walk(second) == ["y", "x", "a"]


def test_depends_on_keeps_heads_but_not_effective_heads() -> None:
    revisions = [rev("a"), rev("b", "a"), rev("x"), rev("y", "x", depends_on=("b",))]
    graph = Graph(revisions)
    assert graph.heads == ("b", "y") == alembic_map(revisions).heads
    assert graph.effective_heads == ("y",) == alembic_map(revisions)._real_heads
    assert graph.bases == ("a", "x")
    assert graph.dependencies("y") == ("b",)
    assert graph.dependents("b") == ("y",)
    assert graph.ancestors("y") == {"x", "a", "b"}
    assert graph.ancestors("y", include_dependencies=False) == {"x"}
    assert graph.topological() == walk(revisions)


def test_depends_on_a_branch_label_resolves_to_the_labelled_revision() -> None:
    revisions = [rev("a", labels=("core",)), rev("b", "a"), rev("x", depends_on=("core",))]
    graph = Graph(revisions)
    assert graph.dependencies("x") == ("a",)
    assert graph.revisions["x"].depends_on == ("core",)
    pending = graph.pending([])
    assert pending.index("a") < pending.index("x")
    expected = alembic_map(revisions).iterate_revisions("heads", (), implicit_base=True)
    assert pending == [r.revision for r in reversed(list(expected))]
    assert graph.pending(["b"]) == ["x"]


def test_labels_are_inherited_along_the_branch_like_alembic() -> None:
    revisions = [*LABELED, rev("g", "c")]
    graph = Graph(revisions)
    expected = alembic_map(revisions)
    for revision in graph.revisions:
        assert set(graph.labels_of(revision)) == expected.get_revision(revision).branch_labels
    assert graph.labels_of("f") == ("ebranch",)
    assert graph.labels_of("d") == ("ebranch",)
    assert graph.revisions["f"].branch_labels == ()


def test_resolve_names_heads_bases_labels_and_prefixes() -> None:
    graph = Graph(LABELED)
    assert graph.resolve("abranch@head") == ("c",)
    assert graph.resolve("ebranch@head") == ("f",)
    assert graph.resolve("abranch@heads") == ("c",)
    assert graph.resolve("abranch") == ("a",)
    assert graph.resolve("ebranch@ebranch") == ("e",)
    assert graph.resolve("abranch@some") == ("somelongername",)
    assert graph.resolve("ebranch@some") == ("someothername",)
    assert graph.resolve("e@d") == ("d",)
    assert graph.resolve("someoth@d") == ("d",)
    assert graph.resolve("heads") == ("c", "f")
    assert graph.resolve("base") == ()
    assert graph.resolve("somel") == ("somelongername",)


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("head", MultipleHeads, "Multiple heads are present"),
        ("ebranch@b", NotOnBranch, "Revision b is not a member of branch 'ebranch'"),
        ("abranch@q", UnknownRevision, "No such revision or branch 'q'"),
        ("x@d", UnknownRevision, "No such branch: 'x'"),
        ("some", AmbiguousRevision, "Multiple revisions start with 'some'"),
        ("zz", UnknownRevision, "at least four characters"),
    ],
)
def test_resolve_refuses_like_alembic(spec: str, error: type[HistoryError], message: str) -> None:
    graph = Graph(LABELED)
    with pytest.raises(error, match=message):
        graph.resolve(spec)


def test_missing_parent_is_a_problem_that_leaves_the_rest_readable() -> None:
    graph = Graph([rev("a"), rev("b", "a"), rev("c", "gone")])
    assert any("c" in p and "gone" in p and "does not exist" in p for p in graph.problems)
    assert graph.parents("c") == ()
    assert graph.heads == ("b", "c")
    assert graph.ancestors("b") == {"a"}
    assert set(graph.topological()) == {"a", "b", "c"}
    with pytest.raises(BrokenHistory, match="gone"):
        graph.pending([])


def test_cycle_is_named_and_does_not_hide_other_revisions() -> None:
    graph = Graph([rev("a"), rev("b", "a"), rev("x", "z"), rev("y", "x"), rev("z", "y")])
    cycles = [p for p in graph.problems if "cycle" in p]
    assert cycles == ["cycle detected among revisions x, y, z"]
    assert sorted(graph.topological()) == ["a", "b", "x", "y", "z"]
    assert graph.topological().index("b") < graph.topological().index("a")
    with pytest.raises(BrokenHistory):
        graph.plan([], "heads", "upgrade")


def test_revision_downstream_of_a_cycle_is_not_blamed_for_it() -> None:
    graph = Graph([rev("x", "y"), rev("y", "x"), rev("after", "x")])
    assert "cycle detected among revisions x, y" in graph.problems


def test_duplicate_revision_id_names_both_files_and_blocks_plans() -> None:
    graph = Graph([rev("a", path="v/one.py"), Revision("a", (), message="second", path="v/two.py")])
    assert any("v/one.py" in p and "v/two.py" in p for p in graph.blocking_problems)
    assert graph.revisions["a"].message == "second"
    # Alembic keeps the shadowed copy among its heads: with a child, `upgrade heads` fails.
    with pytest.raises(BrokenHistory, match="defined twice"):
        graph.pending([])


def test_a_loop_never_hangs_the_spreading_of_branch_labels() -> None:
    looped = Graph([rev("a", "a"), rev("b", "a", labels=("feature",))])
    assert looped.labels_of("b") == ("feature",)
    cycle = Graph([rev("c", "d"), rev("d", "c", labels=("feature",))])
    assert "feature" in cycle.labels_of("d")


@pytest.mark.parametrize(
    ("revisions", "fragment"),
    [
        ([rev("a", "a")], "names itself"),
        ([rev("a", depends_on=("a",))], "depends on itself"),
        ([rev("a", labels=("x",), depends_on=("x",))], "depends on its own branch label 'x'"),
        ([rev("a", labels=("x",)), rev("b", labels=("x",))], "branch label 'x'"),
        ([rev("a", labels=("b",)), rev("b")], "branch label 'b'"),
        ([rev("a", depends_on=("nowhere",))], "neither a revision nor a branch label"),
        ([rev("a-1")], "which Alembic refuses"),
    ],
)
def test_histories_alembic_cannot_load_are_flagged(
    revisions: list[Revision], fragment: str
) -> None:
    graph = Graph(revisions)
    assert any(fragment in p for p in graph.problems), graph.problems
    with pytest.raises(BrokenHistory):
        graph.plan([], "heads", "upgrade")


def test_revision_problems_stop_planning() -> None:
    flagged = Revision(
        "b", ("a",), problems=("branch_labels is not a literal: (cli.EXPAND_BRANCH,)",)
    )
    graph = Graph([rev("a"), flagged])
    assert graph.heads == ("b",)
    with pytest.raises(BrokenHistory, match="cli.EXPAND_BRANCH"):
        graph.pending(["a"])


def test_empty_history_has_nothing_to_plan() -> None:
    graph = Graph([])
    assert graph.heads == () and graph.bases == ()
    assert graph.topological() == []
    assert graph.pending([]) == []


def test_upgrade_steps_read_like_alembics_log_lines() -> None:
    graph = Graph(DIAMOND)
    steps = graph.plan(["a"], "heads", "upgrade")
    expected = alembic_map(DIAMOND).iterate_revisions("heads", ("a",), implicit_base=True)
    assert [s.revision for s in steps] == [r.revision for r in reversed(list(expected))]
    assert [s.revision for s in steps] == ["b2", "b1", "c", "d"]
    assert steps[2] == Step("c", "upgrade", ("b1", "b2"), ("c",), "make c")
    assert steps[2].log_line == "Running upgrade b1, b2 -> c, make c"
    assert graph.heads_after(["a"], steps) == ("d",)
    first = graph.plan([], "a", "upgrade")
    assert str(first[0]) == "upgrade  -> a, make a"


def test_partial_upgrade_of_branches_then_merge_tracks_several_heads() -> None:
    graph = Graph(DIAMOND)
    steps = graph.plan(["a"], "b1", "upgrade")
    assert graph.heads_after(["a"], steps) == ("b1",)
    both = graph.plan(["b1"], "b2", "upgrade")
    assert [s.revision for s in both] == ["b2"]
    assert graph.heads_after(["b1"], both) == ("b1", "b2")
    merged = graph.plan(["b1", "b2"], "c", "upgrade")
    assert graph.heads_after(["b1", "b2"], merged) == ("c",)


def test_downgrade_below_a_merge_restores_both_branches() -> None:
    graph = Graph(DIAMOND)
    steps = graph.plan(["d"], "b1", "downgrade")
    assert [(s.revision, s.from_revisions, s.to_revisions) for s in steps] == [
        ("d", ("d",), ("c",)),
        ("c", ("c",), ("b1", "b2")),
    ]
    assert graph.heads_after(["d"], steps) == ("b1", "b2")
    to_base = graph.plan(["d"], "base", "downgrade")
    assert [s.revision for s in to_base][:2] == ["d", "c"]
    assert graph.heads_after(["d"], to_base) == ()


def test_downgrade_one_step_from_several_heads_proposes_each_branch() -> None:
    revisions = [rev("a"), rev("b1", "a"), rev("b2", "a")]
    graph = Graph(revisions)
    with pytest.raises(AmbiguousDowngrade, match="b1@-1, b2@-1"):
        graph.plan(["b1", "b2"], "-1", "downgrade")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        list(
            alembic_map(revisions).iterate_revisions(("b1", "b2"), "-1", select_for_downgrade=True)
        )
    assert any("ambiguous" in str(w.message) for w in caught)
    proposed = graph.plan(["b1", "b2"], "b1@-1", "downgrade")
    assert [s.revision for s in proposed] == ["b1"]
    # a stays applied underneath b2, so its row goes rather than replacing b1's.
    assert graph.heads_after(["b1", "b2"], proposed) == ("b2",)


def test_relative_targets_and_errors_follow_alembic() -> None:
    graph = Graph([rev("a"), rev("b", "a"), rev("c", "b")])
    assert [s.revision for s in graph.plan(["a"], "+1", "upgrade")] == ["b"]
    assert [s.revision for s in graph.plan(["c"], "-2", "downgrade")] == ["c", "b"]
    assert graph.plan(["c"], "b", "upgrade") == []  # already past it: nothing to run
    with pytest.raises(RangeNotAncestor, match="Destination c is not a valid downgrade target"):
        graph.plan(["a"], "c", "downgrade")
    with pytest.raises(UnknownRevision):
        graph.plan(["zzzz"], "heads", "upgrade")
    with pytest.raises(HistoryError):
        graph.plan(["a"], "+5", "upgrade")


def test_to_json_lists_every_revision_with_its_links() -> None:
    graph = Graph([rev("a"), rev("b", "a", labels=("main",), depends_on=("a",))])
    data = graph.to_json()
    assert data["heads"] == ["b"] and data["bases"] == ["a"]
    assert data["revisions"][1] == {
        "revision": "b",
        "down_revisions": ["a"],
        "depends_on": ["a"],
        "branch_labels": ["main"],
        "message": "make b",
        "create_date": None,
        "path": "versions/b.py",
        "problems": [],
        "unreadable": False,
    }
    assert data["problems"] == []


def test_plan_matches_a_real_alembic_run_on_sqlite(tmp_path: Path) -> None:
    specs = [
        RevisionSpec("aaaa0001", message="create users"),
        RevisionSpec("bbbb0002", ("aaaa0001",), message="create posts"),
        RevisionSpec("cccc0003", ("aaaa0001",), branch_labels=("reports",), message="reports"),
        RevisionSpec("dddd0004", ("cccc0003",), depends_on=("bbbb0002",), message="report posts"),
        RevisionSpec("eeee0005", ("bbbb0002", "dddd0004"), message="merge"),
        RevisionSpec("ffff0006", ("eeee0005",), message="add phone"),
    ]
    database = tmp_path / "target.db"
    ini = write_project(tmp_path / "project", specs, url=f"sqlite:///{database}")
    graph = Graph(
        [
            Revision(s.revision, s.down_revisions, s.depends_on, s.branch_labels, s.message)
            for s in specs
        ]
    )

    def alembic(*args: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-m", "alembic", "-c", str(ini), *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return [line.split("] ", 1)[1] for line in done.stderr.splitlines() if "Running" in line]

    def version_heads() -> tuple[str, ...]:
        with sqlite3.connect(database) as connection:
            rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        return tuple(sorted(row[0] for row in rows))

    current: tuple[str, ...] = ()
    for target, direction in [
        ("dddd0004", "upgrade"),
        ("heads", "upgrade"),
        ("cccc0003", "downgrade"),
        ("aaaa0001", "downgrade"),
        ("reports@head", "upgrade"),
        ("base", "downgrade"),
    ]:
        steps = graph.plan(current, target, direction)
        assert steps, (target, direction)
        assert alembic(direction, target) == [step.log_line for step in steps]
        expected_heads = tuple(sorted(graph.heads_after(current, steps)))
        current = version_heads()
        assert current == expected_heads, (target, direction)


# a branches to b and c, which merge into m; n follows.
MERGED = [rev("a"), rev("b", "a"), rev("c", "a"), rev("m", "b", "c"), rev("n", "m")]


def diamonds(count: int) -> list[Revision]:
    """Return r0, then `count` back-to-back branch-and-merge diamonds r(i-1) -> xi, yi -> ri."""
    revisions = [rev("r0")]
    for i in range(1, count + 1):
        below = f"r{i - 1}"
        revisions += [rev(f"x{i}", below), rev(f"y{i}", below), rev(f"r{i}", f"x{i}", f"y{i}")]
    return revisions


# a -> b, then two branches: c1 -> d1 -> e1 and c2 -> d2; f is a second base.
FORKED = [
    rev("a"),
    rev("b", "a"),
    rev("c1", "b"),
    rev("c2", "b"),
    rev("d1", "c1"),
    rev("d2", "c2"),
    rev("e1", "d1"),
]


def proposals(error: HistoryError) -> list[str]:
    return str(error).rpartition("one of: ")[2].split(", ")


@pytest.mark.parametrize(
    ("revisions", "current", "target", "expected"),
    [
        (FORKED, ("a",), "+3", ["d1", "d2"]),
        (FORKED, ("a",), "+2", ["c1", "c2"]),
        # d2 is a head two steps past b: only the branch long enough stays a choice.
        (FORKED, ("b",), "+3", ["e1"]),
        (FORKED, ("b",), "b+2", ["d1", "d2"]),
        ([*FORKED[:2], rev("f"), rev("g", "f")], (), "+2", ["b", "g"]),
        ([rev("a"), rev("b", "a", labels=("main",)), *FORKED[2:]], ("a",), "main@+2", ["c1", "c2"]),
        # Both branches reach m in two steps, but upgrading to m runs b, c and m: three.
        ([*MERGED, rev("d", "c")], ("a",), "+2", ["d"]),
    ],
)
def test_an_ambiguous_relative_upgrade_proposes_descendants_alembic_accepts(
    revisions: list[Revision], current: tuple[str, ...], target: str, expected: list[str]
) -> None:
    graph = Graph(revisions)
    alembic = alembic_map(revisions)
    with pytest.raises(Exception, match="Ambiguous walk"):
        list(alembic.iterate_revisions(target, current, implicit_base=True))
    with pytest.raises(AmbiguousUpgrade, match="is ambiguous") as info:
        graph.plan(current, target, "upgrade")
    assert proposals(info.value) == expected
    steps = int(target.rpartition("+")[2])
    ancestors = set().union(*(graph.ancestors(c) | {c} for c in current))
    for choice in expected:
        assert choice not in ancestors  # a step up, never back down
        ran = list(alembic.iterate_revisions(choice, current, implicit_base=True))
        assert len(ran) == steps, choice  # Alembic runs exactly that many to reach it
        assert [s.revision for s in graph.plan(current, choice, "upgrade")] == [
            r.revision for r in reversed(ran)
        ]


def test_an_ambiguous_upgrade_past_every_branch_end_proposes_nothing() -> None:
    with pytest.raises(AmbiguousUpgrade, match="No branch has that many revisions") as info:
        Graph(FORKED).plan(["b"], "+4", "upgrade")
    assert "one of" not in str(info.value)


def test_an_ambiguous_upgrade_says_what_a_merge_it_reaches_would_run() -> None:
    with pytest.raises(AmbiguousUpgrade, match="is ambiguous") as info:
        Graph(MERGED).plan(["a"], "+2", "upgrade")
    assert "one of" not in str(info.value)
    assert "No single target runs exactly 2 revisions: m runs 3" in str(info.value)
    assert len(list(alembic_map(MERGED).iterate_revisions("m", ("a",), implicit_base=True))) == 3


def counting_map(revisions: list[Revision], base: type[RevisionMap]) -> RevisionMap:
    """Return a map over `revisions` that counts its get_revisions calls in `calls`."""

    class Counting(base):  # type: ignore[valid-type,misc]
        calls = 0

        def get_revisions(self, id_):  # type: ignore[no-untyped-def]
            type(self).calls += 1
            return super().get_revisions(id_)

    return Counting(alembic_map(revisions)._generator)


def test_an_ambiguous_walk_across_many_diamonds_visits_each_revision_once() -> None:
    revisions = diamonds(20)
    walking = counting_map(revisions, _walking_map_class())
    with pytest.raises(Exception, match="Ambiguous walk") as info:
        list(walking.iterate_revisions("+40", ("r0",), implicit_base=True))
    list(getattr(info.value, "ends", ()))  # where the walk ends, computed on demand or not
    # Without merging the ways that meet again, the walk would follow 2**20 of them.
    assert type(walking).calls < 20 * len(revisions)
    started = time.perf_counter()
    with pytest.raises(AmbiguousUpgrade, match="r20 runs 60"):
        Graph(revisions).plan(["r0"], "+40", "upgrade")
    assert time.perf_counter() - started < 2


def test_an_ambiguous_relative_downgrade_walks_no_more_than_alembic() -> None:
    revisions = diamonds(16)
    walking = counting_map(revisions, _walking_map_class())
    plain = counting_map(revisions, RevisionMap)
    for revision_map in (walking, plain):
        with pytest.raises(Exception, match="Ambiguous walk"):
            list(revision_map.iterate_revisions(("r16",), "-40", select_for_downgrade=True))
    assert type(walking).calls == type(plain).calls
    with pytest.raises(AmbiguousDowngrade, match="is ambiguous"):
        Graph(revisions).plan(["r16"], "-40", "downgrade")
