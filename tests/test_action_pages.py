"""Action pages: what each role sees and may post, live progress, and escaping."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from dashboard.config import current_config
from dashboard.models import Action, Approval, AuditEvent, Snapshot
from dashboard.selectors.sql import highlight_sql
from dashboard.services import actions as action_services
from dashboard.services.actions import pinning

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-9"
SCRIPT = "<script>alert(1)</script>"
# The sample project's history, heads first (see migrations_project/README.md).
HEAD = "6c0a8d3f5e94"
MERGE = "9e4f1b7a2c68"
VOTES = "e0d7f4a19b53"
FK = "c94a0b3e6d12"
BASE = "3f8c1a2b9d04"
ROLES = {
    "vera": "viewer",
    "olga": "operator",
    "abe": "approver",
    "ann": "approver",
    "root": "admin",
}

pytestmark = pytest.mark.django_db


def write_config(path: Path, script_location: Path, url: str) -> Path:
    """Write a config with one project and two environments on the same target database."""
    path.write_text(
        f"""
[projects.blog]
script_location = "{script_location}"

[environments.staging]
project = "blog"
url = "{url}"
approvals_required = 1

[environments.dev]
project = "blog"
url = "{url}"
approvals_required = 0
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def config(settings: Any, tmp_path: Path, sqlite_url: str) -> Path:
    """Point the dashboard at the sample project with staging and dev on a fresh SQLite file."""
    sqlite3.connect(sqlite_url.removeprefix("sqlite:///")).close()
    settings.DASHBOARD_CONFIG = str(
        write_config(tmp_path / "dashboard.toml", ROOT / "migrations_project", sqlite_url)
    )
    return tmp_path


@pytest.fixture
def users() -> dict[str, Any]:
    """Create one user per role and return them by name."""
    for name, role in ROLES.items():
        call_command("adduser", name, role=role, password=PASSWORD)
    return {u.username: u for u in get_user_model().objects.all()}


def signed_in(name: str, *, csrf: bool = False) -> Client:
    """Return a client signed in as `name`."""
    client = Client(enforce_csrf_checks=csrf)
    assert client.login(username=name, password=PASSWORD)
    return client


def make_action(users: dict[str, Any], **fields: Any) -> Action:
    """Create an action row as the services leave it once its SQL is prepared."""
    sql = fields.pop("sql", "CREATE TABLE votes (id INTEGER NOT NULL);\n")
    requester = users[fields.pop("requester", "olga")]
    values: dict[str, Any] = {
        "environment": "staging",
        "project": "blog",
        "direction": "upgrade",
        "target": "heads",
        "from_heads": [FK],
        "target_heads": [HEAD],
        "plan": [VOTES, "7a3c2e8b5f01", "1d6b9f0c4e27", MERGE, HEAD],
        "sql": sql,
        "sql_sha256": hashlib.sha256(sql.encode()).hexdigest() if sql else "",
        # The project's code as it is: a plan of other code no longer holds.
        "fingerprint": current_fingerprint(),
        "plan_hash": "a1" * 32,
        "approvals_required": 1,
        "requested_by": requester,
        "requested_by_name": requester.username,
        "reason": "ship the votes table",
        "prepared_at": timezone.now(),
    }
    values.update(fields)
    return Action.objects.create(**values)


def current_fingerprint() -> str:
    """Return the fingerprint the sample project's code has now."""
    return pinning.current_fingerprint(current_config().projects["blog"])


def buttons(html: str) -> set[str]:
    """Return the labels of the page's submit buttons."""
    return {b.strip() for b in re.findall(r"<button[^>]*>([^<]*)</button>", html)} - {"Sign out"}


# --- the action page ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("vera", set()),
        ("olga", {"Cancel"}),
        ("abe", {"Approve this plan", "Reject"}),
        ("root", {"Approve this plan", "Reject", "Cancel"}),
    ],
)
def test_action_page_shows_each_role_only_its_buttons(
    config: Path, users: dict[str, Any], name: str, expected: set[str]
) -> None:
    action = make_action(users)
    response = signed_in(name).get(f"/actions/{action.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert buttons(html) == expected
    # The plan in run order with its messages, the SQL's hash and the heads it moves between.
    assert html.index("create votes table") < html.index("add phone_number to users")
    assert action.sql_sha256 in html
    assert FK in html and HEAD in html
    assert "ship the votes table" in html


def test_approve_form_carries_the_plan_hash_the_approver_saw(
    config: Path, users: dict[str, Any]
) -> None:
    action = make_action(users)
    html = signed_in("abe").get(f"/actions/{action.pk}/").content.decode()
    assert f'name="plan_hash" value="{action.plan_hash}"' in html


def test_requester_sees_no_decision_on_their_own_action(
    config: Path, users: dict[str, Any]
) -> None:
    action = make_action(users, requester="root")
    html = signed_in("root").get(f"/actions/{action.pk}/").content.decode()
    assert buttons(html) == {"Cancel"}
    assert "You requested this action, so another approver must decide on it." in html


def test_an_approver_who_decided_sees_the_decision_instead_of_the_forms(
    config: Path, users: dict[str, Any]
) -> None:
    action = make_action(users, approvals_required=2)
    Approval.objects.create(
        action=action,
        user=users["abe"],
        username="abe",
        decision="approve",
        comment="looks fine",
        plan_hash=action.plan_hash,
    )
    html = signed_in("abe").get(f"/actions/{action.pk}/").content.decode()
    assert buttons(html) == set()
    assert "You decided: approve" in html
    assert "looks fine" in html
    assert "1 of 2" in html


def test_no_decision_while_the_sql_is_being_prepared(config: Path, users: dict[str, Any]) -> None:
    action = make_action(users, sql="", prepared_at=None)
    html = signed_in("abe").get(f"/actions/{action.pk}/").content.decode()
    assert "Preparing SQL" in html
    assert buttons(html) == set()
    review = re.search(r'<section[^>]*id="review"[^>]*>', html)
    assert review and f'hx-get="/actions/{action.pk}/"' in review.group()
    assert 'hx-trigger="every 1s"' in review.group()


def test_review_region_stops_polling_once_the_sql_is_ready(
    config: Path, users: dict[str, Any]
) -> None:
    action = make_action(users)
    response = signed_in("abe").get(f"/actions/{action.pk}/", HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert html.lstrip().startswith('<section class="card" id="review"')
    assert "<html" not in html and 'id="progress"' not in html
    assert "hx-trigger" not in html
    assert "Approve this plan" in html
    assert "HX-Request" in response["Vary"]


def test_a_note_replaces_the_sql_when_none_can_be_rendered(
    config: Path, users: dict[str, Any]
) -> None:
    note = "SQLite batch operations cannot be rendered offline"
    action = make_action(users, sql="", sql_note=note)
    html = signed_in("abe").get(f"/actions/{action.pk}/").content.decode()
    assert note in html
    assert "Preparing SQL" not in html
    assert "Approve this plan" in html


def test_lint_warnings_sit_beside_the_sql_with_their_line(
    config: Path, users: dict[str, Any]
) -> None:
    sql = "BEGIN;\nALTER TABLE users ADD COLUMN phone VARCHAR(20) NOT NULL;\nCOMMIT;\n"
    lint = [{"line": 2, "message": "adding a NOT NULL column locks the table", "level": "warning"}]
    action = make_action(users, sql=sql, lint=lint)
    html = signed_in("vera").get(f"/actions/{action.pk}/").content.decode()
    aside = html[html.index('<aside class="lint"') :]
    assert "line 2" in aside
    assert "adding a NOT NULL column locks the table" in aside
    assert "ALTER TABLE users ADD COLUMN phone" in aside


def test_unknown_action_is_a_404(config: Path, users: dict[str, Any]) -> None:
    assert signed_in("vera").get("/actions/999/").status_code == 404
    assert signed_in("vera").get("/actions/999/progress").status_code == 404


def test_action_pages_need_a_signed_in_user(config: Path, users: dict[str, Any]) -> None:
    action = make_action(users)
    for url in ("/actions/", f"/actions/{action.pk}/", f"/actions/{action.pk}/progress"):
        response = Client().get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


# --- live progress -------------------------------------------------------------------------


def test_progress_partial_polls_while_running(config: Path, users: dict[str, Any]) -> None:
    log = "\n".join(f"line {i}" for i in range(100))
    action = make_action(
        users,
        status="running",
        progress_done=2,
        progress_total=5,
        log=log,
        started_at=timezone.now(),
    )
    response = signed_in("vera").get(f"/actions/{action.pk}/progress", HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert html.lstrip().startswith('<section class="card progress" id="progress"')
    assert "<html" not in html and "Plan" not in html
    assert 'hx-trigger="every 1s"' in html
    assert f'hx-get="/actions/{action.pk}/progress"' in html
    # The second revision runs now: one is done.
    assert '<progress max="5" value="1">' in html
    assert "running 2 of 5 revisions" in html
    assert "line 99" in html and "line 69" not in html  # only the log's tail
    assert "last 30 of 100 lines" in html


@pytest.mark.parametrize(
    ("status", "announced", "value", "text"),
    [
        ("running", 0, 0, "0 of 1 revisions"),  # Alembic has not reached the revision yet
        ("running", 1, 0, "running 1 of 1 revisions"),  # the only revision runs: none done
        ("succeeded", 1, 1, "1 of 1 revisions"),
        ("failed", 1, 0, "0 of 1 revisions done; stopped in revision 1"),
        ("cancelled", 1, 0, "0 of 1 revisions done; stopped in revision 1"),
        ("requested", 0, 0, "0 of 1 revisions"),
    ],
)
def test_the_progress_counts_finished_revisions_and_names_the_one_running(
    config: Path, users: dict[str, Any], status: str, announced: int, value: int, text: str
) -> None:
    finished = status in Action.FINISHED
    action = make_action(
        users,
        status=status,
        plan=[HEAD],
        progress_done=announced,
        progress_total=1,
        started_at=timezone.now() if status != "requested" else None,
        heartbeat_at=timezone.now() if status == "running" else None,
        finished_at=timezone.now() if finished else None,
    )
    html = signed_in("vera").get(f"/actions/{action.pk}/progress").content.decode()
    assert f'<progress max="1" value="{value}">' in html
    assert f'<span class="small">{text}</span>' in html


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled", "rejected", "interrupted"])
def test_progress_partial_stops_polling_when_finished(
    config: Path, users: dict[str, Any], status: str
) -> None:
    action = make_action(
        users,
        status=status,
        progress_done=5,
        progress_total=5,
        after_heads=[HEAD],
        error="" if status == "succeeded" else "boom",
        finished_at=timezone.now(),
    )
    for url in (f"/actions/{action.pk}/progress", f"/actions/{action.pk}/"):
        html = signed_in("olga").get(url).content.decode()
        progress = html[html.index('id="progress"') :]
        progress = progress[: progress.index("</section>")]
        assert "hx-trigger" not in progress
        assert "Heads after" in progress and HEAD in progress
        assert "Cancel" not in progress


def test_the_page_polls_progress_while_waiting(config: Path, users: dict[str, Any]) -> None:
    action = make_action(users)
    html = signed_in("vera").get(f"/actions/{action.pk}/").content.decode()
    section = re.search(r'<section[^>]*id="progress"[^>]*>', html)
    assert section and 'hx-trigger="every 1s"' in section.group()


# --- escaping -------------------------------------------------------------------------------


def test_reasons_comments_logs_and_sql_are_escaped(config: Path, users: dict[str, Any]) -> None:
    action = make_action(
        users,
        reason=SCRIPT,
        sql=f"-- {SCRIPT}\nINSERT INTO t VALUES ('{SCRIPT}');\n",
        sql_note=SCRIPT,
        lint=[{"line": 2, "message": SCRIPT, "level": "warning"}],
        log=SCRIPT,
        error=SCRIPT,
        status="failed",
        target=SCRIPT,
    )
    Approval.objects.create(
        action=action,
        user=users["ann"],
        username="ann",
        decision="reject",
        comment=SCRIPT,
        plan_hash=action.plan_hash,
    )
    for url in (f"/actions/{action.pk}/", "/actions/", f"/actions/{action.pk}/progress"):
        html = signed_in("abe").get(url).content.decode()
        assert "<script>" not in html
        assert "&lt;script&gt;" in html


def test_revision_messages_are_escaped(
    settings: Any, tmp_path: Path, sqlite_url: str, users: dict[str, Any]
) -> None:
    versions = tmp_path / "project" / "versions"
    versions.mkdir(parents=True)
    (versions / "aaa111_evil.py").write_text(
        f'"""{SCRIPT}\n\nRevision ID: aaa111\n"""\nrevision = "aaa111"\ndown_revision = None\n',
        encoding="utf-8",
    )
    settings.DASHBOARD_CONFIG = str(
        write_config(tmp_path / "dashboard.toml", tmp_path / "project", sqlite_url)
    )
    # Finished: an unfinished one would leave the form only what comes after it.
    action = make_action(
        users, plan=["aaa111"], target="aaa111", from_heads=[], target_heads=["aaa111"],
        status="succeeded",
    )  # fmt: skip
    for url in (f"/actions/{action.pk}/", "/environments/staging/request?direction=upgrade"):
        html = signed_in("root").get(url).content.decode()
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "<script>" not in html


def test_highlighter_escapes_before_marking_up() -> None:
    sql = f"SELECT '<b>' FROM t -- {SCRIPT}\nWHERE x = 1 & y"  # noqa: S608 - not run
    html = str(highlight_sql(sql))
    assert "<script>" not in html and "<b>" not in html
    assert '<span class="sql-kw">SELECT</span>' in html
    assert '<span class="sql-kw">WHERE</span>' in html
    assert '<span class="sql-str">&#x27;&lt;b&gt;&#x27;</span>' in html
    assert '<span class="sql-com">-- &lt;script&gt;' in html
    assert '<span class="sql-num">1</span>' in html
    assert "&amp; y" in html


def test_highlighter_leaves_keywords_inside_strings_and_identifiers_alone() -> None:
    html = str(highlight_sql('SELECT \'from where\', "select", created_at FROM "order"'))
    assert html.count('class="sql-kw"') == 2
    assert '<span class="sql-id">&quot;order&quot;</span>' in html
    assert "created_at" in html and 'sql-kw">created' not in html


def test_highlighter_keeps_the_text() -> None:
    sql = "CREATE TABLE a (b TEXT DEFAULT 'x''y');\n/* multi\nline */ $$ body $$; 3.5"
    html = str(highlight_sql(sql))
    text = re.sub(r"<[^>]+>", "", html)
    assert text.replace("&#x27;", "'").replace("&quot;", '"') == sql


# --- the actions list ----------------------------------------------------------------------


def test_list_puts_actions_awaiting_the_approver_first(config: Path, users: dict[str, Any]) -> None:
    older = make_action(users)
    done = make_action(users, status="succeeded")
    preparing = make_action(users, prepared_at=None, sql="")
    own = make_action(users, requester="root")
    decided = make_action(users, approvals_required=2)
    Approval.objects.create(
        action=decided, user=users["abe"], username="abe", decision="approve", plan_hash="x"
    )
    newest = make_action(users, environment="dev")

    html = signed_in("abe").get("/actions/").content.decode()
    awaiting, rest = html.split("Everything else")
    assert "Awaiting your decision" in awaiting
    for action in (older, own, newest):
        assert f'id="action-{action.pk}"' in awaiting
    for action in (done, preparing, decided):
        assert f'id="action-{action.pk}"' not in awaiting
        assert f'id="action-{action.pk}"' in rest
    # Awaiting oldest first (first come, first served); the rest newest first.
    assert awaiting.index(f'id="action-{older.pk}"') < awaiting.index(f'id="action-{newest.pk}"')
    assert rest.index(f'id="action-{decided.pk}"') < rest.index(f'id="action-{done.pk}"')

    root_html = signed_in("root").get("/actions/").content.decode()
    assert f'id="action-{own.pk}"' not in root_html.split("Everything else")[0]


@pytest.mark.parametrize("name", ["vera", "olga"])
def test_list_has_no_awaiting_section_for_who_cannot_approve(
    config: Path, users: dict[str, Any], name: str
) -> None:
    action = make_action(users)
    html = signed_in(name).get("/actions/").content.decode()
    assert "Awaiting your decision" not in html
    assert f'id="action-{action.pk}"' in html


def test_list_filters_by_environment_and_status(config: Path, users: dict[str, Any]) -> None:
    staging_ok = make_action(users, status="succeeded")
    staging_failed = make_action(users, status="failed")
    dev_ok = make_action(users, environment="dev", status="succeeded")
    client = signed_in("vera")

    html = client.get("/actions/", {"environment": "staging"}).content.decode()
    assert f"action-{staging_ok.pk}" in html and f"action-{staging_failed.pk}" in html
    assert f"action-{dev_ok.pk}" not in html

    html = client.get(
        "/actions/", {"environment": "staging", "status": "succeeded"}
    ).content.decode()
    assert f"action-{staging_ok.pk}" in html
    assert f"action-{staging_failed.pk}" not in html and f"action-{dev_ok.pk}" not in html

    response = client.get("/actions/", {"status": "succeeded"}, HTTP_HX_REQUEST="true")
    fragment = response.content.decode()
    assert fragment.lstrip().startswith('<div id="actions-table">')
    assert f"action-{dev_ok.pk}" in fragment and f"action-{staging_failed.pk}" not in fragment

    bogus = client.get("/actions/", {"status": "nonsense"})
    assert bogus.status_code == 200  # an unknown status filters nothing rather than failing


# --- the request form -----------------------------------------------------------------------


def options(html: str) -> list[str]:
    """Return the values of the target picker's options, in order."""
    select = re.search(r'<select name="target".*?</select>', html, re.DOTALL)
    assert select, html
    return re.findall(r'<option value="([^"]*)"', select.group())


def test_request_form_offers_heads_first_for_an_upgrade(
    config: Path, users: dict[str, Any]
) -> None:
    Snapshot.objects.create(
        environment="staging", project="blog", heads=[FK], state="behind", read_at=timezone.now()
    )
    response = signed_in("olga").get("/environments/staging/request")
    assert response.status_code == 200
    values = options(response.content.decode())
    assert values[0] == "heads"
    assert HEAD in values and VOTES in values
    assert FK not in values and BASE not in values  # already applied


def test_request_form_offers_only_ancestors_and_base_for_a_rollback(
    config: Path, users: dict[str, Any]
) -> None:
    Snapshot.objects.create(
        environment="staging", project="blog", heads=[FK], state="behind", read_at=timezone.now()
    )
    html = (
        signed_in("olga").get("/environments/staging/request?direction=downgrade").content.decode()
    )
    values = options(html)
    assert values == ["5b2d9e7f1c86", "a71e5c0d2f39", BASE, "base"]
    assert 'name="direction" value="downgrade"' in html


def test_request_form_offers_everything_when_the_heads_are_unknown(
    config: Path, users: dict[str, Any]
) -> None:
    html = (
        signed_in("olga").get("/environments/staging/request?direction=downgrade").content.decode()
    )
    assert len(options(html)) == 10  # nine revisions and base
    assert "not known yet" in html


def test_request_form_swaps_direction_as_a_fragment(config: Path, users: dict[str, Any]) -> None:
    response = signed_in("olga").get(
        "/environments/staging/request?direction=downgrade", HTTP_HX_REQUEST="true"
    )
    html = response.content.decode()
    assert html.lstrip().startswith('<section class="card" id="request-form">')
    assert "<html" not in html
    assert options(html)[-1] == "base"


def test_request_form_shows_a_viewer_no_form(config: Path, users: dict[str, Any]) -> None:
    response = signed_in("vera").get("/environments/staging/request")
    assert response.status_code == 403
    html = response.content.decode()
    assert "Your role cannot request actions" in html
    assert '<form method="post" action="/environments' not in html


def test_request_form_for_an_unknown_environment_is_a_404(
    config: Path, users: dict[str, Any]
) -> None:
    assert signed_in("olga").get("/environments/nowhere/request").status_code == 404


def test_request_needs_a_reason_and_an_offered_target(config: Path, users: dict[str, Any]) -> None:
    client = signed_in("olga")
    response = client.post(
        "/environments/staging/request", {"direction": "upgrade", "target": "heads", "reason": " "}
    )
    assert response.status_code == 200
    assert "This field is required." in response.content.decode()
    response = client.post(
        "/environments/staging/request",
        {"direction": "upgrade", "target": "nonsense", "reason": "because"},
    )
    assert "Select a valid choice" in response.content.decode()
    assert not Action.objects.exists()


# --- through the services --------------------------------------------------------------------


def request_as(client: Client, **data: str) -> Any:
    """Post the request form for staging and return the response."""
    values = {"direction": "upgrade", "target": "heads", "reason": "release 42"} | data
    return client.post("/environments/staging/request", values)


# The worker's heartbeat writes from another thread: no test-wide transaction may hold the lock.
@pytest.mark.django_db(transaction=True)
def test_request_then_review_approve_and_run(config: Path, users: dict[str, Any]) -> None:
    response = request_as(signed_in("olga"))
    assert response.status_code == 302, re.findall(
        r'"error[^>]*>(.*?)</', response.content.decode(), re.DOTALL
    )
    action = Action.objects.get()
    assert response["Location"] == f"/actions/{action.pk}/"
    assert action.plan[0] == BASE and action.plan[-1] == HEAD
    assert action.reason == "release 42"

    # Until the worker prepares the SQL, nobody can decide.
    approver = signed_in("abe")
    html = approver.get(f"/actions/{action.pk}/").content.decode()
    assert "Preparing SQL" in html and buttons(html) == set()

    action_services.action_prepare(action_id=action.pk)
    action.refresh_from_db()
    html = approver.get(f"/actions/{action.pk}/").content.decode()
    assert "Preparing SQL" not in html
    assert action.sql_sha256 in html or action.sql_note in html
    assert buttons(html) == {"Approve this plan", "Reject"}

    response = approver.post(
        f"/actions/{action.pk}/approve", {"plan_hash": action.plan_hash, "comment": "go"}
    )
    assert response.status_code == 302
    action.refresh_from_db()
    assert action.status == "queued"
    assert "Approved." in approver.get(f"/actions/{action.pk}/").content.decode()

    action_services.action_run(action_id=action.pk, worker="test")
    html = approver.get(f"/actions/{action.pk}/progress").content.decode()
    assert "hx-trigger" not in html
    assert "Succeeded" in html or "succeeded" in html
    assert f"{len(action.plan)} of {len(action.plan)} revisions" in html
    assert HEAD in html


def test_viewer_cannot_request(config: Path, users: dict[str, Any]) -> None:
    response = request_as(signed_in("vera"))
    assert response.status_code == 403
    assert not Action.objects.exists()


def test_a_refused_request_shows_the_reason_on_the_form(
    config: Path, users: dict[str, Any]
) -> None:
    # The fresh database is at base: rolling back to base has nothing to do.
    response = request_as(signed_in("olga"), direction="downgrade", target="base")
    assert response.status_code == 200
    html = response.content.decode()
    assert "nothing to do" in html
    assert 'role="alert"' in html
    assert not Action.objects.exists()


@pytest.fixture
def prepared(config: Path, users: dict[str, Any]) -> Action:
    """Return an upgrade of staging to heads requested by olga, its SQL prepared."""
    action = action_services.action_request(
        user=users["olga"],
        environment="staging",
        direction="upgrade",
        target="heads",
        reason="release",
        prepare=True,
    )
    assert action.is_prepared
    return action


@pytest.mark.parametrize("name", ["vera", "olga"])
def test_a_forged_approval_from_a_non_approver_is_refused(prepared: Action, name: str) -> None:
    client = signed_in(name)
    for verb, data in (
        ("approve", {"plan_hash": prepared.plan_hash}),
        ("reject", {"reason": "no"}),
    ):
        response = client.post(f"/actions/{prepared.pk}/{verb}", data)
        assert response.status_code == 403
        assert "only approvers and admins" in response.content.decode()
    assert not Approval.objects.exists()
    prepared.refresh_from_db()
    assert prepared.status == "requested"


def test_the_requester_cannot_approve_their_own_action(config: Path, users: dict[str, Any]) -> None:
    action = action_services.action_request(
        user=users["root"],
        environment="staging",
        direction="upgrade",
        target="heads",
        reason="release",
        prepare=True,
    )
    response = signed_in("root").post(
        f"/actions/{action.pk}/approve", {"plan_hash": action.plan_hash}
    )
    assert response.status_code == 403
    assert "you requested action" in response.content.decode()
    assert not Approval.objects.exists()


def test_a_post_without_the_csrf_token_is_refused(prepared: Action) -> None:
    client = signed_in("abe", csrf=True)
    response = client.post(f"/actions/{prepared.pk}/approve", {"plan_hash": prepared.plan_hash})
    assert response.status_code == 403
    response = client.post("/environments/staging/request", {"direction": "upgrade"})
    assert response.status_code == 403
    assert not Approval.objects.exists()
    assert Action.objects.count() == 1


def test_the_page_posts_work_with_their_csrf_token(prepared: Action) -> None:
    client = signed_in("abe", csrf=True)
    html = client.get(f"/actions/{prepared.pk}/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert token
    response = client.post(
        f"/actions/{prepared.pk}/approve",
        {"plan_hash": prepared.plan_hash, "csrfmiddlewaretoken": token.group(1)},
    )
    assert response.status_code == 302
    assert Approval.objects.filter(username="abe", decision="approve").exists()


def test_an_approval_for_another_plan_is_refused_with_a_message(prepared: Action) -> None:
    client = signed_in("abe")
    response = client.post(f"/actions/{prepared.pk}/approve", {"plan_hash": "0" * 64}, follow=True)
    assert response.status_code == 200
    assert "the plan changed since you reviewed it" in response.content.decode()
    assert not Approval.objects.exists()


def test_rejecting_needs_a_reason_and_ends_the_action(prepared: Action) -> None:
    client = signed_in("abe")
    response = client.post(f"/actions/{prepared.pk}/reject", {"reason": ""}, follow=True)
    assert "This field is required." in response.content.decode()
    prepared.refresh_from_db()
    assert prepared.status == "requested"
    client.post(f"/actions/{prepared.pk}/reject", {"reason": f"not now {SCRIPT}"})
    prepared.refresh_from_db()
    assert prepared.status == "rejected"
    html = client.get(f"/actions/{prepared.pk}/").content.decode()
    assert "not now &lt;script&gt;" in html
    assert buttons(html) == set()


@pytest.mark.parametrize(("name", "allowed"), [("vera", False), ("abe", False), ("olga", True)])
def test_cancel_is_for_the_requester_or_an_admin(
    prepared: Action, name: str, allowed: bool
) -> None:
    response = signed_in(name).post(f"/actions/{prepared.pk}/cancel")
    prepared.refresh_from_db()
    if allowed:
        assert response.status_code == 302
        assert prepared.status == "cancelled"
    else:
        assert response.status_code == 403
        assert prepared.status == "requested"


def test_an_admin_cancels_anyones_action(prepared: Action) -> None:
    signed_in("root").post(f"/actions/{prepared.pk}/cancel")
    prepared.refresh_from_db()
    assert prepared.status == "cancelled"


def test_cancelling_a_finished_action_says_why(prepared: Action) -> None:
    client = signed_in("olga")
    client.post(f"/actions/{prepared.pk}/cancel")
    response = client.post(f"/actions/{prepared.pk}/cancel", follow=True)
    assert response.status_code == 200
    assert "can no longer be cancelled" in response.content.decode()


def test_posts_to_a_missing_action_are_404(config: Path, users: dict[str, Any]) -> None:
    client = signed_in("abe")
    assert client.post("/actions/999/approve", {"plan_hash": "x"}).status_code == 404
    assert client.post("/actions/999/cancel").status_code == 404


def test_the_pages_refuse_get_on_post_only_urls(prepared: Action) -> None:
    client = signed_in("abe")
    for verb in ("approve", "reject", "cancel"):
        assert client.get(f"/actions/{prepared.pk}/{verb}").status_code == 405


@pytest.mark.parametrize(
    ("name", "shown"), [("vera", False), ("abe", False), ("olga", True), ("root", True)]
)
def test_environment_page_links_to_the_request_form_for_who_can_request(
    config: Path, users: dict[str, Any], name: str, shown: bool
) -> None:
    html = signed_in(name).get("/environments/staging").content.decode()
    links = (
        'href="/environments/staging/request?direction=upgrade"',
        'href="/environments/staging/request?direction=downgrade"',
    )
    assert all((link in html) is shown for link in links)


@pytest.mark.parametrize(
    ("environment", "direction", "said"),
    [
        ("dev", "upgrade", "needs no approval on dev: it runs as soon as its SQL is ready"),
        ("staging", "upgrade", "runs only after 1 approval from someone else"),
        ("staging", "downgrade", "runs only after 2 approvals from someone else"),
    ],
)
def test_the_request_form_says_what_happens_on_that_environment(
    settings: Any,
    tmp_path: Path,
    sqlite_url: str,
    users: dict[str, Any],
    environment: str,
    direction: str,
    said: str,
) -> None:
    sqlite3.connect(sqlite_url.removeprefix("sqlite:///")).close()
    path = write_config(tmp_path / "dashboard.toml", ROOT / "migrations_project", sqlite_url)
    staging_policy = "approvals_required = 1\n"
    path.write_text(
        path.read_text().replace(
            staging_policy, staging_policy + "downgrade_approvals_required = 2\n"
        ),
        encoding="utf-8",
    )
    settings.DASHBOARD_CONFIG = str(path)
    html = (
        signed_in("olga")
        .get(f"/environments/{environment}/request?direction={direction}")
        .content.decode()
    )
    words = re.sub(r"\s+", " ", html)
    assert said in words
    assert "nothing runs before the approvals" not in words


# --- plans that no longer hold, and requests queued behind another ---------------------------


def test_no_approve_on_a_plan_of_code_that_changed_and_the_page_says_why(
    config: Path, users: dict[str, Any]
) -> None:
    action = make_action(users, fingerprint="0" * 64)
    html = signed_in("abe").get(f"/actions/{action.pk}/").content.decode()
    assert buttons(html) == set()
    assert (
        "This plan no longer holds: the script directory changed since this plan was made" in html
    )
    listing = signed_in("abe").get("/actions/").content.decode()
    assert "Awaiting your decision" not in listing
    assert "no longer holds" in listing
    # Computed on read: nothing was written.
    action.refresh_from_db()
    assert action.status == Action.Status.REQUESTED
    assert not AuditEvent.objects.filter(action_id=action.pk).exists()


def test_no_approve_once_a_newer_read_shows_the_heads_moved(
    config: Path, users: dict[str, Any]
) -> None:
    action = make_action(users)
    Snapshot.objects.create(
        environment="staging", project="blog", heads=[FK], state="behind",
        read_at=action.created_at - timezone.timedelta(minutes=1),
    )  # fmt: skip
    assert "Approve this plan" in buttons(
        signed_in("abe").get(f"/actions/{action.pk}/").content.decode()
    )
    Snapshot.objects.create(
        environment="staging", project="blog", heads=[VOTES], state="behind", read_at=timezone.now()
    )
    html = signed_in("abe").get(f"/actions/{action.pk}/").content.decode()
    assert buttons(html) == set()
    assert f"staging moved from {FK} to {VOTES} since this plan was made" in html


def test_the_action_page_names_the_one_it_is_queued_behind(
    config: Path, users: dict[str, Any]
) -> None:
    ahead = make_action(users)
    behind = make_action(users, from_heads=[HEAD], target_heads=[FK], queued_behind=ahead)
    html = signed_in("abe").get(f"/actions/{behind.pk}/").content.decode()
    assert f'<a href="/actions/{ahead.pk}/">#{ahead.pk}</a>' in html
    assert "runs only after it succeeded" in html
    assert "Approve this plan" in buttons(html)  # its heads differ until the one ahead ran
    Action.objects.filter(pk=ahead.pk).update(status="failed", finished_at=timezone.now())
    html = signed_in("abe").get(f"/actions/{behind.pk}/").content.decode()
    assert buttons(html) == set()
    assert f"action #{ahead.pk}, which it was queued behind, ended failed" in html


def test_the_request_form_offers_to_queue_behind_the_unfinished_action(
    config: Path, users: dict[str, Any]
) -> None:
    Snapshot.objects.create(
        environment="staging", project="blog", heads=[], state="uninitialized",
        read_at=timezone.now(),
    )  # fmt: skip
    olga = signed_in("olga")
    olga.post(
        "/environments/staging/request",
        {"direction": "upgrade", "target": FK, "reason": "first"},
    )
    ahead = Action.objects.get()
    html = olga.get("/environments/staging/request").content.decode()
    assert f'name="queue_behind" value="{ahead.pk}"' in html
    words = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    assert f"Queue behind #{ahead.pk}" in words
    # Planned from where the one ahead ends: what it applies is not offered again.
    assert FK not in options(html) and VOTES in options(html)

    body = {"direction": "upgrade", "target": VOTES, "reason": "second"}
    refused = olga.post("/environments/staging/request", body)
    assert refused.status_code == 200
    assert f"queue this request behind #{ahead.pk}" in refused.content.decode()
    assert Action.objects.count() == 1
    queued = olga.post("/environments/staging/request", {**body, "queue_behind": str(ahead.pk)})
    assert queued.status_code == 302
    behind = Action.objects.get(reason="second")
    assert behind.queued_behind_id == ahead.pk and behind.from_heads == [FK]
