"""Chromium signs in through a real local OpenID Connect provider and lands on the overview."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, expect, sync_playwright

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, need_chromium
from tests.oidc_provider.server import (
    CLIENT_ID,
    PASSWORD,
    Provider,
    ProviderFailed,
    free_port,
    running_provider,
)
from tests.statusenv import SAMPLE

# Its dashboard keeps its own SQLite file whatever the pass: CI runs it once.
pytestmark = [pytest.mark.e2e, pytest.mark.once]
ROOT = Path(__file__).resolve().parents[2]
SECRET_ENV = "DASH_E2E_OIDC_SECRET"


@dataclass
class Dashboard:
    """The dashboard under gunicorn (production settings) with an [sso] table."""

    base_url: str
    process: subprocess.Popen[bytes]


def _env(folder: Path, provider: Provider) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DASHBOARD_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="dashboard.settings",
        DATABASE_URL=f"sqlite:///{folder / 'dash.sqlite3'}",
        DASHBOARD_CONFIG=str(folder / "dashboard.toml"),
        DASHBOARD_VAR_DIR=str(folder),
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(40),
        ALLOWED_HOSTS="127.0.0.1",
        SECURE_COOKIES="0",
        STATIC_ROOT=str(folder / "static"),
        PYTHONUNBUFFERED="1",
        **{SECRET_ENV: provider.client_secret},
    )
    return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dashboard, Provider]]:
    """Run the provider and the dashboard; the provider maps ann to the operator role."""
    need_chromium()
    folder = tmp_path_factory.mktemp("sso-e2e")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    users = {"ann": ["dash-operators"]}
    callback = f"{base}/accounts/sso/callback/"
    with running_provider(folder / "provider", redirect_uris=[callback], users=users) as provider:
        (folder / "dashboard.toml").write_text(
            f"""
[projects.blog]
script_location = "{SAMPLE}"

[sso]
issuer = "{provider.issuer}"
client_id = "{CLIENT_ID}"
client_secret_env = "{SECRET_ENV}"
display_name = "Test IdP"

[sso.roles]
operator = ["dash-operators"]
viewer = ["engineering"]
""",
            encoding="utf-8",
        )
        env = _env(folder, provider)
        for argv in (
            ["migrate", "--no-input", "-v", "0"],
            ["collectstatic", "--no-input", "-v", "0"],
        ):
            subprocess.run([sys.executable, "manage.py", *argv], cwd=ROOT, env=env, check=True)
        with (folder / "server.log").open("ab") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "dashboard.wsgi", "--bind", f"127.0.0.1:{port}",
                 "--workers", "2", "--access-logfile", "-"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            _wait(f"{base}/healthz", server, folder / "server.log")
            yield Dashboard(base, server), provider
        finally:
            server.terminate()
            server.wait(timeout=20)


def _wait(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(300):
        if server.poll() is not None:
            break
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        subprocess.run(["sleep", "0.1"], check=True)
    raise ProviderFailed(f"the dashboard did not start:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def browser(stack: tuple[Dashboard, Provider]) -> Iterator[Browser]:
    """Launch Debian's Chromium."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_chromium_signs_in_through_the_provider_and_lands_on_the_overview_as_operator(
    stack: tuple[Dashboard, Provider], browser: Browser
) -> None:
    dashboard, provider = stack
    context = browser.new_context()
    page = context.new_page()
    csp_problems: list[str] = []
    page.on(
        "console", lambda m: csp_problems.append(m.text) if "Content Security" in m.text else None
    )
    page.goto(f"{dashboard.base_url}/")
    assert "/accounts/login/" in page.url, page.url + page.content()[:2000]
    # Sent to the sign-in page, which offers the provider.
    page.get_by_role("link", name="Sign in with Test IdP").click()
    page.wait_for_url(f"{provider.issuer.rsplit('/o', 1)[0]}/accounts/login/**")
    page.fill("#id_username", "ann")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Sign in to the provider").click()
    page.wait_for_url(f"{dashboard.base_url}/")
    expect(page.locator(".who")).to_contain_text("ann")
    expect(page.locator(".who .role")).to_have_text("operator")
    expect(page.get_by_role("heading", level=1).first).to_be_visible()
    # Signing out ends both sessions and comes back to the dashboard's sign-in page.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{dashboard.base_url}/accounts/login/**")
    page.goto(f"{dashboard.base_url}/")
    page.get_by_role("link", name="Sign in with Test IdP").click()
    page.wait_for_url(f"{provider.issuer.rsplit('/o', 1)[0]}/accounts/login/**")
    assert csp_problems == []
    context.close()
