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
