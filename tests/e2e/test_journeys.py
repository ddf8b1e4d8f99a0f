"""The main journeys in a real Chromium against a live server and a real worker.

Each journey puts the environments it reads where it needs them (by running Alembic), so any
order pytest-randomly picks tells the same story.
"""

from __future__ import annotations

import hashlib
import re

import pytest
import sqlalchemy as sa
from playwright.sync_api import APIResponse, Page, expect
from sqlalchemy.pool import NullPool

from tests.e2e.journey import Journey
from tests.e2e.stack import BRANCH_POINT, HEAD, MERGE, LiveStack

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

RUN_TIMEOUT_MS = 60_000
PROGRESS = re.compile(r'<progress max="(\d+)" value="(\d+)"')
STATUS = re.compile(r'class="state state-(\w+)"')


@pytest.fixture
def orders(live: LiveStack) -> dict[str, list[str]]:
    """Return the orders Alembic itself ran c94a0b→heads and heads→c94a0b in, on SQLite."""
    return live.orders


def action_id_of(page: Page) -> int:
    """Return the id of the action page the browser is on."""
    found = re.search(r"/actions/(\d+)/$", page.url)
    assert found, f"not an action page: {page.url}"
    return int(found.group(1))


def wait_for_sql(page: Page) -> str:
    """Wait for the worker's offline SQL on the action page; return its sha256 as shown."""
    expect(page.locator("#review pre.sql")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    shown = page.locator("#review code.hash").inner_text()
    assert re.fullmatch(r"[0-9a-f]{64}", shown), shown
    return shown


def approve(journey: Journey, action_id: int, comment: str) -> Page:
    """Approve an action as alan through its page, and return the page, left open."""
    page = journey.page_for("alan")
    page.goto(f"/actions/{action_id}/")
    wait_for_sql(page)
    page.get_by_label("Comment (optional)").fill(comment)
    page.get_by_role("button", name="Approve this plan").click()
    expect(page.locator(".messages")).to_contain_text("Approved.")
    return page


def watch_run_to_success(
    journey: Journey, page: Page, action_id: int, steps: int
) -> list[tuple[str, int]]:
    """Wait on the open page until the run succeeded; return the states the polls showed."""
    progress = page.locator("#progress")
    expect(progress.locator(".state")).to_have_text("succeeded", timeout=RUN_TIMEOUT_MS)
    expect(progress.locator("progress")).to_have_attribute("value", str(steps))
    expect(progress.locator("progress")).to_have_attribute("max", str(steps))
    expect(progress).to_contain_text(f"{steps} of {steps} revisions")
    # Finished: the region stops polling.
    expect(progress).not_to_have_attribute("hx-get", re.compile(".*"))
    seen = []
    for body in journey.bodies(f"/actions/{action_id}/progress"):
        status, bar = STATUS.search(body), PROGRESS.search(body)
        assert status and bar, body[:500]
        seen.append((status.group(1), int(bar.group(2))))
    return seen


def test_team_lead_reads_the_overview_and_the_graph(
    live: LiveStack, journey: Journey, orders: dict[str, list[str]]
) -> None:
    """A team lead signs in, reads every environment's state, then the graph and a revision."""
    live.place(dev=HEAD, staging=BRANCH_POINT, prod=HEAD)
    page = journey.page_for("lead", sign_in=True)
    expect(page).to_have_url(live.url("/"))
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    # The databases were moved behind the dashboard's back: read them all again.
    with page.expect_response(re.compile(r"/refresh$")) as refreshed:
        page.get_by_role("button", name="Refresh all").click()
    assert refreshed.value.ok

    staging = page.locator("#env-staging")
    expect(staging.locator(".state")).to_have_text("behind")
    expect(staging.locator(".pending-count")).to_have_text("5")
    expect(staging).to_contain_text(BRANCH_POINT)
    expect(staging.locator("time")).to_have_text(re.compile(r"^read (just now|.+ ago)$"))
    for current in ("dev", "prod"):
        row = page.locator(f"#env-{current}")
        expect(row.locator(".state")).to_have_text("current")
        expect(row).to_contain_text(HEAD)
    expect(page.locator("#project-blog")).to_contain_text(f"head {HEAD}")

    # CI reads the same from the API, the pending revisions in the order Alembic runs them.
    answer = page.goto("/api/environments")
    assert answer is not None and answer.ok
    items = {item["environment"]: item for item in answer.json()}
    assert items["staging"]["state"] == "behind"
    assert items["staging"]["heads"] == [BRANCH_POINT]
    assert items["staging"]["pending"] == orders["upgrade"]
    assert {items[name]["state"] for name in ("dev", "prod")} == {"current"}
    page.go_back()

    page.locator("#project-blog").get_by_role("link", name="graph").click()
    expect(page).to_have_url(re.compile(r"/projects/blog/graph"))
    expect(page.locator(f"#rev-{BRANCH_POINT} .badge")).to_have_text(["staging"])
    expect(page.locator(f"#rev-{BRANCH_POINT} .badge")).to_have_class(re.compile("state-behind"))
    expect(page.locator(f"#rev-{HEAD} .badge")).to_have_text(["dev", "prod"])

    with page.expect_response(re.compile(f"/projects/blog/revisions/{MERGE}")) as partial:
        page.locator(f"#rev-{MERGE} svg a").click()
    assert partial.value.request.headers.get("hx-request") == "true", "not an htmx partial"
    panel = page.locator("#panel")
    expect(panel.locator("pre.docstring")).to_contain_text("merge reporting into main")
    expect(panel.locator("pre.docstring")).to_contain_text(f"Revision ID: {MERGE}")
    expect(panel).to_contain_text("e0d7f4a19b53")
    expect(panel).to_contain_text("1d6b9f0c4e27")
    expect(page).to_have_url(re.compile(f"rev={MERGE}"))


def test_operator_requests_an_upgrade_and_sees_its_plan_and_sql(
    live: LiveStack, journey: Journey, orders: dict[str, list[str]]
) -> None:
    """An operator requests staging's upgrade to the heads and reviews the plan and its SQL."""
    live.place(staging=BRANCH_POINT)
    page = journey.page_for("olga")
    page.goto("/environments/staging")
    page.get_by_role("link", name="Upgrade to…").click()
    expect(page.get_by_role("heading", name="Request an action on staging")).to_be_visible()
    expect(page.get_by_label("Upgrade to")).to_have_value("heads")
    page.get_by_label("Reason").fill("Release 4.2: votes and phone numbers")
    page.get_by_role("button", name="Request upgrade").click()

    expect(page).to_have_url(re.compile(r"/actions/\d+/$"))
    action_id = action_id_of(page)
    expect(page.locator("h1")).to_contain_text("Upgrade staging to heads")
    assert page.locator("ol.plan code.rev").all_inner_texts() == orders["upgrade"]
    # The worker renders the SQL offline; the section says so, then fills itself in.
    expect(page.locator("#review")).to_contain_text("Preparing SQL…")
    shown = wait_for_sql(page)
    sql = page.locator("#review pre.sql").inner_text()
    assert hashlib.sha256(sql.encode()).hexdigest() == shown, "the hash is not the SQL's shown"
    for statement in ("CREATE TABLE votes", "phone_number", "alembic_version"):
        assert statement in sql
    expect(page.locator("#review")).not_to_have_attribute("hx-get", re.compile(".*"))
    stored = live.action(action_id)
    assert stored["status"] == "requested"
    assert stored["plan"] == orders["upgrade"]
    assert stored["sql_sha256"] == shown
    assert stored["requested_by"] == "olga"


def test_approver_approves_and_watches_the_run_finish(
    live: LiveStack, journey: Journey, orders: dict[str, list[str]]
) -> None:
    """An approver approves; the open page's progress bar runs to done; staging is current."""
    live.place(staging=BRANCH_POINT)
    action_id = live.request_upgrade("staging", "olga", "heads")["id"]
    page = approve(journey, action_id, "SQL reviewed")

    steps = len(orders["upgrade"])
    seen = watch_run_to_success(journey, page, action_id, steps)
    assert seen, "the page never polled the run's progress"
    assert seen[0][0] != "succeeded", f"the run finished before the page could watch it: {seen}"
    assert "running" in [status for status, _ in seen], seen
    values = [value for _, value in seen]
    assert values == sorted(values), f"the bar went backwards: {seen}"
    expect(page.locator("#progress .result")).to_contain_text(HEAD)
    journey.snapshot(page, "run-finished")

    page.goto("/")
    expect(page.locator("#env-staging .state")).to_have_text("current")
    expect(page.locator("#env-staging")).to_contain_text(HEAD)
    assert live.heads("staging") == (HEAD,)
    assert live.action(action_id)["status"] == "succeeded"


def test_requester_has_no_way_to_approve_their_own_action(
    live: LiveStack, journey: Journey
) -> None:
    """An admin who requested an action sees no Approve on it, though they approve others'."""
    live.place(staging=BRANCH_POINT)
    own_action = live.request_upgrade("staging", "root", "e0d7f4a19b53")
    own = own_action["id"]
    # Beside an unfinished action a request is refused: this one is queued behind it.
    others = live.request_upgrade("staging", "olga", "heads", queue_behind=own)["id"]
    page = journey.page_for("root")

    page.goto(f"/actions/{others}/")
    wait_for_sql(page)
    expect(page.get_by_role("button", name="Approve this plan")).to_be_visible()
    page.goto("/actions/")
    expect(page.locator(f".awaiting #action-{others}")).to_be_visible()
    expect(page.locator(f".awaiting #action-{own}")).to_have_count(0)

    page.goto(f"/actions/{own}/")
    wait_for_sql(page)
    expect(page.locator("#review")).to_contain_text("CREATE TABLE votes")
    expect(page.get_by_role("button", name="Approve this plan")).to_have_count(0)
    expect(page.get_by_role("button", name="Reject")).to_have_count(0)

    # Not even by posting the form the page does not offer.
    answer = post_form(page, f"/actions/{own}/approve", {"plan_hash": own_action["plan_hash"]})
    journey.record_api(answer)
    assert answer.status == 403, answer.status
    assert f"you requested action #{own}, so you cannot approve it" in answer.text()
    stored = live.action(own)
    assert stored["status"] == "requested" and stored["approvals"] == []


def test_viewer_sees_no_action_buttons_and_a_forged_post_is_refused(
    live: LiveStack, journey: Journey
) -> None:
    """A viewer reads every page without a button to act, and posting anyway is refused."""
    live.place(staging=BRANCH_POINT)
    action_id = live.request_upgrade("staging", "olga", "heads")["id"]
    page = journey.page_for("lead")

    page.goto("/environments/staging")
    refresh(page)
    expect(page.locator("#environment-status .state").first).to_have_text("behind")
    expect(page.get_by_role("link", name="Upgrade to…")).to_have_count(0)
    expect(page.get_by_role("link", name="Roll back to…")).to_have_count(0)
    answer = page.goto("/environments/staging/request")
    assert answer is not None and answer.status == 403
    expect(page.locator("#request-form")).to_contain_text("Your role cannot request actions")
    expect(page.locator("#request-form button")).to_have_count(0)

    page.goto(f"/actions/{action_id}/")
    wait_for_sql(page)
    for name in ("Approve this plan", "Reject", "Cancel"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)

    # The page shows the plan hash, so a forger has everything the approve form would send.
    plan_hash = page.locator("dd code.hash").first.inner_text()
    forged = post_form(page, f"/actions/{action_id}/approve", {"plan_hash": plan_hash})
    journey.record_api(forged)
    assert forged.status == 403, forged.status
    assert "only approvers and admins may approve" in forged.text()
    forged = post_form(
        page,
        "/environments/staging/request",
        {"direction": "upgrade", "target": "heads", "reason": f"forged by lead #{action_id}"},
    )
    journey.record_api(forged)
    assert forged.status == 403, forged.status
    without_token = page.request.post(
        f"/actions/{action_id}/approve", form={"plan_hash": plan_hash}
    )
    journey.record_api(without_token)
    assert without_token.status == 403, "a POST without the CSRF token was not refused"

    actions = live.actions()
    assert not [a for a in actions if a["reason"] == f"forged by lead #{action_id}"]
    stored = next(action for action in actions if action["id"] == action_id)
    assert stored["status"] == "requested" and stored["approvals"] == []
    page.reload()
    expect(page.locator("#progress .state")).to_have_text("requested")
    expect(page.locator("dd", has_text="of 1")).to_have_text("0 of 1")


def test_rollback_through_the_merge(
    live: LiveStack, journey: Journey, orders: dict[str, list[str]]
) -> None:
    """prod rolls back from the head through the merge to the branch point, approved and run."""
    live.place(prod=HEAD)
    page = journey.page_for("olga")
    page.goto("/environments/prod")
    refresh(page)
    expect(page.locator("#environment-status .state").first).to_have_text("current")
    page.get_by_role("link", name="Roll back to…").click()
    picker = page.get_by_label("Roll back to")
    picker.select_option(BRANCH_POINT)
    page.get_by_label("Reason").fill("Release 4.2 broke the reporting job")
    page.get_by_role("button", name="Request roll back").click()
    expect(page).to_have_url(re.compile(r"/actions/\d+/$"))
    action_id = action_id_of(page)
    plan = page.locator("ol.plan code.rev").all_inner_texts()
    assert plan == orders["downgrade"] and MERGE in plan
    wait_for_sql(page)

    approver = approve(journey, action_id, "rollback reviewed")
    watch_run_to_success(journey, approver, action_id, len(orders["downgrade"]))

    approver.goto("/environments/prod")
    heads = approver.locator("#position ul.revisions a.rev")
    expect(heads).to_have_text([BRANCH_POINT])
    expect(approver.locator("#environment-status .state").first).to_have_text("behind")
    expect(approver.locator("#pending ol.revisions li")).to_have_count(len(orders["upgrade"]))
    assert live.heads("prod") == (BRANCH_POINT,)


def refresh(page: Page) -> None:
    """Press an environment page's Refresh and wait for htmx to swap the fresh reading in."""
    with page.expect_response(re.compile(r"/environments/\w+/refresh$")) as refreshed:
        page.locator("#environment-status").get_by_role("button", name="Refresh").click()
    assert refreshed.value.ok


def post_form(page: Page, path: str, form: dict[str, str | float | bool]) -> APIResponse:
    """POST a form with the browser's session and CSRF cookie, as a forged request would."""
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    return page.request.post(
        path, form=form, headers={"X-CSRFToken": token}, max_redirects=0, fail_on_status_code=False
    )


def test_a_phone_reaches_every_column_of_the_overview(live: LiveStack, journey: Journey) -> None:
    """At 390 px the overview's table scrolls sideways: its last column can be reached and read."""
    live.place(dev=HEAD, staging=BRANCH_POINT, prod=HEAD)
    page = journey.page_for("lead")
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/")
    # The page itself does not get wider than the phone: only the table's card scrolls.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide at 390 px"
    row = page.locator("#env-staging")
    for cell in (row.locator("td").nth(3), row.locator("time"), row.get_by_role("button")):
        cell.scroll_into_view_if_needed()
        expect(cell).to_be_in_viewport()
    refresh_button = row.get_by_role("button", name="Refresh staging")
    box = refresh_button.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    with page.expect_response(re.compile(r"/environments/staging/refresh$")) as refreshed:
        refresh_button.click()
    assert refreshed.value.ok
    journey.snapshot(page, "overview-390px")


def change_by_hand(live: LiveStack, environment: str, statement: str) -> None:
    """Change an environment's schema behind the dashboard's back, as a hotfix in production does."""
    engine = sa.create_engine(live.targets[environment].url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def check_schema(journey: Journey, page: Page, shown: str) -> None:
    """Press Check schema, see it pending, and wait for the polls to bring the result in."""
    section = page.locator("#schema")
    with page.expect_response(re.compile(r"/environments/dev/schema/check$")) as asked:
        section.get_by_role("button", name="Check schema").click()
    assert asked.value.ok
    assert asked.value.request.headers.get("hx-request") == "true", "not an htmx post"
    assert 'hx-trigger="every 2s"' in asked.value.text(), "the pending section does not poll"
    expect(section.locator(".schema")).to_have_text(shown, timeout=RUN_TIMEOUT_MS)
    expect(section).not_to_have_attribute("hx-trigger", re.compile(".*"))
    # The status card's badge came along out of band.
    expect(page.locator("#schema-badge .schema")).to_have_text(shown)


def test_operator_checks_a_drifted_schema_and_sees_the_result_come_in(
    live: LiveStack, journey: Journey
) -> None:
    """A hand-made table on dev: the operator checks the schema, the page polls, drift shows."""
    live.place(dev=HEAD)
    change_by_hand(live, "dev", "CREATE TABLE hotfix_audit (id INTEGER PRIMARY KEY, note TEXT)")
    try:
        page = journey.page_for("olga")
        page.goto("/environments/dev")
        check_schema(journey, page, "drift (1)")
        polls = journey.bodies("/environments/dev/schema")
        assert len(polls) >= 2, "the result came without a poll"
        section = page.locator("#schema")
        expect(section.locator(".drift-group h4")).to_have_text(["hotfix_audit"])
        expect(section.locator(".drift-group")).to_contain_text(
            "table hotfix_audit exists in dev but no revision creates it"
        )
        hotfix = section.locator("details.live-table.drifted")
        expect(hotfix.locator("summary")).to_contain_text("hotfix_audit")
        expect(hotfix.locator("tbody tr")).to_have_count(2)
        journey.snapshot(page, "drift")
    finally:
        change_by_hand(live, "dev", "DROP TABLE IF EXISTS hotfix_audit")
    # Dropped again: the next check says so, and the differences are gone.
    check_schema(journey, page, "in sync")
    expect(page.locator("#schema .drift-group")).to_have_count(0)
