"""Verify the audit trail's hash chain: exit 0 with the count, or 1 naming the first bad event."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard import audit


class Command(BaseCommand):
    help = (
        "Check that no audit event was changed, removed or inserted behind the dashboard's back. "
        "Walks every event by default."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--since-checkpoint",
            action="store_true",
            help=(
                "Walk only the events after the last checkpoint signed with the secret key, as "
                "the audit page does (and record a new checkpoint past enough events); edits "
                "before that checkpoint need the full walk."
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        walk = audit.verify_since_checkpoint if options["since_checkpoint"] else audit.verify
        result = walk()
        if result.broken_at is not None:
            raise CommandError(
                f"audit event {result.broken_at} does not verify: {result.reason} "
                f"({result.verified} events before it verified)",
                returncode=1,
            )
        since = ""
        if result.since is not None:
            since = f" ({result.checked} walked since checkpoint event {result.since})"
        self.stdout.write(f"verified {result.verified} audit events{since}")
