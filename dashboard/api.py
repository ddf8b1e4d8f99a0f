"""The JSON API: session or bearer-token auth, JSON errors, never an HTML redirect."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from dashboard import roles
from dashboard.services import tokens

View = Callable[..., HttpResponse]


def api_view(view: View) -> View:
    """Authenticate by session or `Authorization: Bearer`, allow GET only, answer errors in JSON."""

    @login_not_required
    @csrf_exempt  # read-only: nothing here changes state, and tokens carry no cookies
    @never_cache
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return error(405, "the API is read-only: use GET")
        scheme, _, credentials = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "bearer":  # auth schemes are case-insensitive (RFC 9110)
            user = tokens.token_user(credentials.strip())
            if user is None:
                return error(401, "invalid or revoked API token")
            request.user = user
        elif not request.user.is_authenticated:
            return error(401, "sign in or send Authorization: Bearer <token>")
        if not roles.has_role(request.user):
            return error(403, roles.no_role_message(request.user))
        return view(request, *args, **kwargs)

    return wrapper


def error(status: int, message: str) -> JsonResponse:
    """Return a JSON error body with the status."""
    return JsonResponse({"error": message}, status=status)
