"""Start the test provider (gunicorn on 127.0.0.1) and sign its users in as a browser would."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from urllib.parse import urljoin

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parents[2]
CLIENT_ID = "dashboard-tests"
PASSWORD = "provider-pass-1"
START_TIMEOUT = 60.0
CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class ProviderFailed(Exception):
    """The provider did not start, or did not answer as a provider does."""


@dataclass
class Provider:
    """A running django-oauth-toolkit provider, its files, client and users."""

    folder: Path
    issuer: str
    client_secret: str
    redirect_uris: list[str]
    users: dict[str, list[str]] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        """Return the environment the provider's processes run with."""
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.oidc_provider.settings",
            "OIDC_PROVIDER_DIR": str(self.folder),
            "OIDC_PROVIDER_ISSUER": self.issuer,
            "PYTHONPATH": str(ROOT),
        }

    def manage(self, *args: str) -> None:
        """Run one of the provider's management commands."""
        done = subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise ProviderFailed(f"provider {args[0]} failed:\n{done.stdout}\n{done.stderr}")

    def set_groups(self, **users: list[str]) -> None:
        """Give these users (created if new) exactly these groups at the provider."""
        self.users.update(users)
        spec = {
            "client_id": CLIENT_ID,
            "client_secret": self.client_secret,
            "redirect_uris": self.redirect_uris,
            "post_logout_redirect_uris": [
                uri.replace("/accounts/sso/callback/", "/accounts/login/")
                for uri in self.redirect_uris
            ],
            "users": {name: {"password": PASSWORD, "groups": g} for name, g in self.users.items()},
        }
        path = self.folder / "spec.json"
        path.write_text(json.dumps(spec), encoding="utf-8")
        self.manage("provider_setup", str(path))

    def stop(self) -> None:
        """Stop gunicorn and its workers."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_provider(
    folder: Path, *, redirect_uris: list[str], users: dict[str, list[str]]
) -> Iterator[Provider]:
    """Start a provider with a fresh RS256 key, SQLite file, client and users; stop it after."""
    folder.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    port = free_port()
    provider = Provider(
        folder=folder,
        issuer=f"http://127.0.0.1:{port}/o",
        client_secret=f"secret-{os.urandom(8).hex()}",
        redirect_uris=redirect_uris,
    )
    provider.manage("migrate", "--noinput", "-v0")
    provider.set_groups(**users)
    with (folder / "provider.log").open("ab") as log:
        provider.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--threads",
                "4",
                "tests.oidc_provider.wsgi:application",
            ],
            cwd=ROOT,
            env=provider.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_up(provider)
        yield provider
    finally:
        provider.stop()


def _wait_up(provider: Provider) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    url = provider.issuer + "/.well-known/openid-configuration"
    while time.monotonic() < deadline:
        if provider.process is not None and provider.process.poll() is not None:
            break
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass  # not listening yet
        time.sleep(0.1)
    tail = (provider.folder / "provider.log").read_text(errors="replace")[-3000:]
    raise ProviderFailed(f"the provider did not answer its discovery document:\n{tail}")


def provider_sign_in(
    browser: requests.Session, authorize_url: str, username: str, password: str = PASSWORD
) -> str:
    """Follow the authorize URL as a browser, posting the provider's own sign-in form.

    Return the URL the provider sends the browser back to (the dashboard's callback).
    """
    answer = browser.get(authorize_url, allow_redirects=False, timeout=10)
    if answer.status_code == 302 and "/accounts/login/" in answer.headers["Location"]:
        login_url = urljoin(authorize_url, answer.headers["Location"])
        page = browser.get(login_url, timeout=10)
        token = CSRF.search(page.text)
        if token is None:
            raise ProviderFailed(f"no sign-in form at {login_url}: {page.status_code}")
        posted = browser.post(
            login_url,
            data={
                "csrfmiddlewaretoken": unescape(token.group(1)),
                "username": username,
                "password": password,
            },
            headers={"Referer": login_url},
            allow_redirects=False,
            timeout=10,
        )
        if posted.status_code != 302:
            raise ProviderFailed(f"the provider refused {username}'s password")
        answer = browser.get(
            urljoin(login_url, posted.headers["Location"]), allow_redirects=False, timeout=10
        )
    if answer.status_code != 302:
        raise ProviderFailed(f"the provider's authorize answered {answer.status_code}")
    return str(answer.headers["Location"])
