"""Single sign-on: the [sso] table naming an OpenID Connect provider and its groups' roles."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dashboard.config.base import ConfigError, NotConfigured, check_keys, get_value
from dashboard.config.notify import VARIABLE
from dashboard.roles import ROLES

SSO_KEYS = {
    "issuer",
    "discovery_url",
    "client_id",
    "client_secret_env",
    "groups_claim",
    "username_claim",
    "roles",
    "local_accounts",
    "display_name",
    "scopes",
    "timeout",
    "sign_algorithm",
    "session_refresh",
}
SIGN_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
DISCOVERY_PATH = "/.well-known/openid-configuration"
MAX_TIMEOUT = 60.0
MAX_SESSION_REFRESH = 24 * 3600.0


@dataclass(frozen=True)
class SSOConfig:
    """One OpenID Connect provider: where it is, this dashboard's client, and groups to roles."""

    issuer: str
    client_id: str
    client_secret_env: str
    discovery_url: str
    # role -> the provider's groups that give it
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)
    display_name: str = "single sign-on"
    groups_claim: str = "groups"
    username_claim: str = "preferred_username"
    local_accounts: bool = True
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    timeout: float = 5.0
    sign_algorithm: str = "RS256"
    # seconds a session signed in through the provider lasts before the provider is asked again
    session_refresh: float = 900.0

    @property
    def secret_variables(self) -> set[str]:
        """Return the variable holding the client secret."""
        return {self.client_secret_env}

    def client_secret(self) -> str:
        """Return the client secret from its variable, or raise NotConfigured."""
        value = os.environ.get(self.client_secret_env, "")
        if not value:
            raise NotConfigured(f"not configured: {self.client_secret_env} is not set")
        return value

    def role_for(self, groups: list[str]) -> str | None:
        """Return the strongest role one of these groups maps to, or None."""
        held = set(groups)
        return next(
            (role for role in reversed(ROLES) if held & set(self.roles.get(role, ()))), None
        )


def sso_of(path: Path, table: dict[str, Any]) -> SSOConfig:
    """Read the [sso] table, raising ConfigError naming the key."""
    where = "sso"
    check_keys(path, where, table, SSO_KEYS)
    issuer = (_url(path, table, "issuer", required=True) or "").rstrip("/")
    discovery = _url(path, table, "discovery_url", required=False) or issuer + DISCOVERY_PATH
    client_id = get_value(path, where, table, "client_id", str, None)
    if not client_id:
        raise ConfigError(f"{path}: [sso] needs client_id, the dashboard's id at the provider")
    secret_env = get_value(path, where, table, "client_secret_env", str, None)
    if secret_env is None or not VARIABLE.match(secret_env):
        # Not quoted: someone may have pasted the secret itself here.
        raise ConfigError(
            f"{path}: [sso] client_secret_env must name the environment variable holding the"
            " client secret (letters, digits, _), never the secret itself"
        )
    roles_raw = table.get("roles")
    if not isinstance(roles_raw, dict) or not roles_raw:
        raise ConfigError(
            f"{path}: [sso] roles must be a table of role = [groups], e.g."
            ' roles = {admin = ["dash-admins"], viewer = ["engineering"]}'
        )
    roles: dict[str, tuple[str, ...]] = {}
    for role, groups in roles_raw.items():
        if role not in ROLES:
            raise ConfigError(
                f"{path}: [sso] roles: unknown role {role[:40]!r}; roles are {', '.join(ROLES)}"
            )
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            raise ConfigError(f"{path}: [sso] roles.{role} must be a list of group names")
        roles[role] = tuple(groups)
    scopes = table.get("scopes", ["openid", "email", "profile"])
    if not isinstance(scopes, list) or not all(isinstance(s, str) and s for s in scopes):
        raise ConfigError(f"{path}: [sso] scopes must be a list of strings")
    if "openid" not in scopes:
        raise ConfigError(f"{path}: [sso] scopes must include openid")
    timeout = get_value(path, where, table, "timeout", float, 5.0)
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ConfigError(f"{path}: [sso] timeout must be above 0 and at most {MAX_TIMEOUT:g} s")
    algorithm = get_value(path, where, table, "sign_algorithm", str, "RS256")
    if algorithm not in SIGN_ALGORITHMS:
        # HS256 would verify tokens with the client secret: anyone holding it could mint them.
        raise ConfigError(
            f"{path}: [sso] sign_algorithm must be one of {', '.join(SIGN_ALGORITHMS)}"
        )
    refresh = get_value(path, where, table, "session_refresh", float, 900.0)
    if not 1 <= refresh <= MAX_SESSION_REFRESH:
        raise ConfigError(
            f"{path}: [sso] session_refresh must be 1 to {MAX_SESSION_REFRESH:g} seconds"
        )
    local = table.get("local_accounts", True)
    if not isinstance(local, bool):
        raise ConfigError(f"{path}: [sso] local_accounts must be true or false")
    return SSOConfig(
        issuer=issuer,
        client_id=client_id,
        client_secret_env=secret_env,
        discovery_url=discovery,
        roles=roles,
        display_name=get_value(path, where, table, "display_name", str, "single sign-on")
        or "single sign-on",
        groups_claim=get_value(path, where, table, "groups_claim", str, "groups") or "groups",
        username_claim=get_value(path, where, table, "username_claim", str, "preferred_username")
        or "preferred_username",
        local_accounts=local,
        scopes=tuple(scopes),
        timeout=timeout,
        sign_algorithm=algorithm,
        session_refresh=refresh,
    )


def _url(path: Path, table: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = get_value(path, "sso", table, key, str, None)
    if value is None:
        if required:
            raise ConfigError(f"{path}: [sso] needs {key}, the provider's issuer URL")
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{path}: [sso] {key} must be an http(s) URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"{path}: [sso] {key} must hold no user, password, query or fragment")
    return value
