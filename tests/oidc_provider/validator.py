"""The provider's claims: the username, email and the user's groups in a groups claim."""

from __future__ import annotations

import time
from typing import Any

from oauth2_provider.oauth2_validators import OAuth2Validator

# A provider-side switch: members get ID tokens that have already expired.
EXPIRED_TOKENS = "provider:expired-id-tokens"


class GroupsValidator(OAuth2Validator):
    """django-oauth-toolkit's validator, adding the groups claim (with the profile scope)."""

    oidc_claim_scope = {**OAuth2Validator.oidc_claim_scope, "groups": "profile"}

    def get_additional_claims(self, request: Any) -> dict[str, Any]:
        user = request.user
        groups = sorted(user.groups.exclude(name=EXPIRED_TOKENS).values_list("name", flat=True))
        return {"preferred_username": user.username, "email": user.email, "groups": groups}

    def get_id_token_dictionary(self, token: Any, token_handler: Any, request: Any) -> Any:
        claims, expiration = super().get_id_token_dictionary(token, token_handler, request)
        if request.user.groups.filter(name=EXPIRED_TOKENS).exists():
            claims["exp"] = int(time.time()) - 120
        return claims, expiration

    def validate_silent_login(self, request: Any) -> bool:
        # prompt=none: the authorize view only runs for a signed-in user (LoginRequiredMixin).
        return True

    def validate_silent_authorization(self, request: Any) -> bool:
        return True  # the dashboard's client skips the consent screen
