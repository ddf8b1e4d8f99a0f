"""The graph at scale: header jump links, windows around a revision, collapsed quiet runs."""

from __future__ import annotations

import datetime
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from dashboard import scripts
from dashboard.drawing import svg
from dashboard.drawing.lanes import Row
from dashboard.models import Snapshot
from dashboard.selectors.graph import (
    AROUND_CONTEXT,
    COLLAPSE_AFTER,
    WINDOW,
    Gap,
    GraphRow,
    graph_page,
    graph_window,
)
from dashboard.selectors.graph.loaded import _drawn_project
from tests.genhistory import RevisionSpec, generate, write_project

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}
T0 = datetime.datetime(2020, 1, 1, 9, 0, 0)


def rid(prefix: str, n: int) -> str:
    """Return a 12-character revision id, readable in failures."""
    return f"{prefix}{n:011d}"


def shaped_specs() -> list[RevisionSpec]:
    """A main line of 300 with a labelled side branch (m100 → s1..s40 → merge at m200)."""
    specs = []
    for n in range(300):
        down: tuple[str, ...] = (rid("m", n - 1),) if n else ()
        if n == 200:
            down = (rid("m", 199), rid("s", 40))
        specs.append(
            RevisionSpec(
                rid("m", n), down, message=f"main {n}", create_date=T0 + datetime.timedelta(hours=n)
            )
        )
    for n in range(1, 41):
        specs.append(
            RevisionSpec(
                rid("s", n),
                (rid("m", 100) if n == 1 else rid("s", n - 1),),
                branch_labels=("side",) if n == 1 else (),
                message=f"side {n}",
                # Between main revisions, so the two lanes interleave row by row.
                create_date=T0 + datetime.timedelta(hours=100 + 2 * n, minutes=30),
            )
        )
    return specs


ENVIRONMENTS = {"dev": rid("m", 299), "qa": rid("m", 150), "staging": rid("s", 20), "prod": ""}
TENANTS = {f"t{n}": rid("m", 250) for n in range(1, 6)} | {"t6": rid("m", 20), "t7": rid("m", 20)}


@pytest.fixture(scope="module")
def shaped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write the shaped history once; return its alembic.ini."""
    return write_project(tmp_path_factory.mktemp("shaped"), shaped_specs())


@pytest.fixture(scope="module")
def linear(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write an unbranched history of 1,000 revisions once."""
    return generate(tmp_path_factory.mktemp("linear"), revisions=1_000, linear=True)


@pytest.fixture(scope="module")
def branched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write a generated, branched history of 3,000 revisions once."""
    return generate(tmp_path_factory.mktemp("branched"), revisions=3_000, seed=7)


@pytest.fixture
def viewer(client: Client) -> Client:
    """Return a client signed in as a viewer."""
    call_command("adduser", "vic", role="viewer", password="correct-horse-9")
    client.login(username="vic", password="correct-horse-9")
    return client


def configure(
    settings: Any,
    tmp_path: Path,
    ini: Path,
    environments: dict[str, str],
    tenants: dict[str, str] | None = None,
    unread_tenants: tuple[str, ...] = (),
) -> None:
    """Configure project "big" with these environments (and a fleet), their snapshots stored."""
    lines = ["[projects.big]", f"alembic_ini = {json.dumps(str(ini))}", ""]
    for order, name in enumerate(environments):
        url = f"sqlite:///{tmp_path / name}.db"
        lines += [f"[environments.{name}]", 'project = "big"', f"url = {json.dumps(url)}"]
        lines += [f"order = {order}", ""]
    if tenants is not None:
        names = [*tenants, *unread_tenants]
        lines += ["[fleets.tenants]", 'project = "big"']
        lines += [f"url_template = {json.dumps(f'sqlite:///{tmp_path}/{{name}}.db')}"]
        lines += [f"names = {json.dumps(names)}", ""]
    path = tmp_path / f"dashboard-{time.monotonic_ns()}.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    settings.DASHBOARD_CONFIG = str(path)
    now = timezone.now()
    held = [*environments.items(), *((f"tenants/{n}", r) for n, r in (tenants or {}).items())]
    for name, rev in held:
        if rev:
            Snapshot.objects.create(
                environment=name, project="big", heads=[rev], state="behind", read_at=now
            )


def order_of() -> list[str]:
    """Return the configured project's rows in display order."""
    return _drawn_project("big").order


def walk(content: str, order: list[str]) -> list[tuple[str, list[str]]]:
    """Return each shown row or collapsed run top to bottom, with the revisions it covers."""
    found = []
    for kind, rev, count in re.findall(
        r'<li id="(rev|gap)-(\w+)" class="graph-(?:row|gap)[^"]*"(?: data-count="(\d+)")?', content
    ):
        start = order.index(rev)
        found.append((kind, order[start : start + int(count)] if kind == "gap" else [rev]))
    return found


def covered(content: str, order: list[str]) -> list[str]:
    return [rev for _, revs in walk(content, order) for rev in revs]


def header_html(content: str) -> str:
    found = re.search(r'<nav class="graph-jumps.*?</nav>', content, re.DOTALL)
    assert found, "the graph has no jump links"
    return found.group(0)


def test_header_links_every_environment_and_fleet_to_its_revision(
    viewer: Client, settings: Any, tmp_path: Path, shaped: Path
) -> None:
    configure(settings, tmp_path, shaped, ENVIRONMENTS, TENANTS, unread_tenants=("t8",))
    content = viewer.get("/projects/big/graph").content.decode()
    head = header_html(content)
    for env, rev in ENVIRONMENTS.items():
        assert f'href="/environments/{env}"' in head
        if rev:
            assert (
                f'href="/projects/big/graph?around={rev}#rev-{rev}" data-environment="{env}"'
                in head
            )
    assert 'prod</a> <span class="muted">not read yet</span>' in head
    fleet = head.split('class="jump jump-fleet"', 1)[1]
    assert 'href="/fleets/tenants"' in fleet
    m250, m20 = rid("m", 250), rid("m", 20)
    assert re.search(
        rf'href="/projects/big/graph\?around={m250}#rev-{m250}" data-fleet="tenants"[^>]*>5 at'
        rf' <code class="rev">{m250}</code></a>,'
        rf' <a class="jump-link" href="/projects/big/graph\?around={m20}#rev-{m20}"'
        rf' data-fleet="tenants"[^>]*>2 at <code class="rev">{m20}</code>',
        fleet,
    ), fleet
    assert "(1 not read or not in this history)" in fleet


def test_around_opens_the_window_with_the_revision_focused(
    viewer: Client, settings: Any, tmp_path: Path, shaped: Path
) -> None:
    configure(settings, tmp_path, shaped, ENVIRONMENTS, TENANTS)
    order = order_of()
    for rev in [*filter(None, ENVIRONMENTS.values()), rid("m", 20), rid("s", 33), rid("m", 0)]:
        content = viewer.get("/projects/big/graph", {"around": rev}).content.decode()
        shown = walk(content, order)
        kinds = [kind for kind, revs in shown if revs == [rev]]
        assert kinds == ["rev"], f"{rev} is not a row of its own around itself"
        assert 'class="graph-row is-focus' in content.split(f'id="rev-{rev}"', 1)[1][:40]
        assert content.count("is-focus") == 1
        # A few rows of context above, not the window the revision's index falls in.
        first = order.index(shown[0][1][0])
        assert first == max(0, order.index(rev) - AROUND_CONTEXT)
        assert f"<code>{rev}</code>" in content.split('id="panel"', 1)[1]
    missing = viewer.get("/projects/big/graph", {"around": "nothere"})
    assert missing.status_code == 200
    assert "There is no revision “nothere” in this history" in missing.content.decode()


def test_a_linear_history_collapses_to_five_rows_and_expands_in_windows(
    viewer: Client, settings: Any, tmp_path: Path, linear: Path
) -> None:
    configure(settings, tmp_path, linear, {})
    order = order_of()
    content = viewer.get("/projects/big/graph").content.decode()
    shown = walk(content, order)
    assert [kind for kind, _ in shown] == ["rev", "rev", "gap", "rev", "rev"]
    assert [len(revs) for _, revs in shown] == [1, 1, 996, 1, 1]
    assert covered(content, order) == order
    assert "… 996 revisions …" in content and "show-more" not in content

    gap = content.split(f'id="gap-{order[2]}"', 1)[1].split("</li>", 1)[0]
    assert 'hx-get="/projects/big/graph?start=2&amp;open=996"' in gap
    assert 'hx-target="closest li" hx-swap="outerHTML"' in gap
    fragment = viewer.get("/projects/big/graph", {"start": 2, "open": 996}, **HTMX)
    assert "<html" not in fragment.content.decode()
    expanded = walk(fragment.content.decode(), order)
    # A window's worth of rows, then the rest of the run still collapsed.
    assert [kind for kind, _ in expanded] == ["rev"] * WINDOW + ["gap"]
    assert covered(fragment.content.decode(), order) == order[2:998]
    # Without JavaScript the same link is a page whose first rows are the run's, one by one.
    page = viewer.get("/projects/big/graph", {"start": 2, "open": 996}).content.decode()
    assert "<html" in page and [r for _, [r] in walk(page, order)[:WINDOW]] == order[2 : 2 + WINDOW]


def test_an_environment_splits_a_run_and_stays_visible(
    viewer: Client, settings: Any, tmp_path: Path, linear: Path
) -> None:
    configure(settings, tmp_path, linear, {})
    order = order_of()
    configure(settings, tmp_path, linear, {"qa": order[500]})
    content = viewer.get("/projects/big/graph").content.decode()
    shown = walk(content, order)
    assert [len(revs) for _, revs in shown] == [1, 1, 497, 1, 1, 1, 496, 1, 1]
    assert shown[4] == ("rev", [order[500]])
    assert 'href="/environments/qa"' in content.split(f'id="rev-{order[500]}"', 1)[1][:4000]


def test_collapsed_runs_hide_nothing_that_matters_and_keep_the_lanes(
    viewer: Client, settings: Any, tmp_path: Path, branched: Path
) -> None:
    graph = scripts.load_history(alembic_ini=branched).graph
    dated = graph.topological()
    envs = {f"env{i}": dated[i * 97 + 11] for i in range(25)}
    tenants = {f"t{i}": dated[i * 131 + 5] for i in range(12)}
    configure(settings, tmp_path, branched, envs, tenants)
    drawn = _drawn_project("big")
    order, rows = drawn.order, drawn.layout
    held = set(envs.values()) | set(tenants.values())

    seen: list[str] = []
    gaps = 0
    window = graph_page(project="big").window
    while True:
        shown = window.rows
        for position, item in enumerate(shown):
            if isinstance(item, GraphRow):
                seen.append(item.revision)
                continue
            assert isinstance(item, Gap)
            gaps += 1
            hidden = order[item.start : item.start + item.count]
            assert hidden[0] == item.first and hidden[-1] == item.last
            assert item.count >= COLLAPSE_AFTER - 1
            for rev in hidden:
                assert rev not in held, f"{rev} holds an environment but is collapsed"
                assert not graph.revisions[rev].branch_labels, f"labelled {rev} collapsed"
                assert not graph.is_branch_point(rev) and not graph.is_merge_point(rev)
                assert not graph.is_head(rev) and not graph.is_base(rev)
            # The collapsed row draws exactly the lanes the rows above and below leave it.
            before, after = shown[position - 1], shown[position + 1]
            assert isinstance(before, GraphRow) and isinstance(after, GraphRow)
            above = rows[order.index(before.revision)].below
            below = rows[order.index(after.revision)].above
            assert above == below
            expected = tuple(f"edge gap-edge {svg.lane_class(lane)}" for lane in above)
            assert tuple(edge.css for edge in item.drawing.edges) == expected
            xs = [float(re.match(r"M([\d.]+) ", edge.d).group(1)) for edge in item.drawing.edges]  # type: ignore[union-attr]
            assert xs == [svg.lane_x(lane) for lane in above]
            seen += hidden
        if window.more_url is None:
            break
        window = graph_window(project="big", start=window.end)
    assert seen == order, "the windows and their collapsed runs do not cover the history once"
    assert gaps > 20
    for rev in held:
        content = viewer.get("/projects/big/graph", {"around": rev}).content.decode()
        assert f'id="rev-{rev}"' in content


def test_a_collapsed_run_expands_into_its_rows_over_htmx(
    viewer: Client, settings: Any, tmp_path: Path, shaped: Path
) -> None:
    configure(settings, tmp_path, shaped, ENVIRONMENTS, TENANTS)
    order = order_of()
    content = viewer.get("/projects/big/graph").content.decode()
    runs = [revs for kind, revs in walk(content, order) if kind == "gap"]
    assert runs, "the shaped history has no collapsed run"
    # Between m200 (the merge) and s40's run, two lanes run side by side through collapsed rows.
    assert any(rid("s", 30) in revs and rid("m", 170) in revs for revs in runs)
    for revs in runs:
        start = order.index(revs[0])
        fragment = viewer.get(
            "/projects/big/graph", {"start": start, "open": len(revs)}, **HTMX
        ).content.decode()
        assert [kind for kind, _ in walk(fragment, order)] == ["rev"] * len(revs)
        assert covered(fragment, order) == revs
        assert "show-more" not in fragment


def test_odd_window_parameters_answer_pages(
    viewer: Client, settings: Any, tmp_path: Path, shaped: Path
) -> None:
    configure(settings, tmp_path, shaped, ENVIRONMENTS)
    for params in (
        {"open": "abc"},
        {"open": "9" * 20},
        {"start": "5", "open": "-3"},
        {"start": "99999", "open": "5"},
        {"around": "\x00"},
        {"around": "m" * 500},
    ):
        assert viewer.get("/projects/big/graph", params).status_code == 200, params
        assert viewer.get("/projects/big/graph", params, **HTMX).status_code == 200, params


def test_row_markup_escapes_its_links_and_draws_a_gap_without_a_node() -> None:
    row = svg.row_drawing(Row("r", 0, 1, (0,), (0,), (0,), (0,)), svg.Marks())
    text = svg.markup(row, href='/p?a="<b>', hx_get="/p'x", push_url="/g&h")
    assert 'href="/p?a=&quot;&lt;b&gt;"' in text and 'hx-get="/p&#x27;x"' in text
    assert 'hx-push-url="/g&amp;h"' in text and "<b>" not in text
    gap = svg.markup(svg.gap_drawing((0, 2)))
    assert gap.count("<path") == 2 and "<a " not in gap and "gap-edge lane-2" in gap
