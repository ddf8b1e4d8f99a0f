"""Deciding an environment's state from a reading and an in-memory revision graph."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from dashboard.databases.versions import Reading
from dashboard.history import Graph, Revision
from dashboard.scripts import load_history
from dashboard.states import READ_STATES, State, environment_status

ROOT = Path(__file__).resolve().parent.parent


def graph(*edges: tuple[str, tuple[str, ...]], **extra: Revision) -> Graph:
    """Build a graph from (revision, down_revisions) pairs, messages derived from the ids."""
    revisions = [Revision(rev, down, message=f"step {rev}") for rev, down in edges]
    return Graph([*revisions, *extra.values()])


# a <- b <- c <- d, plus a branch c <- x (heads d and x)
LINEAR = (("a", ()), ("b", ("a",)), ("c", ("b",)), ("d", ("c",)))
BRANCHED = (*LINEAR, ("x", ("c",)))


def reading(*heads: str, table: bool = True, error: str | None = None, kind=None) -> Reading:
    """Return a reading of a version table holding these heads (or failing with error)."""
    return Reading(
        environment="prod",
        heads=tuple(heads),
        table_exists=table and error is None,
        error=error,
        error_kind=kind if error else None,
        latency_ms=3.0,
        read_at=datetime.now(UTC),
    )


def test_at_the_only_head_is_current() -> None:
    status = environment_status(reading("d"), graph(*LINEAR))
    assert status.state is State.CURRENT
    assert status.pending == ()
    assert status.detail == "at head d"
    assert status.error is None


def test_behind_lists_pending_revisions_in_run_order() -> None:
    status = environment_status(reading("b"), graph(*LINEAR))
    assert status.state is State.BEHIND
    assert status.pending == ("c", "d")
    assert status.detail == "2 behind head d"


def test_one_branch_at_its_head_is_behind_the_other_branch() -> None:
    status = environment_status(reading("d"), graph(*BRANCHED))
    assert status.state is State.BEHIND
    assert status.pending == ("x",)
    assert "heads d, x" in status.detail


def test_both_branch_heads_applied_is_current() -> None:
    status = environment_status(reading("d", "x"), graph(*BRANCHED))
    assert status.state is State.CURRENT


def test_missing_version_table_is_uninitialized_and_says_so() -> None:
    status = environment_status(reading(table=False), graph(*LINEAR), version_table="blog_versions")
    assert status.state is State.UNINITIALIZED
    assert status.detail == "no version table blog_versions"
    assert status.pending == ("a", "b", "c", "d")


def test_empty_version_table_is_uninitialized_and_says_so() -> None:
    status = environment_status(reading(table=True), graph(*LINEAR))
    assert status.state is State.UNINITIALIZED
    assert status.detail == "version table alembic_version is empty"


def test_a_head_missing_from_the_scripts_is_unknown_and_named() -> None:
    status = environment_status(reading("b", "zz9"), graph(*LINEAR))
    assert status.state is State.UNKNOWN
    assert status.detail == "head zz9 is not in the script directory"
    assert status.pending == ()


def test_several_unknown_heads_are_all_named() -> None:
    status = environment_status(reading("q1", "q2"), graph(*LINEAR))
    assert status.state is State.UNKNOWN
    assert "q1, q2" in status.detail


def test_overlapping_heads_are_invalid_with_the_reason() -> None:
    status = environment_status(reading("b", "d"), graph(*LINEAR))
    assert status.state is State.INVALID
    assert status.error is not None
    assert "b, d" in status.error
    assert status.detail == status.error


def test_a_head_listed_twice_is_invalid_since_alembic_cannot_move_it() -> None:
    for heads in (("b", "b"), ("d", "d")):
        status = environment_status(reading(*heads), graph(*LINEAR))
        assert status.state is State.INVALID
        assert status.error == (
            f"version table alembic_version lists {heads[0]} more than once:"
            " Alembic cannot upgrade or downgrade from it"
        )


def test_a_broken_history_is_invalid_not_an_exception() -> None:
    broken = graph(("a", ()), ("b", ("gone",)))
    status = environment_status(reading("a"), broken)
    assert status.state is State.INVALID
    assert "gone" in (status.error or "")


def test_an_unreadable_script_directory_is_invalid_for_a_read_table() -> None:
    status = environment_status(reading("a"), None, history_error="no such directory /x")
    assert status.state is State.INVALID
    assert "no such directory /x" in (status.error or "")


def test_an_empty_database_stays_uninitialized_when_the_scripts_are_unreadable() -> None:
    status = environment_status(reading(table=False), None, history_error="boom")
    assert status.state is State.UNINITIALIZED
    assert status.pending == ()


@pytest.mark.parametrize("kind", ["unreachable", "timeout", "auth", "error"])
def test_a_failed_read_is_unreachable_with_its_error(kind: str) -> None:
    status = environment_status(reading(error="timed out after 1 s", kind=kind), graph(*LINEAR))
    assert status.state is State.UNREACHABLE
    assert status.error == "timed out after 1 s"
    assert status.pending == ()


def test_an_unset_url_variable_is_not_configured() -> None:
    failed = reading(error="not configured: PROD_URL is not set", kind="not_configured")
    status = environment_status(failed, graph(*LINEAR))
    assert status.state is State.NOT_CONFIGURED
    assert status.detail == "not configured: PROD_URL is not set"


def test_only_states_that_read_the_table_count_as_reads() -> None:
    assert State.UNREACHABLE not in READ_STATES
    assert State.NOT_CONFIGURED not in READ_STATES
    assert {State.CURRENT, State.BEHIND, State.UNKNOWN} <= READ_STATES


def test_sample_project_dependency_quirk_follows_alembic() -> None:
    # `upgrade 1d6b9f0c4e27` also runs its dependency e0d7f4a19b53 but records only
    # 1d6b9f0c4e27; the dependency must not be listed as pending again.
    sample = load_history(ROOT / "migrations_project").graph
    status = environment_status(reading("1d6b9f0c4e27"), sample)
    assert status.state is State.BEHIND
    assert status.pending == ("9e4f1b7a2c68", "6c0a8d3f5e94")
