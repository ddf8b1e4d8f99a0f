"""Where people see schema drift: the badges, the environment page's schema section, the warnings."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone
from django.utils.html import escape
from sqlalchemy.pool import NullPool

from dashboard.drift import reference
from dashboard.drift.differences import from_dicts
from dashboard.models import Action, AuditEvent, SchemaCheck, Snapshot
from dashboard.selectors import drift as drift_selectors
from dashboard.selectors.schema_tables import live_table
from dashboard.services import drift, status
from tests.databases import postgres_database
from tests.fakeserver import closed_port
from tests.statusenv import HEAD, MID, PASSWORD, alembic, empty_sqlite, with_password, write_config

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}
SIGN_IN = "correct-horse-9"
ROLES = {"vera": "viewer", "olga": "operator", "abe": "approver", "root": "admin"}
State = SchemaCheck.State
POLLER = 'hx-get="/environments/prod/schema/progress" hx-trigger="every 2s"'


@pytest.fixture(scope="module")
def at_heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file the real sample project upgraded to its heads (copied by each test)."""
    path = tmp_path_factory.mktemp("drift-pages") / "heads.db"
    alembic(empty_sqlite(path), "upgrade", "heads")
    return path


@pytest.fixture
def people() -> None:
    """Create one account per role."""
    for name, role in ROLES.items():
        call_command("adduser", name, role=role, password=SIGN_IN)


def signed_in(name: str, *, csrf: bool = False) -> Client:
    """Return a client signed in as name."""
    client = Client(enforce_csrf_checks=csrf)
    assert client.login(username=name, password=SIGN_IN)
    return client


def use_config(settings: Any, tmp_path: Path, environments: dict[str, dict[str, Any]]) -> None:
    """Point the dashboard at the sample project with these environments."""
    settings.DASHBOARD_CONFIG = str(write_config(tmp_path / "dashboard.toml", environments))


def blog(url: str, **extra: Any) -> dict[str, Any]:
    return {"project": "blog", "url": url, **extra}


def run_sql(url: str, *statements: str) -> None:
    """Change a target database by hand, as someone in production would."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


@pytest.fixture
def drifted(settings: Any, tmp_path: Path, at_heads: Path, people: None) -> str:
    """Configure prod at the heads with a hand-made column and index, read and checked for real."""
    path = tmp_path / "prod.db"
    shutil.copy(at_heads, path)
    url = f"sqlite:///{path}"
    run_sql(
        url,
        "ALTER TABLE users ADD COLUMN nickname VARCHAR(40)",
        "CREATE INDEX ix_posts_title ON posts (title)",
    )
    use_config(settings, tmp_path, {"prod": blog(url, approvals_required=1)})
    status.status_refresh(environments=["prod"])
    [check] = drift.schemas_check(["prod"])
    assert check.state == State.DRIFT, check.reason
    return url


def store_check(environment: str, state: str, **fields: Any) -> SchemaCheck:
    """Store a finished check row as the service leaves one."""
    values: dict[str, Any] = {
        "project": "blog",
        "trigger": SchemaCheck.Trigger.PERIODIC,
        "heads": [HEAD],
        "checked_at": timezone.now(),
    }
    values.update(fields)
    return SchemaCheck.objects.create(environment=environment, state=state, **values)


def difference(kind: str, table: str, name: str, detail: str = "") -> dict[str, str]:
    return {"kind": kind, "table": table, "name": name, "detail": detail}


def row(html: str, name: str) -> str:
    """Return the overview's table row of one environment."""
    found = re.search(rf'<tr id="env-{re.escape(name)}".*?</tr>', html, re.DOTALL)
    assert found, f"no row for {name}"
    return found.group(0)


def schema_label(html: str) -> str:
    """Return the text of the (first) schema badge's state link."""
    found = re.search(r'<a class="schema schema-(\w+)"[^>]*>([^<]*)</a>', html)
    assert found, "no schema badge"
    return f"{found.group(1)}: {found.group(2)}"


def section(html: str) -> str:
    """Return the environment page's schema section."""
    found = re.search(
        r'<section class="card schema-section" id="schema".*?</section>', html, re.DOTALL
    )
    assert found, "no schema section"
    return found.group(0)


# --- the badge ------------------------------------------------------------------------------


def test_overview_shows_each_schema_state_beside_the_revision_state(
    settings: Any, tmp_path: Path, people: None
) -> None:
    names = ["synced", "drifted", "unchecked", "broken", "never"]
    use_config(
        settings, tmp_path, {name: blog(f"sqlite:///{tmp_path / name}.db") for name in names}
    )
    five_minutes_ago = timezone.now() - timedelta(minutes=5, seconds=3)
    store_check("synced", State.IN_SYNC, checked_at=five_minutes_ago)
    store_check(
        "drifted",
        State.DRIFT,
        differences=[
            difference("remove_column", "users", "nickname"),
            difference("add_index", "posts", "ix"),
        ],
    )
    store_check("unchecked", State.NOT_CHECKED, reason="no scratch server: set scratch_url")
    store_check("broken", State.FAILED, reason="cannot read the live schema: timed out")

    html = signed_in("vera").get("/").content.decode()

    assert schema_label(row(html, "synced")) == "in_sync: in sync"
    assert "checked 5\xa0minutes ago" in row(html, "synced")
    assert schema_label(row(html, "drifted")) == "drift: drift (2)"
    assert 'href="/environments/drifted#schema"' in row(html, "drifted")
    unchecked = row(html, "unchecked")
    assert schema_label(unchecked) == "not_checked: not checked"
    assert 'title="no scratch server: set scratch_url"' in unchecked
    assert "(no scratch server: set scratch_url)" in unchecked
    broken = row(html, "broken")
    assert schema_label(broken) == "check_failed: check failed"
    assert "(cannot read the live schema: timed out)" in broken
    never = row(html, "never")
    assert schema_label(never) == "not_checked: not checked"
    assert "(no check yet)" in never and "checked " not in never
    # The revision state keeps its own badge: one .state per row, as the browser tests expect.
    for name in names:
        assert row(html, name).count('class="state ') == 1


def test_the_cached_overview_shows_a_new_check_and_a_pending_one_at_once(
    settings: Any, tmp_path: Path, people: None
) -> None:
    use_config(settings, tmp_path, {"prod": blog(f"sqlite:///{tmp_path / 'prod.db'}")})
    lead = signed_in("vera")
    before = row(lead.get("/").content.decode(), "prod")
    store_check("prod", State.IN_SYNC)
    synced = row(lead.get("/").content.decode(), "prod")
    SchemaCheck.objects.create(
        environment="prod", project="blog", trigger=SchemaCheck.Trigger.DEMAND
    )
    pending = row(lead.get("/").content.decode(), "prod")
    store_check("prod", State.DRIFT, differences=[difference("remove_table", "t", "t")])
    drift_row = row(lead.get("/").content.decode(), "prod")

    assert "(no check yet)" in before
    assert schema_label(synced) == "in_sync: in sync" and "checking" not in synced
    assert "checking…" in pending
    assert schema_label(drift_row) == "drift: drift (1)"


def test_a_check_made_for_another_project_does_not_count(
    settings: Any, tmp_path: Path, people: None
) -> None:
    use_config(settings, tmp_path, {"prod": blog(f"sqlite:///{tmp_path / 'prod.db'}")})
    store_check(
        "prod", State.DRIFT, project="shop", differences=[difference("remove_table", "t", "t")]
    )

    html = signed_in("vera").get("/").content.decode()

    assert "(no check yet)" in row(html, "prod")


def sqlite_steps(work: Callable[[], Any]) -> tuple[int, Any]:
    """Run work; return the SQLite VM instructions (in tens) it cost the dashboard's database."""
    connection.ensure_connection()
    raw = connection.connection
    ticks = [0]

    def tick() -> int:
        ticks[0] += 1
        return 0  # go on

    raw.set_progress_handler(tick, 10)
    try:
        result = work()
    finally:
        raw.set_progress_handler(None, 0)
    return ticks[0], result


@pytest.mark.skipif(connection.vendor != "sqlite", reason="counts SQLite's VM steps")
def test_finding_the_latest_checks_grows_no_faster_than_the_checks_kept() -> None:
    names = [f"env{n}" for n in range(4)]
    steps = []
    for per_environment in (50, 500):
        SchemaCheck.objects.all().delete()
        start = timezone.now() - timedelta(days=30)
        SchemaCheck.objects.bulk_create(
            SchemaCheck(
                environment=names[n % len(names)],
                project="blog",
                state=State.IN_SYNC,
                trigger=SchemaCheck.Trigger.PERIODIC,
                checked_at=start + timedelta(minutes=n),
            )
            for n in range(per_environment * len(names))
        )
        cost, latest = sqlite_steps(lambda: drift_selectors.latest_checks(names))
        steps.append(cost)
        newest = SchemaCheck.objects.order_by("-checked_at")[: len(names)]
        assert {check.pk for check in latest.values()} == {check.pk for check in newest}

    # Ten times the checks: about ten times the work, not a hundred (a month of hourly checks
    # once took the overview half a minute).
    assert steps[1] <= steps[0] * 20, steps


# --- the environment page -------------------------------------------------------------------


def test_a_real_drift_is_listed_by_table_in_plain_words(drifted: str) -> None:
    html = signed_in("vera").get("/environments/prod").content.decode()
    schema = section(html)

    assert schema_label(html) == "drift: drift (2)"  # the status card's badge
    assert 'id="schema-badge"' in html
    groups = re.findall(
        r'<div class="drift-group">\s*<h4><code>(\w+)</code></h4>(.*?)</div>', schema, re.DOTALL
    )
    assert [table for table, _ in groups] == ["posts", "users"]
    posts, users = (body for _, body in groups)
    assert (
        "index ix_posts_title on posts (title) exists in prod but no revision creates it" in posts
    )
    assert "column users.nickname exists in prod but no revision creates it" in users
    assert ">remove_column<" in users
    assert "nickname" not in posts


def test_the_live_schema_is_shown_table_by_table_with_the_drifted_items_marked(
    drifted: str,
) -> None:
    schema = section(signed_in("vera").get("/environments/prod").content.decode())
    tables = dict(
        re.findall(
            r'<details class="live-table[^"]*"[^>]*>\s*<summary><code>(\w+)</code>(.*?)</details>',
            schema,
            re.DOTALL,
        )
    )

    assert sorted(tables) == ["posts", "users", "votes"]  # not the version table
    users = tables["users"]
    nickname = re.search(r"<tr[^>]*><td><code>nickname</code>.*?</tr>", users, re.DOTALL)
    assert nickname and 'class="drifted"' in nickname.group(0)
    assert "<code>VARCHAR(40)</code>" in nickname.group(0) and "<td>NULL</td>" in nickname.group(0)
    email = re.search(r"<tr[^>]*><td><code>email</code>.*?</tr>", users, re.DOTALL)
    assert email and "drifted" not in email.group(0) and "NOT NULL" in email.group(0)
    assert "<code>uq_users_email</code> (email)" in users
    assert "<dt>Primary key</dt><dd>(id)</dd>" in users
    assert "<code>CURRENT_TIMESTAMP</code>" in users  # created_at's default
    assert re.search(r'<div class="drifted"><code>ix_posts_title</code> \(title\)', tables["posts"])
    assert "<code>ix_posts_created_at</code> (created_at)</div>" in tables["posts"]
    assert "<code>fk_votes_user_id_users</code> (user_id) -&gt; users(id)" in tables["votes"]
    assert "(user_id, post_id)" in tables["votes"]
    # Drifted tables open, the others stay folded.
    assert re.search(r'<details class="live-table drifted" open>\s*<summary><code>users', schema)
    assert re.search(r'<details class="live-table">\s*<summary><code>votes', schema)


def test_missing_items_are_listed_under_their_table_and_unnamed_constraints_matched_by_columns() -> (
    None
):
    live = {
        "name": "posts",
        "columns": [{"name": "owner_id", "type": "INTEGER", "nullable": False}],
        "foreign_keys": [
            {"name": "", "columns": ["owner_id"], "references": "users(id)"},
            {"name": "fk_posts_editor", "columns": ["editor_id"], "references": "users(id)"},
        ],
        "unique_constraints": [{"name": "", "columns": ["slug"]}, {"name": "", "columns": ["id"]}],
    }
    found = from_dicts(
        [
            difference("add_column", "posts", "title", "VARCHAR(255)"),
            difference("remove_fk", "posts", "(unnamed)", " (owner_id) -> users"),
            difference("remove_constraint", "posts", "(unnamed)", " (slug)"),
        ]
    )

    table = live_table(live, found, "prod")

    assert table.missing == ("column posts.title is missing in prod (the revisions create it)",)
    assert table.drifted and not table.columns[0].drift
    owner, editor = table.foreign_keys
    assert "exists in prod but no revision creates it" in owner.drift
    assert editor.drift == ""
    slug, other = table.unique_constraints
    assert (
        slug.drift
        == "an unnamed unique constraint on posts (slug) exists in prod but no revision creates it"
    )
    assert other.drift == ""


def test_the_section_polls_while_a_check_is_pending_and_shows_the_result(drifted: str) -> None:
    olga = signed_in("olga")
    asked = olga.post("/environments/prod/schema/check", **HTMX)
    pending = SchemaCheck.objects.get(state=State.PENDING)
    waiting = olga.get("/environments/prod/schema/progress", **HTMX)
    page = olga.get("/environments/prod").content.decode()
    run_sql(drifted, "DROP INDEX ix_posts_title", "ALTER TABLE users DROP COLUMN nickname")
    drift.schema_check_run(check_id=pending.pk)
    done = olga.get("/environments/prod/schema/progress", **HTMX)

    assert asked.status_code == 200
    assert pending.trigger == SchemaCheck.Trigger.DEMAND and pending.requested_by == "olga"
    for html in (asked.content.decode(), waiting.content.decode(), section(page)):
        assert POLLER in html
        assert "Checking (asked by olga)" in html
    # Meanwhile the last result stays on show, and the poll resends none of it.
    assert "column users.nickname exists in prod" in section(page)
    assert not re.search(r'<section[^>]*id="schema"[^>]*hx-trigger', section(page))
    assert waiting.status_code == 200 and "HX-Retarget" not in waiting
    assert "nickname" not in waiting.content.decode()
    assert 'id="schema"' not in waiting.content.decode()
    assert len(waiting.content) < 1000
    # Once finished, the poll answers with the whole section, swapped in place of the old one.
    assert done.status_code == 200
    assert (done["HX-Retarget"], done["HX-Reswap"]) == ("#schema", "outerHTML")
    html = done.content.decode()
    assert 'hx-trigger="every 2s"' not in html
    assert "Checking" not in html
    assert schema_label(html) == "in_sync: in sync"
    assert "The live schema is what the revisions at these heads produce." in html
    assert "nickname" not in html
    # The answer also swaps the status card's badge, out of band.
    oob = re.search(r'<span class="schema-badge" id="schema-badge" hx-swap-oob="true">.*', html)
    assert oob and "schema-in_sync" in oob.group(0)
    assert AuditEvent.objects.filter(verb="schema.drift_resolved", environment="prod").exists()


def test_the_section_without_htmx_is_the_page(drifted: str) -> None:
    answer = signed_in("vera").get("/environments/prod/schema")

    assert answer.status_code == 302 and answer["Location"] == "/environments/prod#schema"


@pytest.mark.parametrize(
    ("name", "allowed"), [("vera", False), ("olga", True), ("abe", True), ("root", True)]
)
def test_check_schema_is_for_operators_and_above(
    settings: Any, tmp_path: Path, people: None, name: str, allowed: bool
) -> None:
    use_config(settings, tmp_path, {"prod": blog(f"sqlite:///{tmp_path / 'prod.db'}")})
    client = signed_in(name)

    page = client.get("/environments/prod").content.decode()
    answer = client.post("/environments/prod/schema/check")

    assert ("Check schema</button>" in page) is allowed
    if allowed:
        assert answer.status_code == 302 and answer["Location"] == "/environments/prod#schema"
        assert SchemaCheck.objects.filter(state=State.PENDING, requested_by=name).count() == 1
        assert AuditEvent.objects.filter(verb="schema.check_requested", actor_name=name).exists()
    else:
        assert answer.status_code == 403
        assert "operators and above" in answer.content.decode()
        assert not SchemaCheck.objects.exists()


def test_check_schema_needs_the_csrf_token_and_a_post(
    settings: Any, tmp_path: Path, people: None
) -> None:
    use_config(settings, tmp_path, {"prod": blog(f"sqlite:///{tmp_path / 'prod.db'}")})
    client = signed_in("olga", csrf=True)
    page = client.get("/environments/prod").content.decode()
    form = re.search(
        r'<form method="post" action="/environments/prod/schema/check".*?</form>', page, re.DOTALL
    )
    assert form
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.group(0))
    assert token

    forged = client.post("/environments/prod/schema/check")
    fetched = client.get("/environments/prod/schema/check")
    assert forged.status_code == 403 and fetched.status_code == 405
    assert not SchemaCheck.objects.exists()
    sent = client.post("/environments/prod/schema/check", {"csrfmiddlewaretoken": token[1]})
    again = client.post("/environments/prod/schema/check", {"csrfmiddlewaretoken": token[1]})

    assert sent.status_code == 302 and again.status_code == 302
    assert SchemaCheck.objects.filter(state=State.PENDING).count() == 1  # one request is enough
    assert "disabled>Check schema</button>" in client.get("/environments/prod").content.decode()


def test_check_schema_of_an_unknown_environment_is_a_404(
    settings: Any, tmp_path: Path, people: None
) -> None:
    use_config(settings, tmp_path, {"prod": blog(f"sqlite:///{tmp_path / 'prod.db'}")})

    assert signed_in("olga").post("/environments/nowhere/schema/check").status_code == 404
    # A poll stops (htmx's 286) instead of asking a 404 again every 2 s.
    for url in ("/environments/nowhere/schema", "/environments/nowhere/schema/progress"):
        answer = signed_in("olga").get(url, **HTMX)
        assert answer.status_code == 286
        assert "nowhere is not in the config" in answer.content.decode()


def test_a_page_never_checked_says_so(settings: Any, tmp_path: Path, people: None) -> None:
    use_config(settings, tmp_path, {"prod": blog(f"sqlite:///{tmp_path / 'prod.db'}")})

    html = section(signed_in("olga").get("/environments/prod").content.decode())

    assert "No schema check has run yet: press Check schema." in html
    assert "(no check yet)" in html


def test_a_reason_is_shown_for_a_check_that_could_not_run(
    settings: Any, tmp_path: Path, people: None
) -> None:
    use_config(settings, tmp_path, {"prod": blog(f"sqlite:///{tmp_path / 'prod.db'}")})
    store_check("prod", State.NOT_CHECKED, reason="no scratch server: set scratch_url")

    html = section(signed_in("vera").get("/environments/prod").content.decode())

    assert "Not checked: no scratch server: set scratch_url" in html
    assert "Check schema" not in html  # a viewer


# --- adoption -------------------------------------------------------------------------------


def test_an_exact_match_offers_a_stamp_request(settings: Any, tmp_path: Path, people: None) -> None:
    use_config(settings, tmp_path, {"legacy": blog(f"sqlite:///{tmp_path / 'legacy.db'}")})
    store_check(
        "legacy",
        State.DRIFT,
        heads=[],
        differences=[difference("remove_table", "users", "users")],
        adoption={
            "exact": MID,
            "closest": [{"revision": MID, "count": 0, "items": []}],
            "compared": 6,
            "of": 9,
        },
    )

    operator = section(signed_in("olga").get("/environments/legacy").content.decode())
    viewer = section(signed_in("vera").get("/environments/legacy").content.decode())

    assert f'It matches <code class="rev">{MID}</code> exactly (no version table).' in operator
    form = re.search(
        r'<form method="post" action="/environments/legacy/request".*?</form>', operator, re.DOTALL
    )
    assert form
    assert '<input type="hidden" name="direction" value="stamp">' in form.group(0)
    assert f'<input type="hidden" name="target" value="{MID}">' in form.group(0)
    assert 'name="csrfmiddlewaretoken"' in form.group(0)
    assert f"Request stamp to {MID}</button>" in form.group(0)
    assert "exactly (no version table)" in viewer and "Request stamp" not in viewer


def test_the_stamp_form_requests_a_stamp_to_the_matching_revision(
    settings: Any, tmp_path: Path, people: None
) -> None:
    url = empty_sqlite(tmp_path / "legacy.db")
    alembic(url, "upgrade", MID)
    run_sql(url, "DROP TABLE alembic_version")  # what create_all leaves: tables, no versions
    use_config(settings, tmp_path, {"legacy": blog(url, approvals_required=1)})
    status.status_refresh(environments=["legacy"])
    store_check("legacy", State.DRIFT, heads=[], adoption={"exact": MID, "closest": []})
    olga = signed_in("olga", csrf=True)
    page = olga.get("/environments/legacy").content.decode()
    form = re.search(
        r'<form method="post" action="/environments/legacy/request".*?</form>', page, re.DOTALL
    )
    assert form
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', form.group(0)))

    answer = olga.post("/environments/legacy/request", {**fields, "reason": "adopt the legacy db"})

    assert answer.status_code == 302, answer.content.decode()[:2000]
    action = Action.objects.get()
    assert answer["Location"] == f"/actions/{action.pk}/"
    assert (action.direction, action.target, action.from_heads) == ("stamp", MID, [])
    assert action.requested_by_name == "olga"


def test_without_an_exact_match_the_closest_revisions_are_listed(
    settings: Any, tmp_path: Path, people: None
) -> None:
    use_config(settings, tmp_path, {"legacy": blog(f"sqlite:///{tmp_path / 'legacy.db'}")})
    store_check(
        "legacy",
        State.DRIFT,
        heads=[],
        differences=[difference("remove_table", "users", "users")],
        adoption={
            "exact": None,
            "closest": [
                {
                    "revision": HEAD,
                    "count": 1,
                    "items": [difference("remove_column", "users", "nickname")],
                },
                {"revision": MID, "count": 3, "items": []},
            ],
            "compared": 9,
            "of": 9,
        },
    )

    html = section(signed_in("olga").get("/environments/legacy").content.decode())

    assert "no revision's schema matches it exactly" in html
    assert "The closest of the 9 compared (of 9)" in html
    assert re.search(rf'<code class="rev" title="{HEAD}">{HEAD}</code>: 1 difference\b', html)
    assert re.search(rf'<code class="rev" title="{MID}">{MID}</code>: 3 differences', html)
    assert "column users.nickname exists in the database but no revision creates it" in html
    assert "Request stamp" not in html


# --- warnings on requests and approvals -----------------------------------------------------


def make_action(**fields: Any) -> Action:
    """Store an action row awaiting approval on prod."""
    values: dict[str, Any] = {
        "environment": "prod",
        "project": "blog",
        "direction": "upgrade",
        "target": "heads",
        "from_heads": [MID],
        "target_heads": [HEAD],
        "fingerprint": "0" * 64,
        "plan_hash": "a1" * 32,
        "approvals_required": 1,
        "requested_by_name": "olga",
        "reason": "ship it",
        "prepared_at": timezone.now(),
    }
    values.update(fields)
    return Action.objects.create(**values)


def warning(html: str) -> str:
    found = re.search(r'<p class="note drift-warning".*?</p>', html, re.DOTALL)
    return found.group(0) if found else ""


def test_request_and_approval_pages_warn_of_drift(drifted: str) -> None:
    action = make_action()
    finished = make_action(status=Action.Status.SUCCEEDED)

    request_page = signed_in("olga").get("/environments/prod/request?direction=downgrade")
    approval_page = signed_in("abe").get(f"/actions/{action.pk}/")
    history = signed_in("abe").get(f"/actions/{finished.pk}/")
    swapped = signed_in("olga").get("/environments/prod/request?direction=upgrade", **HTMX)

    for answer in (request_page, approval_page):
        text = warning(answer.content.decode())
        assert "the plan may fail or hide a hand-made change: 2 differences" in text
        assert 'href="/environments/prod#schema"' in text
    assert warning(history.content.decode()) == ""  # its plan ran before: today's drift is news
    # A tab swapped in carries the warning out of band, over the one the page shows.
    notes = re.search(
        r'<div id="schema-notes" hx-swap-oob="true">.*?</div>', swapped.content.decode(), re.DOTALL
    )
    assert notes and "2 differences" in warning(notes.group(0))


def test_no_warning_when_in_sync_or_never_checked(
    settings: Any, tmp_path: Path, at_heads: Path, people: None
) -> None:
    path = tmp_path / "prod.db"
    shutil.copy(at_heads, path)
    use_config(settings, tmp_path, {"prod": blog(f"sqlite:///{path}", approvals_required=1)})
    status.status_refresh(environments=["prod"])
    action = make_action(from_heads=[HEAD], target="base", direction="downgrade")
    never = signed_in("olga").get("/environments/prod/request").content.decode()
    [check] = drift.schemas_check(["prod"])

    pages = [
        signed_in("olga").get("/environments/prod/request").content.decode(),
        signed_in("abe").get(f"/actions/{action.pk}/").content.decode(),
    ]

    assert check.state == State.IN_SYNC
    assert "drift-warning" not in never
    for html in pages:
        assert "drift-warning" not in html and "hand-made change" not in html


# --- the models check -----------------------------------------------------------------------


def test_models_that_need_a_revision_are_shown_on_the_environment_and_graph_pages(
    settings: Any, tmp_path: Path, people: None
) -> None:
    use_config(settings, tmp_path, {"prod": blog(f"sqlite:///{tmp_path / 'prod.db'}")})
    Snapshot.objects.create(
        environment="prod",
        project="blog",
        heads=[HEAD],
        script_heads=[HEAD],
        state="current",
        read_at=timezone.now(),
    )
    store_check(
        "prod",
        State.IN_SYNC,
        models_state="drift",
        models_differences=["add_column users.phone_number"],
    )
    lead = signed_in("vera")

    pages = [
        lead.get("/environments/prod").content.decode(),
        lead.get("/projects/blog/graph").content.decode(),
    ]

    for html in pages:
        assert "The models have changes no revision covers: add_column users.phone_number" in html


def test_a_models_check_at_older_heads_is_not_shown(
    settings: Any, tmp_path: Path, people: None
) -> None:
    use_config(settings, tmp_path, {"prod": blog(f"sqlite:///{tmp_path / 'prod.db'}")})
    # Read after a new revision arrived: the check spoke of heads that are no longer the heads.
    Snapshot.objects.create(
        environment="prod",
        project="blog",
        heads=[MID],
        script_heads=[HEAD],
        state="behind",
        read_at=timezone.now(),
    )
    store_check(
        "prod",
        State.IN_SYNC,
        heads=[MID],
        models_state="drift",
        models_differences=["add_column users.phone_number"],
    )
    lead = signed_in("vera")

    for url in ("/environments/prod", "/projects/blog/graph"):
        assert "no revision covers" not in lead.get(url).content.decode()


def test_a_clean_models_check_shows_nothing(settings: Any, tmp_path: Path, people: None) -> None:
    use_config(settings, tmp_path, {"prod": blog(f"sqlite:///{tmp_path / 'prod.db'}")})
    store_check("prod", State.IN_SYNC, models_state="in_sync")

    assert "no revision covers" not in signed_in("vera").get("/environments/prod").content.decode()


# --- secrets --------------------------------------------------------------------------------


@pytest.mark.postgres
def test_no_password_reaches_a_page_from_the_urls_or_a_failing_scratch_server(
    settings: Any, tmp_path: Path, people: None
) -> None:
    scratch = f"postgresql://admin:{PASSWORD}@127.0.0.1:{closed_port()}/postgres"
    with postgres_database() as url:
        alembic(url, "upgrade", "heads")
        path = write_config(
            tmp_path / "dashboard.toml",
            {"prod": blog(with_password(url), timeout=2)},
            projects={
                "blog": {
                    "script_location": str(Path(__file__).parent.parent / "migrations_project"),
                    "scratch_url": scratch,
                }
            },
        )
        settings.DASHBOARD_CONFIG = str(path)
        status.status_refresh(environments=["prod"])
        # A reference another test cached would serve without asking the scratch server.
        reference.forget()
        [check] = drift.schemas_check(["prod"])
        olga = signed_in("olga")
        pages = [
            olga.get("/").content.decode(),
            olga.get("/environments/prod").content.decode(),
            olga.get("/environments/prod/schema", **HTMX).content.decode(),
            olga.post("/environments/prod/schema/check", **HTMX).content.decode(),
            olga.get("/environments/prod/request").content.decode(),
        ]

    assert check.state in (State.FAILED, State.NOT_CHECKED)
    assert "scratch server" in check.reason, check.reason
    assert escape(check.reason) in section(pages[1])
    for html in pages:
        assert PASSWORD not in html
    assert PASSWORD not in check.reason


# --- the last known drift behind a check that could not say -------------------------------


def text_of(html: str) -> str:
    """Return the page's words without tags, spaces collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html)).replace("\xa0", " ")


TWO = [difference("remove_column", "users", "nickname"), difference("add_index", "posts", "ix")]


def abandon(check: SchemaCheck, age: timedelta) -> None:
    """Make a pending check look as old as age: its worker died long ago."""
    SchemaCheck.objects.filter(pk=check.pk).update(created_at=timezone.now() - age)


@pytest.mark.parametrize(
    ("state", "reason", "said"),
    [
        (State.FAILED, "cannot read the live schema: timed out", "failed"),
        (State.NOT_CHECKED, "no scratch server: set scratch_url", "could not run"),
    ],
)
def test_a_check_that_could_not_say_keeps_the_last_known_drift_in_view(
    settings: Any, tmp_path: Path, people: None, state: str, reason: str, said: str
) -> None:
    use_config(settings, tmp_path, {"prod": blog(f"sqlite:///{tmp_path / 'prod.db'}")})
    store_check(
        "prod", State.DRIFT, differences=TWO, checked_at=timezone.now() - timedelta(hours=3)
    )
    store_check("prod", state, reason=reason)
    action = make_action()

    pages = [
        signed_in("olga").get("/environments/prod/request").content.decode(),
        signed_in("abe").get(f"/actions/{action.pk}/").content.decode(),
    ]
    overview = row(signed_in("vera").get("/").content.decode(), "prod")
    environment = signed_in("vera").get("/environments/prod").content.decode()

    for html in pages:
        words = text_of(warning(html))
        assert (
            f"latest schema check of prod {said} ({reason}); last known: drift (2), 3 hours ago"
            in words
        )
        assert "the plan may fail or hide a hand-made change: 2 differences" in words
    assert schema_label(overview) == f"{state}: {SchemaCheck.State(state).label}"
    assert "· last known drift (2)" in text_of(overview)
    # The environment page shows those differences, saying where they come from.
    schema = section(environment)
    assert "column users.nickname exists in prod but no revision creates it" in schema
    assert "last check that compared the schemas" in text_of(schema)


def test_a_failure_after_an_in_sync_check_warns_of_nothing(
    settings: Any, tmp_path: Path, people: None
) -> None:
    use_config(settings, tmp_path, {"prod": blog(f"sqlite:///{tmp_path / 'prod.db'}")})
    store_check(
        "prod", State.DRIFT, differences=TWO, checked_at=timezone.now() - timedelta(hours=5)
    )
    store_check("prod", State.IN_SYNC, checked_at=timezone.now() - timedelta(hours=3))
    store_check("prod", State.FAILED, reason="timed out")

    html = signed_in("olga").get("/environments/prod/request").content.decode()
    overview = row(signed_in("vera").get("/").content.decode(), "prod")

    assert warning(html) == ""
    assert "last known" not in overview


def test_a_pending_check_no_worker_finished_stops_polling_and_frees_the_button(
    settings: Any, tmp_path: Path, people: None
) -> None:
    use_config(settings, tmp_path, {"prod": blog(f"sqlite:///{tmp_path / 'prod.db'}")})
    store_check(
        "prod", State.DRIFT, differences=TWO, checked_at=timezone.now() - timedelta(hours=3)
    )
    stale = SchemaCheck.objects.create(
        environment="prod", project="blog", trigger=SchemaCheck.Trigger.DEMAND, requested_by="olga"
    )
    abandon(stale, drift.PENDING_LIMIT + timedelta(minutes=1))
    olga = signed_in("olga")

    page = olga.get("/environments/prod").content.decode()
    poll = olga.get("/environments/prod/schema/progress", **HTMX)
    overview = row(olga.get("/").content.decode(), "prod")
    request_page = olga.get("/environments/prod/request").content.decode()

    schema = section(page)
    assert "hx-trigger" not in schema and "Checking" not in schema
    assert '<button type="submit" class="secondary">Check schema</button>' in schema
    assert "no worker finished this check" in schema
    assert "checking…" not in page and "checking…" not in overview
    assert "no worker finished this check" in overview and "last known drift (2)" in text_of(
        overview
    )
    assert poll["HX-Retarget"] == "#schema" and "hx-trigger" not in poll.content.decode()
    assert "no worker finished this check" in text_of(warning(request_page))
    # A fresh request is a new check that polls again.
    olga.post("/environments/prod/schema/check")
    assert POLLER in olga.get("/environments/prod").content.decode()


def test_a_poll_stops_once_the_environment_left_the_config_or_the_config_broke(
    settings: Any, tmp_path: Path, people: None
) -> None:
    use_config(settings, tmp_path, {"prod": blog(f"sqlite:///{tmp_path / 'prod.db'}")})
    SchemaCheck.objects.create(environment="prod", project="blog", trigger="demand")
    olga = signed_in("olga")
    assert POLLER in olga.get("/environments/prod").content.decode()

    settings.DASHBOARD_CONFIG = str(
        write_config(tmp_path / "other.toml", {"qa": blog(f"sqlite:///{tmp_path / 'qa.db'}")})
    )
    gone = olga.get("/environments/prod/schema/progress", **HTMX)
    broken = tmp_path / "broken.toml"
    broken.write_text("[projects.x]\n")
    settings.DASHBOARD_CONFIG = str(broken)
    unreadable = olga.get("/environments/prod/schema/progress", **HTMX)

    assert gone.status_code == 286 and "prod is not in the config" in gone.content.decode()
    assert unreadable.status_code == 286
    assert "The config cannot be read" in unreadable.content.decode()
    assert "hx-trigger" not in gone.content.decode() + unreadable.content.decode()


# --- what a stamp records -------------------------------------------------------------------


def stamp_notes(html: str) -> str:
    found = re.search(r'<div id="schema-notes"[^>]*>.*?</div>', html, re.DOTALL)
    assert found, "no schema notes"
    return text_of(found.group(0))


@pytest.fixture
def adoptable(settings: Any, tmp_path: Path, people: None) -> str:
    """Configure legacy, whose check matched its tables to MID five minutes ago."""
    use_config(settings, tmp_path, {"legacy": blog(f"sqlite:///{tmp_path / 'legacy.db'}")})
    store_check(
        "legacy",
        State.DRIFT,
        heads=[],
        differences=[difference("remove_table", "users", "users")] * 3,
        adoption={"exact": MID, "closest": [], "compared": 6, "of": 9},
        checked_at=timezone.now() - timedelta(minutes=5, seconds=3),
    )
    return "legacy"


def stamp_action(target: str, **fields: Any) -> Action:
    return make_action(
        environment="legacy",
        direction="stamp",
        target=target,
        from_heads=[],
        target_heads=[target],
        **fields,
    )


def test_a_stamp_request_says_what_the_schema_matches_instead_of_a_drift_count(
    adoptable: str,
) -> None:
    olga = signed_in("olga")

    page = olga.get("/environments/legacy/request?direction=stamp").content.decode()
    wrong = olga.post(
        "/environments/legacy/request", {"direction": "stamp", "target": HEAD, "reason": ""}
    ).content.decode()
    swapped = olga.get("/environments/legacy/request?direction=stamp", **HTMX).content.decode()
    upgrade = olga.get("/environments/legacy/request?direction=upgrade").content.decode()

    assert f"The schema of legacy matches {MID} exactly (checked 5 minutes ago)." in stamp_notes(
        page
    )
    assert "stamp-mismatch" not in page
    assert warning(page) == "" and warning(wrong) == ""  # differences vs base say nothing here
    assert f"Target {HEAD} is not the revision the schema matches ({MID})" in stamp_notes(wrong)
    assert 'role="alert"' in re.search(r'<div id="schema-notes".*?</div>', wrong, re.DOTALL)[0]
    assert f"matches {MID} exactly" in stamp_notes(swapped) and warning(swapped) == ""
    assert "3 differences" in warning(upgrade) and "matches" not in stamp_notes(upgrade)


def test_a_stamp_approval_shows_whether_its_target_is_the_match(adoptable: str) -> None:
    right = stamp_action(MID)
    wrong = stamp_action(HEAD)
    done = stamp_action(HEAD, status=Action.Status.SUCCEEDED)
    abe = signed_in("abe")

    right_page = abe.get(f"/actions/{right.pk}/").content.decode()
    wrong_page = abe.get(f"/actions/{wrong.pk}/").content.decode()
    done_page = abe.get(f"/actions/{done.pk}/").content.decode()

    assert f"matches {MID} exactly (checked 5 minutes ago)" in stamp_notes(right_page)
    assert "stamp-mismatch" not in right_page and warning(right_page) == ""
    words = stamp_notes(wrong_page)
    assert f"Target {HEAD} is not the revision the schema matches ({MID})" in words
    assert warning(wrong_page) == ""
    assert "stamp-mismatch" not in done_page  # it ran: the check after it says what is true now


def test_a_stamp_no_check_matched_says_so(settings: Any, tmp_path: Path, people: None) -> None:
    use_config(settings, tmp_path, {"legacy": blog(f"sqlite:///{tmp_path / 'legacy.db'}")})
    action = stamp_action(HEAD)
    never = signed_in("abe").get(f"/actions/{action.pk}/").content.decode()
    store_check(
        "legacy",
        State.DRIFT,
        heads=[],
        adoption={"exact": None, "closest": [{"revision": MID, "count": 2, "items": []}]},
    )

    closest = signed_in("abe").get(f"/actions/{action.pk}/").content.decode()
    request_page = signed_in("olga").get("/environments/legacy/request?direction=stamp")

    for html in (never, closest):
        assert f"No check matched this database to {HEAD}" in stamp_notes(html)
    assert "No check matched this database to a revision" in stamp_notes(
        request_page.content.decode()
    )


# --- cost of the overview and the API -------------------------------------------------------

LIVE_SCHEMA_COLUMN = re.compile(r'[`"]live_schema[`"]')


def big_live_schema() -> dict[str, Any]:
    columns = [{"name": f"c{n}", "type": "INTEGER", "nullable": True} for n in range(50)]
    return {"tables": [{"name": f"t{n}", "columns": columns} for n in range(40)]}


def test_the_overview_and_the_api_never_read_a_live_schema(
    settings: Any, tmp_path: Path, people: None
) -> None:
    from django.test.utils import CaptureQueriesContext

    names = ["a", "b", "c"]
    use_config(settings, tmp_path, {n: blog(f"sqlite:///{tmp_path / n}.db") for n in names})
    store_check("a", State.DRIFT, differences=TWO, live_schema=big_live_schema())
    store_check("b", State.DRIFT, differences=TWO, live_schema=big_live_schema())
    store_check("b", State.FAILED, reason="timed out")
    store_check("c", State.DRIFT, heads=[], live_schema=big_live_schema(), adoption={"exact": MID})
    vera = signed_in("vera")

    with CaptureQueriesContext(connection) as overview:
        html = vera.get("/").content.decode()
        vera.get("/", **HTMX)
    with CaptureQueriesContext(connection) as api:
        items = {item["environment"]: item for item in vera.get("/api/environments").json()}

    assert schema_label(row(html, "a")) == "drift: drift (2)"
    assert "last known drift (2)" in text_of(row(html, "b"))
    read = [q["sql"] for q in overview.captured_queries if "schemacheck" in q["sql"]]
    assert read, "the overview read no check"
    assert not [sql for sql in read if LIVE_SCHEMA_COLUMN.search(sql)]
    assert not [sql for sql in read if re.search(r'[`"](adoption|models_differences)[`"]', sql)]
    assert not [q for q in api.captured_queries if LIVE_SCHEMA_COLUMN.search(q["sql"])]
    assert items["a"]["schema"]["differences"] == TWO
    assert items["c"]["schema"]["adoption"] == {"exact": MID}


def test_the_environment_page_reads_its_latest_check_once(drifted: str) -> None:
    from django.test.utils import CaptureQueriesContext

    vera = signed_in("vera")
    with CaptureQueriesContext(connection) as page:
        html = vera.get("/environments/prod").content.decode()

    assert schema_label(html) == "drift: drift (2)"
    full = [q["sql"] for q in page.captured_queries if LIVE_SCHEMA_COLUMN.search(q["sql"])]
    assert len(full) == 1, full


# --- stored results of an unexpected shape --------------------------------------------------

TABLE = {"name": "users", "columns": [{"name": "id", "type": "INTEGER", "nullable": False}]}


@pytest.mark.parametrize(
    "fields",
    [
        {"live_schema": [TABLE]},
        {"live_schema": {"tables": None}},
        {"live_schema": {"tables": "users"}},
        {"live_schema": {"tables": ["users", 3]}},
        {"live_schema": {"tables": [{**TABLE, "columns": [None, 7]}]}},
        {"live_schema": {"tables": [{**TABLE, "columns": None}]}},
        {"live_schema": {"tables": [{**TABLE, "foreign_keys": [{"name": "fk", "columns": None}]}]}},
        {"live_schema": {"tables": [{**TABLE, "indexes": [{"name": "ix", "columns": "id"}]}]}},
        {"adoption": {"exact": None, "closest": [{"revision": MID, "count": None}]}},
        {"adoption": {"exact": None, "closest": [{"revision": MID, "count": "two"}]}},
        {"adoption": {"exact": None, "closest": None, "compared": "x"}},
        {"adoption": [MID]},
        {"differences": {"kind": "remove_column"}},
        {"differences": ["remove_column users.nickname"]},
        {"differences": "nickname"},
        {"heads": HEAD, "models_state": "drift", "models_differences": {"add_column": 1}},
    ],
)
def test_a_stored_result_of_an_unexpected_shape_is_said_not_understood(
    settings: Any, tmp_path: Path, people: None, fields: dict[str, Any]
) -> None:
    use_config(settings, tmp_path, {"prod": blog(f"sqlite:///{tmp_path / 'prod.db'}")})
    store_check("prod", State.DRIFT, **fields)
    vera = signed_in("vera")

    page = vera.get("/environments/prod")
    poll = vera.get("/environments/prod/schema", **HTMX)
    overview = vera.get("/")
    api = vera.get("/api/environments")
    one = vera.get("/api/environments/prod")

    for answer in (page, poll, overview, api, one):
        assert answer.status_code == 200, answer.content.decode()[-3000:]
    assert "stored shape not understood" in section(page.content.decode())
    # The API serves no live schema, and an adoption object as it is stored.
    if "live_schema" not in fields and not isinstance(fields.get("adoption"), dict):
        assert "stored shape not understood" in one.json()["schema"]["reason"]
    assert one.json()["schema"] == api.json()[0]["schema"]
