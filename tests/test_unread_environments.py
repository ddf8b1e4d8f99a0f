"""Pages about an environment that cannot be read say what was last known, and offer no action."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from dashboard.models import Action, Snapshot
from dashboard.services import status
from tests.statusenv import MID, empty_sqlite, write_config, write_versions

pytestmark = pytest.mark.django_db
PASSWORD = "correct-horse-9"
REQUEST_LINKS = (
    'href="/environments/qa/request?direction=upgrade"',
    'href="/environments/qa/request?direction=downgrade"',
)


@pytest.fixture
def olga() -> Client:
    """Return a client signed in as an operator, who may request actions."""
    call_command("adduser", "olga", role="operator", password=PASSWORD)
    client = Client()
    assert client.login(username="olga", password=PASSWORD)
    return client


def use_config(settings: Any, tmp_path: Path, environments: dict[str, dict[str, Any]]) -> None:
    path = write_config(tmp_path / f"dashboard-{time.monotonic_ns()}.toml", environments)
    settings.DASHBOARD_CONFIG = str(path)


def section(html: str, name: str) -> str:
    found = re.search(rf'<section class="card" id="{name}">.*?</section>', html, re.DOTALL)
    assert found, f"no section {name}"
    return found.group(0)


def text(html: str) -> str:
    """Return the page's words with tags and runs of white space collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.fixture
def dropped(settings: Any, tmp_path: Path) -> Path:
    """Configure qa, read it at the branch point an hour ago, then drop its database and read it."""
    db = tmp_path / "qa.db"
    url = empty_sqlite(db)
    write_versions(url, [MID])
    use_config(settings, tmp_path, {"qa": {"project": "blog", "url": url}})
    status.status_refresh()
    Snapshot.objects.update(read_at=Snapshot.objects.get().read_at - timedelta(hours=1))
    db.unlink()
    status.status_refresh()
    assert Snapshot.objects.first().state == Snapshot.State.UNREACHABLE  # type: ignore[union-attr]
    return db


def test_the_environment_page_shows_the_last_known_heads_and_their_age(
    olga: Client, dropped: Path
) -> None:
    html = olga.get("/environments/qa").content.decode()
    position = text(section(html, "position"))
    assert "holds no revision" not in position
    assert "Last known heads, read 1 hour ago" in position
    assert MID in position
    pending = text(section(html, "pending"))
    assert "0 revisions" not in pending and "Nothing to run" not in pending
    assert "Pending unknown" in pending


def test_the_environment_page_offers_no_action_while_it_cannot_be_read(
    olga: Client, dropped: Path
) -> None:
    html = olga.get("/environments/qa").content.decode()
    assert not any(link in html for link in REQUEST_LINKS)
    assert "No action can be requested while qa cannot be read" in text(html)


def test_heads_never_read_are_unknown(olga: Client, settings: Any, tmp_path: Path) -> None:
    use_config(settings, tmp_path, {"qa": {"project": "blog", "url_env": "QA_TEST_URL_UNSET"}})
    status.status_refresh()
    assert Snapshot.objects.get().state == Snapshot.State.NOT_CONFIGURED
    html = olga.get("/environments/qa").content.decode()
    position = text(section(html, "position"))
    assert "holds no revision" not in position
    assert "Unknown: no read of qa has succeeded yet" in position
    assert not any(link in html for link in REQUEST_LINKS)
    form = text(olga.get("/environments/qa/request").content.decode())
    assert "Heads unknown" in form and "none (base)" not in form


def test_an_empty_database_says_why_no_revision_is_applied(
    olga: Client, settings: Any, tmp_path: Path
) -> None:
    use_config(
        settings, tmp_path, {"qa": {"project": "blog", "url": empty_sqlite(tmp_path / "qa.db")}}
    )
    status.status_refresh()
    html = olga.get("/environments/qa").content.decode()
    position = text(section(html, "position"))
    assert "No revision is applied: no version table alembic_version" in position
    assert all(link in html for link in REQUEST_LINKS)


def test_the_request_form_shows_the_last_known_heads_and_refuses(
    olga: Client, dropped: Path
) -> None:
    response = olga.get("/environments/qa/request")
    html = response.content.decode()
    words = text(html)
    assert "none (base)" not in words
    assert f"Heads {MID} last known, read 1 hour ago" in words
    assert "qa cannot be read now" in words and "no action can be requested" in words
    assert '<form method="post" action="/environments/qa/request"' not in html
    assert "<button" not in section(html, "request-form")

    # A form left open from before is refused too, by the page and by the service.
    posted = olga.post(
        "/environments/qa/request", {"direction": "upgrade", "target": "heads", "reason": "go"}
    )
    assert posted.status_code == 200
    assert "qa cannot be read now" in text(posted.content.decode())
    assert not Action.objects.exists()
