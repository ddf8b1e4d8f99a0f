"""Roles are Django groups; this module names them and answers who may do what."""

from __future__ import annotations

from typing import Any, cast

VIEWER = "viewer"
OPERATOR = "operator"
APPROVER = "approver"
ADMIN = "admin"
ROLES = (VIEWER, OPERATOR, APPROVER, ADMIN)
_UNREAD = object()


def no_role_message(user: Any) -> str:
    """Say why an account without a role is refused, and what gives it one."""
    name = user.get_username() if hasattr(user, "get_username") else "NAME"
    return f"your account has no role; ask an admin (manage.py adduser {name} --role viewer)"


def role_of(user: Any) -> str | None:
    """Return the user's role (the strongest group they are in), or None."""
    if not getattr(user, "is_authenticated", False):
        return None
    if user.is_superuser:
        return ADMIN
    # A request's user carries the role its middleware read (role_for_request).
    cached = getattr(user, "_dashboard_role", _UNREAD)
    if cached is not _UNREAD:
        return cast(str | None, cached)
    names = {g.name for g in user.groups.all()}
    return next((role for role in reversed(ROLES) if role in names), None)


def role_for_request(user: Any) -> str | None:
    """Return the role of a request's user, and keep it on that user for the request's pages."""
    # Only here, on a user loaded for one request: a user object kept longer (a service's)
    # must see a changed role, and refresh_from_db would not clear it.
    role = role_of(user)
    if getattr(user, "is_authenticated", False):
        user._dashboard_role = role
    return role


def has_role(user: Any) -> bool:
    """Say whether the user is signed in and in a role: without one, nothing may be read."""
    return role_of(user) is not None


def can_request(user: Any) -> bool:
    """Say whether the user may request (and cancel their own) actions."""
    return role_of(user) in (OPERATOR, ADMIN)


def can_approve(user: Any) -> bool:
    """Say whether the user may approve or reject other people's actions."""
    return role_of(user) in (APPROVER, ADMIN)
