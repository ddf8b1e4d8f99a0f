"""User accounts and their roles."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.db import transaction

from dashboard import audit
from dashboard.roles import ADMIN, ROLES, role_of


def user_exists(*, username: str) -> bool:
    """Say whether a user with this name exists."""
    return get_user_model().objects.filter(username=username).exists()


@transaction.atomic
def user_set_role(
    *,
    username: str,
    role: str,
    password: str | None = None,
    actor_name: str = audit.SYSTEM,
    new: bool = False,
) -> bool:
    """Create the user or change its role (and password if given); return True when created.

    With new, an account of that name that exists already raises IntegrityError, untouched.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    # As the sign-in form will see it: stripped and NFKC-normalised.
    username = get_user_model().normalize_username(username.strip())
    if not username:
        raise ValueError("a username is required")
    user_model = get_user_model()
    if new:
        user, created = user_model.objects.create(username=username), True
    else:
        user, created = user_model.objects.get_or_create(username=username)
    before = None if created else role_of(user)
    if password:
        validate_password(password, user)  # ValidationError names what the rules want
        user.set_password(password)
    elif created:
        user.set_unusable_password()
    # Only admins reach Django's admin site.
    user.is_staff = user.is_superuser = role == ADMIN
    user.save()
    # The data migration creates the groups, but a database flush (as transactional tests do)
    # removes them: recreate rather than fail.
    group, _ = Group.objects.get_or_create(name=role)
    user.groups.set([group])
    if before != role:
        audit.record(
            "user.role_changed",
            actor_name=actor_name,
            payload={"username": username, "from": before, "to": role, "created": created},
        )
    return created


@transaction.atomic
def user_clear_role(*, username: str, actor_name: str = audit.SYSTEM) -> bool:
    """Take every role from an existing user; return True when it had one (audited)."""
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        return False
    before = role_of(user)
    user.groups.clear()
    user.is_staff = user.is_superuser = False
    user.save(update_fields=["is_staff", "is_superuser"])
    if before is None:
        return False
    audit.record(
        "user.role_changed",
        actor_name=actor_name,
        payload={"username": username, "from": before, "to": None, "created": False},
    )
    return True
