"""The audit page: filters, pages, the chain's verdict, and streamed CSV and JSON Lines exports."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dashboard import audit
from dashboard.models import AuditEvent
from dashboard.selectors import audit as audit_selectors
from tests.audit_support import behind_the_orms_back

PASSWORD = "correct-horse-9"
ROLES = {"vera": "viewer", "olga": "operator", "abe": "approver", "root": "admin"}

pytestmark = pytest.mark.django_db


@pytest.fixture
def users() -> None:
    """Create one user per role (each creation is itself an audit event)."""
    for name, role in ROLES.items():
        call_command("adduser", name, role=role, password=PASSWORD)


def signed_in(name: str) -> Client:
    """Return a client signed in as `name`."""
    client = Client()
    assert client.login(username=name, password=PASSWORD)
    return client


def record_at(moment: datetime, verb: str, **fields: Any) -> AuditEvent:
    """Record an event, then move its time behind the ORM's back and re-hash the chain."""
    event = audit.record(verb, **fields)
    with behind_the_orms_back() as cursor:
        cursor.execute(
            "UPDATE dashboard_auditevent SET created_at = %s WHERE id = %s", [moment, event.pk]
        )
    return event


def rechain() -> None:
    """Recompute every hash in order, as if the events had been written with their times."""
    previous = audit.GENESIS
    for event in AuditEvent.objects.order_by("id"):
        event.prev_hash = previous
        digest = audit.event_hash(event)
        with behind_the_orms_back() as cursor:
            cursor.execute(
                "UPDATE dashboard_auditevent SET prev_hash = %s, hash = %s WHERE id = %s",
                [previous, digest, event.pk],
            )
        previous = digest


@pytest.fixture
def trail(users: None) -> dict[str, AuditEvent]:
    """Record a small trail over three days on two environments."""
    now = timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)
    events = {
        "old": record_at(
            now - timedelta(days=2),
            "action.requested",
            actor_name="olga",
            environment="staging",
            action_id=7,
            payload={"target": "heads"},
        ),
        "middle": record_at(
            now - timedelta(days=1),
            "action.approved",
            actor_name="abe",
            environment="staging",
            action_id=7,
            payload={"comment": "ok"},
        ),
        "new": record_at(
            now,
            "action.requested",
            actor_name="olga",
            environment="prod",
            action_id=8,
            payload={"target": "base"},
        ),
    }
    rechain()
    return {k: AuditEvent.objects.get(pk=v.pk) for k, v in events.items()}


def row_ids(html: str) -> list[int]:
    """Return the event ids shown in the table, in order."""
    return [int(i) for i in re.findall(r'<tr id="event-(\d+)">', html)]


@pytest.mark.parametrize("name", list(ROLES))
def test_audit_page_renders_for_each_role_newest_first(
    trail: dict[str, AuditEvent], name: str
) -> None:
    response = signed_in(name).get("/audit/")
    assert response.status_code == 200
    ids = row_ids(response.content.decode())
    assert ids == sorted(ids, reverse=True)
    assert {e.pk for e in trail.values()} <= set(ids)


def test_audit_page_needs_a_signed_in_user() -> None:
    for url in ("/audit/", "/audit/export?format=csv"):
        response = Client().get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


def test_filters_narrow_the_page(trail: dict[str, AuditEvent]) -> None:
    client = signed_in("vera")
    old, middle, new = trail["old"].pk, trail["middle"].pk, trail["new"].pk
    assert row_ids(client.get("/audit/", {"environment": "staging"}).content.decode()) == [
        middle,
        old,
    ]
    assert row_ids(client.get("/audit/", {"user": "abe"}).content.decode()) == [middle]
    by_verb = row_ids(client.get("/audit/", {"verb": "action.requested"}).content.decode())
    assert by_verb == [new, old]
    day = trail["middle"].created_at.date()
    assert row_ids(client.get("/audit/", {"date_from": day, "date_to": day}).content.decode()) == [
        middle
    ]
    since = row_ids(client.get("/audit/", {"date_from": day}).content.decode())
    assert new in since and middle in since and old not in since
    combined = client.get("/audit/", {"environment": "staging", "verb": "action.requested"})
    assert row_ids(combined.content.decode()) == [old]


def test_bad_filters_are_reported_not_a_500(trail: dict[str, AuditEvent]) -> None:
    client = signed_in("vera")
    response = client.get("/audit/", {"date_from": "yesterday"})
    assert response.status_code == 200
    assert "Enter a valid date." in response.content.decode()
    response = client.get("/audit/", {"date_from": "2030-01-02", "date_to": "2030-01-01"})
    assert "The start date is after the end date." in response.content.decode()
    assert client.get("/audit/", {"page": "nine"}).status_code == 200


def pager_links(html: str) -> dict[str, str]:
    """Return the pager's links by their rel (prev: newer, next: older)."""
    found = re.findall(r'<a href="\?([^"]*)" rel="(prev|next)">', html)
    return {rel: query.replace("&amp;", "&") for query, rel in found}


def test_audit_page_is_paginated(users: None) -> None:
    for i in range(60):
        audit.record("test.event", actor_name="tester", payload={"n": i})
    client = signed_in("vera")
    first = client.get("/audit/", {"verb": "test.event"}).content.decode()
    assert len(row_ids(first)) == 50
    assert "60 events" in first
    links = pager_links(first)
    assert set(links) == {"next"} and links["next"].startswith("verb=test.event&page=")
    second = client.get(f"/audit/?{links['next']}").content.decode()
    assert len(row_ids(second)) == 10
    assert set(row_ids(first)).isdisjoint(row_ids(second))
    assert set(pager_links(second)) == {"prev"}
    back = client.get(f"/audit/?{pager_links(second)['prev']}").content.decode()
    assert row_ids(back) == row_ids(first)


def test_audit_pages_walk_the_whole_trail_both_ways(users: None) -> None:
    for i in range(130):
        audit.record("test.event", actor_name="tester", payload={"n": i})
    client = signed_in("vera")
    everything = list(AuditEvent.objects.order_by("-id").values_list("id", flat=True))
    pages, query = [], ""
    while True:
        html = client.get(f"/audit/?{query}").content.decode()
        pages.append(row_ids(html))
        if "next" not in pager_links(html):
            break
        query = pager_links(html)["next"]
    assert [i for page in pages for i in page] == everything
    assert [len(page) for page in pages] == [50, 50, len(everything) - 100]
    newer = []
    while "prev" in pager_links(html):
        html = client.get(f"/audit/?{pager_links(html)['prev']}").content.decode()
        newer.append(row_ids(html))
    assert newer == pages[-2::-1]


def test_the_audit_page_reads_a_bounded_number_of_rows(users: None) -> None:
    for i in range(60):
        audit.record("test.event", actor_name="tester", payload={"n": i})
    client = signed_in("vera")
    older = pager_links(client.get("/audit/").content.decode())["next"]
    with CaptureQueriesContext(connection) as queries:
        for query in ("", older, "verb=test.event", "page=nine", f"page={10**30}", "page=-3"):
            assert client.get(f"/audit/?{query}").status_code == 200
    trail = [q["sql"].upper() for q in queries.captured_queries]
    trail = [sql for sql in trail if "DASHBOARD_AUDITEVENT" in sql]
    # No COUNT, DISTINCT or OFFSET over the whole trail: a page costs the same at a million rows.
    assert any("COUNT(" in sql for sql in trail)
    assert [sql for sql in trail if "LIMIT" not in sql or "OFFSET" in sql] == []


def test_a_trail_longer_than_the_count_says_so(
    users: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_selectors, "COUNT_UP_TO", 20)
    for i in range(30):
        audit.record("test.event", actor_name="tester", payload={"n": i})
    client = signed_in("vera")
    assert "more than 20 events" in client.get("/audit/").content.decode()
    audit.record("solo.event", actor_name="tester", payload={})
    assert "1 event, newest first" in client.get("/audit/", {"verb": "solo.event"}).content.decode()


def test_htmx_gets_only_the_events_region(trail: dict[str, AuditEvent]) -> None:
    response = signed_in("vera").get("/audit/", {"environment": "prod"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert html.lstrip().startswith('<section class="card" id="events"')
    assert "<html" not in html
    assert row_ids(html) == [trail["new"].pk]
    # The export links in the swapped region follow the filters.
    assert "/audit/export?environment=prod&amp;format=csv" in html
    assert "HX-Request" in response["Vary"]


def test_chain_verdict_loads_after_the_page(trail: dict[str, AuditEvent]) -> None:
    client = signed_in("vera")
    total = AuditEvent.objects.count()
    page = client.get("/audit/").content.decode()
    loader = re.search(r'<p[^>]*id="chain"[^>]*>', page)
    assert loader and 'hx-trigger="load"' in loader.group()
    assert 'href="/audit/?verify=1"' in page  # and without JavaScript, a link
    assert "Chain verified" not in page

    fragment = client.get("/audit/", {"verify": "1"}, HTTP_HX_REQUEST="true").content.decode()
    assert (
        fragment.strip()
        == f'<p class="chain chain-ok" id="chain">Chain verified: {total} events.</p>'
    )
    assert f"Chain verified: {total} events." in client.get("/audit/?verify=1").content.decode()

    with behind_the_orms_back() as cursor:
        cursor.execute(
            "UPDATE dashboard_auditevent SET verb = 'forged' WHERE id = %s", [trail["middle"].pk]
        )
    html = client.get("/audit/", {"verify": "1"}, HTTP_HX_REQUEST="true").content.decode()
    assert f"Chain broken at event {trail['middle'].pk}" in html


def test_the_pages_check_rehashes_only_what_came_after_the_checkpoint(
    users: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "CHECKPOINT_EVERY", 20, raising=False)
    client = signed_in("vera")
    for i in range(60):
        audit.record("test.event", actor_name="tester", payload={"n": i})

    def verdict() -> tuple[str, int]:
        with mock.patch.object(audit, "event_hash", wraps=audit.event_hash) as spy:
            html = client.get("/audit/", {"verify": "1"}, HTTP_HX_REQUEST="true").content.decode()
        return html, spy.call_count

    verdict()  # walks the trail once, then records where it got to
    for i in range(3):
        audit.record("test.event", actor_name="tester", payload={"n": i})
    total = AuditEvent.objects.count()
    html, work = verdict()
    assert work <= 6  # the checkpoint and the event it names, then the checkpoint and 3 new
    assert f"Chain verified: {total} events" in html
    assert "since checkpoint" in html and "manage.py verify_audit" in html


def test_payloads_and_names_are_escaped(users: None) -> None:
    audit.record(
        "<script>verb</script>",
        actor_name="<script>name</script>",
        environment="<script>env</script>",
        payload={"reason": "<script>alert(1)</script>"},
    )
    html = signed_in("vera").get("/audit/").content.decode()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;script&gt;name&lt;/script&gt;" in html


def export(client: Client, **params: str) -> tuple[Any, str]:
    response = client.get("/audit/export", params)
    assert response.status_code == 200
    assert response.streaming
    return response, b"".join(response.streaming_content).decode()


def test_csv_export_streams_the_filtered_rows(trail: dict[str, AuditEvent]) -> None:
    response, body = export(signed_in("vera"), format="csv", environment="staging")
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    assert response["Content-Disposition"].endswith('.csv"')
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [int(r["id"]) for r in rows] == [trail["middle"].pk, trail["old"].pk]
    assert rows[0]["verb"] == "action.approved"
    assert rows[0]["actor"] == "abe"
    assert json.loads(rows[0]["payload"]) == {"comment": "ok"}
    assert rows[0]["hash"] == trail["middle"].hash


def test_jsonl_export_streams_the_filtered_rows(trail: dict[str, AuditEvent]) -> None:
    response, body = export(signed_in("root"), format="jsonl", verb="action.requested")
    assert response["Content-Type"].startswith("application/x-ndjson")
    items = [json.loads(line) for line in body.splitlines()]
    assert [i["id"] for i in items] == [trail["new"].pk, trail["old"].pk]
    assert items[0]["payload"] == {"target": "base"}
    assert items[0]["environment"] == "prod"
    assert items[0]["prev_hash"] == trail["new"].prev_hash
    assert datetime.fromisoformat(items[0]["created_at"]) == trail["new"].created_at


def test_export_with_dates_matches_the_page(trail: dict[str, AuditEvent]) -> None:
    day = str(trail["old"].created_at.date())
    _response, body = export(signed_in("vera"), format="jsonl", date_to=day)
    assert [json.loads(line)["id"] for line in body.splitlines()] == [trail["old"].pk]


def test_csv_export_defuses_spreadsheet_formulas(users: None) -> None:
    audit.record("test.event", actor_name='=HYPERLINK("http://evil")', payload={})
    _response, body = export(signed_in("vera"), format="csv", verb="test.event")
    rows = list(csv.DictReader(io.StringIO(body)))
    assert rows[0]["actor"] == '\'=HYPERLINK("http://evil")'


def test_export_refuses_an_unknown_format(users: None) -> None:
    response = signed_in("vera").get("/audit/export", {"format": "xlsx"})
    assert response.status_code == 400


def test_export_of_many_events_is_complete(users: None) -> None:
    # More than one chunk of the server-side iterator; the chain does not matter here.
    AuditEvent.objects.bulk_create(
        AuditEvent(
            created_at=timezone.now(),
            actor_name="bulk",
            verb="bulk.event",
            payload={"n": i},
            prev_hash=f"c{i:063x}",
            hash=f"d{i:063x}",
        )
        for i in range(2500)
    )
    _response, body = export(signed_in("vera"), format="jsonl", verb="bulk.event")
    numbers = [json.loads(line)["payload"]["n"] for line in body.splitlines()]
    assert numbers == list(range(2499, -1, -1))
