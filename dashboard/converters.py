"""URL converters: an environment's name in a path, a fleet member's "fleet/member" too."""

from __future__ import annotations

from django.urls import register_converter


class EnvironmentName:
    """Match an environment name; a member's "/" travels as "~", which no name may hold."""

    regex = r"[A-Za-z0-9][A-Za-z0-9_.-]*(?:~[A-Za-z0-9][A-Za-z0-9_.-]*)?"

    def to_python(self, value: str) -> str:
        return value.replace("~", "/")

    def to_url(self, value: str) -> str:
        return str(value).replace("/", "~")


def register() -> None:
    """Make <env:name> usable in URL patterns."""
    register_converter(EnvironmentName, "env")
