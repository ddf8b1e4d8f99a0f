"""Fleet status at scale: the overview's one row per fleet, the fleet page, its API and CLI."""

import json
import re
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dashboard.models import SchemaCheck, Snapshot
from dashboard.selectors import fleets as fleet_selectors
from dashboard.services import status
from tests.fakeserver import silent_server
from tests.statusenv import BOGUS, EARLY, HEAD, MID, SAMPLE, alembic, empty_sqlite, write_versions

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}
PASSWORD = "correct-horse-9"
# Where each member of the mixed fleet stands once read (n01 is never read).
MEMBERS = {
    "a01": "current",
    "a02": "current",
    "a03": "current",
    "a04": "current",
    "b01": "behind",  # at MID, 5 behind
    "b02": "behind",
    "b03": "behind",
    "c01": "behind",  # at EARLY, 6 behind
    "c02": "behind",
    "k01": "unknown",  # a head the scripts do not have
    "n01": None,
    "u01": "uninitialized",
    "x01": "unreachable",  # a folder where its file should be
}


@pytest.fixture(scope="module")
def revisions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SQLite files the real sample project left at the head, the branch point and earlier."""
    folder = tmp_path_factory.mktemp("revisions")
    made = {}
    for name, revision in (("head", HEAD), ("mid", MID), ("early", EARLY)):
        made[name] = folder / f"{name}.db"
        alembic(empty_sqlite(made[name]), "upgrade", revision)
    return made


def member_files(folder: Path, revisions: dict[str, Path]) -> None:
    """Lay out the mixed fleet's member databases in folder (copies of the real ones)."""
    folder.mkdir(exist_ok=True)
    for name, state in MEMBERS.items():
        path = folder / f"{name}.db"
        if state == "current":
            shutil.copy(revisions["head"], path)
        elif name.startswith("b"):
            shutil.copy(revisions["mid"], path)
        elif name.startswith("c"):
            shutil.copy(revisions["early"], path)
        elif state == "unknown":
            shutil.copy(revisions["head"], path)
            write_versions(f"sqlite:///{path}", [BOGUS])
        elif state in ("uninitialized", None):
            empty_sqlite(path)
        elif state == "unreachable":
            path.mkdir()  # a folder where the file should be: SQLite cannot open it


def fleet_config(path: Path, fleets: dict[str, dict[str, Any]]) -> Path:
    """Write a config with the sample project, one environment and these fleets."""
    lines = [f"[projects.blog]\nscript_location = {json.dumps(str(SAMPLE))}\n"]
    staging = path.parent / "staging.db"
    if not staging.exists():
        empty_sqlite(staging)
    lines.append(f'[environments.staging]\nproject = "blog"\nurl = "sqlite:///{staging}"\n')
    for name, table in fleets.items():
        lines.append(f"[fleets.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture
def tenants(settings: Any, tmp_path: Path, revisions: dict[str, Path]) -> list[str]:
    """Configure the mixed fleet "tenants" and a "healthy" one at head; read all but n01."""
    member_files(tmp_path / "tenants", revisions)
    (tmp_path / "healthy").mkdir()
    for name in ("h1", "h2"):
        shutil.copy(revisions["head"], tmp_path / "healthy" / f"{name}.db")
    config = fleet_config(
        tmp_path / "dashboard.toml",
        {
            "tenants": {
                "project": "blog",
                "description": "One database per customer",
                "url_template": "sqlite:///tenants/{name}.db",
                "names": [*MEMBERS, "bad name"],
            },
            "healthy": {
                "project": "blog",
                "url_template": "sqlite:///healthy/{name}.db",
                "names": ["h1", "h2"],
            },
        },
    )
    settings.DASHBOARD_CONFIG = str(config)
    read = [f"tenants/{name}" for name in MEMBERS if name != "n01"]
    status.status_refresh(environments=[*read, "healthy/h1", "healthy/h2"])
    SchemaCheck.objects.create(
        environment="tenants/a02",
        project="blog",
        state=SchemaCheck.State.DRIFT,
        trigger=SchemaCheck.Trigger.PERIODIC,
        differences=[{"kind": "add_column", "table": "users", "name": "nick", "detail": ""}],
        checked_at=timezone.now(),
    )
    return read


def signed_in(client: Client, people: dict[str, Any], name: str) -> Client:
    assert client.login(username=name, password=PASSWORD)
    return client


def member_rows(html: str) -> list[str]:
    """Return the members the fleet page lists, in its order."""
    return re.findall(r'<tr id="member-([^"]+)"', html)


def test_members_are_read_into_the_states_the_fleet_counts(tenants: list[str]) -> None:
    found = fleet_selectors.fleet_status(name="tenants")
    assert found is not None
    assert {m.member: m.snapshot.state if m.snapshot else None for m in found.members} == MEMBERS


def test_overview_shows_each_fleet_as_one_row_with_its_counts(
    client: Client, people: dict[str, Any], tenants: list[str]
) -> None:
    html = signed_in(client, people, "vic").get("/").content.decode()

    assert not re.search(r'id="env-(tenants|healthy)/', html)  # no member one by one
    assert 'id="env-staging"' in html
    rows = re.findall(r'<tr id="fleet-tenants".*?</tr>', html, re.DOTALL)
    assert len(rows) == 1
    row = rows[0]
    assert 'href="/fleets/tenants"' in row and "fleet of 13" in row
    for count in (
        ">4 current<",
        ">5 behind<",
        ">1 uninitialized<",
        ">1 unknown<",
        ">1 unreachable<",
        ">1 not read yet<",
        ">1 with drift<",
    ):
        assert count in row, count
    # Behind members grouped by revision, largest group first, each linking to its members.
    assert re.search(
        rf'href="/fleets/tenants\?revision={MID}">3 at <code class="rev" title="{MID}">{MID}</code>'
        rf'.*href="/fleets/tenants\?revision={EARLY}">2 at',
        row,
    )
    assert 'href="/fleets/tenants?state=behind"' in row
    assert "bad name" in row and "is left out" in row  # the config problem, on the overview
    assert ">2 current<" in re.search(r'<tr id="fleet-healthy".*?</tr>', html, re.DOTALL).group(0)


def test_overview_shows_fleets_in_a_bounded_number_of_queries(
    client: Client, people: dict[str, Any], tenants: list[str], django_assert_max_num_queries: Any
) -> None:
    signed_in(client, people, "vic")
    with django_assert_max_num_queries(20):
        assert client.get("/").status_code == 200


def test_fleet_page_lists_members_with_links_states_and_problems(
    client: Client, people: dict[str, Any], tenants: list[str]
) -> None:
    html = signed_in(client, people, "vic").get("/fleets/tenants").content.decode()

    assert member_rows(html) == sorted(MEMBERS)
    assert 'href="/environments/tenants~b01"' in html
    b01 = re.search(r'<tr id="member-b01".*?</tr>', html, re.DOTALL).group(0)
    assert f'title="{MID}">{MID}</code>' in b01 and "state-behind" in b01
    assert '<span class="pending-count">5</span>' in b01 and "read just now" in b01
    assert "not read yet" in re.search(r'<tr id="member-n01".*?</tr>', html, re.DOTALL).group(0)
    assert "drift (1)" in re.search(r'<tr id="member-a02".*?</tr>', html, re.DOTALL).group(0)
    assert 'id="fleet-problems"' in html and "&#x27;bad name&#x27; is left out" in html
    assert "Refresh fleet" not in html  # a viewer may not read a whole fleet
    assert "1–13 of 13 members" in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state=behind", ["b01", "b02", "b03", "c01", "c02"]),
        ("state=unread", ["n01"]),
        (f"revision={MID}", ["b01", "b02", "b03"]),
        (f"revision={EARLY[:6]}", ["c01", "c02"]),  # a head's prefix
        ("revision=-", ["n01", "u01", "x01"]),  # no heads read
        ("q=A0", ["a01", "a02", "a03", "a04"]),  # part of the name, any case
        ("schema=drift", ["a02"]),
        ("state=behind&q=c", ["c01", "c02"]),
        ("state=bogus", sorted(MEMBERS)),  # an unknown state filters nothing
        ("q=zzz", []),
    ],
)
def test_fleet_page_filters_members(
    client: Client, people: dict[str, Any], tenants: list[str], query: str, expected: list[str]
) -> None:
    html = signed_in(client, people, "vic").get(f"/fleets/tenants?{query}").content.decode()
    assert member_rows(html) == expected


def test_fleet_page_sorts_by_state_and_read_age(
    client: Client, people: dict[str, Any], tenants: list[str]
) -> None:
    signed_in(client, people, "vic")
    Snapshot.objects.filter(environment="tenants/c02").update(
        read_at=timezone.now() - timedelta(hours=3)
    )

    by_state = member_rows(client.get("/fleets/tenants?sort=state").content.decode())
    assert by_state[:3] == ["x01", "k01", "n01"]  # unreachable, unknown, never read first
    assert by_state[-4:] == ["a01", "a02", "a03", "a04"]  # current last
    by_read = member_rows(client.get("/fleets/tenants?sort=read").content.decode())
    assert by_read[:2] == ["n01", "c02"]  # never read, then the oldest read
    newest = member_rows(client.get("/fleets/tenants?sort=-read").content.decode())
    assert newest[-2:] == ["c02", "n01"]
    assert member_rows(client.get("/fleets/tenants?sort=-name").content.decode())[0] == "x01"


def test_fleet_page_paginates_and_keeps_filters_in_its_links(
    client: Client,
    people: dict[str, Any],
    tenants: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fleet_selectors, "PER_PAGE", 2)
    signed_in(client, people, "vic")

    first = client.get("/fleets/tenants?state=behind&sort=-name").content.decode()
    assert member_rows(first) == ["c02", "c01"]
    assert "1–2 of 5 members matching (of 13)" in first and "page 1 of 3" in first
    next_link = re.search(r'href="([^"]+)"[^>]*rel="next"', first).group(1)
    assert next_link == "/fleets/tenants?state=behind&amp;sort=-name&amp;page=2"
    assert 'rel="prev"' not in first
    last = client.get("/fleets/tenants?state=behind&sort=-name&page=3").content.decode()
    assert member_rows(last) == ["b01"] and 'rel="next"' not in last
    # A page past the end shows the last page; a page that is no number, the first.
    assert member_rows(client.get("/fleets/tenants?state=behind&page=99").content.decode()) == [
        "c02"
    ]
    assert member_rows(client.get("/fleets/tenants?page=x").content.decode())[0] == "a01"


def test_filter_form_swaps_only_the_members_table(
    client: Client, people: dict[str, Any], tenants: list[str]
) -> None:
    signed_in(client, people, "vic")
    response = client.get("/fleets/tenants?state=current", **HTMX)

    html = response.content.decode()
    assert html.lstrip().startswith('<section class="card" id="members"')
    assert "<html" not in html and 'id="fleet-filters"' not in html
    assert member_rows(html) == ["a01", "a02", "a03", "a04"]
    assert "HX-Request" in response["Vary"]
    page = client.get("/fleets/tenants").content.decode()
    assert 'hx-target="#members"' in page and 'hx-push-url="true"' in page


def test_member_environment_page_works_through_its_url(
    client: Client, people: dict[str, Any], tenants: list[str]
) -> None:
    signed_in(client, people, "vic")
    response = client.get("/environments/tenants~b01")

    assert response.status_code == 200
    html = response.content.decode()
    assert "tenants/b01" in html and "state-behind" in html
    assert client.get("/environments/tenants~nobody").status_code == 404
    assert client.get("/fleets/nobody").status_code == 404


def test_refresh_fleet_reads_every_member_for_operators_only(
    client: Client, people: dict[str, Any], tenants: list[str]
) -> None:
    assert signed_in(client, people, "vic").post("/fleets/tenants/refresh").status_code == 403
    assert not Snapshot.objects.filter(environment="tenants/n01").exists()

    client.logout()
    signed_in(client, people, "olga")
    page = client.get("/fleets/tenants").content.decode()
    assert 'hx-post="/fleets/tenants/refresh"' in page and "Refresh fleet" in page
    before = Snapshot.objects.count()
    response = client.post("/fleets/tenants/refresh", {"state": "uninitialized"}, **HTMX)

    assert response.status_code == 200
    # Every member (13) was read once, and the answer is the table, still filtered.
    assert Snapshot.objects.count() == before + len(MEMBERS)
    assert member_rows(response.content.decode()) == ["n01", "u01"]
    plain = client.post("/fleets/tenants/refresh", {"q": "a0"})
    assert plain.status_code == 302 and plain["Location"] == "/fleets/tenants?q=a0"
    assert client.post("/fleets/nobody/refresh").status_code == 404


def test_refresh_fleet_needs_the_csrf_token(people: dict[str, Any], tenants: list[str]) -> None:
    client = Client(enforce_csrf_checks=True)
    signed_in(client, people, "olga")
    assert client.post("/fleets/tenants/refresh").status_code == 403
    page = client.get("/fleets/tenants").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = client.post("/fleets/tenants/refresh", {"csrfmiddlewaretoken": token})
    assert response.status_code == 302


def test_fleet_api_counts_and_lists_members(
    client: Client, people: dict[str, Any], tenants: list[str]
) -> None:
    assert client.get("/api/fleets/tenants").status_code == 401
    signed_in(client, people, "vic")

    body = client.get("/api/fleets/tenants").json()
    assert body["fleet"] == "tenants" and body["project"] == "blog" and body["total"] == 13
    assert body["counts"] == {
        "current": 4,
        "behind": 5,
        "uninitialized": 1,
        "unknown": 1,
        "invalid": 0,
        "unreachable": 1,
        "not_configured": 0,
        "unread": 1,
    }
    assert [m["name"] for m in body["members"]] == sorted(MEMBERS)
    b01 = next(m for m in body["members"] if m["name"] == "b01")
    assert b01["environment"] == "tenants/b01" and b01["state"] == "behind"
    assert b01["heads"] == [MID] and len(b01["pending"]) == 5 and b01["read_at"].endswith("Z")
    n01 = next(m for m in body["members"] if m["name"] == "n01")
    assert n01["state"] is None and n01["read_at"] is None
    assert any("bad name" in problem for problem in body["problems"])

    behind = client.get("/api/fleets/tenants?state=behind").json()
    assert behind["matched"] == 5 and {m["state"] for m in behind["members"]} == {"behind"}
    assert behind["counts"]["current"] == 4  # counts stay the whole fleet's
    missing = client.get("/api/fleets/nobody")
    assert missing.status_code == 404 and missing.json() == {"error": "no fleet named 'nobody'"}


def test_status_command_fails_unless_every_member_is_current(
    tenants: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(CommandError) as failed:
        call_command("status", "--fleet", "tenants", "--fail-unless-current")

    assert failed.value.returncode == 1
    message = str(failed.value)
    # Every member read now: n01 is uninitialized, not unread, any more.
    assert message.startswith("9 of 13 members of fleet tenants not current")
    assert "4 current, 5 behind, 2 uninitialized, 1 unknown, 1 unreachable" in message
    assert "b01 (behind)" in message and "x01 (unreachable)" in message
    out = capsys.readouterr().out
    assert out.startswith("fleet tenants (project blog): 13 members: 4 current, 5 behind")
    assert re.search(rf"^b01 +behind +{MID} +5 ", out, re.MULTILINE)
    assert Snapshot.objects.filter(environment="tenants/n01").exists()


def test_status_command_passes_when_every_member_is_current(
    tenants: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    call_command("status", "--fleet", "healthy", "--fail-unless-current", "--json")

    body = json.loads(capsys.readouterr().out)
    assert body["counts"]["current"] == 2 and body["total"] == 2
    assert [(m["name"], m["state"]) for m in body["members"]] == [
        ("h1", "current"),
        ("h2", "current"),
    ]


def test_status_command_stored_reads_nothing_and_unknown_fleets_fail(
    tenants: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = Snapshot.objects.count()
    with pytest.raises(CommandError) as failed:
        call_command("status", "--fleet", "tenants", "--stored", "--fail-unless-current")
    assert failed.value.returncode == 1 and "n01 (not read yet)" in str(failed.value)
    assert Snapshot.objects.count() == before

    with pytest.raises(CommandError) as unknown:
        call_command("status", "--fleet", "nobody")
    assert unknown.value.returncode == 2
    assert "no fleet named 'nobody' (configured: healthy, tenants)" in str(unknown.value)
    with pytest.raises(CommandError) as mixed:
        call_command("status", "--fleet", "tenants", "--env", "staging")
    assert mixed.value.returncode == 2


def test_pages_never_wait_on_members_and_a_refresh_waits_one_timeout_for_hung_ones(
    settings: Any, tmp_path: Path, client: Client, people: dict[str, Any]
) -> None:
    with silent_server() as port:
        config = fleet_config(
            tmp_path / "dashboard.toml",
            {
                "hung": {
                    "project": "blog",
                    "url_template": f"postgresql://app@127.0.0.1:{port}/{{name}}",
                    "names": [f"h{i}" for i in range(6)],
                    "timeout": 1,
                }
            },
        )
        settings.DASHBOARD_CONFIG = str(config)
        signed_in(client, people, "olga")
        started = time.perf_counter()
        pages = [client.get(url) for url in ("/", "/fleets/hung", "/api/fleets/hung")]
        shown = time.perf_counter() - started
        assert [p.status_code for p in pages] == [200, 200, 200]
        assert shown < 1.0 and not Snapshot.objects.exists()  # a read would wait 1 s or more

        started = time.perf_counter()
        refreshed = client.post("/fleets/hung/refresh", **HTMX)
        waited = time.perf_counter() - started

    # Read in parallel: six hung members cost one timeout (plus grace), not six.
    assert refreshed.status_code == 200 and waited < 3.0
    assert set(Snapshot.objects.values_list("state", flat=True)) == {"unreachable"}
    assert ">6 unreachable<" in refreshed.content.decode()


SCALE = 1000


@pytest.mark.once
def test_a_thousand_member_fleet_renders_from_snapshots_in_under_a_second(
    settings: Any,
    tmp_path: Path,
    client: Client,
    people: dict[str, Any],
    django_assert_max_num_queries: Any,
) -> None:
    names = [f"t{i:04d}" for i in range(SCALE)]
    config = fleet_config(
        tmp_path / "dashboard.toml",
        {"big": {"project": "blog", "url_template": "sqlite:///big/{name}.db", "names": names}},
    )
    settings.DASHBOARD_CONFIG = str(config)
    now = timezone.now()
    # A member every fifth behind at MID, the rest current; three reads each, the last counting.
    Snapshot.objects.bulk_create(
        Snapshot(
            environment=f"big/{name}",
            project="blog",
            heads=[MID] if i % 5 == 0 else [HEAD],
            state="behind" if i % 5 == 0 else "current",
            pending=["x"] * 5 if i % 5 == 0 else [],
            script_heads=[HEAD],
            messages={HEAD: "add phone_number to users", MID: "add owner_id foreign key to posts"},
            detail="",
            read_at=now - timedelta(minutes=age),
        )
        for i, name in enumerate(names)
        for age in (30, 20, i % 10)
    )
    signed_in(client, people, "olga")
    started = time.perf_counter()
    client.get("/fleets/big")  # templates and statements compiled once per process
    cold_seconds = time.perf_counter() - started
    client.get("/")

    started = time.perf_counter()
    with django_assert_max_num_queries(30), CaptureQueriesContext(connection) as page_queries:
        page = client.get("/fleets/big?sort=state")
    page_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with django_assert_max_num_queries(30), CaptureQueriesContext(connection) as overview_queries:
        overview = client.get("/")
    overview_seconds = time.perf_counter() - started

    html = page.content.decode()
    assert len(member_rows(html)) == fleet_selectors.PER_PAGE
    assert "1–50 of 1000 members" in html and ">200 behind<" in html and ">800 current<" in html
    row = re.search(r'<tr id="fleet-big".*?</tr>', overview.content.decode(), re.DOTALL).group(0)
    assert ">800 current<" in row and "200 at" in row
    print(
        f"fleet page {page_seconds * 1000:.0f} ms ({len(page_queries)} queries; first render"
        f" {cold_seconds * 1000:.0f} ms), overview {overview_seconds * 1000:.0f} ms"
        f" ({len(overview_queries)} queries)"
    )
    assert page_seconds < 1.0 and overview_seconds < 1.0
