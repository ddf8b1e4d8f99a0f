"""Histories real projects write: labels from the application's constants, headers that do not parse."""

import html
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from dashboard import scripts
from dashboard.config import ConfigError, load_config
from dashboard.history import BrokenHistory
from tests.statusenv import write_config

# What Alembic's own loader makes of a script directory, printed as JSON: each revision's
# declared ids and labels, its inherited labels, the heads and `upgrade heads` from base.
ALEMBIC_SEES = textwrap.dedent(
    """\
    import json, sys
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", sys.argv[1])
    script = ScriptDirectory.from_config(config)
    revisions = {}
    for rev in script.walk_revisions():
        revisions[rev.revision] = {
            "down": list(rev._versioned_down_revisions),
            "labels": sorted(rev._orig_branch_labels),
            "inherited": sorted(rev.branch_labels),
            "depends_on": sorted(rev._resolved_dependencies),
        }
    upgrade = [s.revision.revision for s in script._upgrade_revs("heads", ())]
    print(json.dumps({"revisions": revisions, "heads": list(script.get_heads()),
                      "upgrade": upgrade}))
    """
)


def alembic_sees(location: Path, *, path: Path) -> dict[str, Any]:
    """Return what Alembic's loader reads from location, with path on sys.path (a subprocess)."""
    done = subprocess.run(
        [sys.executable, "-c", ALEMBIC_SEES, str(location)],
        env={**os.environ, "PYTHONPATH": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def revision(folder: Path, rev: str, header: str, *, name: str = "") -> Path:
    """Write a revision file whose header (imports and ids) is as given."""
    text = f'"""step {rev}\n\nRevision ID: {rev}\n"""\n' + textwrap.dedent(header)
    text += "\n\ndef upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n"
    return write(folder / (name or f"{rev}_step.py"), text)


def age(*folders: Path) -> None:
    """Date every file an hour back, so that its parse is trusted until it changes."""
    then = time.time_ns() - 3600 * 1_000_000_000
    for folder in folders:
        for path in [folder, *folder.rglob("*")]:
            os.utime(path, ns=(then, then))


def application(root: Path) -> None:
    """Write the application package beside the script directory, as neutron-style projects do."""
    write(
        root / "myapp" / "cli.py",
        """\
        import os

        EXPAND_BRANCH = "expand"
        CONTRACT_BRANCH = "con" + "tract"
        DATA_BRANCH = f"{EXPAND_BRANCH}_data"
        BASE_REVISION = "a1a1a1a1"
        FROM_ENV = os.environ.get("BRANCH", "x")
        if FROM_ENV:
            CONDITIONAL = "maybe"
        """,
    )
    write(
        root / "myapp" / "__init__.py",
        "from . import cli\nfrom .labels import REPORTING as REPORTING_BRANCH\n",
    )
    write(root / "myapp" / "labels.py", 'from .cli import EXPAND_BRANCH\nREPORTING = "reporting"\n')


def project(root: Path) -> Path:
    """Write a project whose revisions take labels and ids from myapp; return the script location."""
    application(root)
    versions = root / "migrations" / "versions"
    revision(versions, "a1a1a1a1", "revision = 'a1a1a1a1'\ndown_revision = None\n")
    revision(
        versions,
        "b2b2b2b2",
        """\
        from myapp import cli
        revision = "b2b2b2b2"
        down_revision = cli.BASE_REVISION
        branch_labels = (cli.EXPAND_BRANCH,)
        """,
    )
    revision(
        versions,
        "c3c3c3c3",
        """\
        import myapp.cli as cli
        revision = "c3c3c3c3"
        down_revision = "a1a1a1a1"
        branch_labels = (cli.CONTRACT_BRANCH,)
        depends_on = (cli.EXPAND_BRANCH,)
        """,
    )
    revision(
        versions,
        "d4d4d4d4",
        """\
        from myapp.cli import DATA_BRANCH as DATA, EXPAND_BRANCH
        revision = "d4d4d4d4"
        down_revision = "b2b2b2b2"
        branch_labels = DATA
        depends_on = [EXPAND_BRANCH]
        """,
    )
    revision(
        versions,
        "e5e5e5e5",
        """\
        import myapp
        from myapp import REPORTING_BRANCH
        revision = "e5e5e5e5"
        down_revision = "c3c3c3c3"
        branch_labels = (REPORTING_BRANCH, myapp.cli.EXPAND_BRANCH + "_late")
        """,
    )
    return root / "migrations"


def test_labels_from_the_application_read_as_alembic_reads_them(tmp_path: Path) -> None:
    location = project(tmp_path)
    loaded = scripts.load_history(location)
    graph = loaded.graph
    assert loaded.problems == ()
    seen = alembic_sees(location, path=tmp_path)
    for rev, alembic in seen["revisions"].items():
        ours = graph.revisions[rev]
        assert list(ours.down_revisions) == alembic["down"], rev
        assert sorted(ours.branch_labels) == alembic["labels"], rev
        assert sorted(graph.labels_of(rev)) == alembic["inherited"], rev
        assert sorted(graph.dependencies(rev)) == alembic["depends_on"], rev
    assert graph.revisions["b2b2b2b2"].branch_labels == ("expand",)
    assert graph.revisions["e5e5e5e5"].branch_labels == ("reporting", "expand_late")
    assert list(graph.heads) == seen["heads"]
    # No longer blocked: the plan is Alembic's own.
    assert graph.pending([]) == seen["upgrade"]
    app = tmp_path / "myapp"
    assert set(loaded.constant_sources) == {
        str(app / "cli.py"),
        str(app / "__init__.py"),
        str(app / "labels.py"),
    }


def test_editing_the_constant_reads_the_history_again(tmp_path: Path) -> None:
    location = project(tmp_path)
    age(tmp_path)
    first = scripts.load_history(location)
    assert scripts.load_history(location) is first
    cli = tmp_path / "myapp" / "cli.py"
    cli.write_text(cli.read_text().replace('"expand"', '"widen"'))
    later = time.time_ns() - 1800 * 1_000_000_000
    os.utime(cli, ns=(later, later))
    second = scripts.load_history(location)
    assert second is not first
    assert second.fingerprint != first.fingerprint
    assert second.graph.revisions["b2b2b2b2"].branch_labels == ("widen",)
    assert second.graph.revisions["d4d4d4d4"].branch_labels == ("widen_data",)


def test_a_source_root_elsewhere_is_searched(tmp_path: Path) -> None:
    location = tmp_path / "deploy" / "migrations"
    revision(location / "versions", "a1a1a1a1", "revision = 'a1a1a1a1'\ndown_revision = None\n")
    revision(
        location / "versions",
        "b2b2b2b2",
        "from otherapp.db import cli\nrevision = 'b2b2b2b2'\ndown_revision = 'a1a1a1a1'\n"
        "branch_labels = cli.EXPAND_BRANCH\n",
    )
    age(tmp_path)
    missing = scripts.load_history(location)
    assert missing.graph.revisions["b2b2b2b2"].branch_labels == ()
    (problem,) = missing.graph.revisions["b2b2b2b2"].problems
    assert problem.startswith("branch_labels is not a literal: cli.EXPAND_BRANCH; module otherapp")
    assert "set the project's source_root" in problem
    with pytest.raises(BrokenHistory):
        missing.graph.pending([])

    source = tmp_path / "src"
    write(source / "otherapp" / "__init__.py", "")
    write(source / "otherapp" / "db" / "cli.py", 'EXPAND_BRANCH = "expand"\n')
    found = scripts.load_history(location, source_root=source)
    assert found.graph.revisions["b2b2b2b2"].branch_labels == ("expand",)
    assert alembic_sees(location, path=source)["revisions"]["b2b2b2b2"]["labels"] == ["expand"]
    assert found.graph.pending([]) == ["a1a1a1a1", "b2b2b2b2"]

    # The package appearing later beside the project is seen without a restart.
    write(tmp_path / "deploy" / "otherapp" / "db" / "cli.py", 'EXPAND_BRANCH = "beside"\n')
    beside = scripts.load_history(location)
    assert beside.graph.revisions["b2b2b2b2"].branch_labels == ("beside",)


def test_source_root_is_read_from_the_config_relative_to_it(tmp_path: Path) -> None:
    location = tmp_path / "migrations"
    revision(location / "versions", "a1a1a1a1", "revision = 'a1a1a1a1'\ndown_revision = None\n")
    (tmp_path / "code").mkdir()
    config = write_config(
        tmp_path / "dashboard.toml",
        {},
        {"app": {"script_location": "migrations", "source_root": "code"}},
    )
    assert load_config(config).projects["app"].source_root == (tmp_path / "code").resolve()
    bad = write_config(
        tmp_path / "bad.toml", {}, {"app": {"script_location": "migrations", "source_root": "nope"}}
    )
    with pytest.raises(
        ConfigError, match=r"\[projects.app\] source_root .*nope is not a directory"
    ):
        load_config(bad)


def test_what_cannot_be_resolved_says_which_name_and_why(tmp_path: Path) -> None:
    location = project(tmp_path)
    versions = location / "versions"
    cases = {
        "f6f6f6f6": ("from myapp import cli", "(cli.NOWHERE,)", "myapp.cli ("),
        "f7f7f7f7": (
            "from myapp import cli",
            "cli.FROM_ENV",
            "is os.environ.get('BRANCH', 'x'), which is not a literal",
        ),
        "f8f8f8f8": ("from myapp import cli", "cli.CONDITIONAL", "assigned inside a block"),
        "f9f9f9f9": ("import nothere", "nothere.LABEL", "module nothere is not found in"),
        "fafafafa": ("", "(helpers.LABEL,)", "helpers is not imported or assigned"),
    }
    for rev, (imports, labels, _) in cases.items():
        revision(
            versions,
            rev,
            f"{imports}\nrevision = {rev!r}\ndown_revision = 'a1a1a1a1'\nbranch_labels = {labels}\n",
        )
    graph = scripts.load_history(location).graph
    for rev, (_, labels, why) in cases.items():
        (problem,) = graph.revisions[rev].problems
        assert problem.startswith(f"branch_labels is not a literal: {labels}; "), problem
        assert why in problem, problem
    assert "defines no NOWHERE at module level" in graph.revisions["f6f6f6f6"].problems[0]
    # The rest still reads: only these revisions carry problems.
    assert graph.revisions["b2b2b2b2"].branch_labels == ("expand",)
    assert {rev for rev, item in graph.revisions.items() if item.problems} == set(cases)


def broken_project(root: Path) -> Path:
    """a1 <- b2 <- c3 (its header does not parse) <- d4, and a tip file of no Alembic shape."""
    versions = root / "versions"
    revision(versions, "a1a1a1a1", "revision = 'a1a1a1a1'\ndown_revision = None\n")
    revision(versions, "b2b2b2b2", "revision = 'b2b2b2b2'\ndown_revision = 'a1a1a1a1'\n")
    revision(
        versions,
        "c3c3c3c3",
        "revision = 'c3c3c3c3'\ndown_revision = 'b2b2b2b2'\nbranch_labels = (\n",
        name="c3c3c3c3_add_things.py",
    )
    revision(versions, "d4d4d4d4", "revision = 'd4d4d4d4'\ndown_revision = 'c3c3c3c3'\n")
    return root


def test_a_header_that_does_not_parse_stays_as_a_broken_placeholder(tmp_path: Path) -> None:
    location = broken_project(tmp_path)
    loaded = scripts.load_history(location)
    graph = loaded.graph
    placeholder = graph.revisions["c3c3c3c3"]
    assert placeholder.unreadable and placeholder.down_revisions == ()
    assert graph.children("c3c3c3c3") == ("d4d4d4d4",)
    assert graph.heads == ("d4d4d4d4",)  # b2 is no false second head
    assert graph.bases == ("a1a1a1a1",)
    assert loaded.problems[0].startswith(
        "c3c3c3c3_add_things.py cannot be parsed: Alembic would refuse to load the whole history"
    )
    assert any(re.search(r"c3c3c3c3_add_things\.py:\d+: syntax error", p) for p in loaded.problems)
    with pytest.raises(BrokenHistory, match="Alembic would refuse"):
        graph.pending(["a1a1a1a1"])
    # And Alembic itself does refuse it.
    done = subprocess.run(
        [sys.executable, "-c", ALEMBIC_SEES, str(location)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "SyntaxError" in done.stderr


def test_a_file_of_no_alembic_shape_gets_a_name_from_the_file(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    revision(versions, "a1a1a1a1", "revision = 'a1a1a1a1'\ndown_revision = None\n")
    write(versions / "tip-fix.py", '"""fix\n\nRevises: a1a1a1a1\n"""\nrevision = (\n')
    graph = scripts.load_history(tmp_path).graph
    assert graph.revisions["tip_fix"].unreadable
    assert graph.heads == ("tip_fix",)
    assert not graph.is_head("a1a1a1a1")


@pytest.mark.django_db
def test_the_graph_page_shows_the_placeholder_and_says_why(
    client: Client, settings: Any, tmp_path: Path
) -> None:
    location = broken_project(tmp_path / "project")
    config = write_config(
        tmp_path / "dashboard.toml", {}, {"broken": {"script_location": str(location)}}
    )
    settings.DASHBOARD_CONFIG = str(config)
    call_command("adduser", "vic", role="viewer", password="correct-horse-9")
    client.login(username="vic", password="correct-horse-9")
    page = html.unescape(client.get("/projects/broken/graph").content.decode())
    row = re.search(r'<li id="rev-c3c3c3c3".*?</li>', page, re.DOTALL)
    assert row is not None
    assert "cannot be parsed" in row.group(0) and "is-unreadable" in row.group(0)
    problems = page.split('id="problems"', 1)[1].split("</section>", 1)[0]
    assert "Alembic would refuse to load the whole history" in problems
    assert re.search(r"c3c3c3c3_add_things\.py:\d+: syntax error", problems)
    document = client.get("/api/projects/broken/graph").json()
    assert document["heads"] == ["d4d4d4d4"]
    (item,) = [r for r in document["revisions"] if r["revision"] == "c3c3c3c3"]
    assert item["unreadable"] is True and item["down_revisions"] == []


def test_the_placeholder_is_never_offered_as_a_target(tmp_path: Path) -> None:
    from dashboard.selectors import targets

    graph = scripts.load_history(broken_project(tmp_path)).graph
    offered = [
        *targets._upgrade_targets(graph, None),
        *targets._downgrade_targets(graph, None),
        *targets._stamp_targets(graph, None),
    ]
    values = {choice.value for choice in offered}
    assert "c3c3c3c3" not in values
    assert {"a1a1a1a1", "b2b2b2b2", "d4d4d4d4"} <= values


def test_branches_labelled_from_a_source_root_pass_the_heads_guard(
    tmp_path: Path, settings: Any
) -> None:
    location = tmp_path / "deploy" / "migrations"
    revision(location / "versions", "a1a1a1a1", "revision = 'a1a1a1a1'\ndown_revision = None\n")
    for rev, name in (("b2b2b2b2", "EXPAND"), ("c3c3c3c3", "CONTRACT")):
        revision(
            location / "versions",
            rev,
            f"from otherapp.db import cli\nrevision = '{rev}'\ndown_revision = 'a1a1a1a1'\n"
            f"branch_labels = (cli.{name},)\n",
        )
    source = tmp_path / "elsewhere" / "code"  # not a folder the search walks to by itself
    write(source / "otherapp" / "__init__.py", "")
    write(source / "otherapp" / "db" / "cli.py", 'EXPAND = "expand"\nCONTRACT = "contract"\n')
    age(tmp_path)
    settings.DASHBOARD_CONFIG = str(
        write_config(
            tmp_path / "dashboard.toml",
            {},
            {"app": {"script_location": str(location), "source_root": str(source)}},
        )
    )
    # Both heads carry a label from the application, so they are intentional branches: with the
    # project's source_root the guard sees the labels (without it, it saw two unlabelled heads).
    call_command("heads", "--check", "--project", "app")
    from dashboard.selectors.heads_guard import heads_banner

    assert heads_banner(project="app") is None


def alembic_refuses(location: Path, *, path: Path) -> str:
    """Return the error Alembic's loader fails with on location (a subprocess); fail if it loads."""
    done = subprocess.run(
        [sys.executable, "-c", ALEMBIC_SEES, str(location)],
        env={**os.environ, "PYTHONPATH": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0, done.stdout
    return done.stderr


def labelled(root: Path, header: str) -> Path:
    """Write a two-revision project whose second revision's header is as given."""
    versions = root / "migrations" / "versions"
    revision(versions, "a1a1a1a1", "revision = 'a1a1a1a1'\ndown_revision = None\n")
    revision(versions, "b2b2b2b2", f"{header}\nrevision = 'b2b2b2b2'\ndown_revision = 'a1a1a1a1'\n")
    return root / "migrations"


def test_a_constant_built_from_its_own_earlier_value_reads_as_python_does(tmp_path: Path) -> None:
    write(tmp_path / "app" / "__init__.py", "")
    write(
        tmp_path / "app" / "cli.py",
        'EXPAND = "expand"\nEXPAND = EXPAND + "_v2"\nBASE = "a1a1a1a1"\nFIRST = BASE\nBASE = "zz"\n',
    )
    location = labelled(
        tmp_path,
        "from app import cli\nLABEL = cli.EXPAND\nLABEL = f'{LABEL}_x'\n"
        "branch_labels = (cli.EXPAND, LABEL)\ndepends_on = cli.FIRST",
    )
    graph = scripts.load_history(location).graph
    assert graph.revisions["b2b2b2b2"].problems == ()
    assert graph.revisions["b2b2b2b2"].branch_labels == ("expand_v2", "expand_v2_x")
    assert graph.dependencies("b2b2b2b2") == ("a1a1a1a1",)
    seen = alembic_sees(location, path=tmp_path)["revisions"]["b2b2b2b2"]
    assert seen["labels"] == sorted(graph.revisions["b2b2b2b2"].branch_labels)
    assert seen["depends_on"] == ["a1a1a1a1"]


def test_two_names_bound_from_each_other_in_one_module_are_unresolved(tmp_path: Path) -> None:
    # In the revision itself Python stops at the first name used before it is assigned.
    plain = labelled(tmp_path / "plain", "A = B\nB = A\nbranch_labels = (A,)")
    (problem,) = scripts.load_history(plain).graph.revisions["b2b2b2b2"].problems
    assert problem.startswith("branch_labels is not a literal: (A,); B is used in the revision")
    assert "before it is assigned" in problem
    assert "NameError" in alembic_refuses(plain, path=tmp_path / "plain")

    # Through the module's own attributes the two names truly refer to each other.
    loop = tmp_path / "loop"
    write(loop / "app" / "__init__.py", "")
    write(loop / "app" / "cli.py", "from app import cli\nA = cli.B\nB = cli.A\n")
    location = labelled(loop, "from app import cli\nbranch_labels = (cli.A,)")
    loaded = scripts.load_history(location)
    (problem,) = loaded.graph.revisions["b2b2b2b2"].problems
    assert "A in app.cli (" in problem
    assert problem.endswith("refers to itself through app.cli.B -> app.cli.A"), problem
    assert any("refers to itself" in p for p in loaded.problems)
    assert "partially initialized module" in alembic_refuses(location, path=loop)


def test_names_imported_from_each_other_across_two_modules_are_unresolved(tmp_path: Path) -> None:
    write(tmp_path / "app" / "__init__.py", "")
    write(tmp_path / "app" / "a.py", "from app.b import Y\nX = Y\n")
    write(tmp_path / "app" / "b.py", "from app.a import X\nY = X\n")
    write(tmp_path / "app" / "s.py", "from app.t import *\n")
    write(tmp_path / "app" / "t.py", "from app.s import *\n")
    location = labelled(tmp_path, "from app import a, s\nbranch_labels = (a.X,)\ndepends_on = s.Z")
    revision(
        location / "versions",
        "c3c3c3c3",
        "from app import b\nrevision = 'c3c3c3c3'\ndown_revision = 'a1a1a1a1'\n",
    )
    graph = scripts.load_history(location).graph
    depends, labels = graph.revisions["b2b2b2b2"].problems
    assert labels.startswith("branch_labels is not a literal: (a.X,); X in app.a (")
    assert labels.endswith("refers to itself through app.a.Y -> app.b.Y -> app.b.X -> app.a.X")
    assert depends.startswith("depends_on is not a literal: s.Z; ")
    assert depends.endswith(
        "Z in app.s (" + str(tmp_path / "app" / "s.py") + ") refers to itself"
        " through app.t.Z -> app.s.Z"
    )
    # The rest of the history still reads.
    assert graph.revisions["c3c3c3c3"].problems == ()
    assert sorted(graph.heads) == ["b2b2b2b2", "c3c3c3c3"]
    assert "cannot import name" in alembic_refuses(location, path=tmp_path)

    # A mutual import Python does finish (the name is bound before the other module runs).
    write(tmp_path / "app" / "a.py", 'X = "x"\nfrom app.b import Y\n')
    write(tmp_path / "app" / "b.py", 'from app.a import X\nY = X + "_y"\n')
    revision(
        location / "versions",
        "b2b2b2b2",
        "from app import a\nrevision = 'b2b2b2b2'\ndown_revision = 'a1a1a1a1'\n"
        "branch_labels = (a.Y,)\n",
    )
    revision(
        location / "versions", "c3c3c3c3", "revision = 'c3c3c3c3'\ndown_revision = 'a1a1a1a1'\n"
    )
    graph = scripts.load_history(location).graph
    assert graph.revisions["b2b2b2b2"].branch_labels == ("x_y",)
    assert alembic_sees(location, path=tmp_path)["revisions"]["b2b2b2b2"]["labels"] == ["x_y"]


def test_constants_past_the_limits_are_unresolved_not_a_crash(tmp_path: Path) -> None:
    from dashboard.scripts import constants

    write(tmp_path / "app" / "__init__.py", "")
    # Deeper than Python's recursion limit, and a module too large to read.
    write(tmp_path / "app" / "deep.py", "X = " + " + ".join(['"a"'] * 5000) + "\n")
    big = "X = 'x'\n" + "#" * (constants.MAX_MODULE_BYTES + 1) + "\n"
    write(tmp_path / "app" / "big.py", big)
    location = labelled(
        tmp_path, "from app import deep, big\nbranch_labels = deep.X\ndepends_on = (big.X,)"
    )
    depends, labels = scripts.load_history(location).graph.revisions["b2b2b2b2"].problems
    assert labels.startswith("branch_labels is not a literal: deep.X; ")
    assert "too deeply" in labels, labels
    assert depends.startswith("depends_on is not a literal: (big.X,); app.big (")
    assert "is larger than" in depends, depends
    # Parsed, but deeper than reading it may recurse.
    write(tmp_path / "app" / "nested.py", "X = " + " + ".join(['"a"'] * 1500) + "\n")
    revision(
        location / "versions",
        "c3c3c3c3",
        "from app import nested\nrevision = 'c3c3c3c3'\ndown_revision = 'a1a1a1a1'\n"
        "branch_labels = nested.X\n",
    )
    (problem,) = scripts.load_history(location).graph.revisions["c3c3c3c3"].problems
    assert problem == "branch_labels is not a literal: nested.X; its value nests too deeply to read"
    # The same depth in the revision's own header: a placeholder, the rest still reads.
    revision(
        location / "versions",
        "c3c3c3c3",
        "revision = 'c3c3c3c3'\ndown_revision = 'a1a1a1a1'\nbranch_labels = "
        + " + ".join(['"a"'] * 1500),
    )
    loaded = scripts.load_history(location)
    assert loaded.graph.revisions["c3c3c3c3"].unreadable
    assert f"{location / 'versions' / 'c3c3c3c3_step.py'}: its header nests too deeply to read" in (
        loaded.problems
    )
    assert loaded.graph.revisions["b2b2b2b2"].down_revisions == ("a1a1a1a1",)


def test_wide_values_stop_at_the_step_limit(tmp_path: Path) -> None:
    write(tmp_path / "app" / "__init__.py", "")
    write(tmp_path / "app" / "wide.py", 'X = "ab"\n' + "X = X + X\n" * 40)
    location = labelled(tmp_path, "from app import wide\nbranch_labels = wide.X")
    (problem,) = scripts.load_history(location).graph.revisions["b2b2b2b2"].problems
    assert problem.startswith("branch_labels is not a literal: wide.X; ")
    assert "takes more than" in problem, problem


@pytest.mark.django_db
def test_a_looping_constant_leaves_every_page_up_and_shows_why(
    client: Client, settings: Any, tmp_path: Path
) -> None:
    from tests.statusenv import empty_sqlite

    root = tmp_path / "project"
    write(root / "app" / "__init__.py", "")
    write(root / "app" / "cli.py", 'EXPAND = "expand"\nEXPAND = EXPAND + "_v2"\nA = B\nB = A\n')
    write(root / "app" / "a.py", "from app.b import Y\nX = Y\n")
    write(root / "app" / "b.py", "from app.a import X\nY = X\n")
    location = labelled(
        root, "from app import a, cli\nbranch_labels = (cli.EXPAND,)\ndepends_on = a.X"
    )
    revision(
        location / "versions",
        "c3c3c3c3",
        "from app import cli\nrevision = 'c3c3c3c3'\ndown_revision = 'b2b2b2b2'\n"
        "branch_labels = cli.A\n",
    )
    config = write_config(
        tmp_path / "dashboard.toml",
        {"dev": {"project": "app", "url": empty_sqlite(tmp_path / "dev.db")}},
        {"app": {"script_location": str(location)}},
    )
    settings.DASHBOARD_CONFIG = str(config)
    call_command("adduser", "vic", role="viewer", password="correct-horse-9")
    client.login(username="vic", password="correct-horse-9")
    client.raise_request_exception = False
    for url in ("/", "/environments/dev", "/api/environments"):
        assert client.get(url).status_code == 200, url
    page = client.get("/projects/app/graph")
    assert page.status_code == 200
    problems = html.unescape(page.content.decode()).split('id="problems"', 1)[1]
    assert "X in app.a (" in problems and "refers to itself through" in problems
    assert "B is used in app.cli (" in problems and "before it is assigned" in problems
    document = client.get("/api/projects/app/graph")
    assert document.status_code == 200
    shown = document.json()["problems"]
    assert any("refers to itself through app.a.Y -> app.b.Y" in p for p in shown), shown
    assert any("B is used in app.cli (" in p for p in shown), shown
    (b2,) = [r for r in document.json()["revisions"] if r["revision"] == "b2b2b2b2"]
    assert b2["branch_labels"] == ["expand_v2"]
    call_command("heads", "--project", "app")  # reads the history as the heads banner does
