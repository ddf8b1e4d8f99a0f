"""A journey: one test's signed-in browsers, everything they were answered, and its artifacts."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import APIResponse, Browser, BrowserContext, Page
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Response as BrowserResponse

from tests.e2e.leaks import SCANNED_TYPES, LeakWatch
from tests.e2e.stack import ROOT, LiveStack

ARTIFACTS = ROOT / "artifacts" / "e2e"
TIMEOUT_MS = 15_000


class Journey:
    """One test's browser contexts, one a user, with everything the pages answered."""

    def __init__(
        self,
        name: str,
        browser: Browser,
        live: LiveStack,
        watch: LeakWatch,
        sessions: dict[str, Any],
    ) -> None:
        self.name = name
        self.browser = browser
        self.live = live
        self.watch = watch
        self.sessions = sessions
        self.contexts: list[tuple[str, BrowserContext]] = []
        self.answers: list[tuple[str, int, str]] = []
        self.problems: list[str] = []
        self.reread: list[tuple[BrowserContext, str]] = []
        self.last: Page | None = None

    def page_for(self, user: str, *, sign_in: bool = False) -> Page:
        """Open a browser for a user, signed in (through the form on first use or when asked)."""
        state = None if sign_in else self.sessions.get(user)
        context = self.browser.new_context(
            base_url=self.live.base_url,
            viewport={"width": 1280, "height": 900},
            storage_state=state,
        )
        context.set_default_timeout(TIMEOUT_MS)
        context.set_default_navigation_timeout(TIMEOUT_MS)
        self.contexts.append((user, context))
        page = context.new_page()
        page.on("response", self._record)
        page.on("console", lambda message: self._console(user, message.type, message.text))
        page.on("pageerror", lambda error: self.problems.append(f"{user}: page error {error}"))
        self.last = page
        if state is None:
            self.sign_in(page, user)
        return page

    def sign_in(self, page: Page, user: str) -> None:
        """Sign in through the login form and remember the session."""
        page.goto("/accounts/login/")
        page.get_by_label("Username").fill(user)
        page.get_by_label("Password").fill(self.live.user_password)
        page.get_by_role("button", name="Sign in").click()
        page.locator(".who").get_by_text(user, exact=True).wait_for()
        self.sessions[user] = page.context.storage_state()

    def record_api(self, response: APIResponse) -> None:
        """Scan an answer the test fetched itself (page.request), as the browser's are."""
        content_type = response.headers.get("content-type", "")
        body = response.body()
        self.watch.scan_response(response.url, content_type, body)
        self.answers.append((response.url, response.status, body.decode(errors="replace")))

    def bodies(self, fragment: str) -> list[str]:
        """Return the bodies of HTML/JSON answers whose URL contains fragment, in arrival order."""
        return [text for url, _, text in self.answers if fragment in url]

    def _record(self, response: BrowserResponse) -> None:
        content_type = response.headers.get("content-type", "")
        if 300 <= response.status < 400 or not content_type.startswith(SCANNED_TYPES):
            return
        try:
            body = response.body()
        except PlaywrightError:
            # The page moved on (an htmx poll was in flight): fetch it again before the journey
            # ends; a POST cannot be repeated, so it is counted as a gap.
            if response.request.method == "GET":
                self.reread.append((response.frame.page.context, response.url))
            else:
                self.watch.unreadable.append(response.url)
            return
        self.watch.scan_response(response.url, content_type, body)
        self.answers.append((response.url, response.status, body.decode(errors="replace")))

    def _console(self, user: str, kind: str, text: str) -> None:
        if kind == "error" and ("Content Security Policy" in text or "Refused to" in text):
            self.problems.append(f"{user}: {text}")

    def snapshot(self, page: Page, label: str) -> None:
        """Save a screenshot of a page on the way, beside the journey's last one."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / f"{self.name}-{label}.png", full_page=True)

    def save(self, failed: bool) -> None:
        """Save a screenshot of the last page, and on failure every open page's HTML."""
        name = self.name
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if self.last is not None and not self.last.is_closed():
            self.last.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
        if not failed:
            # An earlier failure's pages would mislead whoever reads the artifacts.
            for stale in ARTIFACTS.glob(f"{name}*.html"):
                stale.unlink()
            return
        for user, context in self.contexts:
            for index, page in enumerate(context.pages):
                suffix = "" if page is self.last else f"-{user}-{index}"
                try:
                    (ARTIFACTS / f"{name}{suffix}.html").write_text(page.content())
                except PlaywrightError:
                    continue

    def close(self) -> None:
        """Scan the answers the pages moved on from, then close every browser context."""
        for context, url in self.reread:
            self.record_api(context.request.get(url))
            self.watch.reread += 1
        for _, context in self.contexts:
            context.close()
