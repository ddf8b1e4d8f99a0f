"""Rollout pages: request through the form, review groups once, decide, watch and steer waves."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from django.test import Client
from sqlalchemy.pool import NullPool

from dashboard.models import Action, Rollout, RolloutApproval
from dashboard.services import rollouts
from tests.actions_support import HEAD, insert_heads, run_worker

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("keep_roles")]

PASSWORD = "correct-horse-9"
SCRIPT = "<script>alert(1)</script>"
SECOND = "a71e5c0d2f39"  # the sample project's second revision
NAMES = [f"t{n:02d}" for n in range(1, 7)]


def fleet_config(tmp_path: Path, names: list[str]) -> Path:
    """Write a config with the blog project and a fleet of SQLite members named names."""
    folder = tmp_path / "tenants"
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / f"{name}.db").touch()
    ini = Path(__file__).resolve().parent.parent / "migrations_project" / "alembic.ini"
    quoted = ", ".join(f'"{name}"' for name in names)
    text = f"""
[projects.blog]
alembic_ini = "{ini}"

[fleets.tenants]
project = "blog"
url_template = "sqlite:///{folder}/{{name}}.db"
names = [{quoted}]
approvals_required = 1
waves = [1, "50%", "100%"]
parallel = 2
"""
    path = tmp_path / "dashboard.toml"
    path.write_text(text, encoding="utf-8")
    return path


def member_url(tmp_path: Path, name: str) -> str:
    return f"sqlite:///{tmp_path / 'tenants' / name}.db"


@pytest.fixture
def fleet(tmp_path: Path, settings: Any) -> Path:
    config = fleet_config(tmp_path, NAMES)
    settings.DASHBOARD_CONFIG = str(config)
    return config


def signed_in(name: str) -> Client:
    client = Client()
    assert client.login(username=name, password=PASSWORD)
    return client


def buttons(html: str) -> set[str]:
    """Return the labels of the page's submit buttons."""
    return {b.strip() for b in re.findall(r"<button[^>]*>([^<]*)</button>", html)} - {"Sign out"}


def prepared(user: Any, **fields: Any) -> Rollout:
    """Request a rollout of every member to heads and render its SQL here, as a worker would."""
    values = {"fleet": "tenants", "direction": "upgrade", "target": "heads", **fields}
    rollout = rollouts.rollout_request(user=user, **values)
    return rollouts.rollout_prepare(rollout_id=rollout.pk)


def approved(people: dict[str, Any], **fields: Any) -> Rollout:
    rollout = prepared(people["olga"], **fields)
    rollouts.rollout_approve(
        user=people["alan"], rollout_id=rollout.pk, rollout_hash=rollout.rollout_hash
    )
    rollout.refresh_from_db()
    assert rollout.status == Rollout.Status.RUNNING
    return rollout


def section(html: str, region: str) -> str:
    """Return the <section> with id region, up to its end."""
    start = html.index(f'id="{region}"')
    start = html.rindex("<section", 0, start)
    return html[start : html.index("</section>", start)]


# --- requesting ----------------------------------------------------------------------------


def test_an_operator_requests_a_rollout_through_the_page(
    fleet: Path, people: dict[str, Any]
) -> None:
    client = signed_in("olga")
    html = client.get("/fleets/tenants/rollout").content.decode()
    assert 'name="target"' in html and 'value="heads"' in html
    assert 'name="members"' in html and 'value="*"' in html
    assert "Request rollout" in buttons(html)
    response = client.post(
        "/fleets/tenants/rollout",
        {"direction": "upgrade", "target": "heads", "members": "t0[1-3]", "reason": SCRIPT},
    )
    rollout = Rollout.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/rollouts/{rollout.pk}"
    assert rollout.requested_by_name == "olga" and rollout.members_glob == "t0[1-3]"
    assert rollout.member_count == 3 and rollout.status == Rollout.Status.PREPARING
    # While the worker renders the SQL, the plans poll until it is shown.
    html = client.get(f"/rollouts/{rollout.pk}").content.decode()
    review = section(html, "review")
    assert "Preparing SQL" in review
    assert f'hx-get="/rollouts/{rollout.pk}"' in review and 'hx-trigger="every 2s"' in review
    assert "Approve this rollout" not in html
    assert "<script>alert" not in html and "&lt;script&gt;" in html


@pytest.mark.parametrize("name", ["vic", "alan"])
def test_only_operators_and_admins_may_request_a_rollout(
    fleet: Path, people: dict[str, Any], name: str
) -> None:
    client = signed_in(name)
    response = client.get("/fleets/tenants/rollout")
    assert response.status_code == 403
    html = response.content.decode()
    assert "Your role cannot request rollouts: operators and admins can." in html
    assert "Request rollout" not in buttons(html)
    posted = client.post(
        "/fleets/tenants/rollout",
        {"direction": "upgrade", "target": "heads", "members": "*", "reason": "try"},
    )
    assert posted.status_code == 403
    assert not Rollout.objects.exists()


def test_a_refused_request_says_why_on_the_form(fleet: Path, people: dict[str, Any]) -> None:
    response = signed_in("olga").post(
        "/fleets/tenants/rollout",
        {"direction": "upgrade", "target": "heads", "members": "nobody*", "reason": "try"},
    )
    assert response.status_code == 200
    assert "no member of fleet tenants matches" in response.content.decode()
    assert not Rollout.objects.exists()


def test_an_unknown_fleet_or_rollout_is_a_404(fleet: Path, people: dict[str, Any]) -> None:
    client = signed_in("olga")
    assert client.get("/fleets/nope/rollout").status_code == 404
    for url in ("/rollouts/999", "/rollouts/999/live"):
        assert client.get(url).status_code == 404
    assert client.post("/rollouts/999/pause").status_code == 404


# --- review --------------------------------------------------------------------------------


def test_each_plan_group_shows_its_sql_once_and_left_out_members_say_why(
    fleet: Path, tmp_path: Path, people: dict[str, Any]
) -> None:
    for name in ("t04", "t05"):
        insert_heads(member_url(tmp_path, name), [SECOND])
    insert_heads(member_url(tmp_path, "t06"), [HEAD])
    rollout = prepared(people["olga"])
    assert [len(g["members"]) for g in rollout.groups] == [3, 2]
    response = signed_in("alan").get(f"/rollouts/{rollout.pk}")
    html = response.content.decode()
    review = section(html, "review")
    assert "Plan 1: 3 members" in review and "Plan 2: 2 members" in review
    assert "tenants/t01, tenants/t02, tenants/t03" in review
    # Six members, two plans: two SQL scripts, each shown once.
    assert review.count('<pre class="sql">') == 2
    for group in rollout.groups:
        assert group["sql_sha256"] and html.count(group["sql_sha256"]) == 1
    creates_users = '<span class="sql-kw">CREATE</span> <span class="sql-kw">TABLE</span> users'
    assert html.count(creates_users) == 1  # only the plan from the base creates it
    assert "hx-trigger" not in review  # the SQL is ready: no more polling
    left_out = html[html.index('id="left-out-title"') :]
    assert "tenants/t06" in left_out and "already at" in left_out
    assert f'name="rollout_hash" value="{rollout.rollout_hash}"' in review
    assert buttons(review) == {"Approve this rollout", "Reject"}
    # htmx asks for the review region alone.
    partial = signed_in("alan").get(f"/rollouts/{rollout.pk}", HTTP_HX_REQUEST="true")
    assert partial.content.decode().lstrip().startswith('<section class="card" id="review"')
    assert "<html" not in partial.content.decode()
    assert "HX-Request" in partial["Vary"]


# --- deciding ------------------------------------------------------------------------------


def test_an_approver_approves_with_the_hash_they_saw(fleet: Path, people: dict[str, Any]) -> None:
    rollout = prepared(people["olga"])
    client = signed_in("alan")
    response = client.post(
        f"/rollouts/{rollout.pk}/approve", {"rollout_hash": rollout.rollout_hash, "comment": "ok"}
    )
    assert response.status_code == 302 and response["Location"] == f"/rollouts/{rollout.pk}"
    rollout.refresh_from_db()
    assert rollout.status == Rollout.Status.RUNNING
    html = client.get(f"/rollouts/{rollout.pk}").content.decode()
    assert "Approved." in html
    live = section(html, "live")
    # The canary is queued; the other five wait for their waves.
    assert "1 queued" in live and "5 waiting" in live
    assert '<progress max="6" value="0">' in live
    assert 'hx-trigger="every 2s"' in live


@pytest.mark.parametrize("sent", ["0" * 64, None], ids=["forged", "missing"])
def test_a_forged_or_missing_hash_is_refused_with_a_message(
    fleet: Path, people: dict[str, Any], sent: str | None
) -> None:
    rollout = prepared(people["olga"])
    data = {"comment": "ok"} if sent is None else {"rollout_hash": sent}
    response = signed_in("alan").post(f"/rollouts/{rollout.pk}/approve", data, follow=True)
    assert response.status_code == 200
    assert "the rollout changed since you reviewed it" in response.content.decode()
    rollout.refresh_from_db()
    assert rollout.status == Rollout.Status.REQUESTED
    assert not RolloutApproval.objects.exists()


def test_the_requester_cannot_approve_their_own_rollout(
    fleet: Path, people: dict[str, Any]
) -> None:
    rollout = prepared(people["root"])
    client = signed_in("root")
    html = client.get(f"/rollouts/{rollout.pk}").content.decode()
    assert "Approve this rollout" not in html
    assert "You requested this rollout, so another approver must decide on it." in html
    response = client.post(
        f"/rollouts/{rollout.pk}/approve", {"rollout_hash": rollout.rollout_hash}, follow=True
    )
    assert response.status_code == 200
    assert f"you requested rollout #{rollout.pk}, so you cannot approve it" in (
        response.content.decode()
    )
    rollout.refresh_from_db()
    assert rollout.status == Rollout.Status.REQUESTED


def test_an_approver_rejects_with_a_reason(fleet: Path, people: dict[str, Any]) -> None:
    rollout = prepared(people["olga"])
    response = signed_in("bea").post(
        f"/rollouts/{rollout.pk}/reject", {"comment": "not this week"}, follow=True
    )
    assert "Rejected." in response.content.decode()
    rollout.refresh_from_db()
    assert rollout.status == Rollout.Status.REJECTED
    assert not Action.objects.filter(rollout=rollout).exists()


def test_a_viewer_sees_no_controls_and_cannot_post_them(
    fleet: Path, people: dict[str, Any]
) -> None:
    requested = prepared(people["olga"])
    running = approved(people)
    client = signed_in("vic")
    for rollout in (requested, running):
        assert buttons(client.get(f"/rollouts/{rollout.pk}").content.decode()) == set()
    posts = [
        (requested, "approve", {"rollout_hash": requested.rollout_hash}),
        (requested, "reject", {"comment": "no"}),
        (running, "pause", {}),
        (running, "cancel", {}),
    ]
    for rollout, verb, data in posts:
        response = client.post(f"/rollouts/{rollout.pk}/{verb}", data)
        assert response.status_code == 403, verb
        assert "only " in response.content.decode()
    requested.refresh_from_db()
    running.refresh_from_db()
    assert requested.status == Rollout.Status.REQUESTED
    assert running.status == Rollout.Status.RUNNING


# --- steering ------------------------------------------------------------------------------


def test_pause_resume_and_cancel_buttons_steer_the_rollout(
    fleet: Path, people: dict[str, Any]
) -> None:
    rollout = approved(people)
    client = signed_in("olga")
    assert buttons(section(client.get(f"/rollouts/{rollout.pk}").content.decode(), "live")) == {
        "Pause",
        "Cancel rollout",
    }
    html = client.post(f"/rollouts/{rollout.pk}/pause", follow=True).content.decode()
    assert "Paused" in html
    assert buttons(section(html, "live")) == {"Resume", "Cancel rollout"}
    assert "paused by olga" in section(html, "live")
    rollout.refresh_from_db()
    assert rollout.status == Rollout.Status.PAUSED
    html = client.post(f"/rollouts/{rollout.pk}/resume", follow=True).content.decode()
    assert "Resumed" in html
    rollout.refresh_from_db()
    assert rollout.status == Rollout.Status.RUNNING
    html = client.post(f"/rollouts/{rollout.pk}/cancel", follow=True).content.decode()
    assert "Cancelled" in html
    live = section(html, "live")
    assert buttons(live) == set() and "hx-trigger" not in live
    assert "6 cancelled" in live
    rollout.refresh_from_db()
    assert rollout.status == Rollout.Status.CANCELLED
    # A control that no longer applies says so, without a 500.
    again = client.post(f"/rollouts/{rollout.pk}/pause", follow=True)
    assert again.status_code == 200
    assert "only a running one pauses" in again.content.decode()


@pytest.mark.django_db(transaction=True)
def test_the_live_region_counts_members_and_shows_failures_and_progress(
    fleet: Path, tmp_path: Path, people: dict[str, Any]
) -> None:
    # The canary (t01, alone in wave 1) already has a users table: its first revision fails.
    engine = sa.create_engine(member_url(tmp_path, "t01"), poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE users (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    rollout = approved(people)
    run_worker(fleet, command="worker")
    client = signed_in("olga")
    response = client.get(f"/rollouts/{rollout.pk}/live", HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert html.lstrip().startswith('<section class="card progress" id="live"')
    assert "<html" not in html
    # Paused after the canary failed: no later wave started.
    assert '<progress max="6" value="1">' in html and "1 of 6 members finished" in html
    assert "1 failed" in html and "5 waiting" in html and "succeeded" not in html
    assert 'hx-trigger="every 2s"' in html
    failed = Action.objects.get(rollout=rollout, environment="tenants/t01")
    listed = html[html.index("Failed members") :]
    assert f'href="/actions/{failed.pk}/"' in listed and "tenants/t01" in listed
    assert "table users already exists" in failed.error and "table users already exists" in listed
    assert buttons(html) == {"Resume", "Cancel rollout"}
    client.post(f"/rollouts/{rollout.pk}/resume")
    run_worker(fleet, command="worker")
    html = client.get(f"/rollouts/{rollout.pk}/live", HTTP_HX_REQUEST="true").content.decode()
    assert '<progress max="6" value="6">' in html
    assert "5 succeeded" in html and "1 failed" in html and "skipped" in html
    assert "hx-trigger" not in html  # finished: no more polling
    rollout.refresh_from_db()
    assert rollout.status == Rollout.Status.SUCCEEDED


# --- the list ------------------------------------------------------------------------------


def test_the_list_shows_rollouts_newest_first_and_is_in_the_nav(
    fleet: Path, people: dict[str, Any]
) -> None:
    older = approved(people, members="t0[1-3]")
    newer = prepared(people["olga"], members="t0[4-6]")
    html = signed_in("vic").get("/rollouts/").content.decode()
    assert '<a href="/rollouts/">Rollouts</a>' in html or 'href="/rollouts/" aria-current' in html
    assert html.index(f"#{newer.pk}") < html.index(f"#{older.pk}")
    row = html[html.index(f'id="rollout-{older.pk}"') :]
    row = row[: row.index("</tr>")]
    assert "tenants" in row and "running" in row and "1 queued" in row and "2 waiting" in row
    partial = signed_in("vic").get("/rollouts/", HTTP_HX_REQUEST="true").content.decode()
    assert partial.lstrip().startswith('<section class="card" id="rollouts-table"')


def test_rollout_pages_need_a_signed_in_user(fleet: Path, people: dict[str, Any]) -> None:
    for url in ("/rollouts/", "/rollouts/1", "/fleets/tenants/rollout"):
        response = Client().get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")
