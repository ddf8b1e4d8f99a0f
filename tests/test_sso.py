"""Single sign-on against a real OpenID Connect provider (django-oauth-toolkit, in a subprocess)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from django.contrib.auth import authenticate, get_user_model
from django.test import Client

from dashboard.config import ConfigError, Environment, load_config
from dashboard.models import AuditEvent, SSOIdentity
from dashboard.roles import role_of
from dashboard.runner.process import child_secrets, replay_secrets
from dashboard.services import tokens, users
from dashboard.sso.provider import forget_discovery
from tests.oidc_provider.server import (
    CLIENT_ID,
    Provider,
    free_port,
    provider_sign_in,
    running_provider,
)
from tests.statusenv import SAMPLE

pytestmark = pytest.mark.django_db
CALLBACK = "http://testserver/accounts/sso/callback/"
SECRET_ENV = "DASH_TEST_OIDC_SECRET"
ROLES = """[sso.roles]
admin = ["dash-admins"]
approver = ["dash-approvers"]
operator = ["dash-operators"]
viewer = ["dash-viewers", "engineering"]"""
# Provider-side users; each test owns its own, as the provider lives for the whole module.
USERS = {
    "ann": ["dash-operators", "engineering"],
    "bob": ["dash-admins"],
    "dora": ["dash-operators"],
    "carl": ["marketing"],
    "frank": ["dash-viewers"],
    "eve": ["dash-viewers", "provider:expired-id-tokens"],
    "gus": ["dash-viewers"],
    "hal": ["dash-operators"],
    "ivy": ["dash-viewers"],
}


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    """Run one provider for the module, its client allowed to come back to the test server."""
    folder = tmp_path_factory.mktemp("oidc-provider")
    with running_provider(folder, redirect_uris=[CALLBACK], users=dict(USERS)) as running:
        yield running


def write_sso_config(path: Path, provider: Provider, extra: str = "", issuer: str = "") -> Path:
    """Write a config with one project and an [sso] table for the provider."""
    path.write_text(
        f"""
[projects.blog]
script_location = "{SAMPLE}"

[sso]
issuer = "{issuer or provider.issuer}"
client_id = "{CLIENT_ID}"
client_secret_env = "{SECRET_ENV}"
display_name = "Test IdP"
{extra}
{ROLES}
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def sso_site(settings: Any, tmp_path: Path, provider: Provider, monkeypatch: Any) -> Provider:
    """Point the dashboard at the provider, its client secret in the named variable."""
    monkeypatch.setenv(SECRET_ENV, provider.client_secret)
    settings.DASHBOARD_CONFIG = str(write_sso_config(tmp_path / "dashboard.toml", provider))
    forget_discovery()
    return provider


def start(client: Client, next_url: str = "/") -> str:
    """Start a sign-in at the dashboard; return the provider's authorize URL it sends to."""
    answer = client.get("/accounts/sso/start/?" + urlencode({"next": next_url}))
    assert answer.status_code == 302, answer.content[:500]
    location = str(answer["Location"])
    query = parse_qs(urlsplit(location).query)
    # The library's PKCE, state and nonce, all in the request the provider sees.
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert query["state"][0] and query["nonce"][0]
    return location


def come_back(client: Client, callback_url: str) -> Any:
    """Follow the provider's redirect back to the dashboard's callback."""
    parts = urlsplit(callback_url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == CALLBACK
    return client.get(f"{parts.path}?{parts.query}")


def sso_sign_in(client: Client, provider: Provider, username: str) -> Any:
    """Sign in through the provider as a browser would; return the callback's answer."""
    authorize = start(client)
    callback = provider_sign_in(requests.Session(), authorize, username)
    return come_back(client, callback)


def events(verb: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(verb=verb).order_by("id"))


def test_first_sign_in_creates_the_user_with_the_mapped_role(sso_site: Provider) -> None:
    client = Client()
    answer = sso_sign_in(client, sso_site, "ann")
    assert answer.status_code == 302 and answer["Location"] == "/"
    ann = get_user_model().objects.get(username="ann")
    assert role_of(ann) == "operator"  # the strongest of operator and (engineering) viewer
    assert not ann.has_usable_password() and ann.email == "ann@example.test"
    assert client.get("/").status_code == 200
    (changed,) = events("user.role_changed")
    assert changed.actor_name == "sso"
    assert changed.payload == {"username": "ann", "from": None, "to": "operator", "created": True}
    (signed_in,) = events("auth.sign_in")
    assert signed_in.actor_name == "ann" and signed_in.payload == {"method": "oidc"}


def test_a_group_change_at_the_provider_moves_the_role_at_the_next_sign_in(
    sso_site: Provider,
) -> None:
    assert sso_sign_in(Client(), sso_site, "dora").status_code == 302
    assert role_of(get_user_model().objects.get(username="dora")) == "operator"
    sso_site.set_groups(dora=["dash-approvers"])
    client = Client()
    assert sso_sign_in(client, sso_site, "dora").status_code == 302
    assert role_of(get_user_model().objects.get(username="dora")) == "approver"
    moves = [(e.payload["from"], e.payload["to"]) for e in events("user.role_changed")]
    assert moves == [(None, "operator"), ("operator", "approver")]
    assert client.get("/").status_code == 200


def test_an_admin_group_makes_a_superuser_and_losing_it_does_not_keep_one(
    sso_site: Provider,
) -> None:
    assert sso_sign_in(Client(), sso_site, "bob").status_code == 302
    bob = get_user_model().objects.get(username="bob")
    assert role_of(bob) == "admin" and bob.is_superuser and bob.is_staff
    sso_site.set_groups(bob=["engineering"])
    assert sso_sign_in(Client(), sso_site, "bob").status_code == 302
    bob.refresh_from_db()
    assert not bob.is_superuser and role_of(bob) == "viewer"


def test_no_matching_group_is_refused_with_the_no_role_page(sso_site: Provider) -> None:
    client = Client()
    answer = sso_sign_in(client, sso_site, "carl")
    assert answer.status_code == 403
    assert (
        b"No access" in answer.content and b"no group that gives a dashboard role" in answer.content
    )
    assert not get_user_model().objects.filter(username="carl").exists()
    assert client.get("/").status_code == 302  # no session: back to the sign-in page
    (failed,) = events("auth.sign_in_failed")
    assert failed.payload == {
        "username": "carl",
        "method": "oidc",
        "reason": "no_role",
        "groups": ["marketing"],
    }
    assert events("auth.sign_in") == []


def test_groups_taken_away_at_the_provider_take_the_role_away(sso_site: Provider) -> None:
    assert sso_sign_in(Client(), sso_site, "frank").status_code == 302
    sso_site.set_groups(frank=["marketing"])
    assert sso_sign_in(Client(), sso_site, "frank").status_code == 403
    assert role_of(get_user_model().objects.get(username="frank")) is None
    moves = [(e.payload["from"], e.payload["to"]) for e in events("user.role_changed")]
    assert moves == [(None, "viewer"), ("viewer", None)]


def test_a_tampered_state_is_refused(sso_site: Provider) -> None:
    client = Client()
    callback = provider_sign_in(requests.Session(), start(client), "gus")
    parts = urlsplit(callback)
    query = parse_qs(parts.query)
    forged = urlencode({"code": query["code"][0], "state": query["state"][0][:-1] + "x"})
    answer = come_back(client, f"{CALLBACK}?{forged}")
    assert answer.status_code == 400
    assert b"state matches no sign-in this browser started" in answer.content
    assert not get_user_model().objects.filter(username="gus").exists()
    (failed,) = events("auth.sign_in_failed")
    assert failed.payload["reason"] == "state" and failed.payload["username"] == "(sso)"
    # Another browser's callback (no sign-in started there) is refused too.
    answer = come_back(Client(), callback)
    assert answer.status_code == 400 and not get_user_model().objects.filter(username="gus")


def test_an_expired_id_token_is_refused(sso_site: Provider) -> None:
    # The provider signs eve's ID tokens with an exp two minutes in the past.
    answer = sso_sign_in(Client(), sso_site, "eve")
    assert answer.status_code == 400 and b"ID token has expired" in answer.content
    assert not get_user_model().objects.filter(username="eve").exists()
    (failed,) = events("auth.sign_in_failed")
    assert failed.payload["reason"] == "token_expired"


def test_a_replayed_code_is_refused_by_the_provider(sso_site: Provider) -> None:
    first = Client()
    callback = provider_sign_in(requests.Session(), start(first), "hal")
    assert come_back(first, callback).status_code == 302
    code = parse_qs(urlsplit(callback).query)["code"][0]
    # An attacker's own browser: a state of its own, but hal's used code.
    attacker = Client()
    state = parse_qs(urlsplit(start(attacker)).query)["state"][0]
    answer = come_back(attacker, f"{CALLBACK}?{urlencode({'code': code, 'state': state})}")
    assert answer.status_code == 400 and b"refused the code" in answer.content
    assert attacker.get("/").status_code == 302
    (failed,) = events("auth.sign_in_failed")
    assert failed.payload["reason"] == "token_refused"
    assert b"refused the code" in answer.content and code.encode() not in answer.content


def test_sign_out_ends_the_session_and_the_providers(sso_site: Provider) -> None:
    client = Client()
    browser = requests.Session()
    callback = provider_sign_in(browser, start(client), "ivy")
    assert come_back(client, callback).status_code == 302
    answer = client.post("/accounts/logout/")
    assert answer.status_code == 200
    assert client.get("/").status_code == 302
    assert [e.actor_name for e in events("auth.sign_out")] == ["ivy"]
    end_session = answer.context["end_session"]
    assert end_session.startswith(sso_site.issuer + "/logout/")
    assert "id_token_hint=" in end_session
    left = browser.get(end_session, allow_redirects=False, timeout=10)
    assert left.status_code == 302 and left.headers["Location"].startswith(
        "http://testserver/accounts/login/"
    )
    # The provider's own session is over: a new sign-in asks for the password again.
    again = browser.get(start(Client()), allow_redirects=False, timeout=10)
    assert again.status_code == 302 and "/accounts/login/" in again.headers["Location"]


def test_the_sign_in_page_offers_the_provider_beside_the_password_form(sso_site: Provider) -> None:
    page = Client().get("/accounts/login/?next=/audit/")
    assert b"Sign in with Test IdP" in page.content
    assert b"/accounts/sso/start/?next=/audit/" in page.content
    assert b'name="password"' in page.content


def test_without_local_accounts_passwords_are_refused_everywhere(
    sso_site: Provider, settings: Any, tmp_path: Path
) -> None:
    users.user_set_role(username="root", role="admin", password="correct-horse-9")
    write_sso_config(Path(settings.DASHBOARD_CONFIG), sso_site, "local_accounts = false")
    page = Client().get("/accounts/login/")
    assert b"Sign in with Test IdP" in page.content and b'name="password"' not in page.content
    client = Client()
    refused = client.post("/accounts/login/", {"username": "root", "password": "correct-horse-9"})
    assert refused.status_code == 403 and b"Password sign-in is turned off" in refused.content
    client.post("/admin/login/?next=/admin/", {"username": "root", "password": "correct-horse-9"})
    assert "_auth_user_id" not in client.session
    assert authenticate(None, username="root", password="correct-horse-9") is None
    assert client.get("/").status_code == 302
    # A session opened with a password before ends at its next request.
    client.force_login(get_user_model().objects.get(username="root"))
    assert client.get("/").status_code == 302


def test_a_provider_that_is_away_gives_a_clear_page_and_passwords_still_work(
    sso_site: Provider, settings: Any
) -> None:
    away = f"http://127.0.0.1:{free_port()}/o"
    write_sso_config(Path(settings.DASHBOARD_CONFIG), sso_site, issuer=away)
    forget_discovery()
    answer = Client().get("/accounts/sso/start/")
    assert answer.status_code == 503 and b"Test IdP is unavailable" in answer.content
    assert Client().get("/accounts/login/").status_code == 200


def test_the_client_secret_never_reaches_alembic(sso_site: Provider, settings: Any) -> None:
    config = load_config(settings.DASHBOARD_CONFIG)
    env = Environment(name="dev", project="blog", url_env="DEV_URL")
    assert SECRET_ENV in replay_secrets(config)
    assert SECRET_ENV in child_secrets(config, env)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('client_id = "x"\nclient_secret_env = "S"\nroles = {viewer = ["a"]}', "needs issuer"),
        (
            'issuer = "https://idp"\nclient_id = "x"\nclient_secret_env = "hunter2!"\n'
            'roles = {viewer = ["a"]}',
            "never the secret itself",
        ),
        (
            'issuer = "https://idp"\nclient_id = "x"\nclient_secret_env = "S"\n'
            'roles = {root = ["a"]}',
            "unknown role 'root'",
        ),
        (
            'issuer = "https://idp"\nclient_id = "x"\nclient_secret_env = "S"\n'
            'roles = {viewer = ["a"]}\nsign_algorithm = "HS256"',
            "sign_algorithm must be one of",
        ),
        (
            'issuer = "https://idp"\nclient_id = "x"\nclient_secret_env = "S"\n'
            'roles = {viewer = ["a"]}\nlocal_accounts = "no"',
            "local_accounts must be true or false",
        ),
        ('issuer = "https://idp"\nclient_id = "x"\nclient_secret_env = "S"', "roles must be"),
        (
            'issuer = "https://idp"\nclient_id = "x"\nclient_secret_env = "S"\n'
            'roles = {viewer = ["a"]}\nsession_refresh = 0',
            "session_refresh must be 1 to 86400 seconds",
        ),
    ],
)
def test_a_bad_sso_table_names_the_key(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "dashboard.toml"
    path.write_text(f"[sso]\n{table}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_provider_user_never_takes_over_or_demotes_a_local_account_of_its_name(
    sso_site: Provider,
) -> None:
    users.user_set_role(username="root", role="admin", password="correct-horse-9")
    users.user_set_role(username="opal", role="approver")  # no usable password
    sso_site.set_groups(root=["dash-viewers"], Opal=["marketing"])
    client = Client()
    answer = sso_sign_in(client, sso_site, "root")
    assert answer.status_code == 403
    assert b"An account named root already exists here" in answer.content
    assert b"ask a dashboard admin" in answer.content
    assert "_auth_user_id" not in client.session
    # A case variant of a name, with no role at the provider, is refused before any role change.
    assert sso_sign_in(Client(), sso_site, "Opal").status_code == 403
    root = get_user_model().objects.get(username="root")
    assert role_of(root) == "admin" and root.is_superuser
    assert authenticate(None, username="root", password="correct-horse-9") == root
    assert role_of(get_user_model().objects.get(username="opal")) == "approver"
    assert not get_user_model().objects.filter(username="Opal").exists()
    assert [
        (e.payload["username"], e.payload["reason"]) for e in events("auth.sign_in_failed")
    ] == [
        ("root", "name_taken"),
        ("Opal", "name_taken"),
    ]
    assert [e.payload["to"] for e in events("user.role_changed")] == ["admin", "approver"]


def test_the_account_follows_the_providers_subject_not_the_name(sso_site: Provider) -> None:
    sso_site.set_groups(jay=["dash-viewers"])
    assert sso_sign_in(Client(), sso_site, "jay").status_code == 302
    jay = get_user_model().objects.get(username="jay")
    (link,) = SSOIdentity.objects.filter(user=jay)
    assert link.issuer == sso_site.issuer and link.subject
    get_user_model().objects.filter(pk=jay.pk).update(username="jay.renamed")
    client = Client()
    assert sso_sign_in(client, sso_site, "jay").status_code == 302
    assert client.session["_auth_user_id"] == str(jay.pk)
    assert not get_user_model().objects.filter(username="jay").exists()


def test_callbacks_without_this_browsers_state_never_lock_sign_in_out(sso_site: Provider) -> None:
    attacker = Client()
    for _ in range(6):  # as an <img> on any web page can make a browser fetch them
        assert attacker.get("/accounts/sso/callback/?error=x").status_code == 400
        assert attacker.get("/accounts/sso/callback/?code=x&state=y").status_code == 400
    sso_site.set_groups(kit=["dash-viewers"])
    victim = Client()
    answer = sso_sign_in(victim, sso_site, "kit")
    assert answer.status_code == 302 and victim.get("/").status_code == 200
    assert events("auth.sign_in_throttled") == []


def test_a_stray_error_answer_leaves_the_session_signed_in(sso_site: Provider) -> None:
    sso_site.set_groups(lou=["dash-viewers"])
    client = Client()
    assert sso_sign_in(client, sso_site, "lou").status_code == 302
    answer = client.get("/accounts/sso/callback/?error=access_denied")
    assert answer.status_code == 400 and b"Test IdP answered access_denied" in answer.content
    assert client.get("/").status_code == 200
    # The provider's error for a sign-in this browser started does end the session.
    state = parse_qs(urlsplit(start(client)).query)["state"][0]
    answer = client.get("/accounts/sso/callback/?" + urlencode({"error": "x", "state": state}))
    assert answer.status_code == 400 and client.get("/").status_code == 302


class BrokenProvider(BaseHTTPRequestHandler):
    """A provider whose token endpoint answers 200 with whatever the test sets."""

    token_body = b"[]"

    def log_message(self, *args: Any) -> None:
        pass  # quiet in the test output

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        base = f"http://127.0.0.1:{self.server.server_port}"
        endpoints = {"authorization_endpoint": "/auth", "token_endpoint": "/token"}
        document = {"issuer": base, "jwks_uri": base + "/jwks"}
        document.update({key: base + path for key, path in endpoints.items()})
        self._send(json.dumps(document).encode() if "well-known" in self.path else b'{"keys":[]}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(self.token_body)


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"null", b'{"id_token": 5}', b'{"a": 1}'])
def test_a_token_answer_that_is_no_object_is_refused_not_a_500(
    settings: Any, tmp_path: Path, monkeypatch: Any, body: bytes
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BrokenProvider)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    BrokenProvider.token_body = body
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    config = tmp_path / "dashboard.toml"
    issuer = f"http://127.0.0.1:{server.server_port}"
    config.write_text(
        f'[sso]\nissuer = "{issuer}"\nclient_id = "c"\nclient_secret_env = "{SECRET_ENV}"\n'
        + ROLES,
        encoding="utf-8",
    )
    settings.DASHBOARD_CONFIG = str(config)
    forget_discovery()
    try:
        client = Client(raise_request_exception=False)
        state = parse_qs(urlsplit(start(client)).query)["state"][0]
        answer = client.get("/accounts/sso/callback/?" + urlencode({"code": "x", "state": state}))
    finally:
        server.shutdown()
        server.server_close()
    assert answer.status_code == 400 and b"answer was refused" in answer.content
    (failed,) = events("auth.sign_in_failed")
    assert failed.payload["reason"] == "token_invalid"


def test_a_role_taken_away_at_the_provider_ends_within_session_refresh(
    sso_site: Provider, settings: Any
) -> None:
    write_sso_config(Path(settings.DASHBOARD_CONFIG), sso_site, "session_refresh = 1")
    sso_site.set_groups(mia=["dash-operators"])
    client = Client()
    browser = requests.Session()
    assert come_back(client, provider_sign_in(browser, start(client), "mia")).status_code == 302
    assert client.get("/audit/").status_code == 200
    time.sleep(1.2)
    # An htmx fetch or a POST cannot go through the provider: htmx is told to reload the page.
    polled = client.get("/", headers={"HX-Request": "true"})
    assert polled.status_code == 403 and polled["HX-Refresh"] == "true"
    assert client.post("/").status_code == 403
    # Still in the group: the page's GET goes through the provider (no password) and back.
    renew = client.get("/audit/")
    assert renew.status_code == 302 and "prompt=none" in renew["Location"]
    back = come_back(client, provider_sign_in(browser, renew["Location"], "mia"))
    assert back.status_code == 302 and back["Location"] == "/audit/"
    assert client.get("/audit/").status_code == 200
    sso_site.set_groups(mia=["marketing"])
    time.sleep(1.2)
    renew = client.get("/audit/")
    answer = come_back(client, provider_sign_in(browser, renew["Location"], "mia"))
    assert answer.status_code == 403 and b"no group that gives a dashboard role" in answer.content
    assert client.get("/audit/").status_code == 302
    assert role_of(get_user_model().objects.get(username="mia")) is None
    # Password sessions are never sent to the provider.
    users.user_set_role(username="pam", role="viewer", password="correct-horse-9")
    local = Client()
    assert local.login(username="pam", password="correct-horse-9")
    time.sleep(1.2)
    assert local.get("/").status_code == 200


def test_callbacks_from_a_browser_that_started_no_sign_in_add_no_audit_rows(
    sso_site: Provider,
) -> None:
    stranger = Client()
    for _ in range(30):
        assert stranger.get("/accounts/sso/callback/?code=x&state=y").status_code == 400
        assert stranger.get("/accounts/sso/callback/?error=x").status_code == 400
    # The append-only trail is no sink for anyone's requests: nothing of these is kept.
    assert events("auth.sign_in_failed") == [] and events("auth.sign_in_throttled") == []


def test_repeated_foreign_states_end_in_one_block_with_one_event(
    sso_site: Provider, settings: Any
) -> None:
    settings.DASHBOARD_SIGNIN_ADDRESS_MAX_FAILURES = 3
    client = Client()
    start(client)  # this browser started a sign-in, so answers to it are audited and counted
    answers = [
        client.get("/accounts/sso/callback/?code=x&state=forged").status_code for _ in range(12)
    ]
    assert answers[:3] == [400, 400, 400] and set(answers[3:]) == {429}
    assert len(events("auth.sign_in_failed")) == 3
    assert len(events("auth.sign_in_throttled")) == 1


def test_a_signed_in_browser_opening_stray_callbacks_adds_no_audit_rows(
    sso_site: Provider,
) -> None:
    sso_site.set_groups(rex=["dash-viewers"])
    client = Client()
    assert sso_sign_in(client, sso_site, "rex").status_code == 302
    # Its sign-in is over (the library leaves an empty dict of states): a page it visits that
    # opens callbacks in a popup is a stranger's request, and counts for nothing.
    for _ in range(30):
        assert client.get("/accounts/sso/callback/?state=x").status_code == 400
        assert client.get("/accounts/sso/callback/?error=x").status_code == 400
    assert events("auth.sign_in_failed") == [] and events("auth.sign_in_throttled") == []
    assert client.get("/").status_code == 200


def test_the_api_answers_json_to_a_session_due_for_renewal_and_takes_tokens(
    sso_site: Provider, settings: Any
) -> None:
    write_sso_config(Path(settings.DASHBOARD_CONFIG), sso_site, "session_refresh = 1")
    sso_site.set_groups(sue=["dash-viewers"])
    client = Client()
    assert sso_sign_in(client, sso_site, "sue").status_code == 302
    assert client.get("/api/environments").status_code == 200
    time.sleep(1.2)
    stale = client.get("/api/environments")
    assert stale.status_code == 401 and "renewing" in stale.json()["error"]
    key = tokens.token_create(username="sue")
    auth = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/environments", headers=auth).status_code == 200
