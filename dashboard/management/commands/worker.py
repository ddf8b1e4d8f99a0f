"""Run the dashboard's worker: start-up housekeeping, then django-tasks-db's worker loop."""

from __future__ import annotations

import os
from typing import Any

from django.utils.autoreload import DJANGO_AUTORELOAD_ENV
from django_tasks_db.management.commands.db_worker import Command as DbWorkerCommand

from dashboard.notify.sender import NotificationSender
from dashboard.worker import Housekeeping, WorkerBeats, keep_memory_private


class Command(DbWorkerCommand):
    help = (
        "Mark interrupted actions, record config changes and schedule the periodic status"
        " refresh and housekeeping, then run tasks like db_worker (same options)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        keep_memory_private()
        # With --reload the parent only watches files; the child it starts runs the tasks.
        watcher = options.get("reload") and os.environ.get(DJANGO_AUTORELOAD_ENV) != "true"
        beats = None if watcher else WorkerBeats()
        if beats is not None:
            beats.start()
        # Its own threads: a slow or dead receiver never holds up the task loop below.
        sender = None if watcher else NotificationSender()
        if sender is not None:
            sender.start()
        try:
            self._start_up(options)
            super().handle(*args, **options)
        finally:
            if sender is not None:
                sender.stop()
            # A clean stop (SIGTERM, Ctrl-C: db_worker exits through SystemExit) says so at once.
            if beats is not None:
                beats.stop()

    def _start_up(self, options: dict[str, Any]) -> None:
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
