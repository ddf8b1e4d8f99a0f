"""Refuse signed-in accounts that have no role: no role means no access."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from dashboard.roles import no_role_message, role_for_request

# Reachable without a role: leaving. Signing in, the health check and the favicon need no login,
# and the API answers for itself (its bearer tokens are read after the middleware ran).
WITHOUT_ROLE = frozenset({"logout"})


class RoleRequiredMiddleware:
    """Answer every page a signed-in user without a role asks for with a 403 that says why."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponse | None:
        if not getattr(view_func, "login_required", True):
            return None
        user = request.user
        if not user.is_authenticated or role_for_request(user) is not None:
            return None
        match = request.resolver_match
        if match is not None and match.view_name in WITHOUT_ROLE:
            return None
        context = {"message": no_role_message(user)}
        return render(request, "no-role.html", context, status=403)
