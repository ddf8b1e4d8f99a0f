"""Authentication backends: passwords unless local accounts are off, and OpenID Connect."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import jwt
import requests
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import SuspiciousOperation, ValidationError
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from dashboard.config import NotConfigured
from dashboard.models import SSOIdentity
from dashboard.services import users
from dashboard.sso.provider import ProviderUnavailable, current_sso, local_accounts_allowed
from dashboard.sso.provider import oidc_setting as _oidc_setting

logger = logging.getLogger(__name__)
ACTOR = "sso"  # who changed a role the provider's groups gave
MAX_GROUPS = 200  # a claim beyond this is refused: no one is in that many groups on purpose
SUBJECT_MAX = 255  # OpenID Connect Core 2: sub is at most 255 ASCII characters


@dataclass
class Failure:
    """Why a sign-in through the provider was refused, for the page and the audit trail."""

    reason: str
    detail: str
    username: str = ""
    groups: list[str] = field(default_factory=list)


def failure_of(request: HttpRequest) -> Failure | None:
    """Return the failure the backend left on this request, if any."""
    return getattr(request, "sso_failure", None)


class LocalAccountsBackend(ModelBackend):
    """Django's username and password backend, refusing all when [sso] local_accounts = false."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> Any:
        if not local_accounts_allowed():
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)

    def get_user(self, user_id: Any) -> Any:
        # Turning local accounts off ends the password sessions too, at their next request.
        return super().get_user(user_id) if local_accounts_allowed() else None


class OIDCBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's code flow, mapping the provider's groups to the dashboard's roles."""

    get_settings = staticmethod(_oidc_setting)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Django builds a backend for every password sign-in and every request's session:
        # the provider is only asked once a callback authenticates.
        self.UserModel = get_user_model()

    def _load(self) -> None:
        self.OIDC_OP_TOKEN_ENDPOINT = self.get_settings("OIDC_OP_TOKEN_ENDPOINT")
        self.OIDC_OP_USER_ENDPOINT = self.get_settings("OIDC_OP_USER_ENDPOINT")
        self.OIDC_OP_JWKS_ENDPOINT = self.get_settings("OIDC_OP_JWKS_ENDPOINT")
        self.OIDC_RP_CLIENT_ID = self.get_settings("OIDC_RP_CLIENT_ID")
        self.OIDC_RP_CLIENT_SECRET = self.get_settings("OIDC_RP_CLIENT_SECRET")
        self.OIDC_RP_SIGN_ALGO = self.get_settings("OIDC_RP_SIGN_ALGO")
        self.OIDC_RP_IDP_SIGN_KEY = None

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> Any:
        # Only the callback view passes a nonce; a password form never reaches the provider.
        if request is None or "nonce" not in kwargs or "password" in kwargs:
            return None
        if current_sso() is None:
            return None
        try:
            self._load()
            return super().authenticate(request, **kwargs)
        except ProviderUnavailable as exc:
            self._fail("provider_unavailable", f"the provider is unavailable: {exc}")
        except NotConfigured as exc:
            self._fail("not_configured", str(exc))
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            # The token endpoint's answer may quote the code: say only what it was.
            self._fail("token_refused", f"the provider refused the code (HTTP {status})")
        except requests.RequestException as exc:
            self._fail("provider_unavailable", f"cannot reach the provider ({type(exc).__name__})")
        except jwt.ExpiredSignatureError:
            self._fail("token_expired", "the provider's ID token has expired")
        except jwt.PyJWTError as exc:
            self._fail(
                "token_invalid", f"the provider's ID token is invalid ({type(exc).__name__})"
            )
        except SuspiciousOperation as exc:
            self._fail("token_invalid", f"the provider's answer was refused: {exc}")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._fail(
                "token_invalid", f"the provider's answer is malformed ({type(exc).__name__})"
            )
        return None

    def get_user(self, user_id: Any) -> Any:
        # ModelBackend's: a deactivated account's session ends; so do all without [sso].
        return ModelBackend.get_user(self, user_id) if current_sso() is not None else None

    def get_token(self, payload: dict[str, Any]) -> Any:
        answer = super().get_token(payload)
        if not isinstance(answer, dict):
            raise SuspiciousOperation("the token endpoint's answer is no JSON object")
        if not isinstance(answer.get("id_token"), str):
            raise SuspiciousOperation("the token endpoint's answer holds no ID token")
        return answer

    def verify_token(self, token: str, **kwargs: Any) -> Any:
        payload = super().verify_token(token, **kwargs)
        sso = current_sso()
        if sso is None:  # the [sso] table went away during this sign-in
            raise SuspiciousOperation("single sign-on is no longer configured")
        # The library checks the signature, exp and the nonce; the issuer and audience are ours.
        if str(payload.get("iss", "")).rstrip("/") != sso.issuer:
            raise SuspiciousOperation("the ID token names another issuer")
        audience = payload.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if sso.client_id not in audiences:
            raise SuspiciousOperation("the ID token is for another client")
        if len(audiences) > 1 and payload.get("azp") != sso.client_id:
            raise SuspiciousOperation("the ID token was issued to another client (azp)")
        return payload

    def get_userinfo(self, access_token: str, id_token: str, payload: dict[str, Any]) -> Any:
        if not self.OIDC_OP_USER_ENDPOINT:
            return dict(payload)
        info = super().get_userinfo(access_token, id_token, payload)
        if not isinstance(info, dict) or info.get("sub") != payload.get("sub"):
            # OpenID Connect Core 5.3.2: a different sub must not be used.
            raise SuspiciousOperation("the userinfo answer is about another subject")
        return {**payload, **info}

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> Any:
        sso = current_sso()
        if sso is None:
            raise SuspiciousOperation("single sign-on is no longer configured")
        claims = self.get_userinfo(access_token, id_token, payload)
        raw_name = claims.get(sso.username_claim)
        if not isinstance(raw_name, str) or not raw_name.strip():
            return self._fail("no_username", f"the provider sent no {sso.username_claim} claim")
        username = self.UserModel.normalize_username(raw_name.strip())
        try:
            self.UserModel._meta.get_field("username").run_validators(username)
        except ValidationError:
            return self._fail(
                "bad_username",
                f"the {sso.username_claim} claim is no valid username",
                username=username[:150],
            )
        groups = claims.get(sso.groups_claim, [])
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, list) or len(groups) > MAX_GROUPS:
            return self._fail(
                "bad_groups", f"the {sso.groups_claim} claim is no list of groups", username
            )
        groups = [g for g in groups if isinstance(g, str)]
        subject = payload.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > SUBJECT_MAX:
            return self._fail("no_subject", "the provider sent no usable sub claim", username)
        link = (
            SSOIdentity.objects.select_related("user")
            .filter(issuer=sso.issuer, subject=subject)
            .first()
        )
        user = link.user if link is not None else None
        if user is None and self.UserModel.objects.filter(username__iexact=username).exists():
            # The name is taken by an account the provider never signed in: a local one, or one
            # another provider user holds. Matching by name would hand it over.
            return self._fail("name_taken", _taken(username, sso.display_name), username, groups)
        if user is not None:
            username = user.get_username()  # the linked account's, whatever the claim says now
            if not user.is_active:
                return self._fail(
                    "inactive", "this account is deactivated in the dashboard", username
                )
        role = sso.role_for(groups)
        if role is None:
            if user is not None:
                # The provider took the groups away: the role goes too, audited.
                users.user_clear_role(username=username, actor_name=ACTOR)
            return self._fail(
                "no_role",
                f"your account at {sso.display_name} is in no group that gives a dashboard role",
                username,
                groups,
            )
        if user is None:
            try:
                with transaction.atomic():
                    users.user_set_role(username=username, role=role, actor_name=ACTOR, new=True)
                    user = self.UserModel.objects.get(username=username)
                    SSOIdentity.objects.create(user=user, issuer=sso.issuer, subject=subject)
            except IntegrityError:
                # Another sign-in took the name (or linked this subject) a moment ago.
                return self._fail(
                    "name_taken", _taken(username, sso.display_name), username, groups
                )
        else:
            users.user_set_role(username=username, role=role, actor_name=ACTOR)
            user.refresh_from_db()
        email = claims.get("email")
        if isinstance(email, str) and len(email) <= 254 and user.email != email:
            user.email = email
            user.save(update_fields=["email"])
        return user

    def _fail(
        self, reason: str, detail: str, username: str = "", groups: list[str] | None = None
    ) -> None:
        request = getattr(self, "request", None)
        if request is not None:
            request.sso_failure = Failure(reason, detail, username, list(groups or [])[:20])
        logger.info("single sign-on refused (%s): %s", reason, detail)
        return None


def _taken(username: str, provider: str) -> str:
    return (
        f"an account named {username} already exists here and is not linked to your"
        f" {provider} account; ask a dashboard admin"
    )
