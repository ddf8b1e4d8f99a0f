"""Create, list or revoke read-only API tokens for CI."""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard.models import ApiToken
from dashboard.services import tokens


class Command(BaseCommand):
    help = (
        "Manage read-only API tokens: create USERNAME (prints the token once), list, revoke PREFIX."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True)
        create = sub.add_parser("create", help="create a token for USERNAME and print it once")
        create.add_argument("username")
        create.add_argument(
            "--name", default="", help="what the token is for, e.g. 'github-actions'"
        )
        sub.add_parser("list", help="list tokens (prefixes only)")
        revoke = sub.add_parser(
            "revoke", help="delete the token with this PREFIX (as listed) or this whole key"
        )
        revoke.add_argument("prefix")

    def handle(self, *args: Any, verb: str, **options: Any) -> None:
        if verb == "create":
            try:
                key = tokens.token_create(username=options["username"], name=options["name"])
            except get_user_model().DoesNotExist as exc:
                raise CommandError(f"no user named {options['username']!r}") from exc
            self.stdout.write(key)
        elif verb == "list":
            for token in ApiToken.objects.select_related("user").order_by("created_at"):
                used = token.last_used_at.isoformat() if token.last_used_at else "never used"
                self.stdout.write(
                    f"{token.prefix}…  {token.user.get_username()}  {token.name}  {used}"
                )
        elif verb == "revoke":
            try:
                tokens.token_revoke(prefix=options["prefix"])
            except tokens.TokenError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write("revoked 1 token")
