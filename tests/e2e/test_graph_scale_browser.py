"""The graph at scale in a real Chromium: jump links to every environment, collapsed runs expanding.

Its own small stack (a live gunicorn on a SQLite dashboard database, no worker): a generated
history of 1,500 revisions, environments and a fleet's members in real SQLite databases whose
version tables are read by `manage.py status`, as the overview's Refresh would.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from dashboard import scripts
from dashboard.drawing.svg import newest_first
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, REPORTS, need_chromium
from tests.e2e.journey import ARTIFACTS, Journey
from tests.e2e.leaks import LeakWatch
from tests.e2e.stack import LiveStack, _run_all, _server_env, _start, _wait_healthy, free_port
from tests.genhistory import generate
from tests.statusenv import write_versions

pytestmark = [pytest.mark.e2e, pytest.mark.once]

REVISIONS = 1_500
ENVIRONMENTS = ("dev", "qa", "staging", "uat", "prod", "archive")
TENANTS = tuple(f"t{n}" for n in range(1, 10))


def _place(order: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Pick revisions spread down the history for the environments and the fleet's members."""
    rng = random.Random(13)  # noqa: S311 - reproducible test data
    envs = {name: order[rng.randrange(len(order) // 2, len(order))] for name in ENVIRONMENTS}
    envs["dev"] = order[0]  # a head
    tenants = {name: order[700 if n < 6 else 1_100] for n, name in enumerate(TENANTS)}
    return envs, tenants


def _config(folder: Path, ini: Path, envs: dict[str, str]) -> str:
    lines = ["[projects.big]", f"alembic_ini = {json.dumps(str(ini))}", ""]
    for order, name in enumerate(envs, start=1):
        url = f"sqlite:///{folder / name}.db"
        lines += [f"[environments.{name}]", 'project = "big"', f"url = {json.dumps(url)}"]
        lines += [f"order = {order}", ""]
    lines += ["[fleets.tenants]", 'project = "big"']
    lines += [f"url_template = {json.dumps(f'sqlite:///{folder}/{{name}}.db')}"]
    lines += [f"names = {json.dumps(list(TENANTS))}", ""]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Run the dashboard on a long history; yield the stack, the order and the placements."""
    need_chromium()
    folder = tmp_path_factory.mktemp("e2e-graph")
    ini = generate(folder / "history", revisions=REVISIONS, seed=3)
    order = newest_first(scripts.load_history(alembic_ini=ini).graph)
    envs, tenants = _place(order)
    for name, rev in (*envs.items(), *tenants.items()):
        write_versions(f"sqlite:///{folder / name}.db", [rev])
    (folder / "dashboard.toml").write_text(_config(folder, ini, envs), encoding="utf-8")
    port = free_port()
    stack = LiveStack(
        folder=folder,
        env=_server_env(folder),
        targets={},
        user_password=f"Journey-{secrets.token_hex(8)}",
        base_url=f"http://127.0.0.1:{port}",
    )
    manage = [sys.executable, "manage.py"]
    _run_all(
        [
            ([*manage, "migrate", "--no-input", "-v", "0"], stack.env),
            ([*manage, "collectstatic", "--no-input", "-v", "0"], stack.env),
        ],
        folder,
    )
    try:
        server = _start(
            stack,
            "server",
            [sys.executable, "-m", "gunicorn", "dashboard.wsgi", "--bind", f"127.0.0.1:{port}"]
            + ["--workers", "1", "--threads", "4", "--access-logfile", "-"],
            stack.env,
        )
        # One at a time: each writes to the dashboard's SQLite database.
        user_env = {**stack.env, "DASHBOARD_PASSWORD": stack.user_password}
        _run_all([([*manage, "adduser", "lead", "--role", "viewer"], user_env)], folder)
        _run_all([([*manage, "status"], stack.env)], folder)
        _run_all([([*manage, "status", "--fleet", "tenants"], stack.env)], folder)
        _wait_healthy(stack, server)
        yield {"stack": stack, "order": order, "envs": envs, "tenants": tenants}
    finally:
        stack.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for log in folder.glob("*.log"):
            shutil.copy(log, ARTIFACTS / f"graph-scale-{log.name}")


@pytest.fixture(scope="module")
def chromium(scale: dict[str, Any]) -> Iterator[Browser]:
    """Launch Debian's Chromium (Playwright never downloads a browser here)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def trip(
    request: pytest.FixtureRequest, chromium: Browser, scale: dict[str, Any]
) -> Iterator[Journey]:
    """Give a test its journey; afterwards save its artifacts and check the pages' CSP."""
    stack: LiveStack = scale["stack"]
    watch = LeakWatch(stack.never_shown)
    journey = Journey(f"graph-scale-{request.node.name}", chromium, stack, watch, {})
    yield journey
    reports = request.node.stash.get(REPORTS, {})
    journey.save(failed=any(report.failed for report in reports.values()))
    journey.close()
    watch.scan_logs(sorted(stack.folder.glob("*.log")))
    assert not watch.leaks, watch.found()
    assert not journey.problems, "\n".join(journey.problems)


def test_header_jumps_to_every_environment_and_fleet(scale: dict[str, Any], trip: Journey) -> None:
    """Every environment is a link in the header that opens the rows around its revision."""
    order: list[str] = scale["order"]
    envs: dict[str, str] = scale["envs"]
    page = trip.page_for("lead")
    page.goto("/projects/big/graph")
    jumps = page.locator("nav.graph-jumps")
    expect(jumps).to_be_visible()
    for name, rev in envs.items():
        link = jumps.locator(f'a.jump-link[data-environment="{name}"]')
        expect(link).to_have_count(1)
        expect(link).to_have_text(rev[:12])
    fleet = jumps.locator(".jump-fleet")
    expect(fleet).to_contain_text("tenants: 6 at")
    expect(fleet).to_contain_text("3 at")

    # The deepest environment sits far below the first window: its link opens its own.
    name, rev = max(envs.items(), key=lambda item: order.index(item[1]))
    assert order.index(rev) > 700
    expect(page.locator(f'[id="rev-{rev}"]')).to_have_count(0)
    jumps.locator(f'a.jump-link[data-environment="{name}"]').click()
    expect(page).to_have_url(f"{scale['stack'].base_url}/projects/big/graph?around={rev}#rev-{rev}")
    row = page.locator(f'[id="rev-{rev}"]')
    expect(row).to_have_class(re.compile(r"\bis-focus\b"))
    expect(row).to_be_in_viewport()
    expect(row.locator(".badge")).to_have_text([name])
    expect(page.locator("#panel")).to_contain_text(rev)

    # A fleet's group jumps to where its members are.
    page.goto("/projects/big/graph")
    tenants_rev = scale["tenants"]["t1"]
    page.locator(f'a.jump-link[data-fleet="tenants"][href*="around={tenants_rev}"]').click()
    expect(page.locator(f'[id="rev-{tenants_rev}"]')).to_be_in_viewport()


def test_a_collapsed_run_expands_in_place_when_clicked(
    scale: dict[str, Any], trip: Journey
) -> None:
    """Clicking "… N revisions …" swaps in those rows without leaving the page."""
    order: list[str] = scale["order"]
    page = trip.page_for("lead")
    page.goto("/projects/big/graph")
    gap = page.locator("li.graph-gap").first
    expect(gap).to_be_visible()
    count = int(gap.get_attribute("data-count") or 0)
    first = (gap.get_attribute("id") or "")[len("gap-") :]
    assert count > 4 and first in order
    hidden = order[order.index(first) : order.index(first) + count]
    for rev in hidden:
        expect(page.locator(f'[id="rev-{rev}"]')).to_have_count(0)
    rows_before = page.locator("li.graph-row").count()
    url_before = page.url

    with page.expect_response(lambda r: "open=" in r.url) as answer:
        gap.get_by_role("link", name=f"… {count} revisions …").click()
    assert answer.value.request.headers.get("hx-request") == "true", "not an htmx swap"
    expect(page.locator(f'[id="gap-{first}"]')).to_have_count(0)
    for rev in hidden:
        expect(page.locator(f'[id="rev-{rev}"]')).to_have_count(1)
    expect(page.locator("li.graph-row")).to_have_count(rows_before + count)
    # Each expanded row draws its lanes; the page stayed where it was.
    expect(page.locator(f'[id="rev-{hidden[-1]}"] svg.lanes path.edge').first).to_be_attached()
    assert page.url == url_before
