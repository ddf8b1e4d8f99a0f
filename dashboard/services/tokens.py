"""Read-only API tokens for CI: shown once, stored as sha256."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone

from dashboard.models import ApiToken

PREFIX = "mdb_"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def token_create(*, username: str, name: str = "") -> str:
    """Create a token for the user and return its key (the only time it is visible)."""
    user = get_user_model().objects.get(username=username)
    key = PREFIX + secrets.token_urlsafe(32)
    ApiToken.objects.create(user=user, name=name, prefix=key[:12], key_hash=_digest(key))
    return key


def token_user(key: str) -> Any | None:
    """Return the active user a token belongs to, or None."""
    if not key.startswith(PREFIX):
        return None
    token = ApiToken.objects.select_related("user").filter(key_hash=_digest(key)).first()
    if token is None or not token.user.is_active:
        return None
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token.user


def token_revoke(*, prefix: str) -> int:
    """Delete the tokens whose key starts with prefix; return how many."""
    deleted, _ = ApiToken.objects.filter(prefix__startswith=prefix[:12]).delete()
    return deleted
