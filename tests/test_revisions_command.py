"""`manage.py revisions` agrees with Alembic's own loader on the sample and generated histories."""

import json
import os
import subprocess
import sys
import time
import warnings
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import to_tuple
from django.core.management import CommandError, call_command

from tests.genhistory import generate
from tests.statusenv import HEAD, ROOT, SAMPLE, write_config


def revisions(*args: str) -> str:
    """Run the command in this process and return what it printed."""
    out = StringIO()
    call_command("revisions", *args, stdout=out)
    return out.getvalue()


def use_projects(settings: Any, tmp_path: Path, projects: dict[str, dict[str, Any]]) -> None:
    path = write_config(tmp_path / f"dashboard-{time.monotonic_ns()}.toml", {}, projects)
    settings.DASHBOARD_CONFIG = str(path)


def alembic_reading(*, ini: Path | None = None, script_location: Path | None = None) -> dict:
    """Return heads, bases and each revision's links as Alembic's ScriptDirectory loads them."""
    config = Config(str(ini)) if ini else Config()
    if script_location is not None:
        config.set_main_option("script_location", str(script_location))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        script = ScriptDirectory.from_config(config)
        heads = list(script.get_heads())
        bases = list(script.get_bases())
        # Every revision descends from a base; walking up nextrev is linear where
        # walk_revisions() takes ten seconds on 10,000 revisions.
        found = {}
        todo = list(bases)
        while todo:
            rev = todo.pop()
            if rev in found:
                continue
            s = script.get_revision(rev)
            assert s is not None
            found[rev] = {
                "down_revisions": list(to_tuple(s.down_revision, default=())),
                "depends_on": list(to_tuple(s.dependencies, default=())),
                "branch_labels": list(to_tuple(s.module.branch_labels, default=())),
            }
            todo.extend(s.nextrev)
    return {"heads": heads, "bases": bases, "revisions": found}


def assert_agrees(document: dict, alembic: dict) -> None:
    assert document["heads"] == alembic["heads"]
    assert sorted(document["bases"]) == sorted(alembic["bases"])
    ours = {
        item["revision"]: {
            key: item[key] for key in ("down_revisions", "depends_on", "branch_labels")
        }
        for item in document["revisions"]
    }
    assert ours.keys() == alembic["revisions"].keys()
    assert ours == alembic["revisions"]
    assert document["problems"] == []


@pytest.fixture(scope="module")
def history_2k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write a generated history of 2,000 revisions once; return its alembic.ini."""
    return generate(tmp_path_factory.mktemp("h2k"), revisions=2_000, seed=2)


@pytest.fixture(scope="module")
def history_10k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write a generated history of 10,000 revisions once; return its alembic.ini."""
    return generate(tmp_path_factory.mktemp("h10k"), revisions=10_000, seed=10)


def test_sample_project_json_agrees_with_alembic(settings: Any, tmp_path: Path) -> None:
    use_projects(settings, tmp_path, {"blog": {"script_location": str(SAMPLE)}})
    document = json.loads(revisions("--project", "blog", "--json"))
    assert set(document) == {"heads", "bases", "revisions", "problems"}
    assert document["heads"] == [HEAD]
    assert_agrees(document, alembic_reading(script_location=SAMPLE))
    labelled = [item for item in document["revisions"] if item["branch_labels"]]
    assert [item["branch_labels"] for item in labelled] == [["reporting"]]


def test_sample_project_in_a_real_subprocess() -> None:
    env = {
        **os.environ,
        "DASHBOARD_INSECURE_DEV_KEY": "1",
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "revisions", "--script-location", str(SAMPLE), "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert_agrees(json.loads(done.stdout), alembic_reading(script_location=SAMPLE))


@pytest.mark.parametrize("size", ["2k", "10k"])
def test_generated_histories_agree_with_alembic(
    size: str, request: pytest.FixtureRequest, settings: Any, tmp_path: Path
) -> None:
    ini: Path = request.getfixturevalue(f"history_{size}")
    use_projects(settings, tmp_path, {"generated": {"alembic_ini": str(ini)}})
    document = json.loads(revisions("--project", "generated", "--json"))
    alembic = alembic_reading(ini=ini)
    assert len(document["revisions"]) == {"2k": 2_000, "10k": 10_000}[size]
    assert len(alembic["heads"]) > 1 and any(i["depends_on"] for i in document["revisions"])
    assert_agrees(document, alembic)
    assert json.loads(revisions("--alembic-ini", str(ini), "--json")) == document


def test_text_graph_draws_branches_and_merges() -> None:
    text = revisions("--script-location", str(SAMPLE))
    lines = text.splitlines()
    assert lines[0].endswith("9 revisions, 1 head, 1 base")
    assert lines[1] == f"*  {HEAD} (reporting) (head) add phone_number to users"
    assert "*  9e4f1b7a2c68 (reporting) (mergepoint) merge reporting into main" in lines
    assert "|\\" in lines and "|/" in lines
    assert "problem" not in text


def test_text_graph_lists_problems(tmp_path: Path) -> None:
    (tmp_path / "versions").mkdir()
    (tmp_path / "versions" / "a.py").write_text(
        'revision = "aaaa1111"\ndown_revision = "ffff9999"\n'
    )
    text = revisions("--script-location", str(tmp_path))
    assert "*  aaaa1111 (head)" in text
    assert "1 problem(s):" in text
    assert "names down_revision ffff9999, which does not exist" in text
    (tmp_path / "versions" / "b.py").write_text(
        'revision = "bbbb2222"\ndown_revision = "aaaa1111"\n\n\ndef upgrade(:\n    pass\n'
    )
    document = json.loads(revisions("--script-location", str(tmp_path), "--json"))
    assert [item["revision"] for item in document["revisions"]] == ["aaaa1111", "bbbb2222"]
    assert any(
        p.endswith("versions/b.py:5: syntax error: invalid syntax") for p in document["problems"]
    )
    empty = tmp_path / "empty"
    (empty / "versions").mkdir(parents=True)
    assert "(no revisions)" in revisions("--script-location", str(empty))


def test_unknown_project_lists_the_known_ones(settings: Any, tmp_path: Path) -> None:
    use_projects(
        settings,
        tmp_path,
        {"blog": {"script_location": str(SAMPLE)}, "shop": {"script_location": str(SAMPLE)}},
    )
    with pytest.raises(
        CommandError, match="no project named 'nope'; configured projects: blog, shop"
    ):
        revisions("--project", "nope")


def test_needs_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(CommandError):
        revisions("--json")
    with pytest.raises(CommandError):
        revisions("--project", "blog", "--script-location", str(SAMPLE))
    with pytest.raises(CommandError, match="is not a directory"):
        revisions("--script-location", str(tmp_path / "absent"))


def test_alembic_loader_projects_are_read_by_alembic(settings: Any, tmp_path: Path) -> None:
    location = tmp_path / "computed"
    (location / "versions").mkdir(parents=True)
    (location / "versions" / "a.py").write_text(
        '"""computed ids"""\nPREFIX = "abcd"\nrevision = PREFIX + "1234"\ndown_revision = None\n'
    )
    (location / "versions" / "b.py").write_text(
        '"""child"""\nrevision = "beef5678"\ndown_revision = "abcd" + "1234"\n'
    )
    use_projects(
        settings,
        tmp_path,
        {
            "static": {"script_location": str(location)},
            "computed": {
                "script_location": str(location),
                "loader": "alembic",
                "python": sys.executable,
            },
        },
    )
    by_alembic = json.loads(revisions("--project", "computed", "--json"))
    assert by_alembic["heads"] == ["beef5678"] and by_alembic["bases"] == ["abcd1234"]
    assert by_alembic["problems"] == []
    statically = json.loads(revisions("--project", "static", "--json"))
    assert any("revision is not a literal" in p for p in statically["problems"])
