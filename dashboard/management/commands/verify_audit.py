"""Verify the audit trail's hash chain: exit 0 with the count, or 1 naming the first bad event."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from dashboard import audit


class Command(BaseCommand):
    help = "Check that no audit event was changed, removed or inserted behind the dashboard's back."

    def handle(self, *args: Any, **options: Any) -> None:
        result = audit.verify()
        if result.broken_at is not None:
            raise CommandError(
                f"audit event {result.broken_at} does not verify: {result.reason} "
                f"({result.verified} events before it verified)",
                returncode=1,
            )
        self.stdout.write(f"verified {result.verified} audit events")
