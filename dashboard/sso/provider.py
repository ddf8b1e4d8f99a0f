"""The configured provider: its [sso] table, its discovery document, and the library's settings."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import requests
from django.conf import settings

from dashboard.config import ConfigError, NotConfigured, SSOConfig, current_config

logger = logging.getLogger(__name__)
DISCOVERY_TTL = 300.0  # seconds a fetched discovery document is trusted
DISCOVERY_MAX_BYTES = 256 * 1024
BACKEND = "dashboard.sso.backends.OIDCBackend"
CALLBACK = "sso-callback"
ENDPOINTS = ("authorization_endpoint", "token_endpoint", "jwks_uri")
_lock = threading.Lock()
_discovered: dict[str, tuple[float, dict[str, Any]]] = {}
_last_good: list[SSOConfig | None] = [None]


class ProviderUnavailable(Exception):
    """The provider's discovery document cannot be fetched or is unusable; says why."""


def current_sso() -> SSOConfig | None:
    """Return the [sso] table, or None; a config that stopped parsing keeps the last good one."""
    try:
        sso = current_config().sso
    except ConfigError:
        # Falling back to "no [sso]" would turn password sign-in back on where it is off.
        logger.warning("config unreadable: sign-in keeps its last good [sso] settings")
        return _last_good[0]
    _last_good[0] = sso
    return sso


def local_accounts_allowed() -> bool:
    """Say whether username and password sign-in is allowed."""
    sso = current_sso()
    return sso is None or sso.local_accounts


def discovery(sso: SSOConfig) -> dict[str, Any]:
    """Return the provider's discovery document, fetched at most every DISCOVERY_TTL seconds."""
    now = time.monotonic()
    with _lock:
        cached = _discovered.get(sso.discovery_url)
    if cached is not None and now - cached[0] < DISCOVERY_TTL:
        return cached[1]
    try:
        response = requests.get(sso.discovery_url, timeout=sso.timeout, allow_redirects=False)
        response.raise_for_status()
        if len(response.content) > DISCOVERY_MAX_BYTES:
            raise ProviderUnavailable("its discovery document is too large")
        document = response.json()
    except requests.RequestException as exc:
        raise ProviderUnavailable(f"cannot reach it ({type(exc).__name__})") from None
    except ValueError:
        raise ProviderUnavailable("its discovery document is not JSON") from None
    if not isinstance(document, dict):
        raise ProviderUnavailable("its discovery document is not a JSON object")
    # OpenID Connect Discovery 1.0, 4.3: the issuer must be exactly the one configured.
    if str(document.get("issuer", "")).rstrip("/") != sso.issuer:
        raise ProviderUnavailable("its discovery document names another issuer")
    missing = [key for key in ENDPOINTS if not isinstance(document.get(key), str)]
    if missing:
        raise ProviderUnavailable(f"its discovery document has no {missing[0]}")
    with _lock:
        _discovered[sso.discovery_url] = (now, document)
    return document


def forget_discovery() -> None:
    """Make the next sign-in fetch the discovery document again."""
    with _lock:
        _discovered.clear()


def oidc_setting(attr: str, *default: Any) -> Any:
    """Answer mozilla-django-oidc's settings from the [sso] table and the discovery document."""
    sso = current_sso()
    if sso is None:
        raise NotConfigured("single sign-on is not configured")
    if attr == "OIDC_RP_CLIENT_ID":
        return sso.client_id
    if attr == "OIDC_RP_CLIENT_SECRET":
        return sso.client_secret()
    if attr == "OIDC_RP_SIGN_ALGO":
        return sso.sign_algorithm
    if attr == "OIDC_RP_SCOPES":
        return " ".join(sso.scopes)
    if attr == "OIDC_TIMEOUT":
        return sso.timeout
    if attr == "OIDC_RENEW_ID_TOKEN_EXPIRY_SECONDS":
        return sso.session_refresh
    fixed = {
        "OIDC_USE_PKCE": True,
        "OIDC_PKCE_CODE_CHALLENGE_METHOD": "S256",
        "OIDC_USE_NONCE": True,
        # Kept for the provider's end_session_endpoint (id_token_hint); never the access token.
        "OIDC_STORE_ID_TOKEN": True,
        "OIDC_STORE_ACCESS_TOKEN": False,
        "OIDC_AUTHENTICATION_CALLBACK_URL": CALLBACK,
        "OIDC_ALLOW_UNSECURED_JWT": False,
        "OIDC_VERIFY_KID": True,
    }
    if attr in fixed:
        return fixed[attr]
    endpoints = {
        "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
        "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
        "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
        "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
    }
    if attr in endpoints:
        return discovery(sso).get(endpoints[attr])
    if default:
        return getattr(settings, attr, default[0])
    return getattr(settings, attr)
