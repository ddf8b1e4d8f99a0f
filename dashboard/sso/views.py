"""Sign-in through the provider (start, callback) and sign-out that ends its session too."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

from django.contrib import auth
from django.contrib.auth import BACKEND_SESSION_KEY
from django.contrib.auth.views import LogoutView
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from dashboard import audit
from dashboard.config import NotConfigured, SSOConfig
from dashboard.services import signin
from dashboard.sso.backends import Failure, failure_of
from dashboard.sso.provider import (
    BACKEND,
    ProviderUnavailable,
    current_sso,
    discovery,
    oidc_setting,
)

logger = logging.getLogger(__name__)
TRIED = "(sso)"  # the name failures count under before the provider said who it was
STATUS = {
    "no_role": 403,
    "inactive": 403,
    "name_taken": 403,
    "provider_unavailable": 503,
    "not_configured": 503,
}
COUNTED = {"token_refused", "token_invalid", "token_expired", "refused"}


def _sso_or_404() -> SSOConfig:
    sso = current_sso()
    if sso is None:
        raise Http404("single sign-on is not configured")
    return sso


def _refuse(
    request: HttpRequest, sso: SSOConfig, failure: Failure, *, counted: bool = False
) -> HttpResponse:
    """Audit a refused sign-in through the provider and answer with a page that says why."""
    signin.signin_failed(
        username=failure.username or TRIED,
        request=request,
        method="oidc",
        reason=failure.reason,
        groups=failure.groups if failure.reason == "no_role" else None,
        # Only a bad answer to this browser's own sign-in counts, against the address: anyone
        # can make a browser fetch a callback without its state (an <img>), and the refusals
        # of a person the provider named are no guessing.
        keys=(signin.ADDRESS,) if counted or failure.reason in COUNTED else (),
    )
    return _page(request, sso, failure)


def _page(request: HttpRequest, sso: SSOConfig, failure: Failure) -> HttpResponse:
    """Answer a refused sign-in with a page that says why."""
    status = STATUS.get(failure.reason, 400)
    if failure.reason == "no_role":
        return render(request, "no-role.html", {"message": failure.detail}, status=status)
    context = {"sso": sso, "failure": failure}
    return render(request, "sso-failed.html", context, status=status)


class SSOStartView(OIDCAuthenticationRequestView):
    """Send the browser to the provider with a fresh state, nonce and PKCE challenge."""

    get_settings = staticmethod(oidc_setting)

    def __init__(self, **kwargs: Any) -> None:
        # The library asks for the endpoints here; a provider that is away must not be a 500.
        super(OIDCAuthenticationRequestView, self).__init__(**kwargs)

    def get(self, request: HttpRequest) -> HttpResponse:
        sso = _sso_or_404()
        try:
            self.OIDC_OP_AUTH_ENDPOINT = discovery(sso)["authorization_endpoint"]
        except ProviderUnavailable as exc:
            detail = f"{sso.display_name} is unavailable: {exc}"
            context = {"sso": sso, "failure": Failure("provider_unavailable", detail)}
            return render(request, "sso-failed.html", context, status=503)
        self.OIDC_RP_CLIENT_ID = sso.client_id
        return super().get(request)


class SSOCallbackView(OIDCAuthenticationCallbackView):
    """Take the provider's answer: check state, exchange the code, verify, sign in or refuse."""

    get_settings = staticmethod(oidc_setting)

    def get(self, request: HttpRequest) -> HttpResponse:
        self.sso = _sso_or_404()
        state = request.GET.get("state")
        states = request.session.get("oidc_states")
        error = request.GET.get("error", "")
        if not isinstance(states, dict) or not states:
            # No sign-in is under way in this browser (a finished one leaves an empty dict): a
            # stray link, an <img> or a popup some page opened.
            # Refused and logged, never audited or counted: anyone could add rows to the
            # append-only trail, or lock an office out, with such requests.
            if error:
                failure = _provider_error(self.sso, error)
            else:
                failure = Failure("state", "no sign-in was started in this browser")
            logger.info("sign-in callback without a sign-in in this browser: %s", failure.reason)
            return _page(request, self.sso, failure)
        throttled = self._throttled(request)
        if throttled is not None:
            return throttled
        if state not in states:
            # This browser started a sign-in, and the answer is not its: audited, and counted
            # against the address, so repeating it ends in one block with one event.
            if error:
                failure = _provider_error(self.sso, error)
            else:
                failure = Failure(
                    "state", "the answer's state matches no sign-in this browser started"
                )
            return _refuse(request, self.sso, failure, counted=True)
        if error:
            del states[state]  # used up, as the library does
            request.session.modified = True
            # The provider declined this browser's own sign-in (or a session renewal): any
            # session it holds ends, as the one the provider would not renew must.
            if request.user.is_authenticated:
                auth.logout(request)
            return _refuse(request, self.sso, _provider_error(self.sso, error))
        try:
            return super().get(request)
        except NotConfigured as exc:
            return _refuse(request, self.sso, Failure("not_configured", str(exc)))

    def _throttled(self, request: HttpRequest) -> HttpResponse | None:
        """Refuse the callback while its address is blocked (one audit event per block)."""
        throttle = signin.signin_throttle(username=TRIED, ip=audit.client_ip(request))
        if throttle is None:
            return None
        signin.signin_refuse(username=TRIED, throttle=throttle, request=request)
        failure = Failure("throttled", throttle.message)
        context = {"sso": self.sso, "failure": failure}
        response = render(request, "sso-failed.html", context, status=429)
        response["Retry-After"] = str(throttle.retry_after)
        return response

    def login_failure(self) -> HttpResponse:
        request = self.request
        # The state matched: a failed renewal must not leave the old session signed in.
        if request.user.is_authenticated:
            auth.logout(request)
        failure = failure_of(request) or Failure("refused", "the provider's answer was incomplete")
        return _refuse(request, self.sso, failure)


def _provider_error(sso: SSOConfig, error: str) -> Failure:
    code = "".join(c for c in error[:40] if c.isalnum() or c == "_")
    return Failure("provider_error", f"{sso.display_name} answered {code}")


class SignOutView(LogoutView):
    """End the dashboard session, then the provider's where it offers an end_session_endpoint."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        through_sso = request.session.get(BACKEND_SESSION_KEY) == BACKEND
        id_token = request.session.get("oidc_id_token")
        response = super().post(request, *args, **kwargs)
        sso = current_sso()
        if not through_sso or sso is None:
            return response
        end_session = self._end_session_url(request, sso, id_token)
        if end_session is None:
            return response
        # A page, not a redirect: the CSP's form-action 'self' would block the form's redirect
        # to the provider's origin.
        return render(request, "signed-out.html", {"sso": sso, "end_session": end_session})

    @staticmethod
    def _end_session_url(request: HttpRequest, sso: SSOConfig, id_token: Any) -> str | None:
        try:
            endpoint = discovery(sso).get("end_session_endpoint")
        except ProviderUnavailable as exc:
            logger.warning("signed out of the dashboard only: %s", exc)
            return None
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            return None
        params = {
            "client_id": sso.client_id,
            "post_logout_redirect_uri": request.build_absolute_uri(reverse("login")),
        }
        if isinstance(id_token, str):
            params["id_token_hint"] = id_token
        joiner = "&" if "?" in endpoint else "?"
        return f"{endpoint}{joiner}{urlencode(params)}"
