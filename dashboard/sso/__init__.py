"""OpenID Connect sign-in through mozilla-django-oidc, configured by the [sso] table."""
