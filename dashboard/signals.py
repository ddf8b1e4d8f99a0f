"""Receivers that hand sign-ins, sign-outs and failed sign-ins to the sign-in service."""

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest

# The sign-in service (audit, notifications, mail) is imported on the first sign-in, not at
# start-up: ready() imports this module, and command-line reads never sign anyone in.


@receiver(user_logged_in)
def audit_sign_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """Record a successful sign-in, saying so when it came through the identity provider."""
    from dashboard.services import signin

    through_sso = getattr(user, "backend", "") == "dashboard.sso.backends.OIDCBackend"
    signin.signin_succeeded(user=user, request=request, method="oidc" if through_sso else None)


@receiver(user_logged_out)
def audit_sign_out(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """Record a sign-out (user is None when the session had already expired)."""
    from dashboard.services import signin

    if user is not None:
        signin.signin_ended(user=user, request=request)


@receiver(user_login_failed)
def audit_sign_in_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    """Record a failed sign-in under the username that was tried (never the password)."""
    if "nonce" in credentials:
        return  # the identity provider's callback records its refusals with their reasons
    from dashboard.services import signin

    signin.signin_failed(username=str(credentials.get("username", "")), request=request)
