"""Run the dashboard's worker: start-up housekeeping, then django-tasks-db's worker loop."""

from __future__ import annotations

from typing import Any

from django_tasks_db.management.commands.db_worker import Command as DbWorkerCommand

from dashboard.worker import Housekeeping, keep_memory_private


class Command(DbWorkerCommand):
    help = (
        "Mark interrupted actions, record config changes and schedule the periodic status"
        " refresh and housekeeping, then run tasks like db_worker (same options)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        keep_memory_private()
        report = Housekeeping().start_up()
        if options.get("verbosity", 1) >= 1:
            for action_id in report.interrupted:
                self.stdout.write(f"action #{action_id} was interrupted: its worker went silent")
            for action_id in report.requeued:
                self.stdout.write(f"action #{action_id} was queued again: its queue entry was lost")
            if report.config_recorded:
                self.stdout.write("the config changed since it was last recorded: audited")
            for problem in report.problems:
                self.stderr.write(f"housekeeping: {problem}")
        super().handle(*args, **options)
