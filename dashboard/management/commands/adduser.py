"""Create a dashboard user with a role, or change an existing user's role."""

import getpass
import os
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard.roles import ROLES
from dashboard.services import users


class Command(BaseCommand):
    help = (
        "Create USERNAME with --role, or change its role "
        "(password from --password, DASHBOARD_PASSWORD, or a prompt)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=ROLES)
        parser.add_argument(
            "--password", help="prefer DASHBOARD_PASSWORD: arguments show in the process list"
        )

    def handle(
        self, *args: Any, username: str, role: str, password: str | None, **options: Any
    ) -> None:
        password = password or os.environ.get("DASHBOARD_PASSWORD") or None
        exists = users.user_exists(username=username)
        if password is None and not exists:
            password = self._prompt()
        try:
            created = users.user_set_role(username=username, role=role, password=password)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except ValidationError as exc:
            raise CommandError(f"password refused: {' '.join(exc.messages)}") from exc
        verb = "created" if created else "updated"
        self.stdout.write(f"{verb} {username} with role {role}")

    def _prompt(self) -> str:
        first = getpass.getpass("Password: ")
        if not first or first != getpass.getpass("Password (again): "):
            raise CommandError("passwords are empty or do not match")
        return first
