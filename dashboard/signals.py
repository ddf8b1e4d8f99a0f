"""Receivers that hand sign-ins, sign-outs and failed sign-ins to the sign-in service."""

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest

from dashboard.services import signin


@receiver(user_logged_in)
def audit_sign_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """Record a successful sign-in."""
    signin.signin_succeeded(user=user, request=request)


@receiver(user_logged_out)
def audit_sign_out(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """Record a sign-out (user is None when the session had already expired)."""
    if user is not None:
        signin.signin_ended(user=user, request=request)


@receiver(user_login_failed)
def audit_sign_in_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    """Record a failed sign-in under the username that was tried (never the password)."""
    signin.signin_failed(username=str(credentials.get("username", "")), request=request)
