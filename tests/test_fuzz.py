"""Property-based fuzzing of every form and API endpoint: no input makes a server error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from django.http import HttpResponse
from django.test import Client
from django.urls import Resolver404, resolve
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dashboard.models import Action, Approval, AuditEvent
from dashboard.services import tokens
from tests.statusenv import HEAD, MID
from tests.test_security import PEOPLE, Site, site  # noqa: F401 (site is a fixture)

pytestmark = pytest.mark.django_db

FUZZ = settings(
    max_examples=40,
    deadline=None,
    # One configured site serves every example: examples only add rows to it.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# Text a hostile or careless client sends: any code point (NULs, controls, RTL marks, emoji),
# the words the forms expect, markup, and sizes far past every max_length.
SPECIAL = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "heads",
    "head",
    "base",
    "reporting@head",
    HEAD,
    MID,
    MID[:4],
    "upgrade",
    "downgrade",
    "csv",
    "jsonl",
    "../../etc/passwd",
    "%00",
    "<script>alert(1)</script>",
    "'; DROP TABLE dashboard_action; --",
    "\u202e\ufeff\u200b",
    "é" * 151,
    "9" * 40,
    "-1",
    "2024-02-30",
    "0001-01-01",
    "9999-12-31",
    "x" * 5000,
    "y" * 100_000,
]
any_char = st.characters(codec="utf-8")
nasty = st.one_of(st.sampled_from(SPECIAL), st.text(any_char, max_size=60), st.text(max_size=300))
# A path segment: anything percent-encoded, including bytes that are not UTF-8.
segment = st.one_of(
    nasty.map(lambda text: quote(text, safe="")),
    st.binary(min_size=1, max_size=20).map(lambda raw: quote(raw, safe="")),
).filter(bool)
params = st.dictionaries(
    st.sampled_from(
        ["q", "rev", "start", "page", "environment", "status", "user", "verb", "date_from",
         "date_to", "format", "verify", "direction", "next"]
    ),
    nasty,
    max_size=5,
)  # fmt: skip


def answer(response: HttpResponse) -> int:
    """Read the whole response (streams fail while they are read) and return its status."""
    if response.streaming:
        b"".join(response.streaming_content)  # type: ignore[arg-type]
    else:
        assert response.content is not None
    return response.status_code


def check(response: HttpResponse, allowed: set[int], what: str) -> None:
    status = answer(response)
    assert status < 500, f"{what}: {status}"
    assert status in allowed, f"{what}: {status} is none of {sorted(allowed)}"


def htmx(flag: bool) -> dict[str, str]:
    return {"HTTP_HX_REQUEST": "true"} if flag else {}


@pytest.fixture
def action(site: Site) -> Action:  # noqa: F811
    """A requested action of the operator's, ready for decisions."""
    return site.action()


def test_request_form(site: Site) -> None:  # noqa: F811
    @FUZZ
    @given(
        role=st.sampled_from(["operator", "admin", "viewer"]),
        direction=st.one_of(st.sampled_from(["upgrade", "downgrade"]), nasty),
        target=st.one_of(st.sampled_from(["heads", MID, HEAD]), nasty),
        reason=nasty,
        extra=params,
        partial=st.booleans(),
    )
    def run(
        role: str, direction: str, target: str, reason: str, extra: dict[str, str], partial: bool
    ) -> None:
        body = {**extra, "direction": direction, "target": target, "reason": reason}
        response = site.client(role).post("/environments/staging/request", body, **htmx(partial))
        allowed = {403} if role == "viewer" else {200, 302}
        check(response, allowed, f"request as {role}: {body!r}"[:300])
        if response.status_code == 302:
            created = Action.objects.get(pk=int(response["Location"].split("/")[2]))
            assert created.reason == reason.strip() and "\x00" not in reason

    run()


def test_request_form_of_any_environment(site: Site) -> None:  # noqa: F811
    @FUZZ
    @given(name=segment, direction=nasty)
    def run(name: str, direction: str) -> None:
        url = f"/environments/{name}/request"
        client = site.client("operator")
        check(client.get(url, {"direction": direction}), {200, 404}, f"GET {url}")
        body = {"direction": "upgrade", "target": "heads", "reason": "why"}
        check(client.post(url, body), {200, 302, 404}, f"POST {url}")

    run()


# An incomplete form is sent back to the action page with what it lacked (302) before any
# decision is tried; a complete one from a role that may not decide is refused (403).
MAY = {
    "approve": {"approver", "admin"},
    "reject": {"approver", "admin"},
    "cancel": {"operator", "admin"},  # the operator requested the action
}


def test_approve_reject_and_cancel(site: Site, action: Action) -> None:  # noqa: F811
    @FUZZ
    @given(
        role=st.sampled_from(["viewer", "operator", "approver", "admin"]),
        verb=st.sampled_from(sorted(MAY)),
        pk=st.one_of(
            st.just(str(action.pk)),
            st.integers(min_value=0, max_value=10**30).map(str),
            segment,
        ),
        plan_hash=st.one_of(st.just(action.plan_hash), nasty),
        comment=nasty,
        reason=st.one_of(st.just("because"), nasty),
    )
    def run(role: str, verb: str, pk: str, plan_hash: str, comment: str, reason: str) -> None:
        before = Approval.objects.filter(action=action).count(), action.status
        body = {"plan_hash": plan_hash, "comment": comment, "reason": reason}
        url = f"/actions/{pk}/{verb}"
        response = site.client(role).post(url, body)
        check(response, {302, 403, 404}, f"{role} POST {url} {body!r}"[:300])
        action.refresh_from_db()
        if role not in MAY[verb]:
            assert (Approval.objects.filter(action=action).count(), action.status) == before
        for approval in Approval.objects.filter(action=action):
            # Bound to the plan the page showed, whatever else was sent.
            assert approval.plan_hash == action.plan_hash
            assert approval.username in ("abe", "root")

    run()


def test_action_pages_and_list_filters(site: Site, action: Action) -> None:  # noqa: F811
    @FUZZ
    @given(
        pk=st.one_of(st.just(str(action.pk)), st.integers(0, 10**30).map(str), segment),
        tail=st.sampled_from(["/", "/progress"]),
        query=params,
        partial=st.booleans(),
    )
    def run(pk: str, tail: str, query: dict[str, str], partial: bool) -> None:
        client = site.client("viewer")
        url = f"/actions/{pk}{tail}"
        check(client.get(url, query, **htmx(partial)), {200, 404}, f"GET {url} {query!r}"[:300])
        check(client.get("/actions/", query, **htmx(partial)), {200}, f"list {query!r}"[:300])

    run()


def test_audit_filters_and_exports(site: Site) -> None:  # noqa: F811
    @FUZZ
    @given(
        query=params, fmt=st.one_of(st.sampled_from(["csv", "jsonl"]), nasty), partial=st.booleans()
    )
    # Found by this test: the last day a date field accepts had no next day to stop before.
    @example(query={"date_to": "9999-12-31"}, fmt="csv", partial=False)
    @example(query={"date_from": "0001-01-01", "date_to": "0001-01-01"}, fmt="jsonl", partial=True)
    def run(query: dict[str, str], fmt: str, partial: bool) -> None:
        client = site.client("viewer")
        check(client.get("/audit/", query, **htmx(partial)), {200}, f"audit {query!r}"[:300])
        response = client.get("/audit/export", {**query, "format": fmt})
        check(response, {200, 400}, f"export {fmt!r} {query!r}"[:300])
        if fmt in ("csv", "jsonl"):
            assert response.status_code == 200

    run()


def test_graph_search_start_and_rev(site: Site) -> None:  # noqa: F811
    @FUZZ
    @given(
        q=nasty,
        start=st.one_of(st.integers(-5, 10**30).map(str), nasty),
        rev=st.one_of(st.sampled_from([HEAD, MID, MID[:5]]), nasty),
        partial=st.booleans(),
        restore=st.booleans(),
    )
    def run(q: str, start: str, rev: str, partial: bool, restore: bool) -> None:
        headers = htmx(partial)
        if restore:
            headers["HTTP_HX_HISTORY_RESTORE_REQUEST"] = "true"
        query = {"q": q, "start": start, "rev": rev}
        response = site.client("viewer").get("/projects/blog/graph", query, **headers)
        check(response, {200}, f"graph {query!r}"[:300])

    run()


def test_graph_revision_and_environment_pages_of_any_name(site: Site) -> None:  # noqa: F811
    @FUZZ
    @given(name=segment, rev=segment, partial=st.booleans())
    def run(name: str, rev: str, partial: bool) -> None:
        client = site.client("viewer")
        for url in (
            f"/projects/{name}/graph",
            f"/projects/blog/revisions/{rev}",
            f"/projects/{name}/revisions/{rev}",
            f"/environments/{name}",
        ):
            check(client.get(url, **htmx(partial)), {200, 404}, f"GET {url}")

    run()


def test_refresh_of_any_environment_and_htmx_target(site: Site) -> None:  # noqa: F811
    @FUZZ
    @given(name=st.one_of(st.just("staging"), segment), target=nasty, partial=st.booleans())
    def run(name: str, target: str, partial: bool) -> None:
        headers = htmx(partial)
        if partial:
            # Header values travel as latin-1; a browser percent-encodes anything else.
            headers["HTTP_HX_TARGET"] = target.encode("utf-8").decode("latin-1")
        response = site.client("viewer").post(f"/environments/{name}/refresh", **headers)
        check(response, {200, 302, 404}, f"refresh {name} target {target!r}"[:300])

    run()


API_PATHS: list[Callable[[str], str]] = [
    lambda seg: "/api/environments",
    lambda seg: f"/api/environments/{seg}",
    lambda seg: f"/api/projects/{seg}/graph",
    lambda seg: "/api/projects/blog/graph",
]


def test_api_paths_query_strings_and_tokens(site: Site) -> None:  # noqa: F811
    real = tokens.token_create(username="vera")

    @FUZZ
    @given(
        which=st.sampled_from(API_PATHS),
        seg=st.one_of(st.sampled_from(["staging", "blog"]), segment),
        query=params,
        token=st.one_of(
            st.none(),
            st.just(real),
            st.sampled_from(["mdb_", real[:-1], real + "x"]),
            nasty.map(lambda t: t.encode("utf-8").decode("latin-1")),
        ),
        method=st.sampled_from(["get", "post", "put", "delete", "head"]),
    )
    def run(which: Any, seg: str, query: dict[str, str], token: str | None, method: str) -> None:
        url = which(seg)
        client = site.client("viewer") if token is None else Client()
        headers = {} if token is None else {"HTTP_AUTHORIZATION": f"Bearer {token}"}
        response = getattr(client, method)(
            url, query if method in ("get", "head") else None, **headers
        )
        what = f"{method.upper()} {url} {query!r} token={token!r}"[:300]
        try:
            resolve(response.wsgi_request.path_info)
        except Resolver404:
            # An encoded "/" makes a path no API route has: Django's own 404 page answers.
            check(response, {404}, what)
            return
        if method not in ("get", "head"):
            check(response, {405}, what)
        elif token not in (None, real):
            check(response, {401}, what)
        else:
            check(response, {200, 404}, what)
        if method != "head":
            assert response["Content-Type"] == "application/json", what
            response.json()

    run()


def test_sign_in_form(site: Site, settings: Any) -> None:  # noqa: F811
    settings.DASHBOARD_SIGNIN_MAX_FAILURES = 1000  # so the form, not the throttle, answers
    known = list(PEOPLE.values())

    @FUZZ
    @given(
        username=st.one_of(st.sampled_from(known), nasty),
        password=st.one_of(st.just("correct-horse-9"), nasty),
        next_url=st.one_of(
            st.sampled_from(["/", "/audit/", "https://evil.example/", "//evil"]), nasty
        ),
        address=st.sampled_from(["127.0.0.1", "::1", "10.9.8.7", "not an address", ""]),
    )
    def run(username: str, password: str, next_url: str, address: str) -> None:
        body = {"username": username, "password": password, "next": next_url}
        response = Client(REMOTE_ADDR=address).post("/accounts/login/", body)
        check(response, {200, 302}, f"sign in {body!r} from {address!r}"[:300])
        if response.status_code == 302:
            # Never an open redirect: the next page is on this site.
            where = urlsplit(response["Location"])
            assert where.scheme == "" and where.netloc == "", response["Location"]

    run()
    # The trail recorded failures under the name tried, never the password.
    assert not AuditEvent.objects.filter(payload__password__isnull=False).exists()


def test_sign_in_throttle_holds_under_any_input(site: Site, settings: Any) -> None:  # noqa: F811
    settings.DASHBOARD_SIGNIN_MAX_FAILURES = 2
    settings.DASHBOARD_SIGNIN_ADDRESS_MAX_FAILURES = 2

    @FUZZ
    @given(username=nasty, password=nasty)
    def run(username: str, password: str) -> None:
        body = {"username": username, "password": password}
        response = Client(REMOTE_ADDR="10.66.0.1").post("/accounts/login/", body)
        check(response, {200, 429}, f"sign in {body!r}"[:300])

    run()
    # After two failures from one address (its ceiling here), everything from it is refused.
    refused = Client(REMOTE_ADDR="10.66.0.1").post(
        "/accounts/login/", {"username": "vera", "password": "correct-horse-9"}
    )
    assert refused.status_code == 429
