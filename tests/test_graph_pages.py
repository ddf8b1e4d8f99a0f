"""The graph page, the revision panel and the graph API, on the sample, generated and broken histories."""

import html
import re
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from dashboard import scripts
from dashboard.config import current_config
from dashboard.drawing.svg import newest_first
from dashboard.models import Snapshot
from dashboard.selectors.graph import load_project_history
from tests.genhistory import generate
from tests.statusenv import HEAD, SAMPLE, write_config

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}
SAMPLE_IDS = [p.name[:12] for p in sorted((SAMPLE / "versions").glob("*.py"))]
MERGE = "9e4f1b7a2c68"
BRANCH_POINT = "c94a0b3e6d12"
BASE = "3f8c1a2b9d04"
VOTES = "e0d7f4a19b53"
REPORTING_TIP = "1d6b9f0c4e27"


@pytest.fixture
def viewer(client: Client) -> Client:
    """Return a client signed in as a viewer."""
    call_command("adduser", "vic", role="viewer", password="correct-horse-9")
    client.login(username="vic", password="correct-horse-9")
    return client


def configure(
    settings: Any,
    tmp_path: Path,
    projects: dict[str, dict[str, Any]] | None = None,
    environments: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Point the dashboard at a config of these projects (the sample project by default)."""
    path = write_config(
        tmp_path / f"dashboard-{time.monotonic_ns()}.toml", environments or {}, projects
    )
    settings.DASHBOARD_CONFIG = str(path)


def revision_file(
    rev: str, down: Any, *, message: str = "", extra: str = "", body: str = ""
) -> str:
    """Return the text of a small revision file."""
    return (
        f'"""{message or "make " + rev}\n\nRevision ID: {rev}\nCreate Date: 2024-05-01 10:00:00\n\n"""\n'
        f"revision = {rev!r}\ndown_revision = {down!r}\n{extra}\n{body}\n"
        "def upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n"
    )


def write_scripts(directory: Path, files: dict[str, str]) -> Path:
    """Write revision files into directory/versions and return the script location."""
    (directory / "versions").mkdir(parents=True)
    for name, text in files.items():
        (directory / "versions" / name).write_text(text, encoding="utf-8")
    return directory


def rows(content: str) -> list[str]:
    """Return the revision ids of the graph rows on a page, top to bottom."""
    return re.findall(r'<li id="rev-(\w+)" class="graph-row', content)


def covered(content: str, order: list[str]) -> list[str]:
    """Return the revisions a window covers, top to bottom: its rows and its collapsed runs'."""
    found: list[str] = []
    for kind, rev, count in re.findall(
        r'<li id="(rev|gap)-(\w+)" class="graph-(?:row|gap)[^"]*"(?: data-count="(\d+)")?', content
    ):
        start = order.index(rev)
        found += order[start : start + int(count)] if kind == "gap" else [rev]
    return found


def more_start(content: str) -> int:
    """Return the row the window's "Show more" link starts at."""
    found = re.search(
        r'<li class="show-more">\s*<a class="button secondary" href="[^"]*start=(\d+)"', content
    )
    assert found, "no Show more link"
    return int(found.group(1))


def row_html(content: str, rev: str) -> str:
    match = re.search(rf'<li id="rev-{rev}".*?</li>', content, re.DOTALL)
    assert match, f"no row for {rev}"
    return match.group(0)


@pytest.fixture(scope="module")
def big_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write a generated history of 10,000 revisions once; return its alembic.ini."""
    return generate(tmp_path_factory.mktemp("big"), revisions=10_000)


def test_graph_link_leads_to_the_first_project(
    viewer: Client, settings: Any, tmp_path: Path
) -> None:
    configure(
        settings,
        tmp_path,
        {"zeta": {"script_location": str(SAMPLE)}, "alpha": {"script_location": str(SAMPLE)}},
    )
    response = viewer.get("/graph")
    assert response.status_code == 302
    assert response["Location"] == "/projects/alpha/graph"
    assert 'href="/graph"' in viewer.get("/").content.decode()


def test_graph_link_without_projects_says_so(viewer: Client, settings: Any, tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    settings.DASHBOARD_CONFIG = str(path)
    response = viewer.get("/graph")
    assert response.status_code == 404
    assert "No projects are configured" in response.content.decode()


def test_graph_needs_a_signed_in_user(client: Client) -> None:
    response = client.get("/projects/blog/graph")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_sample_graph_draws_every_revision_with_its_markers(
    viewer: Client, settings: Any, tmp_path: Path
) -> None:
    configure(settings, tmp_path)
    response = viewer.get("/projects/blog/graph")
    assert response.status_code == 200
    content = response.content.decode()
    assert sorted(rows(content)) == sorted(SAMPLE_IDS)
    assert rows(content)[0] == HEAD
    assert rows(content)[-1] == BASE
    assert content.count('<svg class="lanes"') == len(SAMPLE_IDS)
    assert "merge-point" in row_html(content, MERGE)
    assert "merge-point" not in row_html(content, BRANCH_POINT)
    assert "branch-point" in row_html(content, BRANCH_POINT)
    assert 'class="halo' in row_html(content, HEAD)
    assert 'class="halo' not in row_html(content, MERGE)
    assert 'class="base-mark' in row_html(content, BASE)
    assert ">reporting<" in row_html(content, "7a3c2e8b5f01")
    assert "add phone_number to users" in row_html(content, HEAD)
    # The merge row has two lanes: one curve bends out of the merge towards the side branch.
    assert row_html(content, MERGE).count('class="edge lane-1"') >= 1
    assert "show-more" not in content


def test_each_node_opens_the_revision_panel(viewer: Client, settings: Any, tmp_path: Path) -> None:
    configure(settings, tmp_path)
    row = row_html(viewer.get("/projects/blog/graph").content.decode(), MERGE)
    url = f"/projects/blog/revisions/{MERGE}"
    assert f'href="{url}" hx-get="{url}" hx-target="#panel"' in row


def test_revision_panel_for_htmx_and_a_full_page_without_it(
    viewer: Client, settings: Any, tmp_path: Path
) -> None:
    configure(settings, tmp_path)
    url = f"/projects/blog/revisions/{MERGE}"
    partial = viewer.get(url, **HTMX)
    assert partial.status_code == 200
    assert partial["Vary"] and "HX-Request" in partial["Vary"]
    fragment = partial.content.decode()
    assert "<html" not in fragment
    assert "merge reporting into main" in fragment
    assert "Revises: e0d7f4a19b53, 1d6b9f0c4e27" in fragment  # the full docstring
    assert "versions/9e4f1b7a2c68_merge_reporting_into_main.py" in fragment
    assert str(SAMPLE) not in fragment  # the path is relative to the script location
    assert "2024-03-18 13:30:06.215437" in fragment
    for parent in (VOTES, REPORTING_TIP):
        assert f'href="/projects/blog/revisions/{parent}"' in fragment
    assert f'href="/projects/blog/revisions/{HEAD}"' in fragment  # its child
    assert "merge point" in fragment

    page = viewer.get(url)
    assert page.status_code == 200
    full = page.content.decode()
    assert "<html" in full and 'id="panel"' in full
    assert "Revises: e0d7f4a19b53, 1d6b9f0c4e27" in full
    assert 'href="/projects/blog/graph"' in full


def test_panel_shows_labels_and_dependencies(viewer: Client, settings: Any, tmp_path: Path) -> None:
    configure(settings, tmp_path)
    labelled = viewer.get("/projects/blog/revisions/7a3c2e8b5f01", **HTMX).content.decode()
    assert '<span class="label">reporting</span>' in labelled
    inherited = viewer.get(f"/projects/blog/revisions/{REPORTING_TIP}", **HTMX).content.decode()
    assert '<span class="label inherited"' in inherited and ">reporting<" in inherited
    assert "Depends on" in inherited and f"/projects/blog/revisions/{VOTES}" in inherited
    votes = viewer.get(f"/projects/blog/revisions/{VOTES}", **HTMX).content.decode()
    assert "Needed by" in votes and f"/projects/blog/revisions/{REPORTING_TIP}" in votes


def test_unknown_revision_and_project_are_404_with_a_message(
    viewer: Client, settings: Any, tmp_path: Path
) -> None:
    configure(settings, tmp_path)
    missing = viewer.get("/projects/blog/revisions/0000deadbeef")
    assert missing.status_code == 404
    assert "no revision &#x27;0000deadbeef&#x27; in project &#x27;blog&#x27;" in (
        missing.content.decode()
    )
    unknown = viewer.get("/projects/nope/graph")
    assert unknown.status_code == 404
    assert "no project named &#x27;nope&#x27;" in unknown.content.decode()
    assert viewer.get("/projects/nope/revisions/abc").status_code == 404
    api = viewer.get("/api/projects/nope/graph")
    assert api.status_code == 404
    assert "nope" in api.json()["error"]


def test_rev_parameter_focuses_a_revision_and_opens_its_panel(
    viewer: Client, settings: Any, tmp_path: Path
) -> None:
    configure(settings, tmp_path)
    content = viewer.get(f"/projects/blog/graph?rev={VOTES}").content.decode()
    row = row_html(content, VOTES)
    assert "is-focus" in row and "autofocus" in row and "focus-ring" in row
    assert content.count("is-focus") == 1
    panel = content.split('id="panel"', 1)[1]
    assert "create votes table" in panel and "Revises: c94a0b3e6d12" in panel
    unknown = viewer.get("/projects/blog/graph?rev=0000deadbeef")
    assert unknown.status_code == 200
    assert "There is no revision “0000deadbeef” in this history" in unknown.content.decode()


def test_search_by_id_prefix_or_message(viewer: Client, settings: Any, tmp_path: Path) -> None:
    configure(settings, tmp_path)
    one = viewer.get("/projects/blog/graph", {"q": "9E4F"}).content.decode()
    assert "is-focus" in row_html(one, MERGE)
    assert "it is highlighted below" in one

    by_message = viewer.get("/projects/blog/graph", {"q": "VOTES TABLE"}).content.decode()
    assert "is-focus" in row_html(by_message, VOTES)

    several = viewer.get("/projects/blog/graph", {"q": "index"}).content.decode()
    results = several.split('id="search-results"', 1)[1].split("</section>", 1)[0]
    assert "2 revisions match" in results
    assert f'href="/projects/blog/graph?rev={REPORTING_TIP}"' in results
    assert 'href="/projects/blog/graph?rev=7a3c2e8b5f01"' in results
    assert "is-focus" not in several

    none = viewer.get("/projects/blog/graph", {"q": "no such thing"})
    assert none.status_code == 200
    assert "No revision has an id starting with, or a message containing" in (none.content.decode())
    assert len(rows(none.content.decode())) == len(SAMPLE_IDS)


def test_environment_badges_sit_on_their_revisions(
    viewer: Client, settings: Any, tmp_path: Path
) -> None:
    configure(
        settings,
        tmp_path,
        environments={
            name: {"project": "blog", "url": f"sqlite:///{tmp_path / name}.db", "order": i}
            for i, name in enumerate(["dev", "qa", "staging", "prod", "old"])
        },
    )
    now = timezone.now()
    for env, heads, state in [
        ("dev", [HEAD], "current"),
        ("prod", [HEAD], "current"),
        ("qa", [VOTES, REPORTING_TIP], "behind"),
        ("staging", [BRANCH_POINT], "behind"),
        ("old", ["0000deadbeef"], "unknown"),
    ]:
        Snapshot.objects.create(
            environment=env, project="blog", heads=heads, state=state, read_at=now
        )
    content = viewer.get("/projects/blog/graph").content.decode()

    def badges(rev: str) -> list[tuple[str, str]]:
        found = re.findall(
            r'<a class="badge state state-(\w+)" href="/environments/(\w+)"', row_html(content, rev)
        )
        return [(env, state) for state, env in found]

    assert badges(HEAD) == [("dev", "current"), ("prod", "current")]
    assert badges(VOTES) == [("qa", "behind")]
    assert badges(REPORTING_TIP) == [("qa", "behind")]
    assert badges(BRANCH_POINT) == [("staging", "behind")]
    assert badges(MERGE) == []
    assert "which this history does not have" in content and "0000deadbeef" in content
    panel = viewer.get(f"/projects/blog/revisions/{VOTES}", **HTMX).content.decode()
    assert 'href="/environments/qa"' in panel and "state-behind" in panel


def test_odd_ids_and_parameters_get_pages_not_server_errors(
    viewer: Client, settings: Any, tmp_path: Path
) -> None:
    location = write_scripts(
        tmp_path / "odd",
        {
            "a.py": revision_file("a/b", None),
            "c.py": revision_file("c1", ("a/b", "x/y"), extra="depends_on = 'q/r'"),
            "e.py": revision_file("", None),
        },
    )
    configure(settings, tmp_path, {"odd": {"script_location": str(location)}})
    page = viewer.get("/projects/odd/graph")
    assert page.status_code == 200
    assert "names down_revision x/y, which does not exist" in page.content.decode()
    assert "revision is an empty string" in page.content.decode()
    for response in (
        viewer.get("/projects/odd/graph", {"rev": "c1"}),
        viewer.get("/projects/odd/graph", {"start": "\u00b2"}),
        viewer.get("/projects/odd/graph", {"start": "\u00b2"}, **HTMX),
        viewer.get("/projects/odd/graph", {"start": "9" * 5000}, **HTMX),
        viewer.get("/projects/odd/revisions/c1"),
        viewer.get("/projects/odd/revisions/a/b"),
    ):
        assert response.status_code == 200, response.content[:300]
    assert (
        "/projects/odd/revisions/a/b" in viewer.get("/projects/odd/revisions/c1").content.decode()
    )


def test_escapes_messages_and_docstrings(viewer: Client, settings: Any, tmp_path: Path) -> None:
    location = write_scripts(
        tmp_path / "xss",
        {
            "a.py": revision_file("aaaa1111", None, message="<script>alert(1)</script>"),
            "b.py": revision_file("bbbb2222", "aaaa1111", message='"><img src=x onerror=alert(2)>'),
        },
    )
    configure(settings, tmp_path, {"xss": {"script_location": str(location)}})
    for response in (
        viewer.get("/projects/xss/graph"),
        viewer.get("/projects/xss/graph", {"q": "script"}),
        viewer.get("/projects/xss/revisions/aaaa1111"),
        viewer.get("/projects/xss/revisions/bbbb2222", **HTMX),
    ):
        content = response.content.decode()
        assert response.status_code == 200
        assert "<script>alert(1)" not in content
        assert "<img src=x" not in content
    page = viewer.get("/projects/xss/graph").content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


BROKEN = {
    "syntax-in-header": (
        {
            "a.py": revision_file("aaaa1111", None),
            "b.py": revision_file("bbbb2222", "aaaa1111", extra="branch_labels = ("),
        },
        "syntax error",
        "versions/b.py:",
        None,
    ),
    "syntax-in-upgrade": (
        {
            "a.py": revision_file("aaaa1111", None),
            "b.py": revision_file("bbbb2222", "aaaa1111", body="def oops(:\n    pass\n"),
        },
        "syntax error",
        "versions/b.py:",
        "bbbb2222",
    ),
    "duplicate": (
        {
            "a.py": revision_file("aaaa1111", None),
            "b.py": revision_file("bbbb2222", "aaaa1111"),
            "c.py": revision_file("bbbb2222", "aaaa1111", message="the other one"),
        },
        "revision bbbb2222 is defined twice",
        "versions/b.py and versions/c.py",
        "bbbb2222",
    ),
    "missing-parent": (
        {
            "a.py": revision_file("aaaa1111", None),
            "b.py": revision_file("bbbb2222", "ffff9999"),
        },
        "names down_revision ffff9999, which does not exist",
        "versions/b.py",
        "bbbb2222",
    ),
    "cycle": (
        {
            "a.py": revision_file("aaaa1111", None),
            "b.py": revision_file("bbbb2222", "dddd4444"),
            "c.py": revision_file("cccc3333", "bbbb2222"),
            "d.py": revision_file("dddd4444", "cccc3333"),
            "e.py": revision_file("eeee5555", "aaaa1111"),
        },
        "cycle detected among revisions bbbb2222, cccc3333, dddd4444",
        "",
        "cccc3333",
    ),
    "empty": ({}, "no revision files in", "", None),
    "non-literal-labels": (
        {
            "a.py": revision_file("aaaa1111", None),
            "b.py": revision_file("bbbb2222", "aaaa1111", extra="branch_labels = (cli.EXPAND,)"),
        },
        "branch_labels is not a literal: (cli.EXPAND,)",
        "versions/b.py",
        "bbbb2222",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_histories_show_their_problems_and_the_rest(
    case: str, viewer: Client, settings: Any, tmp_path: Path
) -> None:
    files, problem, where, revision = BROKEN[case]
    location = write_scripts(tmp_path / case, files)
    configure(settings, tmp_path, {"broken": {"script_location": str(location)}})
    response = viewer.get("/projects/broken/graph")
    assert response.status_code == 200
    content = html.unescape(response.content.decode())
    box = content.split('id="problems"', 1)[1].split("</section>", 1)[0]
    assert problem in box
    assert where in box
    shown = set(rows(content))
    assert shown == set(scripts.load_history(location).graph.revisions)
    if files:
        assert "aaaa1111" in shown  # the sound part of the history is still drawn
    if revision is not None:
        assert "has-problem" in row_html(content, revision)
        panel = html.unescape(
            viewer.get(f"/projects/broken/revisions/{revision}", **HTMX).content.decode()
        )
        assert problem in panel
        assert viewer.get(f"/projects/broken/revisions/{revision}").status_code == 200
    api = viewer.get("/api/projects/broken/graph")
    assert api.status_code == 200
    assert any(problem in p for p in api.json()["problems"])


def test_unreadable_config_is_a_clear_503(viewer: Client, settings: Any, tmp_path: Path) -> None:
    settings.DASHBOARD_CONFIG = str(tmp_path / "absent.toml")
    response = viewer.get("/projects/blog/graph")
    assert response.status_code == 503
    assert "config file does not exist" in response.content.decode()
    assert viewer.get("/api/projects/blog/graph").status_code == 503
    assert viewer.get("/graph").status_code == 503


def test_alembic_loader_projects_are_read_without_running_their_code(
    viewer: Client, settings: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "ran.txt"
    location = write_scripts(
        tmp_path / "code",
        {
            "a.py": revision_file(
                "aaaa1111", None, body=f"open({str(marker)!r}, 'w').write('ran')\n"
            )
        },
    )
    configure(
        settings,
        tmp_path,
        {"code": {"script_location": str(location), "loader": "alembic", "python": "python3"}},
    )
    content = viewer.get("/projects/code/graph").content.decode()
    assert rows(content) == ["aaaa1111"]
    assert "Alembic&#x27;s own loader" in content
    assert viewer.get("/api/projects/code/graph").status_code == 200
    assert not marker.exists()


def test_api_returns_the_documented_graph(viewer: Client, settings: Any, tmp_path: Path) -> None:
    configure(settings, tmp_path)
    response = viewer.get("/api/projects/blog/graph")
    assert response.status_code == 200
    document = response.json()
    assert set(document) == {
        "heads",
        "bases",
        "revisions",
        "problems",
        "heads_guard",
        "history_check",
    }
    assert document["heads_guard"] == {"ok": True, "forks": []}
    assert document["history_check"] == {"checked": False, "ok": None, "current": False}
    assert document["heads"] == [HEAD] and document["bases"] == [BASE]
    assert document["problems"] == []
    by_id = {item["revision"]: item for item in document["revisions"]}
    assert sorted(by_id) == sorted(SAMPLE_IDS)
    for item in document["revisions"]:
        assert set(item) == {
            "revision",
            "down_revisions",
            "depends_on",
            "branch_labels",
            "message",
            "create_date",
            "path",
            "problems",
            "unreadable",
        }
        assert item["unreadable"] is False
    assert by_id[MERGE]["down_revisions"] == [VOTES, REPORTING_TIP]
    assert by_id[REPORTING_TIP]["depends_on"] == [VOTES]
    assert by_id["7a3c2e8b5f01"]["branch_labels"] == ["reporting"]
    assert by_id[MERGE]["create_date"] == "2024-03-18 13:30:06.215437"
    assert viewer.get("/api/projects/blog/graph", REQUEST_METHOD="POST").status_code == 405


def test_api_needs_a_session_or_a_token(client: Client, settings: Any, tmp_path: Path) -> None:
    configure(settings, tmp_path)
    response = client.get("/api/projects/blog/graph")
    assert response.status_code == 401
    assert "error" in response.json()


def test_large_history_renders_its_first_window_then_more(
    viewer: Client, settings: Any, tmp_path: Path, big_history: Path
) -> None:
    configure(settings, tmp_path, {"big": {"alembic_ini": str(big_history)}})
    started = time.perf_counter()
    response = viewer.get("/projects/big/graph")
    cold = time.perf_counter() - started
    started = time.perf_counter()
    viewer.get("/projects/big/graph")
    warm = time.perf_counter() - started
    print(
        f"\n10,000 revisions, first window of 200 rows: {warm * 1000:.0f} ms"
        f" (the first request, which parses every file: {cold * 1000:.0f} ms)"
    )
    graph = load_project_history(current_config().projects["big"]).graph
    order = newest_first(graph)
    assert response.status_code == 200
    content = response.content.decode()
    # 200 rows, a collapsed run counting as one, cover the first `end` revisions in order.
    end = more_start(content)
    assert covered(content, order) == order[:end]
    assert len(re.findall(r'<li id="(?:rev|gap)-', content)) in range(200, 200 + 7)
    assert graph.is_head(order[0]) and order[0] in content
    assert f'id="rev-{order[end]}"' not in content
    assert f'href="/projects/big/graph?start={end}"' in content
    assert f'hx-get="/projects/big/graph?start={end}"' in content

    more = viewer.get("/projects/big/graph", {"start": end}, **HTMX)
    assert more.status_code == 200
    assert "HX-Request" in more["Vary"]
    fragment = more.content.decode()
    assert "<html" not in fragment and 'id="panel"' not in fragment
    after = more_start(fragment)
    assert covered(fragment, order) == order[end:after]
    assert fragment.strip().endswith("</li>")
    assert (
        f'hx-get="/projects/big/graph?start={after}" hx-target="closest li" hx-swap="outerHTML"'
        in fragment
    )

    # Without JavaScript the same link is a page of its own, with a way back up.
    page = viewer.get("/projects/big/graph", {"start": end}).content.decode()
    assert "<html" in page and covered(page, order) == order[end:after]
    assert 'href="/projects/big/graph"' in page and "Newer revisions" in page

    last = viewer.get("/projects/big/graph", {"start": 9_900}, **HTMX).content.decode()
    assert covered(last, order) == order[9_900:]
    assert "show-more" not in last

    phone = [r for r in order if "phone" in graph.revisions[r].message]
    found = viewer.get("/projects/big/graph", {"q": "Phone"}).content.decode()
    results = found.split('id="search-results"', 1)[1].split("</section>", 1)[0]
    assert f"{len(phone)} revisions match" in results and "the newest 50 are listed" in results
    assert re.findall(r'graph\?rev=(\w+)"', results) == phone[:50]

    deep = order[7_345]
    focused = viewer.get("/projects/big/graph", {"rev": deep}).content.decode()
    assert covered(focused, order)[:146] == order[7_200:7_346]
    assert "is-focus" in row_html(focused, deep)


def test_history_restore_gets_the_whole_page(viewer: Client, settings: Any, tmp_path: Path) -> None:
    configure(settings, tmp_path)
    response = viewer.get(
        f"/projects/blog/graph?rev={MERGE}", HTTP_HX_HISTORY_RESTORE_REQUEST="true", **HTMX
    )
    assert "<html" in response.content.decode()
