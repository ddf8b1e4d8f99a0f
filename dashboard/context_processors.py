"""Template context every page needs: the signed-in user's role and the navigation."""

from typing import Any

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.functional import SimpleLazyObject

from dashboard.roles import can_approve, can_request, role_of

# Pages appear in the navigation once their URL exists.
NAV = (
    ("Graph", "graph-index"),
    ("Actions", "action-list"),
    ("Rollouts", "rollout-list"),
    ("Audit", "audit"),
)


def navigation(request: HttpRequest) -> dict[str, Any]:
    """Expose the role, what it allows, and the navigation links to templates."""
    user = getattr(request, "user", None)
    match = getattr(request, "resolver_match", None)
    current = match.url_name if match else None
    links = []
    for label, name in NAV:
        try:
            links.append({"label": label, "url": reverse(name), "current": current == name})
        except NoReverseMatch:
            continue
    # Each answer reads the user's groups: only when a template asks, once per request.
    return {
        "role": SimpleLazyObject(lambda: role_of(user)),
        "can_request": SimpleLazyObject(lambda: can_request(user)),
        "can_approve": SimpleLazyObject(lambda: can_approve(user)),
        "nav_links": links,
    }
