"""One environment's unusable URL fails that environment alone; the pages and the API go on."""

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from dashboard.services import status, tokens
from tests.statusenv import HEAD, empty_sqlite, write_config, write_versions

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-pw"


def row(html: str, name: str) -> str:
    """Return the overview's table row of one environment."""
    match = re.search(rf'<tr id="env-{re.escape(name)}".*?</tr>', html, re.DOTALL)
    assert match, f"no row for {name}"
    return match.group(0)


@pytest.mark.parametrize(
    "bad_url",
    [
        f"postgresql://app:{SECRET}@db.example:54x/app",  # not a URL at all
        f"postgresql://app:{SECRET}@db.example:99999/app",  # a port no server listens on
        f"postgresql://app:{SECRET}@db.example/app\x00",  # a NUL no driver can pass on
    ],
)
def test_a_malformed_url_fails_its_environment_alone(
    client: Client, settings: Any, tmp_path: Path, bad_url: str
) -> None:
    good = empty_sqlite(tmp_path / "good.db")
    write_versions(good, [HEAD])
    path = write_config(
        tmp_path / "dashboard.toml",
        {"good": {"project": "blog", "url": good}, "bad": {"project": "blog", "url": bad_url}},
    )
    settings.DASHBOARD_CONFIG = str(path)
    call_command("adduser", "lead", role="viewer", password="correct-horse-9")
    client.login(username="lead", password="correct-horse-9")
    key = tokens.token_create(username="lead", name="pipeline")
    why = f"invalid URL in {path} [environments.bad] url: not a"

    status.status_refresh()
    overview = client.get("/")
    page = client.get("/environments/bad")
    listed = client.get("/api/environments", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert overview.status_code == 200
    html = overview.content.decode()
    assert "The config cannot be read" not in html
    assert "state-current" in row(html, "good")
    assert "state-not_configured" in row(html, "bad") and why in row(html, "bad")
    assert page.status_code == 200 and why in page.content.decode()
    assert listed.status_code == 200
    items = {item["environment"]: item for item in listed.json()}
    assert items["good"]["state"] == "current"
    assert items["bad"]["state"] == "not_configured"
    assert items["bad"]["error"].startswith(why)
    for text in (html, page.content.decode(), listed.content.decode()):
        assert SECRET not in text


def test_manage_check_names_the_environment_with_the_malformed_url(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "dashboard.toml",
        {
            "good": {"project": "blog", "url": "sqlite:///good.db"},
            "bad": {"project": "blog", "url": f"postgresql://app:{SECRET}@db:54x/app"},
        },
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "DASHBOARD_CONFIG": str(path),
            "DEBUG": "1",
            "DASHBOARD_VAR_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "dashboard.E003" in result.stderr
    assert f"invalid URL in {path} [environments.bad] url: not a database URL" in result.stderr
    assert "[environments.good]" not in result.stderr
    assert SECRET not in result.stdout + result.stderr
