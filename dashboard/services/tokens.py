"""Read-only API tokens for CI: shown once, stored as sha256."""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import DatabaseError
from django.db.models import Q
from django.utils import timezone

from dashboard.models import ApiToken
from dashboard.services import brief

logger = logging.getLogger(__name__)

PREFIX = "mdb_"
SHOWN = 12  # characters of a key kept in clear to name the token
USE_RECORDED_EVERY = timedelta(seconds=60)  # last_used_at is this precise, and no more
USE_WAIT_MS = 100  # how long recording a use may wait for a lock before it is skipped


class TokenError(Exception):
    """A token cannot be revoked as asked."""


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def token_create(*, username: str, name: str = "") -> str:
    """Create a token for the user and return its key (the only time it is visible)."""
    user = get_user_model().objects.get(username=username)
    key = PREFIX + secrets.token_urlsafe(32)
    ApiToken.objects.create(user=user, name=name, prefix=key[:SHOWN], key_hash=_digest(key))
    return key


def token_user(key: str) -> Any | None:
    """Return the active user a token belongs to, or None."""
    if not key.startswith(PREFIX):
        return None
    token = ApiToken.objects.select_related("user").filter(key_hash=_digest(key)).first()
    if token is None or not token.user.is_active:
        return None
    _record_use(token)
    return token.user


def _record_use(token: ApiToken) -> None:
    """Record that the token was used, at most once a minute, never at the cost of the read."""
    now = timezone.now()
    stale = now - USE_RECORDED_EVERY
    if token.last_used_at is not None and token.last_used_at >= stale:
        return
    try:
        with brief.transaction_waiting_at_most(USE_WAIT_MS):
            ApiToken.objects.filter(
                Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale), pk=token.pk
            ).update(last_used_at=now)
    except DatabaseError:  # a locked or read-only database: the next read tries again
        logger.warning(
            "could not record the use of API token %s (the read goes on)",
            token.prefix,
            exc_info=True,
        )


def token_revoke(*, prefix: str) -> int:
    """Delete the one token named by its listed prefix (or its whole key); return 1."""
    # Only an exact prefix names a token: "mdb_" or "" would otherwise match them all.
    matches = ApiToken.objects.filter(prefix=prefix[:SHOWN]) if len(prefix) >= SHOWN else None
    if matches is None or not matches.exists():
        raise TokenError(
            f"no token has the prefix {prefix[:SHOWN]!r}: give the {SHOWN} characters"
            " that `apitoken list` shows"
        )
    if len(prefix) > SHOWN:
        matches = matches.filter(key_hash=_digest(prefix))
        if not matches.exists():
            raise TokenError("no token has that key")
    if matches.count() > 1:
        raise TokenError(
            f"{matches.count()} tokens share the prefix {prefix!r}: give the whole key"
        )
    deleted, _ = matches.delete()
    return deleted
