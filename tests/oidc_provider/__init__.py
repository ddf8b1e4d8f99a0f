"""A real OpenID Connect provider for the tests: django-oauth-toolkit in its own Django site."""
