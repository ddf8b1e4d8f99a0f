"""Fixtures for the browser journeys: a live dashboard, Debian's Chromium, and one journey a test.

The stack and the browser live for one module: Playwright's sync API leaves an event loop marked
running in the main thread, where Django's ORM in the next module's tests would refuse to work,
and a worker polling in the background would slow every other test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.databases import require_services
from tests.e2e.journey import ARTIFACTS, Journey
from tests.e2e.leaks import LeakWatch
from tests.e2e.stack import LiveStack, live_stack

CHROMIUM = Path(os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
WATCH = pytest.StashKey[LeakWatch]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so teardown knows whether the journey failed."""
    report = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print what the password scan covered."""
    watch = config.stash.get(WATCH, None)
    if watch is not None:
        terminalreporter.write_line(f"e2e password scan: {watch.summary()}")


def need_chromium() -> None:
    """Skip (or fail under REQUIRE_SERVICES=1) when Debian's Chromium is not installed."""
    if CHROMIUM.exists():
        return
    message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    if require_services():
        pytest.fail(f"{message} and REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(f"{message}; set REQUIRE_SERVICES=1 to make this a failure")


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[LiveStack]:
    """Run the dashboard and a worker on throwaway databases for this module's journeys."""
    need_chromium()
    folder = tmp_path_factory.mktemp("e2e")
    with live_stack(folder) as stack:
        watch = LeakWatch(stack.never_shown)
        pytestconfig.stash[WATCH] = watch
        yield stack
    # The server and worker have stopped: their logs are complete.
    logs = sorted(folder.glob("*.log"))
    watch.scan_logs(logs)
    watch.scan_stored(sorted(folder.glob("dash.sqlite3*")))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for log in logs:
        shutil.copy(log, ARTIFACTS / log.name)
    if watch.leaks:
        pytest.fail(f"secrets leaked:\n{watch.found()}", pytrace=False)
    if watch.unreadable or not (watch.responses and watch.log_lines):
        pytest.fail(f"the scan missed answers or logs: {watch.summary()}", pytrace=False)


@pytest.fixture(scope="module")
def browser(live: LiveStack) -> Iterator[Browser]:
    """Launch Debian's Chromium (Playwright never downloads a browser here)."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def sessions() -> dict[str, Any]:
    """Remember each user's signed-in browser state, so only the first visit signs in."""
    return {}


@pytest.fixture
def journey(
    request: pytest.FixtureRequest,
    browser: Browser,
    live: LiveStack,
    sessions: dict[str, Any],
    pytestconfig: pytest.Config,
) -> Iterator[Journey]:
    """Give a test its journey; afterwards save its artifacts and check it leaked nothing."""
    watch = pytestconfig.stash[WATCH]
    trip = Journey(request.node.name, browser, live, watch, sessions)
    yield trip
    reports = request.node.stash.get(REPORTS, {})
    failed = any(report.failed for report in reports.values())
    try:
        trip.save(failed)
    finally:
        trip.close()
    watch.scan_logs(sorted(live.folder.glob("*.log")))
    if watch.leaks:
        pytest.fail(f"secrets leaked:\n{watch.found()}", pytrace=False)
    assert not trip.problems, "the pages broke their Content-Security-Policy:\n" + "\n".join(
        trip.problems
    )
