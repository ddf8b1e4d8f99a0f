"""Sessions signed in through the provider go back to it every [sso] session_refresh seconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cached_property

from django.contrib.auth import BACKEND_SESSION_KEY
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from mozilla_django_oidc.middleware import SessionRefresh

from dashboard.config import NotConfigured
from dashboard.sso.backends import Failure
from dashboard.sso.provider import BACKEND, ProviderUnavailable, current_sso, oidc_setting

EXEMPT = ("sso-start", "sso-callback", "login", "logout")
MACHINE_PATHS = ("/api/", "/metrics")
RENEW = "your sign-in needs renewing with {provider}: reload the page"


class _Renewal(SessionRefresh):
    """The library's renewal (prompt=none, state, nonce, PKCE), settings from the [sso] table."""

    get_settings = staticmethod(oidc_setting)

    @cached_property
    def exempt_urls(self) -> set[str]:
        return {reverse(name) for name in EXEMPT}

    @cached_property
    def exempt_url_patterns(self) -> set[object]:
        return set()


class SSOSessionRefresh:
    """Send a provider session's first GET after its refresh time back through the provider.

    The callback then applies the groups the provider has now: a role taken away there ends
    here within session_refresh. Password sessions are left alone.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self._renewal(request) or self.get_response(request)

    def _renewal(self, request: HttpRequest) -> HttpResponse | None:
        if request.session.get(BACKEND_SESSION_KEY) != BACKEND:
            return None
        if request.session.get("oidc_id_token_expiration", 0) > time.time():
            return None
        sso = current_sso()
        if sso is None or not request.user.is_authenticated:
            return None  # without [sso] the backend ends these sessions itself
        if request.path in {reverse(name) for name in EXEMPT}:
            return None
        if request.path_info.startswith(MACHINE_PATHS):
            # The API and metrics answer machines: a token speaks for itself, and a session
            # due for renewal gets the API's JSON, never a redirect to the provider.
            if request.headers.get("Authorization", "").startswith("Bearer "):
                return None
            return JsonResponse({"error": RENEW.format(provider=sso.display_name)}, status=401)
        if request.method != "GET" or request.headers.get("HX-Request") == "true":
            # Neither a form's POST nor an htmx fetch survives a trip to the provider: refuse,
            # and have htmx reload the page, whose GET renews.
            response = render(
                request,
                "sso-failed.html",
                {"sso": sso, "failure": Failure("renew", RENEW.format(provider=sso.display_name))},
                status=403,
            )
            response["HX-Refresh"] = "true"
            return response
        try:
            # Built per request: the provider's endpoints come from its discovery document.
            answer = _Renewal(self.get_response).process_request(request)
        except (ProviderUnavailable, NotConfigured) as exc:
            detail = f"{sso.display_name} is unavailable to renew your sign-in: {exc}"
            context = {"sso": sso, "failure": Failure("provider_unavailable", detail)}
            return render(request, "sso-failed.html", context, status=503)
        return answer if isinstance(answer, HttpResponse) else None
