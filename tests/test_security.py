"""Security: who may reach which URL, CSRF, the CSP, escaping, and sign-in throttling."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.http import HttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from dashboard import audit
from dashboard.config import current_config
from dashboard.models import Action, Approval, AuditEvent, Rollout, SignInThrottle
from dashboard.roles import role_of
from dashboard.services import rollouts, signin, status, tokens, users, workers
from dashboard.services.actions import pinning as plans
from tests.statusenv import HEAD, MID, SAMPLE, empty_sqlite, write_config, write_versions

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-9"
ROLES = ("anonymous", "viewer", "operator", "approver", "admin")
PEOPLE = {"viewer": "vera", "operator": "olga", "approver": "abe", "admin": "root"}
LOGIN = "/accounts/login/"

# Every URL pattern × method × role, and what it answers. "302 /x" is a redirect whose Location
# starts with /x ("302 /" is exactly /; {pk} is the action the request was about). A pattern
# missing here fails the completeness test, so a new URL cannot be forgotten.
SIGN_IN = "302 /accounts/login/"  # pages send strangers to the login page (the API: 401 JSON)
ADMIN_SIGN_IN = "302 /admin/login/"
BACK = "302 /actions/{pk}/"  # a decision redirects to the action's page
STAGING = "302 /environments/staging"
GRAPH = "302 /projects/blog/graph"
TENANTS = "302 /fleets/tenants"
ROLLOUT = "302 /rollouts/{pk}"  # a rollout's decision or control redirects to its page
ALL_405 = ("405",) * 5
FAVICON = "302 /static/dashboard/favicon.svg"
MATRIX: dict[tuple[str, str], tuple[str, ...]] = {
    # url name                  method   anonymous      viewer         operator       approver       admin
    ("overview",                "GET"):  (SIGN_IN,       "200",         "200",         "200",         "200"),
    ("overview",                "POST"): (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("healthz",                 "GET"):  ("200",         "200",         "200",         "200",         "200"),
    ("healthz",                 "POST"): ALL_405,
    # A worker beats on this site (see site()); without one it is 503, for everyone alike.
    ("readyz",                  "GET"):  ("200",         "200",         "200",         "200",         "200"),
    ("readyz",                  "POST"): ALL_405,
    ("overview-refresh",        "GET"):  (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("overview-refresh",        "POST"): (SIGN_IN,       "302 /",       "302 /",       "302 /",       "302 /"),
    ("environment",             "GET"):  (SIGN_IN,       "200",         "200",         "200",         "200"),
    ("environment",             "POST"): (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("environment-refresh",     "GET"):  (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("environment-refresh",     "POST"): (SIGN_IN,       STAGING,       STAGING,       STAGING,       STAGING),
    # The schema section is an htmx region: without htmx it sends the browser to its page.
    ("environment-schema",      "GET"):  (SIGN_IN,       STAGING,       STAGING,       STAGING,       STAGING),
    ("environment-schema",      "POST"): (SIGN_IN,       "405",         "405",         "405",         "405"),
    # So is the pending check's progress line that polls.
    ("environment-schema-progress", "GET"):  (SIGN_IN,   STAGING,       STAGING,       STAGING,       STAGING),
    ("environment-schema-progress", "POST"): (SIGN_IN,   "405",         "405",         "405",         "405"),
    # Asking for a schema check now is for operators and above.
    ("environment-schema-check", "GET"): (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("environment-schema-check", "POST"): (SIGN_IN,      "403",         STAGING,       STAGING,       STAGING),
    ("api-environments",        "GET"):  ("401",         "200",         "200",         "200",         "200"),
    ("api-environments",        "POST"): ALL_405,  # the API is read-only for everyone
    ("api-environment",         "GET"):  ("401",         "200",         "200",         "200",         "200"),
    ("api-environment",         "POST"): ALL_405,
    # Prometheus: a token, a role's session, or an address in METRICS_ALLOWED_CIDRS (none here).
    ("metrics",                 "GET"):  ("401",         "200",         "200",         "200",         "200"),
    ("metrics",                 "POST"): ALL_405,
    # Reading a whole fleet now is for operators and above.
    ("fleet",                   "GET"):  (SIGN_IN,       "200",         "200",         "200",         "200"),
    ("fleet",                   "POST"): (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("fleet-refresh",           "GET"):  (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("fleet-refresh",           "POST"): (SIGN_IN,       "403",         TENANTS,       TENANTS,       TENANTS),
    ("api-fleet",               "GET"):  ("401",         "200",         "200",         "200",         "200"),
    ("api-fleet",               "POST"): ALL_405,
    ("action-list",             "GET"):  (SIGN_IN,       "200",         "200",         "200",         "200"),
    ("action-list",             "POST"): (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("action-detail",           "GET"):  (SIGN_IN,       "200",         "200",         "200",         "200"),
    ("action-detail",           "POST"): (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("api-action",              "GET"):  ("401",         "200",         "200",         "200",         "200"),
    ("api-action",              "POST"): ALL_405,
    ("action-progress",         "GET"):  (SIGN_IN,       "200",         "200",         "200",         "200"),
    ("action-progress",         "POST"): (SIGN_IN,       "405",         "405",         "405",         "405"),
    # The operator requested every action here: a role refusal and a self-approval are both 403.
    ("action-approve",          "GET"):  (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("action-approve",          "POST"): (SIGN_IN,       "403",         "403",         BACK,          BACK),
    ("action-reject",           "GET"):  (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("action-reject",           "POST"): (SIGN_IN,       "403",         "403",         BACK,          BACK),
    # Only the requester (the operator) or an admin may cancel.
    ("action-cancel",           "GET"):  (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("action-cancel",           "POST"): (SIGN_IN,       "403",         BACK,          "403",         BACK),
    # The form page answers 403, without a form, to those who may not request.
    ("action-request",          "GET"):  (SIGN_IN,       "403",         "200",         "403",         "200"),
    ("action-request",          "POST"): (SIGN_IN,       "403",         "302 /actions/", "403",       "302 /actions/"),
    ("rollout-list",            "GET"):  (SIGN_IN,       "200",         "200",         "200",         "200"),
    ("rollout-list",            "POST"): (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("rollout-detail",          "GET"):  (SIGN_IN,       "200",         "200",         "200",         "200"),
    ("rollout-detail",          "POST"): (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("rollout-live",            "GET"):  (SIGN_IN,       "200",         "200",         "200",         "200"),
    ("rollout-live",            "POST"): (SIGN_IN,       "405",         "405",         "405",         "405"),
    # The operator requested every rollout here; approving and rejecting are for approvers.
    ("rollout-approve",         "GET"):  (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("rollout-approve",         "POST"): (SIGN_IN,       "403",         "403",         ROLLOUT,       ROLLOUT),
    ("rollout-reject",          "GET"):  (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("rollout-reject",          "POST"): (SIGN_IN,       "403",         "403",         ROLLOUT,       ROLLOUT),
    # Steering a rollout is for every role but the viewer (a running one pauses, a paused one
    # resumes, any open one cancels).
    ("rollout-pause",           "GET"):  (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("rollout-pause",           "POST"): (SIGN_IN,       "403",         ROLLOUT,       ROLLOUT,       ROLLOUT),
    ("rollout-resume",          "GET"):  (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("rollout-resume",          "POST"): (SIGN_IN,       "403",         ROLLOUT,       ROLLOUT,       ROLLOUT),
    ("rollout-cancel",          "GET"):  (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("rollout-cancel",          "POST"): (SIGN_IN,       "403",         ROLLOUT,       ROLLOUT,       ROLLOUT),
    # Like the action form: 403, without a form, to those who may not request.
    ("rollout-request",         "GET"):  (SIGN_IN,       "403",         "200",         "403",         "200"),
    ("rollout-request",         "POST"): (SIGN_IN,       "403",         "302 /rollouts/", "403",      "302 /rollouts/"),
    ("api-rollouts",            "GET"):  ("401",         "200",         "200",         "200",         "200"),
    ("api-rollouts",            "POST"): ALL_405,
    ("api-rollout",             "GET"):  ("401",         "200",         "200",         "200",         "200"),
    ("api-rollout",             "POST"): ALL_405,
    ("audit",                   "GET"):  (SIGN_IN,       "200",         "200",         "200",         "200"),
    ("audit",                   "POST"): (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("audit-export",            "GET"):  (SIGN_IN,       "200",         "200",         "200",         "200"),
    ("audit-export",            "POST"): (SIGN_IN,       "405",         "405",         "405",         "405"),
    # Deliveries name receivers and their variables: for admins only.
    ("notifications",           "GET"):  (SIGN_IN,       "403",         "403",         "403",         "200"),
    ("notifications",           "POST"): (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("graph-index",             "GET"):  (SIGN_IN,       GRAPH,         GRAPH,         GRAPH,         GRAPH),
    ("graph-index",             "POST"): (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("graph",                   "GET"):  (SIGN_IN,       "200",         "200",         "200",         "200"),
    ("graph",                   "POST"): (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("revision",                "GET"):  (SIGN_IN,       "200",         "200",         "200",         "200"),
    ("revision",                "POST"): (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("api-graph",               "GET"):  ("401",         "200",         "200",         "200",         "200"),
    ("api-graph",               "POST"): ALL_405,
    # Signed-in users are sent on to the overview; a wrong password shows the form again.
    ("login",                   "GET"):  ("200",         "302 /",       "302 /",       "302 /",       "302 /"),
    ("login",                   "POST"): ("200",         "302 /",       "302 /",       "302 /",       "302 /"),
    ("logout",                  "GET"):  (SIGN_IN,       "405",         "405",         "405",         "405"),
    ("logout",                  "POST"): (SIGN_IN,       SIGN_IN,       SIGN_IN,       SIGN_IN,       SIGN_IN),
    # Single sign-on's start and callback need no session; without an [sso] table they are 404.
    ("sso-start",               "GET"):  ("404",         "404",         "404",         "404",         "404"),
    ("sso-start",               "POST"): ALL_405,
    ("sso-callback",            "GET"):  ("404",         "404",         "404",         "404",         "404"),
    ("sso-callback",            "POST"): ALL_405,
    # Django's admin site: only the admin role is staff; the rest go to the admin's own sign-in.
    ("admin:index",             "GET"):  (ADMIN_SIGN_IN, ADMIN_SIGN_IN, ADMIN_SIGN_IN, ADMIN_SIGN_IN, "200"),
    ("admin:index",             "POST"): (ADMIN_SIGN_IN, ADMIN_SIGN_IN, ADMIN_SIGN_IN, ADMIN_SIGN_IN, "200"),
    # Browsers ask for /favicon.ico before any sign-in.
    ("favicon",                 "GET"):  (FAVICON,       FAVICON,       FAVICON,       FAVICON,       FAVICON),
    ("favicon",                 "POST"): ALL_405,
}  # fmt: skip

# A signed-in account in no role group: refused everywhere (pages 403 with the no-role page, the
# API 403 JSON) except signing in and out, the health check and the favicon.
NO_ROLE_REACHES = {"healthz", "readyz", "favicon", "login", "logout", "sso-start", "sso-callback"}

# What each POST carries: everything a real form would send, so the answer is the decision's.
BODIES: dict[str, Callable[[Any], dict[str, str]]] = {
    "action-approve": lambda action: {"plan_hash": action.plan_hash if action else "", "comment": "ok"},
    "action-reject": lambda action: {"reason": "not now"},
    "action-request": lambda action: {"direction": "upgrade", "target": "heads", "reason": "ship"},
    "rollout-approve": lambda rollout: {"rollout_hash": rollout.rollout_hash, "comment": "ok"},
    "rollout-reject": lambda rollout: {"comment": "not now"},
    "rollout-request": lambda rollout: {
        "direction": "upgrade", "target": "heads", "members": "*", "reason": "ship"
    },
    "login": lambda action: {"username": "nobody", "password": "wrong-password"},
}  # fmt: skip

# What each GET needs beyond its path to be a complete request.
QUERIES = {"audit-export": "?format=csv"}

# The state each rollout route's fresh rollout is in, so that its control is one that applies.
ROLLOUT_STATES = {"rollout-pause": Rollout.Status.RUNNING, "rollout-resume": Rollout.Status.PAUSED}


@dataclass
class Site:
    """The configured dashboard the security tests walk: users, an environment, a project."""

    people: dict[str, Any]
    fingerprint: str
    requested: Rollout  # the operator's rollout of the tenants fleet to heads, SQL rendered
    clients: dict[str, Client] = field(default_factory=dict)

    def client(self, role: str, *, csrf: bool = False) -> Client:
        """Return a client of this role, signed in again if a logout ended its session."""
        key = f"{role}-{csrf}"
        client = self.clients.setdefault(key, Client(enforce_csrf_checks=csrf))
        if role != "anonymous" and "_auth_user_id" not in client.session:
            client.force_login(self.people[PEOPLE[role]])
        return client

    def action(self, **fields: Any) -> Action:
        """Create a requested action of the operator's, prepared for review."""
        operator = self.people["olga"]
        values: dict[str, Any] = {
            "environment": "staging",
            "project": "blog",
            "direction": "upgrade",
            "target": "heads",
            "from_heads": [MID],
            "target_heads": [HEAD],
            "plan": ["e0d7f4a19b53", "7a3c2e8b5f01", "1d6b9f0c4e27", "9e4f1b7a2c68", HEAD],
            "sql": "CREATE TABLE votes (id INTEGER NOT NULL);\n",
            "sql_sha256": "0" * 64,
            "fingerprint": self.fingerprint,
            "plan_hash": "a1" * 32,
            "approvals_required": 1,
            "requested_by": operator,
            "requested_by_name": operator.username,
            "reason": "ship the votes table",
            "prepared_at": timezone.now(),
        }
        values.update(fields)
        return Action.objects.create(**values)

    def rollout(self, state: str = Rollout.Status.REQUESTED) -> Rollout:
        """Copy the requested rollout as a fresh one; approve (and pause) it to reach a state."""
        fields = {
            f.attname: getattr(self.requested, f.attname)
            for f in Rollout._meta.concrete_fields
            if not f.primary_key
        }
        rollout = Rollout.objects.create(**fields)
        if state in (Rollout.Status.RUNNING, Rollout.Status.PAUSED):
            rollout = rollouts.rollout_approve(
                user=self.people["abe"], rollout_id=rollout.pk, rollout_hash=rollout.rollout_hash
            )
        if state == Rollout.Status.PAUSED:
            rollout = rollouts.rollout_pause(user=self.people["olga"], rollout_id=rollout.pk)
        rollout.refresh_from_db()
        assert rollout.status == state, rollout
        return rollout


@pytest.fixture
def site(settings: Any, tmp_path: Path) -> Site:
    """Configure the sample project with staging behind it, one user per role, one reading."""
    url = empty_sqlite(tmp_path / "staging.db")
    write_versions(url, [MID])
    config = write_config(
        tmp_path / "dashboard.toml",
        {"staging": {"project": "blog", "url": url, "approvals_required": 1}},
    )
    # A fleet of one member, readable and behind, so the fleet and rollout pages answer with a
    # real fleet and a rollout to heads can be requested.
    write_versions(empty_sqlite(tmp_path / "tenant-acme.db"), [MID])
    template = f"sqlite:///{tmp_path}/tenant-{{name}}.db"
    fleet = (
        f'project = "blog"\nurl_template = "{template}"\nnames = ["acme"]\napprovals_required = 1\n'
    )
    config.write_text(f"{config.read_text()}\n[fleets.tenants]\n{fleet}")
    settings.DASHBOARD_CONFIG = str(config)
    for role, name in PEOPLE.items():
        users.user_set_role(username=name, role=role, password=PASSWORD)
    people = {u.username: u for u in get_user_model().objects.all()}
    status.status_refresh()
    workers.worker_beat_record(name="security:1", started_at=timezone.now())
    fingerprint = plans.current_fingerprint(current_config().projects["blog"])
    requested = rollouts.rollout_request(
        user=people["olga"], fleet="tenants", direction="upgrade", target="heads",
        reason="ship the votes table", prepare=True,
    )  # fmt: skip
    assert requested.status == Rollout.Status.REQUESTED, requested.error
    return Site(people=people, fingerprint=fingerprint, requested=requested)


def url_patterns() -> Iterator[tuple[str, URLPattern]]:
    """Yield every URL pattern by name: the admin's index only, never its inner pages."""

    def walk(patterns: list[Any], namespace: str) -> Iterator[tuple[str, URLPattern]]:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                if pattern.namespace == "admin":
                    yield from (
                        (f"admin:{p.name}", p)
                        for p in pattern.url_patterns
                        if isinstance(p, URLPattern) and p.name == "index"
                    )
                    continue
                inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
                yield from walk(pattern.url_patterns, inner)
            elif pattern.callback.__module__.startswith(
                ("django.views.static", "django.contrib.staticfiles")
            ):
                continue  # static files, served by whitenoise in production
            else:
                assert pattern.name, f"URL pattern {pattern.pattern} has no name"
                yield f"{namespace}{pattern.name}", pattern

    yield from walk(get_resolver().url_patterns, "")


def concrete_url(key: str, pattern: URLPattern, site: Site) -> tuple[str, Action | Rollout | None]:
    """Fill the pattern's converters with real objects; a fresh action or rollout for each `pk`."""
    route = str(pattern.pattern)
    kwargs: dict[str, Any] = {}
    action: Action | Rollout | None = None
    for param in pattern.pattern.converters:
        if param == "pk" and route.startswith("rollouts/"):
            action = site.rollout(ROLLOUT_STATES.get(key, Rollout.Status.REQUESTED))
            kwargs[param] = action.pk
        elif param == "pk":
            action = site.action()
            kwargs[param] = action.pk
        elif param == "rollout_id":
            kwargs[param] = str(site.requested.pk)
        elif param == "action_id":
            action = site.action()
            kwargs[param] = str(action.pk)
        elif param == "name" and route.startswith(("fleets/", "api/fleets/")):
            kwargs[param] = "tenants"
        elif param == "name":
            kwargs[param] = (
                "blog" if route.startswith(("projects/", "api/projects/")) else "staging"
            )
        elif param == "rev":
            kwargs[param] = MID
        else:
            raise AssertionError(f"{key}: no test object for the path converter {param!r}")
    return reverse(key, kwargs=kwargs) + QUERIES.get(key, ""), action


def outcome(response: HttpResponse) -> str:
    """Describe a response as the matrix does."""
    if response.status_code in (301, 302):
        return f"{response.status_code} {response['Location']}"
    return str(response.status_code)


def matches(expected: str, actual: str, action: Action | Rollout | None) -> bool:
    """Say whether an actual outcome is the expected one (a redirect's target by prefix)."""
    if action is not None:
        expected = expected.replace("{pk}", str(action.pk))
    status, _, where = expected.partition(" ")
    got_status, _, got_where = actual.partition(" ")
    if status != got_status:
        return False
    if where == "/":
        return got_where == "/"
    return got_where.startswith(where)


def request(
    site: Site, role: str, method: str, key: str, pattern: URLPattern
) -> tuple[HttpResponse, Action | Rollout | None]:
    """Send one request of the matrix, with the body a real form would send."""
    url, action = concrete_url(key, pattern, site)
    client = site.client(role)
    if method == "GET":
        return client.get(url), action
    if key in ("action-request", "rollout-request"):
        # A request beside unfinished ones is refused (test_superseding.py), and a member with
        # one is left out of a rollout (running rollouts here have some): start from none.
        Action.objects.filter(status__in=Action.ACTIVE).update(status=Action.Status.CANCELLED)
    body = BODIES[key](action) if key in BODIES else {}
    return client.post(url, body), action


def test_the_matrix_names_every_url_pattern_and_nothing_else() -> None:
    found = {key for key, _pattern in url_patterns()}
    listed = {key for key, _method in MATRIX}
    assert found - listed == set(), "URL patterns the permission matrix does not mention"
    assert listed - found == set(), "matrix rows whose URL pattern no longer exists"
    for key in found:
        assert {m for k, m in MATRIX if k == key} == {"GET", "POST"}, key


def test_every_url_answers_every_role_and_method_as_the_matrix_says(site: Site) -> None:
    wrong = []
    count = 0
    for key, pattern in url_patterns():
        for method in ("GET", "POST"):
            for role, expected in zip(ROLES, MATRIX[key, method], strict=True):
                response, action = request(site, role, method, key, pattern)
                count += 1
                actual = outcome(response)
                assert response.status_code < 500, f"{method} {key} as {role}: {actual}"
                if not matches(expected, actual, action):
                    wrong.append(f"{method} {key} as {role}: expected {expected}, got {actual}")
                if key.startswith("api-") and response.status_code != 200:
                    assert response["Content-Type"] == "application/json", key
                    assert "error" in response.json()
    assert wrong == [], "\n".join(wrong)
    assert count == len(MATRIX) * len(ROLES)


def test_a_signed_in_account_without_a_role_reaches_nothing_but_sign_in_and_out(
    site: Site,
) -> None:
    nobody = get_user_model().objects.create_user("nora", password=PASSWORD)
    assert role_of(nobody) is None
    wrong = []
    for key, pattern in url_patterns():
        for method in ("GET", "POST"):
            url, action = concrete_url(key, pattern, site)
            client = Client()
            client.force_login(nobody)
            if method == "GET":
                response = client.get(url)
            else:
                response = client.post(url, BODIES[key](action) if key in BODIES else {})
            actual = outcome(response)
            assert response.status_code < 500, f"{method} {key}: {actual}"
            if key in NO_ROLE_REACHES:
                # The same answer a viewer gets (a viewer signed in is sent on, like nora).
                expected = MATRIX[key, method][ROLES.index("viewer")]
                if not matches(expected, actual, action):
                    wrong.append(f"{method} {key}: expected {expected}, got {actual}")
                continue
            # The API and /metrics are read-only for everyone: a POST is refused before who sent
            # it counts.
            read_only = key.startswith("api-") or key == "metrics"
            expected = "405" if read_only and method == "POST" else "403"
            if actual != expected:
                wrong.append(f"{method} {key}: expected {expected}, got {actual}")
            elif expected == "405":
                continue
            elif key.startswith("api-"):
                assert response["Content-Type"] == "application/json", key
                assert "your account has no role" in response.json()["error"], key
            elif key == "metrics":  # a scraper reads plain text
                assert "your account has no role" in response.content.decode(), key
            else:
                text = response.content.decode()
                assert "Your account has no role" in text, key
                assert "manage.py adduser nora --role viewer" in text, key
    assert wrong == [], "\n".join(wrong)
    # Nothing was decided or requested on nora's behalf.
    assert not Approval.objects.filter(username="nora").exists()
    assert not Action.objects.filter(requested_by_name="nora").exists()


def test_a_token_of_an_account_without_a_role_reads_no_api(site: Site) -> None:
    get_user_model().objects.create_user("nora", password=PASSWORD)
    key = tokens.token_create(username="nora", name="ci")
    response = Client().get("/api/environments", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 403
    assert "your account has no role" in response.json()["error"]


def test_the_matrix_decisions_really_happened(site: Site) -> None:
    """A 302 after approve means an approval was stored; a 403 means nothing was."""
    refused = site.action()
    site.client("viewer").post(f"/actions/{refused.pk}/approve", BODIES["action-approve"](refused))
    assert not Approval.objects.filter(action=refused).exists()
    approved = site.action()
    site.client("approver").post(
        f"/actions/{approved.pk}/approve", BODIES["action-approve"](approved)
    )
    approved.refresh_from_db()
    assert approved.status == Action.Status.QUEUED
    assert list(approved.approvals.values_list("username", flat=True)) == ["abe"]
    cancelled = site.action()
    site.client("operator").post(f"/actions/{cancelled.pk}/cancel")
    cancelled.refresh_from_db()
    assert cancelled.status == Action.Status.CANCELLED


# What each rollout decision or control leaves its rollout in when it was really done.
ROLLOUT_DONE = {
    "rollout-approve": Rollout.Status.RUNNING,
    "rollout-reject": Rollout.Status.REJECTED,
    "rollout-pause": Rollout.Status.PAUSED,
    "rollout-resume": Rollout.Status.RUNNING,
    "rollout-cancel": Rollout.Status.CANCELLED,
}


def test_the_matrix_rollout_decisions_really_happened(site: Site) -> None:
    """A 302 after a rollout's decision or control means it was done; a 403 that nothing was."""
    patterns = dict(url_patterns())
    for key, done in ROLLOUT_DONE.items():
        for role, expected in zip(ROLES, MATRIX[key, "POST"], strict=True):
            response, rollout = request(site, role, "POST", key, patterns[key])
            assert isinstance(rollout, Rollout)
            before = rollout.status
            rollout.refresh_from_db()
            if expected == ROLLOUT:
                assert response["Location"] == f"/rollouts/{rollout.pk}", (key, role)
                assert rollout.status == done, (key, role, rollout.status)
            else:
                assert rollout.status == before, (key, role, rollout.status)
    # A viewer asking for a rollout adds none; an admin asking adds one.
    assert set(Rollout.objects.values_list("requested_by_name", flat=True)) == {"olga"}
    request(site, "viewer", "POST", "rollout-request", patterns["rollout-request"])
    assert set(Rollout.objects.values_list("requested_by_name", flat=True)) == {"olga"}
    request(site, "admin", "POST", "rollout-request", patterns["rollout-request"])
    assert "root" in set(Rollout.objects.values_list("requested_by_name", flat=True))


# --- CSRF ---------------------------------------------------------------------------------------


def post_routes() -> list[tuple[str, URLPattern]]:
    """Return the patterns whose views take a POST: not 405 for some signed-in role."""
    return [
        (key, pattern)
        for key, pattern in url_patterns()
        if any(not outcome.startswith("405") for outcome in MATRIX[key, "POST"][1:])
    ]


def csrf_refused(response: HttpResponse) -> bool:
    return response.status_code == 403 and b"CSRF verification failed" in response.content


def test_every_post_route_refuses_a_post_without_the_csrf_token(site: Site) -> None:
    routes = post_routes()
    assert len(routes) >= 9  # 2 refreshes, 3 decisions, request, login, logout, admin
    for key, pattern in routes:
        for role in ("anonymous", "admin") if key == "login" else ("admin",):
            url, action = concrete_url(key, pattern, site)
            client = site.client(role, csrf=True)
            response = client.post(url, BODIES[key](action) if key in BODIES else {})
            assert csrf_refused(response), (
                f"POST {key} as {role} without a token: {outcome(response)}"
            )


def test_every_post_route_accepts_the_csrf_token_of_a_page(site: Site) -> None:
    for key, pattern in post_routes():
        role = "anonymous" if key == "login" else "admin"
        client = site.client(role, csrf=True)
        client.get(LOGIN if role == "anonymous" else "/")  # sets the csrftoken cookie
        token = client.cookies["csrftoken"].value
        url, action = concrete_url(key, pattern, site)
        body = {**(BODIES[key](action) if key in BODIES else {}), "csrfmiddlewaretoken": token}
        response = client.post(url, body)
        assert not csrf_refused(response), f"POST {key} with a token: {outcome(response)}"
        assert response.status_code < 500
        if key == "logout":
            client.force_login(site.people["root"])
    # htmx sends the token in a header (base.html's hx-headers), not in the body.
    client = site.client("admin", csrf=True)
    token = client.cookies["csrftoken"].value
    response = client.post("/refresh", HTTP_X_CSRFTOKEN=token, HTTP_HX_REQUEST="true")
    assert response.status_code == 200


# --- Content-Security-Policy and no inline code -----------------------------------------------


class InlineCode(HTMLParser):
    """Collect what a strict CSP would block: inline scripts, styles and event handlers."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._script_inline = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name.lower() for name, _value in attrs}
        if tag == "style":
            self.found.append("<style> element")
        if tag == "script":
            self._script_inline = "src" not in names
        if "style" in names:
            self.found.append(f"style= on <{tag}>")
        self.found += [f"{name}= on <{tag}>" for name in names if name.startswith("on")]
        for name, value in attrs:
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith(
                "javascript:"
            ):
                self.found.append(f"javascript: URL on <{tag}>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script_inline = False

    def handle_data(self, data: str) -> None:
        if self._script_inline and data.strip():
            self.found.append(f"inline <script> body: {data.strip()[:60]!r}")


def inline_code(html: str) -> list[str]:
    parser = InlineCode()
    parser.feed(html)
    parser.close()
    return parser.found


def check_csp(response: HttpResponse, what: str) -> None:
    policy = response.get("Content-Security-Policy", "")
    assert policy, f"{what}: no Content-Security-Policy header"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, what
    directives = dict(d.strip().partition(" ")[::2] for d in policy.split(";"))
    assert directives.get("script-src") == "'self'", what
    assert inline_code(response.content.decode()) == [], what


def test_every_html_page_has_a_strict_csp_and_no_inline_code(site: Site) -> None:
    pages = 0
    for key, pattern in url_patterns():
        for role in ROLES:
            for htmx in (False, True):
                url, _action = concrete_url(key, pattern, site)
                headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
                response = site.client(role).get(url, follow=not htmx, **headers)
                if "text/html" in response.get("Content-Type", ""):
                    check_csp(response, f"GET {url} as {role}{' (htmx)' if htmx else ''}")
                    pages += 1
    # Error pages count too: a 404 and a refused form.
    for role in ("viewer", "admin"):
        response = site.client(role).get("/environments/nowhere")
        assert response.status_code == 404
        check_csp(response, "404 page")
        pages += 1
    assert pages > 80


def test_the_inline_code_check_finds_what_it_looks_for() -> None:
    page = (
        '<p style="color:red" onclick="x()">a</p><script>alert(1)</script>'
        '<script src="/static/x.js"></script><style>p{}</style><a href="javascript:x()">b</a>'
    )
    assert len(inline_code(page)) == 5


# --- markup renders escaped --------------------------------------------------------------------


def marker(kind: str) -> str:
    return f"<i>{kind}</i><script>alert('{kind}')</script>"


EVIL_REVISION = "0badc0de1234"


def write_evil_project(root: Path) -> Path:
    """Copy the sample project's revisions and add one whose docstring is markup."""
    versions = root / "versions"
    versions.mkdir(parents=True)
    for path in (SAMPLE / "versions").glob("*.py"):
        (versions / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (versions / f"{EVIL_REVISION}_evil.py").write_text(
        f'"""{marker("message")}\n\n{marker("docstring")}\n\nRevision ID: {EVIL_REVISION}\n"""\n'
        f'revision = "{EVIL_REVISION}"\ndown_revision = "{HEAD}"\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade() -> None:\n    pass\n\n\ndef downgrade() -> None:\n    pass\n",
        encoding="utf-8",
    )
    return root


class Markup(HTMLParser):
    """Collect the elements a page really has and the text it shows."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.text += [value for _name, value in attrs if value]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def shown_escaped(html: str, kinds: list[str]) -> None:
    """Assert the page shows each marker as text and none of them became an element."""
    page = Markup()
    page.feed(html)
    text = "\n".join(page.text)
    assert "i" not in page.tags, "a marker's <i> became an element"
    assert not re.search(r"<script>alert\('", html), "a marker's <script> became an element"
    for kind in kinds:
        assert f"<i>{kind}</i>" in text, f"the {kind} is not shown"


def test_markup_from_revisions_reasons_comments_users_and_config_renders_escaped(
    settings: Any, tmp_path: Path
) -> None:
    project = write_evil_project(tmp_path / "evil")
    url = empty_sqlite(tmp_path / "staging.db")
    write_versions(url, [MID])
    config = write_config(
        tmp_path / "dashboard.toml",
        {"staging": {"project": "blog", "url": url, "description": marker("description")}},
        projects={"blog": {"script_location": str(project)}},
    )
    settings.DASHBOARD_CONFIG = str(config)
    user_model = get_user_model()
    operator = user_model.objects.create_user(marker("user"), password=PASSWORD)
    users.user_set_role(username=operator.username, role="operator")
    users.user_set_role(username="abe", role="approver", password=PASSWORD)
    users.user_set_role(username="root", role="admin", password=PASSWORD)
    status.status_refresh()
    action = Action.objects.create(
        environment="staging",
        project="blog",
        direction="upgrade",
        target=EVIL_REVISION,
        from_heads=[MID],
        target_heads=[EVIL_REVISION],
        plan=["e0d7f4a19b53", "7a3c2e8b5f01", "1d6b9f0c4e27", "9e4f1b7a2c68", HEAD, EVIL_REVISION],
        sql="SELECT 1;\n",
        fingerprint="f" * 64,
        plan_hash="a1" * 32,
        approvals_required=2,
        requested_by=operator,
        requested_by_name=operator.username,
        reason=marker("reason"),
        prepared_at=timezone.now(),
        # Finished: while it is not, the request form offers only what comes after it.
        status=Action.Status.SUCCEEDED,
    )
    Approval.objects.create(
        action=action,
        user=user_model.objects.get(username="abe"),
        username="abe",
        decision="approve",
        comment=marker("comment"),
        plan_hash=action.plan_hash,
    )
    audit.record("action.requested", actor=operator, action_id=action.pk, environment="staging",
                 payload={"reason": marker("reason")})  # fmt: skip
    client = Client()
    client.force_login(user_model.objects.get(username="root"))
    pages = {
        "/": ["description", "message"],
        "/environments/staging": ["description", "message"],
        "/projects/blog/graph": ["message"],
        f"/projects/blog/graph?rev={EVIL_REVISION}": ["message", "docstring"],
        f"/projects/blog/revisions/{EVIL_REVISION}": ["message", "docstring"],
        "/actions/": ["user"],
        f"/actions/{action.pk}/": ["reason", "comment", "user", "message"],
        "/audit/": ["user", "reason"],
        "/environments/staging/request": ["message"],
    }
    for url, kinds in pages.items():
        response = client.get(url)
        assert response.status_code == 200, url
        try:
            shown_escaped(response.content.decode(), kinds)
        except AssertionError as exc:
            raise AssertionError(f"{url}: {exc}") from exc
    # The revision panel as htmx swaps it in.
    panel = client.get(f"/projects/blog/revisions/{EVIL_REVISION}", HTTP_HX_REQUEST="true")
    shown_escaped(panel.content.decode(), ["docstring"])
    # JSON carries the text as it is: a JSON string, never HTML.
    document = client.get("/api/projects/blog/graph").json()
    messages = [r["message"] for r in document["revisions"]]
    assert marker("message") in messages
    # The signed-in user's own name, in the top bar.
    client.force_login(operator)
    shown_escaped(client.get("/").content.decode(), ["user"])


# --- sign-in throttling ------------------------------------------------------------------------


def sign_in(client: Client, username: str, password: str, **extra: Any) -> HttpResponse:
    return client.post(LOGIN, {"username": username, "password": password}, **extra)


@pytest.fixture
def accounts(settings: Any) -> dict[str, Any]:
    settings.DASHBOARD_SIGNIN_MAX_FAILURES = 3
    settings.DASHBOARD_SIGNIN_WINDOW = 600
    settings.DASHBOARD_SIGNIN_ADDRESS_MAX_FAILURES = None  # ten times the per-user limit
    for name in ("ann", "ben"):
        users.user_set_role(username=name, role="viewer", password=PASSWORD)
    return {u.username: u for u in get_user_model().objects.all()}


def verbs(*names: str) -> list[str]:
    return list(AuditEvent.objects.filter(verb__in=names).values_list("verb", flat=True))


def test_repeated_failures_for_a_username_refuse_even_the_right_password(
    accounts: dict[str, Any],
) -> None:
    client = Client()
    for _ in range(3):
        assert sign_in(client, "ann", "wrong").status_code == 200
    response = sign_in(client, "ann", PASSWORD)
    assert response.status_code == 429
    assert "Too many failed sign-ins; try again in 10 minutes." in response.content.decode()
    assert 0 < int(response["Retry-After"]) <= 600
    assert "_auth_user_id" not in client.session
    # The refusal is audited, and the password was never checked (no new failure).
    assert verbs("auth.sign_in_failed", "auth.sign_in_throttled", "auth.sign_in") == [
        "auth.sign_in_failed"
    ] * 3 + ["auth.sign_in_throttled"]
    event = AuditEvent.objects.get(verb="auth.sign_in_throttled")
    assert event.actor_name == "ann" and event.ip == "127.0.0.1"
    assert event.payload["by"] == "username" and event.payload["failures"] == 3
    # The form keeps the name and still works as a form.
    assert 'value="ann"' in response.content.decode()
    check_csp(response, "throttled sign-in page")


def test_the_same_name_with_spaces_is_the_same_name(accounts: dict[str, Any]) -> None:
    for i in range(3):
        sign_in(Client(), "ann" + " " * i, "wrong", REMOTE_ADDR="10.0.0.1")
    assert sign_in(Client(), " ann ", PASSWORD, REMOTE_ADDR="10.0.0.1").status_code == 429


def test_failures_from_one_address_refuse_other_names_from_it_at_the_ceiling(
    accounts: dict[str, Any],
) -> None:
    for i in range(30):  # ten times the per-user limit
        sign_in(Client(), f"x{i}", "wrong", REMOTE_ADDR="10.1.1.1")
    refused = sign_in(Client(), "ben", PASSWORD, REMOTE_ADDR="10.1.1.1")
    assert refused.status_code == 429
    assert AuditEvent.objects.get(verb="auth.sign_in_throttled").payload["by"] == "ip"
    # Another address signs ben in.
    other = Client()
    assert sign_in(other, "ben", PASSWORD, REMOTE_ADDR="10.2.2.2").status_code == 302


def test_a_success_resets_nothing_for_other_users(accounts: dict[str, Any]) -> None:
    for _ in range(2):
        sign_in(Client(), "ann", "wrong", REMOTE_ADDR="10.3.0.1")
    assert sign_in(Client(), "ben", PASSWORD, REMOTE_ADDR="10.3.0.1").status_code == 302
    sign_in(Client(), "ann", "wrong", REMOTE_ADDR="10.3.0.1")
    assert sign_in(Client(), "ann", PASSWORD, REMOTE_ADDR="10.3.0.1").status_code == 429


def test_a_success_clears_only_that_users_own_earlier_failures(accounts: dict[str, Any]) -> None:
    for _ in range(2):
        sign_in(Client(), "ann", "wrong", REMOTE_ADDR="10.4.0.1")
    assert sign_in(Client(), "ann", PASSWORD, REMOTE_ADDR="10.4.0.1").status_code == 302
    for _ in range(2):
        sign_in(Client(), "ann", "wrong", REMOTE_ADDR="10.4.0.1")
    assert sign_in(Client(), "ann", PASSWORD, REMOTE_ADDR="10.4.0.1").status_code == 302


def test_failures_older_than_the_window_stop_counting(accounts: dict[str, Any]) -> None:
    for _ in range(3):
        sign_in(Client(), "ann", "wrong")
    assert sign_in(Client(), "ann", PASSWORD).status_code == 429
    later = timezone.now() + timedelta(seconds=601)
    with mock.patch("django.utils.timezone.now", return_value=later):
        assert sign_in(Client(), "ann", PASSWORD).status_code == 302


def test_the_wait_counts_from_the_failure_that_opened_the_block(
    accounts: dict[str, Any],
) -> None:
    for _ in range(3):
        signin.signin_failed(username="ann", request=None)
    later = timezone.now() + timedelta(minutes=7)
    throttle = signin.signin_throttle(username="ann", ip=None)
    assert throttle is not None and throttle.retry_after > 590
    with mock.patch("django.utils.timezone.now", return_value=later):
        throttle = signin.signin_throttle(username="ann", ip=None)
    assert throttle is not None
    assert 170 <= throttle.retry_after <= 180
    assert throttle.message == "Too many failed sign-ins; try again in 3 minutes."


def test_throttling_can_be_switched_off(accounts: dict[str, Any], settings: Any) -> None:
    settings.DASHBOARD_SIGNIN_MAX_FAILURES = 0
    for _ in range(4):
        sign_in(Client(), "ann", "wrong")
    assert sign_in(Client(), "ann", PASSWORD).status_code == 302
    assert not SignInThrottle.objects.exists()  # nothing is counted either


def test_an_address_that_is_not_one_is_recorded_as_none(accounts: dict[str, Any]) -> None:
    # A server on a unix socket can pass anything as REMOTE_ADDR; PostgreSQL's inet refuses it.
    response = sign_in(Client(), "ann", "wrong", REMOTE_ADDR="unix:/run/gunicorn.sock")
    assert response.status_code == 200
    event = AuditEvent.objects.get(verb="auth.sign_in_failed")
    assert event.ip is None and event.actor_name == "ann"


def test_behind_the_proxy_each_client_is_counted_by_its_forwarded_address(
    accounts: dict[str, Any], settings: Any
) -> None:
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")  # BEHIND_PROXY=1
    for i in range(3):
        # The client forged the first entry; the proxy appended the address it saw.
        sign_in(Client(), "ben", "wrong", HTTP_X_FORWARDED_FOR=f"6.6.6.{i}, 203.0.113.9")
    assert set(AuditEvent.objects.values_list("ip", flat=True).filter(verb__startswith="auth")) == {
        "203.0.113.9"
    }
    assert sign_in(Client(), "ben", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 429
    # Everyone else behind the same proxy still signs in.
    assert (
        sign_in(Client(), "ben", PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.7").status_code == 302
    )


def test_without_the_proxy_a_forged_forwarded_address_changes_nothing(
    accounts: dict[str, Any],
) -> None:
    for i in range(3):
        sign_in(Client(), "ben", "wrong", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}")
    assert (
        sign_in(Client(), "ben", PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.99").status_code == 429
    )


def test_the_admin_sites_sign_in_goes_through_the_throttled_one(accounts: dict[str, Any]) -> None:
    users.user_set_role(username="root", role="admin", password=PASSWORD)
    client = Client()
    response = client.post("/admin/login/?next=/admin/", {"username": "root", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/admin/"
    assert "_auth_user_id" not in client.session  # nothing was checked there
    for _ in range(3):
        sign_in(client, "root", "wrong")
    assert sign_in(client, "root", PASSWORD).status_code == 429


def test_roles_cannot_be_changed_unaudited_in_the_admin_site(site: Site) -> None:
    vera = site.people["vera"]
    admin_group = Group.objects.get(name="admin")
    response = site.client("admin").post(
        f"/admin/auth/user/{vera.pk}/change/",
        {
            "username": "vera",
            "is_active": "on",
            "is_staff": "on",
            "is_superuser": "on",
            "groups": [str(admin_group.pk)],
            "date_joined_0": "2024-01-01",
            "date_joined_1": "00:00:00",
        },
    )
    assert response.status_code == 302
    vera.refresh_from_db()
    assert role_of(vera) == "viewer" and not vera.is_superuser and not vera.is_staff
    # The groups that are the roles cannot be renamed there either.
    assert (
        site.client("admin").get(f"/admin/auth/group/{admin_group.pk}/change/").status_code == 404
    )


def test_a_new_account_with_an_old_name_cannot_cancel_the_old_ones_actions(site: Site) -> None:
    action = site.action()
    site.people["olga"].delete()
    users.user_set_role(username="olga", role="operator", password=PASSWORD)
    impostor = Client()
    impostor.force_login(get_user_model().objects.get(username="olga"))
    response = impostor.post(f"/actions/{action.pk}/cancel")
    assert response.status_code == 403
    action.refresh_from_db()
    assert action.status == Action.Status.REQUESTED


def test_the_role_is_read_once_per_request(site: Site) -> None:
    """The no-role check costs no second read of the groups: the page's header reuses it."""
    client = site.client("viewer")
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/environments/staging").status_code == 200
    group_reads = [q["sql"] for q in queries.captured_queries if "auth_group" in q["sql"]]
    assert len(group_reads) == 1, group_reads
