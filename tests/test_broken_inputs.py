"""Broken inputs: bad script directories, bad configs and junk version tables never break the rest."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from sqlalchemy.pool import NullPool

from dashboard.models import Action
from dashboard.services import status, users
from tests.statusenv import HEAD, MID, ROOT, SAMPLE, empty_sqlite, write_config, write_versions

pytestmark = pytest.mark.django_db

R1, R2 = "aaaa00000001", "aaaa00000002"


def revision(folder: Path, rev: str, down: str | None, *, body: str = "", name: str = "") -> None:
    """Write one revision file of a tiny history."""
    (folder / (name or f"{rev}_step.py")).write_text(
        f'"""step {rev}\n\nRevision ID: {rev}\n"""\n{body}'
        f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = None\n"
        "depends_on = None\n\n\ndef upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n",
        encoding="utf-8",
    )


def syntax_error(folder: Path) -> None:
    revision(folder, R1, None)
    revision(folder, R2, R1, body="def broken(:\n    pass\n")


def duplicate_id(folder: Path) -> None:
    revision(folder, R1, None)
    revision(folder, R2, R1)
    revision(folder, R2, R1, name="zz_copy_of_step.py")


def cycle(folder: Path) -> None:
    revision(folder, R1, R2)
    revision(folder, R2, R1)


def missing_parent(folder: Path) -> None:
    revision(folder, R1, None)
    revision(folder, R2, "ffff99999999")


def no_files(folder: Path) -> None:
    (folder / "README").write_text("nothing here yet\n", encoding="utf-8")


@dataclass(frozen=True)
class Broken:
    """A broken script directory, the state its environment (at R2) gets, and the problem."""

    write: Callable[[Path], None]
    state: str
    state_label: str
    problem: str  # what the graph page, the graph API and the CLI say
    detail: str  # what the overview and environment page say about the environment


BROKEN = {
    # The file the environment is at does not parse: it stays as a placeholder, and since
    # Alembic would refuse to load the history, the history is invalid.
    "syntax error": Broken(
        syntax_error, "invalid", "invalid history", "syntax error", "syntax error"
    ),
    # Alembic keeps the shadowed copy among its heads, so nothing can be planned.
    "duplicate id": Broken(
        duplicate_id, "invalid", "invalid history", "is defined twice", "is defined twice"
    ),
    "cycle": Broken(cycle, "invalid", "invalid history", "cycle detected", "cycle detected"),
    "missing parent": Broken(
        missing_parent,
        "invalid",
        "invalid history",
        "names down_revision ffff99999999, which does not exist",
        "which does not exist",
    ),
    "no files": Broken(no_files, "unknown", "unknown", "no revision files", "no revision files"),
}


def two_projects(settings: Any, tmp_path: Path, broken: Broken) -> Path:
    """Configure the sample project (staging behind) and a broken one (brokenenv at R2)."""
    folder = tmp_path / "broken"
    (folder / "versions").mkdir(parents=True)
    broken.write(folder / "versions")
    staging = empty_sqlite(tmp_path / "staging.db")
    write_versions(staging, [MID])
    at_r2 = empty_sqlite(tmp_path / "broken.db")
    write_versions(at_r2, [R2])
    config = write_config(
        tmp_path / "dashboard.toml",
        {
            "staging": {"project": "blog", "url": staging},
            "brokenenv": {"project": "broken", "url": at_r2},
        },
        projects={
            "blog": {"script_location": str(SAMPLE)},
            "broken": {"script_location": str(folder)},
        },
    )
    settings.DASHBOARD_CONFIG = str(config)
    return config


def admin_client() -> Client:
    users.user_set_role(username="root", role="admin", password="correct-horse-9")
    client = Client()
    client.force_login(get_user_model().objects.get(username="root"))
    return client


def text_of(html: str) -> str:
    """Return a page's visible text on one line, entities left as they are."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def row(html: str, name: str) -> str:
    match = re.search(rf'<tr id="env-{re.escape(name)}".*?</tr>', html, re.DOTALL)
    assert match, f"no overview row for {name}"
    return text_of(match.group(0))


@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_broken_script_directory_shows_its_problem_and_the_rest_keeps_working(
    settings: Any, tmp_path: Path, kind: str
) -> None:
    broken = BROKEN[kind]
    two_projects(settings, tmp_path, broken)
    status.status_refresh()
    client = admin_client()

    overview = client.get("/")
    assert overview.status_code == 200
    html = overview.content.decode()
    assert "6 behind" not in row(html, "staging") and "behind" in row(html, "staging")
    assert broken.state_label in row(html, "brokenenv")
    if broken.state != "current":  # the overview explains every state but current
        assert broken.detail in row(html, "brokenenv")

    page = client.get("/environments/brokenenv")
    assert page.status_code == 200
    assert broken.detail in text_of(page.content.decode())

    graph = client.get("/projects/broken/graph")
    assert graph.status_code == 200
    assert broken.problem in text_of(graph.content.decode())
    # The other project's graph is untouched.
    blog = client.get("/projects/blog/graph")
    assert blog.status_code == 200 and HEAD in blog.content.decode()

    document = client.get("/api/projects/broken/graph").json()
    assert any(broken.problem in problem for problem in document["problems"])
    item = client.get("/api/environments/brokenenv").json()
    assert item["state"] == broken.state
    assert client.get("/api/environments/staging").json()["state"] == "behind"

    # Requesting an upgrade is refused with the reason, never a server error or a plan.
    response = client.post(
        "/environments/brokenenv/request",
        {"direction": "upgrade", "target": "heads", "reason": "try it"},
    )
    assert response.status_code == 200, response.status_code
    assert 'role="alert"' in response.content.decode()
    assert not Action.objects.filter(environment="brokenenv").exists()


@pytest.mark.parametrize("kind", list(BROKEN))
def test_the_cli_prints_the_problem_of_a_broken_script_directory(
    settings: Any, tmp_path: Path, kind: str
) -> None:
    broken = BROKEN[kind]
    two_projects(settings, tmp_path, broken)
    out = StringIO()
    call_command("revisions", "--project", "broken", stdout=out)
    assert "problem(s):" in out.getvalue()
    assert broken.problem in out.getvalue()
    out = StringIO()
    call_command("status", "--json", stdout=out)
    items = {item["environment"]: item for item in json.loads(out.getvalue())}
    assert items["staging"]["state"] == "behind"
    assert items["brokenenv"]["state"] == broken.state
    assert broken.detail in items["brokenenv"]["detail"]


def run_manage(config: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run manage.py in a subprocess with this config; the commands here never open the DB."""
    env = {
        **os.environ,
        "DASHBOARD_CONFIG": str(config),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'unused.sqlite3'}",
        "LOG_LEVEL": "WARNING",
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_manage_py_revisions_prints_a_broken_projects_problem(
    settings: Any, tmp_path: Path
) -> None:
    config = two_projects(settings, tmp_path, BROKEN["syntax error"])
    done = run_manage(config, tmp_path, "revisions", "--project", "broken")
    assert done.returncode == 0, done.stderr
    assert "2 revisions, 1 head" in done.stdout
    assert re.search(r"aaaa00000002_step\.py:\d+: syntax error", done.stdout)
    assert "Traceback" not in done.stderr


# --- config mistakes ----------------------------------------------------------------------------

GOOD_PROJECT = f'[projects.blog]\nscript_location = "{SAMPLE}"\n'
GOOD_ENV = '[environments.staging]\nproject = "blog"\nurl = "sqlite:///staging.db"\n'
CONFIG_MISTAKES = {
    "not TOML": ("[projects.blog\n", "not valid TOML"),
    "unknown key": (GOOD_PROJECT + "flavour = 1\n", "[projects.blog] unknown key 'flavour'"),
    "missing script location": (
        '[projects.blog]\nscript_location = "nowhere"\n',
        "[projects.blog] script_location",
    ),
    "environment of a missing project": (
        GOOD_PROJECT + GOOD_ENV.replace('"blog"', '"shop"'),
        "[environments.staging] project 'shop' is not defined",
    ),
    "url and url_env": (
        GOOD_PROJECT + GOOD_ENV + 'url_env = "STAGING_URL"\n',
        "[environments.staging] needs exactly one of url or url_env",
    ),
    "wrong type": (GOOD_PROJECT + GOOD_ENV + 'timeout = "soon"\n', "timeout must be a number"),
    "negative approvals": (
        GOOD_PROJECT + GOOD_ENV + "approvals_required = -1\n",
        "approvals_required must not be negative",
    ),
    "no file": (None, "config file does not exist"),
}


@pytest.mark.parametrize("kind", list(CONFIG_MISTAKES))
def test_a_config_mistake_is_named_on_every_page_api_and_cli_and_the_rest_works(
    settings: Any, tmp_path: Path, kind: str
) -> None:
    text, message = CONFIG_MISTAKES[kind]
    path = tmp_path / "dashboard.toml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    settings.DASHBOARD_CONFIG = str(path)
    client = admin_client()

    overview = client.get("/")
    assert overview.status_code == 200
    shown = overview.content.decode()
    assert "The config cannot be read" in shown and str(path) in shown
    assert message.replace("'", "&#x27;") in shown
    for url in ("/environments/staging", "/environments/staging/request", "/projects/blog/graph"):
        response = client.get(url)
        assert response.status_code == 503, url
        assert message.replace("'", "&#x27;") in response.content.decode(), url
    for url in ("/api/environments", "/api/environments/staging", "/api/projects/blog/graph"):
        response = client.get(url)
        assert response.status_code == 503, url
        assert message in response.json()["error"], url
    # What does not need the config keeps working.
    for url in ("/healthz", "/actions/", "/audit/", "/audit/export?format=jsonl"):
        assert client.get(url).status_code == 200, url
    assert Client().get("/accounts/login/").status_code == 200
    refresh = client.post("/refresh", follow=True)
    assert refresh.status_code == 200 and "The config cannot be read" in refresh.content.decode()
    with pytest.raises(CommandError, match=re.escape(message)) as failed:
        call_command("status", "--json", stdout=StringIO())
    assert failed.value.returncode == 2
    assert "pw-in-here" not in str(failed.value)

    # Fixing the file brings everything back without a restart.
    (tmp_path / "staging.db").touch()
    path.write_text(GOOD_PROJECT + GOOD_ENV, encoding="utf-8")
    os.utime(path, ns=(1, 1))  # a new mtime even within the same clock tick
    assert client.get("/environments/staging").status_code == 200
    assert client.get("/api/environments/staging").status_code == 200


def test_manage_py_status_names_a_config_mistake_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.toml"
    path.write_text(GOOD_PROJECT + GOOD_ENV + 'timeout = "soon"\n', encoding="utf-8")
    done = run_manage(path, tmp_path, "status", "--json")
    assert done.returncode != 0
    assert f"{path}: [environments.staging] timeout must be a number" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


# --- junk in the version table ------------------------------------------------------------------

JUNK: dict[str, tuple[list[Any], str, str]] = {
    # rows                                         state          what the page says
    "not hex": (["<b>not-a-revision</b>", "zzzz; drop"], "unknown", "are not in the script directory"),
    "200 characters": (["a" * 200], "unknown", "is not in the script directory"),
    "many rows": ([f"{i:012x}" for i in range(300)] + [HEAD], "unknown", "and 295 more are not in"),
    "blank, NUL, number, bytes, NULL": (
        ["", "   ", "a\x00b", 42, b"\xff\x00", None, HEAD],
        "unknown",
        "are not in the script directory",
    ),
    "not UTF-8": ([sqlite3.Binary(b"\xff\xfeA")], "unreachable", "Could not decode"),
}  # fmt: skip


def junk_sqlite(path: Path, rows: list[Any]) -> str:
    """Create a SQLite version table of any type and fill it with these rows."""
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("CREATE TABLE alembic_version (version_num)")
        for value in rows:
            if isinstance(value, sqlite3.Binary):
                # Text whose bytes are not UTF-8: the driver cannot decode it.
                connection.execute("INSERT INTO alembic_version VALUES (CAST(? AS TEXT))", (value,))
            else:
                connection.execute("INSERT INTO alembic_version VALUES (?)", (value,))
    connection.close()
    return f"sqlite:///{path}"


@pytest.mark.parametrize("kind", list(JUNK))
def test_junk_in_a_version_table_reads_as_a_clear_state_everywhere(
    settings: Any, tmp_path: Path, kind: str
) -> None:
    rows, state, says = JUNK[kind]
    staging = empty_sqlite(tmp_path / "staging.db")
    write_versions(staging, [MID])
    junk = junk_sqlite(tmp_path / "junk.db", rows)
    settings.DASHBOARD_CONFIG = str(
        write_config(
            tmp_path / "dashboard.toml",
            {
                "staging": {"project": "blog", "url": staging},
                "junk": {"project": "blog", "url": junk},
            },
        )
    )
    # One refresh reads both: the junk one must not stop the other being stored.
    snapshots = {s.environment: s for s in status.status_refresh()}
    assert snapshots["staging"].state == "behind"
    assert snapshots["junk"].state == state
    client = admin_client()
    overview = client.get("/")
    assert overview.status_code == 200
    assert says.replace("'", "&#x27;") in row(overview.content.decode(), "junk")
    assert "<b>not-a-revision</b>" not in overview.content.decode()
    page = client.get("/environments/junk")
    assert page.status_code == 200 and state in text_of(page.content.decode())
    item = client.get("/api/environments/junk").json()
    assert item["state"] == state
    assert all(isinstance(head, str) for head in item["heads"])
    assert client.get("/projects/blog/graph").status_code == 200
    out = StringIO()
    call_command("status", "--json", "--env", "junk", stdout=out)
    assert json.loads(out.getvalue())[0]["state"] == state
    out = StringIO()
    call_command("status", stdout=out)  # the text table copes too
    assert re.search(rf"^junk\s+blog\s+{state}", out.getvalue(), re.MULTILINE)
    # Nothing can be planned from junk: the request says why.
    response = client.post(
        "/environments/junk/request", {"direction": "upgrade", "target": "heads", "reason": "x"}
    )
    assert response.status_code == 200 and 'role="alert"' in response.content.decode()


def test_junk_in_a_postgresql_version_table(
    settings: Any, tmp_path: Path, postgres_url: str
) -> None:
    engine = sa.create_engine(postgres_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(255) NOT NULL)"))
        for value in ["<script>x</script>", "b" * 200, HEAD, *(f"{i:032x}" for i in range(150))]:
            conn.execute(sa.text("INSERT INTO alembic_version VALUES (:v)"), {"v": value})
    engine.dispose()
    settings.DASHBOARD_CONFIG = str(
        write_config(
            tmp_path / "dashboard.toml", {"pgjunk": {"project": "blog", "url": postgres_url}}
        )
    )
    (snapshot,) = status.status_refresh()
    assert snapshot.state == "unknown"
    assert "and 147 more are not in the script directory" in snapshot.detail
    client = admin_client()
    assert client.get("/").status_code == 200
    assert "&lt;script&gt;x&lt;/script&gt;" in client.get("/environments/pgjunk").content.decode()
    assert client.get("/api/environments/pgjunk").json()["state"] == "unknown"
