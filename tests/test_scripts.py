"""Reading script directories statically, compared with Alembic's own loader."""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from dashboard.history import Revision
from dashboard.scripts import (
    LoadedHistory,
    ScriptLocationError,
    cache,
    fingerprint,
    load_history,
    load_history_with_alembic,
    parse_revision_file,
    read_settings,
    syntax_problems,
)
from tests.genhistory import RevisionSpec, random_history, render_revision, write_project

ROOT = Path(__file__).resolve().parent.parent

TEMPLATE_FILE = '''\
"""add phone number to users

Revision ID: 6c0a8d3f5e94
Revises: 9e4f1b7a2c68
Create Date: 2024-03-01 10:20:30.123456

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = "6c0a8d3f5e94"
down_revision: Union[str, Sequence[str], None] = "9e4f1b7a2c68"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column("users", sa.Column("phone_number", sa.String(32)))


def downgrade() -> None:
    op.drop_column("users", "phone_number")
'''


def parse(text: str, name: str = "versions/x.py") -> Revision | str:
    return parse_revision_file(name, textwrap.dedent(text).encode())


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def simple(rev: str, down: str | None = None, **extra: object) -> str:
    """Return a minimal revision file."""
    lines = [f'"""{rev} message"""', f"revision = {rev!r}", f"down_revision = {down!r}"]
    lines += [f"{key} = {value!r}" for key, value in extra.items()]
    return "\n".join(lines) + "\n\ndef upgrade():\n    pass\n\ndef downgrade():\n    pass\n"


def test_template_file_gives_ids_message_and_create_date() -> None:
    parsed = parse(TEMPLATE_FILE)
    assert isinstance(parsed, Revision)
    assert parsed.revision == "6c0a8d3f5e94"
    assert parsed.down_revisions == ("9e4f1b7a2c68",)
    assert parsed.branch_labels == () and parsed.depends_on == ()
    assert parsed.message == "add phone number to users"
    assert parsed.create_date == "2024-03-01 10:20:30.123456"
    assert parsed.docstring.startswith("add phone number to users\n\nRevision ID: 6c0a8d3f5e94")
    assert parsed.problems == ()


def test_plain_assignments_with_tuples_lists_and_strings() -> None:
    parsed = parse(
        """\
        revision = 'merge1'
        down_revision = ('a1', 'b2')
        branch_labels = 'reports'
        depends_on = ['core', 'c3']
        """
    )
    assert isinstance(parsed, Revision)
    assert parsed.down_revisions == ("a1", "b2")
    assert parsed.branch_labels == ("reports",)
    assert parsed.depends_on == ("core", "c3")
    assert parsed.message == ""


def test_value_that_is_not_a_literal_is_flagged_not_guessed() -> None:
    parsed = parse(
        """\
        from neutron.db.migration import cli
        revision = 'expand1'
        down_revision = 'kilo'
        branch_labels = (cli.EXPAND_BRANCH,)
        """
    )
    assert isinstance(parsed, Revision)
    assert parsed.branch_labels == ()
    assert parsed.down_revisions == ("kilo",)
    assert parsed.problems == (
        "branch_labels is not a literal: (cli.EXPAND_BRANCH,); module neutron.db.migration is"
        " not found (set the project's source_root to the folder that holds it)",
    )


def test_revision_id_that_is_not_a_literal_skips_the_file() -> None:
    problem = parse("import uuid\nrevision = uuid.uuid4().hex\ndown_revision = None\n")
    assert problem == "versions/x.py: revision is not a literal: uuid.uuid4().hex"


def test_syntax_error_in_a_function_body_is_found_by_the_full_check(tmp_path: Path) -> None:
    text = TEMPLATE_FILE.replace('    op.drop_column("users", "phone_number")', "    op.drop(")
    path = write(tmp_path / "versions", "6c0a8d3f5e94_x.py", text)
    loaded = load_history(tmp_path)
    assert loaded.graph.heads == ("6c0a8d3f5e94",)  # what Alembic's graph needs reads fine
    assert syntax_problems(loaded) == [f"{path.resolve()}:24: syntax error: '(' was never closed"]


def test_header_that_only_parses_with_the_rest_of_the_file_is_read_whole() -> None:
    text = (
        '"""note\ndef upgrade(): inside the docstring\n"""\nrevision = "a"\ndown_revision = None\n'
    )
    parsed = parse(text)
    assert isinstance(parsed, Revision)
    assert parsed.revision == "a"
    assert parsed.message == "note\ndef upgrade(): inside the docstring"


def test_names_bound_after_the_functions_are_read_from_the_whole_file() -> None:
    looped = parse(simple("first", None) + "\nfor revision in ['second']:\n    pass\n")
    assert isinstance(looped, Revision)
    assert looped.revision == "first"
    imported = parse(simple("a", None) + "\nfrom elsewhere import branch_labels\n")
    assert isinstance(imported, Revision)
    assert imported.problems == (
        "branch_labels is bound by ImportFrom (line 11); its value depends on running the file",
    )


def test_syntax_error_in_the_header_names_file_and_line() -> None:
    assert parse("revision = 'a'\ndown_revision = (\n") == (
        "versions/x.py:2: syntax error: '(' was never closed"
    )


def test_missing_revision_id_skips_the_file_with_a_problem() -> None:
    assert parse("down_revision = None\n", "versions/helpers.py") == (
        "versions/helpers.py: no revision id (no module-level `revision = ...`); file skipped"
    )


def test_legacy_file_named_by_hex_id_takes_its_id_from_the_name() -> None:
    parsed = parse("down_revision = None\n", "versions/ab12cd.py")
    assert isinstance(parsed, Revision)
    assert parsed.revision == "ab12cd"


def test_missing_down_revision_is_a_problem() -> None:
    parsed = parse("revision = 'a'\n")
    assert isinstance(parsed, Revision)
    assert parsed.problems == ("down_revision is not set",)


def test_assignment_after_the_functions_wins_like_at_runtime() -> None:
    parsed = parse(simple("first", None) + "\nrevision = 'second'\n")
    assert isinstance(parsed, Revision)
    assert parsed.revision == "second"


def test_conditional_assignment_is_flagged() -> None:
    parsed = parse(
        """\
        import os
        revision = 'a'
        down_revision = None
        if os.environ.get("X"):
            down_revision = 'b'
        """
    )
    assert isinstance(parsed, Revision)
    assert parsed.problems == (
        "down_revision is assigned inside a block (line 5); its value depends on running the file",
    )


def test_tuple_unpacking_is_read() -> None:
    parsed = parse("revision, down_revision = 'b', 'a'\n")
    assert isinstance(parsed, Revision)
    assert (parsed.revision, parsed.down_revisions) == ("b", ("a",))


def test_file_with_a_latin1_coding_cookie_is_read() -> None:
    data = '# -*- coding: latin-1 -*-\n"""café"""\nrevision = "a"\ndown_revision = None\n'
    parsed = parse_revision_file("x.py", data.encode("latin-1") + b"def upgrade():\n    pass\n")
    assert isinstance(parsed, Revision)
    assert parsed.message == "café"


def alembic_load_order(ini: Path) -> list[str]:
    script = ScriptDirectory.from_config(Config(str(ini)))
    return [s.revision for s in script._load_revisions()]


def test_files_counted_like_alembic(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    write(versions, "b2_second.py", simple("b2", "a1"))
    write(versions, "a1_first.py", simple("a1"))
    write(versions, "_c3_private.py", simple("c3", "b2"))
    write(versions, "__init__.py", "")
    write(versions, ".#a1_first.py", "not python at all (")
    write(versions, "README", "notes")
    write(versions / "nested", "d4_hidden.py", simple("d4", "c3"))
    (versions / "e5_compiled.pyc").write_bytes(b"\x00\x01")
    ini = write_project(tmp_path, [], recursive=False)
    loaded = load_history(alembic_ini=ini)
    assert list(loaded.graph.revisions) == ["c3", "a1", "b2"] == alembic_load_order(ini)
    assert loaded.graph.problems == []
    assert loaded.graph.revisions["a1"].path == str(versions.resolve() / "a1_first.py")


def test_recursive_version_locations_reads_nested_folders_in_alembics_order(
    tmp_path: Path,
) -> None:
    specs = [
        RevisionSpec("aaa1", folder="2024/02"),
        RevisionSpec("bbb2", ("aaa1",), folder=""),
        RevisionSpec("ccc3", ("bbb2",), folder="2023"),
        RevisionSpec("ddd4", ("ccc3",), folder="2024/01/deep"),
    ]
    ini = write_project(tmp_path, specs, recursive=True)
    loaded = load_history(alembic_ini=ini)
    assert (
        list(loaded.graph.revisions) == alembic_load_order(ini) == ["bbb2", "ccc3", "ddd4", "aaa1"]
    )
    assert loaded.graph.heads == ("ddd4",)


def test_a_percent_in_keys_we_do_not_use_is_no_concern(tmp_path: Path) -> None:
    write(tmp_path / "versions", "a1_x.py", simple("a1"))
    ini = tmp_path / "alembic.ini"
    ini.write_text(
        "[alembic]\nscript_location = %(here)s\nsqlalchemy.url = postgresql://app:p%40ss@db/app\n"
    )
    assert load_history(alembic_ini=ini).graph.heads == ("a1",)
    assert ScriptDirectory.from_config(Config(str(ini))).get_heads() == ["a1"]


@pytest.mark.filterwarnings("ignore:No path_separator found:DeprecationWarning")
@pytest.mark.parametrize(
    ("separator", "joined"),
    [
        ("os", os.pathsep.join),
        ("space", " ".join),
        ("newline", "\n    ".join),
        (";", ";".join),
        (":", ":".join),
        (None, ", ".join),
    ],
)
def test_version_locations_split_like_alembic(tmp_path: Path, separator, joined) -> None:
    for name, rev, down in [("one", "a1", None), ("two", "b2", "a1")]:
        write(tmp_path / name, f"{rev}_x.py", simple(rev, down))
    lines = [
        "[alembic]",
        "script_location = %(here)s",
        "version_locations = " + joined(["%(here)s/one", "%(here)s/two"]),
    ]
    if separator:
        lines.append(f"path_separator = {separator}")
    ini = tmp_path / "alembic.ini"
    ini.write_text("\n".join(lines) + "\n")
    settings = read_settings(alembic_ini=ini)
    expected = Config(str(ini)).get_version_locations_list()
    assert [str(p) for p in settings.version_locations] == expected
    loaded = load_history(alembic_ini=ini)
    assert list(loaded.graph.revisions) == ["a1", "b2"]
    assert loaded.graph.heads == ("b2",)


def test_missing_and_empty_locations_are_reported(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    write(tmp_path / "full", "a1_x.py", simple("a1"))
    ini = tmp_path / "alembic.ini"
    ini.write_text(
        "[alembic]\nscript_location = %(here)s\npath_separator = os\n"
        f"version_locations = %(here)s/full{os.pathsep}%(here)s/empty{os.pathsep}%(here)s/gone\n"
    )
    loaded = load_history(alembic_ini=ini)
    assert list(loaded.graph.revisions) == ["a1"]
    assert f"no revision files in {tmp_path / 'empty'}" in loaded.problems
    assert f"version location {tmp_path / 'gone'} does not exist" in loaded.problems
    assert loaded.graph.pending([]) == ["a1"]


def test_script_location_without_an_ini_reads_its_versions_folder(tmp_path: Path) -> None:
    write(tmp_path / "versions", "a1_x.py", simple("a1"))
    assert list(load_history(tmp_path).graph.revisions) == ["a1"]
    with pytest.raises(ScriptLocationError):
        load_history(tmp_path / "missing")


def test_broken_files_are_reported_without_hiding_the_rest(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    write(versions, "a1_base.py", simple("a1"))
    write(versions, "b2_next.py", simple("b2", "a1"))
    write(versions, "c3_broken.py", "revision = 'c3'\ndown_revision = ('b2'\ndef upgrade():\n")
    write(versions, "d4_orphan.py", simple("d4", "gone"))
    write(versions, "e5_helper.py", "VALUE = 1\n")
    other = tmp_path / "other"
    write(other, "zz_copy.py", simple("b2", "a1"))
    ini = tmp_path / "alembic.ini"
    ini.write_text(
        "[alembic]\nscript_location = %(here)s\npath_separator = os\n"
        f"version_locations = %(here)s/versions{os.pathsep}%(here)s/other\n"
    )
    loaded = load_history(alembic_ini=ini)
    graph = loaded.graph
    # The file that does not parse stays as a placeholder, so b2 is no false head.
    assert sorted(graph.revisions) == ["a1", "b2", "c3", "d4"]
    assert graph.revisions["c3"].unreadable and graph.revisions["c3"].down_revisions == ()
    assert f"{versions.resolve()}/c3_broken.py:2: syntax error: '(' was never closed" in (
        loaded.problems
    )
    assert any("e5_helper.py: no revision id" in p for p in loaded.problems)
    assert any("d4" in p and "gone" in p for p in loaded.problems)
    assert any("b2_next.py" in p and "zz_copy.py" in p and "twice" in p for p in loaded.problems)
    assert graph.heads == ("c3", "d4")


def test_warm_load_reuses_everything_and_a_change_reparses_only_that_file(
    tmp_path: Path,
) -> None:
    versions = tmp_path / "versions"
    write(versions, "a1_x.py", simple("a1"))
    changed = write(versions, "b2_x.py", simple("b2", "a1"))
    age(versions)  # a parse of a file written this instant is not trusted for long
    first = load_history(tmp_path)
    assert load_history(tmp_path) is first

    changed.write_text(simple("b2", "a1", branch_labels="main"))
    half_an_hour_ago = time.time_ns() - 1800 * 1_000_000_000
    os.utime(changed, ns=(half_an_hour_ago, half_an_hour_ago))
    second = load_history(tmp_path)
    assert second is not first
    assert second.fingerprint != first.fingerprint
    assert second.graph.revisions["a1"] is first.graph.revisions["a1"]
    assert second.graph.revisions["b2"].branch_labels == ("main",)

    write(versions, "c3_x.py", simple("c3", "b2"))
    third = load_history(tmp_path)
    assert third.graph.heads == ("c3",)
    assert third.graph.revisions["b2"] is second.graph.revisions["b2"]
    (versions / "c3_x.py").unlink()
    assert load_history(tmp_path).graph.heads == ("b2",)


def test_a_rewrite_within_the_same_timestamp_tick_is_still_seen(tmp_path: Path) -> None:
    path = write(tmp_path / "versions", "a1_x.py", simple("a1", None, branch_labels="left"))
    assert load_history(tmp_path).graph.revisions["a1"].branch_labels == ("left",)
    stat = path.stat()
    path.write_text(simple("a1", None, branch_labels="rite"))  # same size...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ...and a coarse clock's mtime
    assert load_history(tmp_path).graph.revisions["a1"].branch_labels == ("rite",)


def test_the_full_syntax_check_is_kept_per_file_until_the_file_changes(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    write(versions, "a1_x.py", simple("a1"))
    edited = write(versions, "b2_x.py", simple("b2", "a1"))
    age(versions)
    assert syntax_problems(load_history(tmp_path)) == []
    edited.write_text(simple("b2", "a1").replace("def upgrade():", "def upgrade(:"))
    problems = syntax_problems(load_history(tmp_path))
    assert len(problems) == 1 and problems[0].startswith(f"{edited.resolve()}:")


def age(root: Path, seconds: int = 3600) -> None:
    """Set every file's and folder's mtime below root to `seconds` ago, oldest-safe."""
    past = time.time_ns() - seconds * 1_000_000_000
    for path in [*root.rglob("*"), root]:
        os.utime(path, ns=(past, past))


def test_an_old_unchanged_directory_is_checked_by_stat_alone_and_every_change_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = tmp_path / "versions"
    write(versions / "2024", "a1_x.py", simple("a1"))
    write(versions, "b2_x.py", simple("b2", "a1"))
    ini = tmp_path / "alembic.ini"
    ini.write_text(
        "[alembic]\nscript_location = %(here)s\nrecursive_version_locations = true\n"
        "path_separator = os\n"
    )
    age(versions)
    scans: list[object] = []
    real_scan = cache._scan
    monkeypatch.setattr(cache, "_scan", lambda s: scans.append(s) or real_scan(s))

    first = load_history(alembic_ini=ini)
    assert load_history(alembic_ini=ini) is first
    assert len(scans) == 1  # the second look listed nothing

    # A file added to a nested folder moves that folder's mtime.
    write(versions / "2024", "c3_x.py", simple("c3", "b2"))
    assert load_history(alembic_ini=ini).graph.heads == ("c3",)
    # Recently written files are not trusted to a stat: the next look lists again.
    load_history(alembic_ini=ini)
    assert len(scans) == 3

    # In an aged tree, a same-size edit with an older mtime, and a new folder, are both seen.
    age(versions)
    load_history(alembic_ini=ini)
    edited = versions / "b2_x.py"
    edited.write_text(edited.read_text().replace("b2 message", "b2 changed"))
    os.utime(edited, ns=(1_000_000_000, 1_000_000_000))
    assert load_history(alembic_ini=ini).graph.revisions["b2"].message == "b2 changed"
    age(versions)
    load_history(alembic_ini=ini)
    write(versions / "2025", "d4_x.py", simple("d4", "c3"))
    assert load_history(alembic_ini=ini).graph.heads == ("d4",)
    (versions / "2025" / "d4_x.py").unlink()
    assert load_history(alembic_ini=ini).graph.heads == ("c3",)


def first_mtime(loaded: LoadedHistory, rev: str) -> int:
    return os.stat(loaded.graph.revisions[rev].path).st_mtime_ns


def test_fingerprint_follows_files_not_their_parse(tmp_path: Path) -> None:
    path = write(tmp_path / "versions", "a1_x.py", simple("a1"))
    before = fingerprint(tmp_path)
    assert before == load_history(tmp_path).fingerprint == fingerprint(tmp_path)
    assert len(before) == 64
    os.utime(path, ns=(1, os.stat(path).st_mtime_ns + 1_000_000))
    assert fingerprint(tmp_path) != before


def test_concurrent_loads_agree(tmp_path: Path) -> None:
    ini = write_project(tmp_path, random_history(300, seed=5))
    results: list[LoadedHistory] = []

    def load() -> None:
        results.append(load_history(alembic_ini=ini))

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(r) for r in results}) == 1
    assert len(results[0].graph) == 300


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_generated_histories_load_like_alembic(tmp_path: Path, seed: int) -> None:
    ini = write_project(tmp_path, random_history(400, seed=seed))
    graph = load_history(alembic_ini=ini).graph
    script = ScriptDirectory.from_config(Config(str(ini)))
    assert graph.problems == []
    assert graph.heads == tuple(script.get_heads())
    assert graph.bases == tuple(script.get_bases())
    assert graph.topological() == [s.revision for s in script.walk_revisions()]
    for revision in graph.revisions:
        assert set(graph.labels_of(revision)) == script.get_revision(revision).branch_labels
    order = graph.topological()
    for start in order[:: len(order) // 7]:
        steps = script._upgrade_revs("heads", (start,))  # type: ignore[arg-type]
        assert graph.pending([start]) == [s.revision.revision for s in steps]
        down = script._downgrade_revs(order[-1], (start,))  # type: ignore[arg-type]
        ours = graph.plan([start], order[-1], "downgrade")
        assert [s.revision for s in ours] == [s.revision.revision for s in down]


def test_alembics_own_loader_reads_values_that_are_not_literals(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    write(versions, "a1_x.py", simple("a1"))
    write(
        versions,
        "b2_x.py",
        """\
        LABEL = "expand"
        revision = "b2"
        down_revision = "a1"
        branch_labels = (LABEL,)
        """,
    )
    write(versions, "c3_x.py", simple("c3", "b2") + "\nraise RuntimeError('needs the app')\n")
    static = load_history(tmp_path)  # the file's own constant is read statically too
    assert static.graph.revisions["b2"].branch_labels == ("expand",)
    assert static.graph.revisions["b2"].problems == ()

    loaded = load_history_with_alembic(tmp_path, python=sys.executable)
    assert loaded.graph.revisions["b2"].branch_labels == ("expand",)
    assert loaded.graph.revisions["b2"].problems == ()
    assert any("c3_x.py" in p and "RuntimeError: needs the app" in p for p in loaded.problems)
    assert loaded.fingerprint == static.fingerprint
    assert load_history_with_alembic(tmp_path, python=sys.executable) is loaded


def test_alembics_loader_runs_revision_files_without_the_dashboards_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = tmp_path / "seen.txt"
    monkeypatch.setenv("DATABASE_URL", "postgresql://dashboard:own-db-pw@db/dashboard")
    monkeypatch.setenv("SECRET_KEY", "the-dashboards-key")
    monkeypatch.setenv("PROD_DATABASE_URL", "postgresql://app:prod-pw@prod/app")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    write(
        tmp_path / "versions",
        "a1_x.py",
        simple("a1")
        + f"\nimport os\nopen({str(seen)!r}, 'w').write(repr(sorted(os.environ.items())))\n",
    )
    loaded = load_history_with_alembic(tmp_path, python=sys.executable)
    assert "a1" in loaded.graph.revisions, loaded.problems
    text = seen.read_text()
    for secret in ("own-db-pw", "the-dashboards-key", "prod-pw", "DATABASE_URL", "SECRET_KEY"):
        assert secret not in text
    assert "'LC_ALL', 'C.UTF-8'" in text and "'PATH'" in text  # what an interpreter needs


def test_alembic_loader_failure_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    write(tmp_path / "versions", "a1_x.py", simple("a1"))
    loaded = load_history_with_alembic(tmp_path, python=str(tmp_path / "no-python"))
    assert len(loaded.graph) == 0
    assert any(p.startswith("Alembic's loader did not run") for p in loaded.problems)


def test_render_revision_round_trips_through_the_parser() -> None:
    spec = RevisionSpec("abc123", ("p1", "p2"), ("lbl",), ("dep",), "merge things")
    parsed = parse_revision_file("abc123_merge_things.py", render_revision(spec).encode())
    assert isinstance(parsed, Revision)
    assert (parsed.revision, parsed.down_revisions, parsed.branch_labels, parsed.depends_on) == (
        "abc123",
        ("p1", "p2"),
        ("lbl",),
        ("dep",),
    )


def test_sample_project_reads_like_alembic() -> None:
    ini = ROOT / "migrations_project" / "alembic.ini"
    loaded = load_history(ROOT / "migrations_project")
    script = ScriptDirectory.from_config(Config(str(ini)))
    assert loaded.problems == ()
    assert loaded.graph.heads == tuple(script.get_heads())
    assert loaded.graph.topological() == [s.revision for s in script.walk_revisions()]
