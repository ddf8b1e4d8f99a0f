"""The overview matrix, the environment page and the htmx refresh, rendered from snapshots."""

import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dashboard.models import Action, Snapshot
from dashboard.services import status
from tests.databases import postgres_database
from tests.fakeserver import closed_port, silent_server
from tests.statusenv import (
    HEAD,
    MID,
    PASSWORD,
    QUIRK,
    alembic,
    empty_sqlite,
    with_password,
    write_config,
    write_versions,
)

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(scope="module")
def behind_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database the real sample project left at the branch point (5 behind)."""
    path = tmp_path_factory.mktemp("pages") / "behind.db"
    alembic(empty_sqlite(path), "upgrade", MID)
    return path


@pytest.fixture
def lead(client: Client) -> Client:
    """Return a client signed in as a viewer."""
    call_command("adduser", "lead", role="viewer", password="correct-horse-9")
    client.login(username="lead", password="correct-horse-9")
    return client


def use_config(settings: Any, tmp_path: Path, environments: dict[str, dict[str, Any]]) -> None:
    """Point the dashboard at a fresh config of the sample project with these environments."""
    path = write_config(tmp_path / f"dashboard-{time.monotonic_ns()}.toml", environments)
    settings.DASHBOARD_CONFIG = str(path)


def blog(url: str, **extra: Any) -> dict[str, Any]:
    return {"project": "blog", "url": url, **extra}


def row(html: str, name: str) -> str:
    """Return the overview's table row of one environment."""
    match = re.search(rf'<tr id="env-{re.escape(name)}".*?</tr>', html, re.DOTALL)
    assert match, f"no row for {name}"
    return match.group(0)


@pytest.fixture
def two_envs(settings: Any, tmp_path: Path, behind_db: Path) -> dict[str, str]:
    """Configure staging (behind, read once) and prod (at head, never read)."""
    prod = empty_sqlite(tmp_path / "prod.db")
    write_versions(prod, [HEAD])
    urls = {"staging": f"sqlite:///{behind_db}", "prod": prod}
    use_config(
        settings,
        tmp_path,
        {
            "staging": blog(urls["staging"], order=1, description="Release candidates"),
            "prod": blog(prod, order=2),
        },
    )
    status.status_refresh(environments=["staging"])
    return urls


def test_overview_matrix_shows_each_environments_latest_snapshot(
    lead: Client, two_envs: dict[str, str]
) -> None:
    html = lead.get("/").content.decode()

    staging = row(html, "staging")
    assert (
        f'<code class="rev" title="{MID}">{MID}</code> add owner_id foreign key to posts' in staging
    )
    assert 'class="state state-behind"' in staging and ">behind<" in staging
    assert '<span class="pending-count">5</span>' in staging
    assert re.search(r'<time datetime="[^"]+T[^"]+"[^>]*>read just now</time>', staging)
    assert 'href="/environments/staging"' in staging
    prod = row(html, "prod")
    assert "not read yet" in prod
    assert 'hx-post="/environments/prod/refresh"' in prod
    # The project header shows the script directory's head as last seen.
    assert f'href="/projects/blog/graph?around={HEAD}#rev-{HEAD}"' in html


def test_overview_and_environment_page_say_which_branch_a_head_is_on(
    lead: Client, settings: Any, tmp_path: Path, behind_db: Path
) -> None:
    qa = empty_sqlite(tmp_path / "qa.db")
    write_versions(qa, [QUIRK])  # on the side branch labelled "reporting"
    use_config(settings, tmp_path, {"qa": blog(qa), "staging": blog(f"sqlite:///{behind_db}")})
    status.status_refresh()

    html = lead.get("/").content.decode()
    on_reporting = '<span class="muted small">on</span> <span class="label" title="branch label">reporting</span>'
    assert on_reporting in row(html, "qa")
    assert "branch label" not in row(html, "staging")  # the trunk carries no label
    assert on_reporting in lead.get("/environments/qa").content.decode()
    assert Snapshot.objects.get(environment="qa").branch_labels == {QUIRK: ["reporting"]}


def test_pages_never_read_an_environment(lead: Client, settings: Any, tmp_path: Path) -> None:
    with silent_server() as port:
        use_config(settings, tmp_path, {"hung": blog(f"postgresql://a@127.0.0.1:{port}/x")})
        started = time.perf_counter()
        overview = lead.get("/")
        page = lead.get("/environments/hung")
        elapsed = time.perf_counter() - started

    assert overview.status_code == page.status_code == 200
    assert elapsed < 1.0  # a read would wait for the 5 s timeout
    assert "not read yet" in row(overview.content.decode(), "hung")
    assert not Snapshot.objects.exists()


def test_overview_answers_htmx_with_the_matrix_partial(
    lead: Client, two_envs: dict[str, str]
) -> None:
    response = lead.get("/", **HTMX)

    html = response.content.decode()
    assert html.lstrip().startswith('<div id="matrix"')
    assert "<html" not in html
    assert 'id="env-staging"' in html
    assert "HX-Request" in response["Vary"]


def test_refreshing_a_row_reads_now_and_swaps_the_row(
    lead: Client, two_envs: dict[str, str]
) -> None:
    response = lead.post("/environments/prod/refresh", HTTP_HX_TARGET="env-prod", **HTMX)

    html = response.content.decode()
    assert html.strip().startswith('<tr id="env-prod"')
    assert 'class="state state-current"' in html
    assert "not read yet" not in html
    assert Snapshot.objects.filter(environment="prod", state="current").count() == 1


def test_refreshing_on_the_environment_page_swaps_its_status(
    lead: Client, two_envs: dict[str, str]
) -> None:
    response = lead.post(
        "/environments/staging/refresh", HTTP_HX_TARGET="environment-status", **HTMX
    )

    html = response.content.decode()
    assert html.lstrip().startswith('<div id="environment-status"')
    assert "5 behind head 6c0a8d3f5e94" in html
    assert Snapshot.objects.filter(environment="staging").count() == 2


def test_refresh_all_swaps_the_matrix(lead: Client, two_envs: dict[str, str]) -> None:
    response = lead.post("/refresh", HTTP_HX_TARGET="matrix", **HTMX)

    html = response.content.decode()
    assert html.lstrip().startswith('<div id="matrix"')
    assert "state-current" in row(html, "prod") and "state-behind" in row(html, "staging")
    assert Snapshot.objects.count() == 3


def test_refresh_without_javascript_redirects_back(lead: Client, two_envs: dict[str, str]) -> None:
    one = lead.post("/environments/prod/refresh")
    every = lead.post("/refresh")

    assert (one.status_code, one["Location"]) == (302, "/environments/prod")
    assert (every.status_code, every["Location"]) == (302, "/")


def test_refresh_is_post_only_and_needs_a_sign_in(client: Client, two_envs: dict[str, str]) -> None:
    call_command("adduser", "lead", role="viewer", password="correct-horse-9")

    anonymous = client.post("/environments/prod/refresh")
    client.login(username="lead", password="correct-horse-9")
    get = client.get("/environments/prod/refresh")

    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    assert get.status_code == 405
    assert not Snapshot.objects.filter(environment="prod").exists()


def test_environment_page_shows_heads_pending_position_history_and_error(
    lead: Client, two_envs: dict[str, str], tmp_path: Path, behind_db: Path, settings: Any
) -> None:
    html = lead.get("/environments/staging").content.decode()

    assert f'href="/projects/blog/graph?around={MID}#rev-{MID}"' in html
    assert "add owner_id foreign key to posts" in html
    assert "5 behind head 6c0a8d3f5e94" in html
    pending = re.search(r'<ol class="revisions pending">(.*?)</ol>', html, re.DOTALL)
    assert pending
    order = re.findall(r'<a class="rev" href="[^"]+">(\w+)</a> ([^<]*)</li>', pending.group(1))
    assert [rev for rev, _ in order] == [
        "e0d7f4a19b53",
        "7a3c2e8b5f01",
        "1d6b9f0c4e27",
        "9e4f1b7a2c68",
        HEAD,
    ]
    assert order[-1][1].strip() == "add phone_number to users"
    assert "first read" in html  # the history's first change
    assert 'id="last-error"' not in html


def test_environment_page_shows_the_last_error_and_keeps_the_history(
    lead: Client, settings: Any, tmp_path: Path
) -> None:
    db = tmp_path / "qa.db"
    url = empty_sqlite(db)
    write_versions(url, [MID])
    use_config(settings, tmp_path, {"qa": blog(url)})
    status.status_refresh()
    write_versions(url, [HEAD])
    status.status_refresh()
    db.unlink()
    status.status_refresh()

    html = lead.get("/environments/qa").content.decode()

    assert 'class="state state-unreachable"' in html
    last_error = re.search(r'<section class="card" id="last-error">.*?</section>', html, re.DOTALL)
    assert last_error and "does not exist" in last_error.group(0)
    history = re.search(r'<section class="card" id="history">.*?</table>', html, re.DOTALL)
    assert history
    # Newest change first: MID -> HEAD, then the first read of MID.
    assert history.group(0).index(HEAD) < history.group(0).index("first read")


def test_unknown_environment_is_404(lead: Client, two_envs: dict[str, str]) -> None:
    assert lead.get("/environments/nope").status_code == 404
    assert lead.post("/environments/nope/refresh", **HTMX).status_code == 404


def test_removed_environments_disappear_from_the_overview(
    lead: Client, settings: Any, tmp_path: Path, two_envs: dict[str, str]
) -> None:
    use_config(settings, tmp_path, {"prod": blog(two_envs["prod"])})

    html = lead.get("/").content.decode()

    assert 'id="env-staging"' not in html
    assert 'id="env-prod"' in html
    assert lead.get("/environments/staging").status_code == 404


def test_a_broken_config_is_shown_not_a_500(lead: Client, settings: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[environments.prod]\nproject = 'shop'\nurl = 'sqlite://'\n")
    settings.DASHBOARD_CONFIG = str(broken)

    overview = lead.get("/")
    page = lead.get("/environments/prod")
    refresh = lead.post("/refresh", HTTP_HX_TARGET="matrix", **HTMX)
    plain = lead.post("/environments/prod/refresh", follow=True)

    assert overview.status_code == 200
    assert "The config cannot be read" in overview.content.decode()
    assert "project &#x27;shop&#x27; is not defined" in overview.content.decode()
    assert page.status_code == 503
    assert "The config cannot be read" in page.content.decode()
    assert refresh.status_code == 200
    assert refresh["HX-Retarget"] == "#refresh-problem"
    assert 'role="alert"' in refresh.content.decode()
    assert "The config cannot be read" in plain.content.decode()


def test_a_broken_history_shows_as_an_invalid_state(
    lead: Client, settings: Any, tmp_path: Path
) -> None:
    scripts_dir = tmp_path / "scripts"
    (scripts_dir / "versions").mkdir(parents=True)
    (scripts_dir / "versions" / "a1.py").write_text(
        'revision = "a1"\ndown_revision = "missing0"\nbranch_labels = None\ndepends_on = None\n'
    )
    url = empty_sqlite(tmp_path / "t.db")
    write_versions(url, ["a1"])
    path = write_config(
        tmp_path / "broken-history.toml",
        {"dev": {"project": "odd", "url": url}},
        projects={"odd": {"script_location": str(scripts_dir)}},
    )
    settings.DASHBOARD_CONFIG = str(path)

    response = lead.post("/environments/dev/refresh", HTTP_HX_TARGET="env-dev", **HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="state state-invalid"' in html
    assert "missing0" in html


def test_pages_have_no_inline_styles_or_scripts(lead: Client, two_envs: dict[str, str]) -> None:
    for url in ("/", "/environments/staging", "/environments/prod"):
        html = lead.get(url).content.decode()
        assert " style=" not in html
        assert "<script>" not in html
        assert "<style" not in html


@pytest.mark.postgres
def test_passwords_never_reach_the_pages(lead: Client, settings: Any, tmp_path: Path) -> None:
    with postgres_database() as url:
        alembic(url, "upgrade", "heads")
        use_config(
            settings,
            tmp_path,
            {
                "prod": blog(with_password(url)),
                "gone": blog(f"postgresql://app:{PASSWORD}@127.0.0.1:{closed_port()}/x", timeout=1),
            },
        )
        refreshed = lead.post("/refresh", HTTP_HX_TARGET="matrix", **HTMX).content.decode()
        pages = [
            lead.get(url).content.decode()
            for url in ("/", "/environments/prod", "/environments/gone")
        ]

    assert "state-current" in row(pages[0], "prod")
    assert "state-unreachable" in row(pages[0], "gone")
    assert "***" in pages[1]  # the masked URL is shown
    for html in (refreshed, *pages):
        assert PASSWORD not in html


def test_ages_read_as_people_say_them() -> None:
    from datetime import timedelta

    from django.utils import timezone

    from dashboard.templatetags.dashboard_tags import ago

    now = timezone.now()
    assert ago(now - timedelta(seconds=5)) == "just now"
    assert ago(now - timedelta(minutes=5, seconds=3)) == "5\xa0minutes ago"
    assert ago(None) == ""


def add_history(snapshots: int, actions: int) -> None:
    """Store past snapshots of staging and prod and finished actions, all older than any read."""
    start = timezone.now() - timedelta(days=1)
    have = Snapshot.objects.filter(read_at__lt=start).count()
    Snapshot.objects.bulk_create(
        Snapshot(
            environment=("staging", "prod")[n % 2],
            project="blog",
            heads=[MID],
            state="behind",
            pending=["x"] * 5,
            read_at=start - timedelta(seconds=n),
            changed=n % 50 == 0,
        )
        for n in range(have, snapshots)
    )
    have = Action.objects.count()
    Action.objects.bulk_create(
        Action(
            environment=("staging", "prod")[n % 2],
            project="blog",
            direction="upgrade",
            target=HEAD,
            fingerprint="0" * 64,
            plan_hash="0" * 64,
            status=Action.Status.SUCCEEDED,
            requested_by_name="olga",
        )
        for n in range(have, actions)
    )


def test_overview_queries_do_not_grow_with_past_snapshots_or_actions(
    lead: Client, two_envs: dict[str, str]
) -> None:
    counts = []
    for snapshots, actions in ((10, 1), (3_000, 300)):
        add_history(snapshots, actions)
        with CaptureQueriesContext(connection) as queries:
            assert lead.get("/").status_code == 200
        counts.append(len(queries))

    assert counts[0] == counts[1]


@pytest.mark.skipif(connection.vendor != "sqlite", reason="counts SQLite's VM steps")
def test_overview_work_does_not_grow_with_past_snapshots(
    lead: Client, two_envs: dict[str, str]
) -> None:
    connection.ensure_connection()
    raw = connection.connection
    steps = []
    ticks = [0]

    def tick() -> int:
        ticks[0] += 1
        return 0  # go on

    for snapshots in (10, 3_000):
        add_history(snapshots, 0)
        ticks[0] = 0
        raw.set_progress_handler(tick, 10)  # called every 10 SQLite VM instructions
        try:
            assert lead.get("/").status_code == 200
        finally:
            raw.set_progress_handler(None, 0)
        steps.append(ticks[0])

    # The latest snapshot per environment is a seek, not a scan of the history.
    assert steps[1] <= steps[0] * 1.25 + 5, steps


def test_overview_shows_a_new_read_and_a_new_config_at_once(
    lead: Client, settings: Any, tmp_path: Path, two_envs: dict[str, str]
) -> None:
    before = lead.get("/").content.decode()
    status.status_refresh(environments=["prod"])
    read = lead.get("/").content.decode()
    use_config(
        settings, tmp_path, {"prod": blog(two_envs["prod"], description="Customers' database")}
    )
    described = lead.get("/").content.decode()

    assert "not read yet" in row(before, "prod")
    assert "state-current" in row(read, "prod") and "not read yet" not in row(read, "prod")
    assert "Customers&#x27; database" in row(described, "prod")
    assert 'id="env-staging"' not in described


def test_overview_ages_move_on_without_a_new_read(lead: Client, two_envs: dict[str, str]) -> None:
    Snapshot.objects.create(
        environment="prod",
        project="blog",
        heads=[HEAD],
        state="current",
        read_at=timezone.now() - timedelta(seconds=58.5),
    )
    fresh = row(lead.get("/").content.decode(), "prod")
    time.sleep(1.6)
    later = row(lead.get("/").content.decode(), "prod")

    assert "read just now" in fresh
    assert "read 1\xa0minute ago" in later


def test_overview_forms_carry_each_visitors_own_csrf_token(two_envs: dict[str, str]) -> None:
    for name in ("lead", "olga"):
        call_command("adduser", name, role="viewer", password="correct-horse-9")
        visitor = Client(enforce_csrf_checks=True)
        visitor.login(username=name, password="correct-horse-9")
        page = visitor.get("/").content.decode()  # the second visitor gets the cached matrix
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', row(page, "prod"))
        assert token

        refreshed = visitor.post("/environments/prod/refresh", {"csrfmiddlewaretoken": token[1]})

        assert refreshed.status_code == 302, name
