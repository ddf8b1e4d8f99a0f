"""Request, approve, reject, cancel, show and list actions from the command line."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from dashboard.models import Action
from dashboard.selectors import actions as action_selectors
from dashboard.selectors import forecasts as forecast_selectors
from dashboard.services import actions


def action_document(action: Action, *, now: datetime | None = None) -> dict[str, Any]:
    """Return the action as `action show --json` prints it."""
    # As the pages say it: a run whose worker went silent is interrupted before anything records it.
    status, label = action_selectors.status_shown(action, now=now)
    return {
        "id": action.pk,
        "environment": action.environment,
        "project": action.project,
        "direction": action.direction,
        "target": action.target,
        "status": status,
        "status_label": label,
        "recorded_status": action.status,
        "worker_silent_since": _when(action_selectors.silent_since(action, now=now)),
        "plan": list(action.plan),
        "from_heads": list(action.from_heads),
        "target_heads": list(action.target_heads),
        "after_heads": action.after_heads,
        "queued_behind": action.queued_behind_id,
        "error": action.error,
        "requested_by": action.requested_by_name,
        "reason": action.reason,
        "approvals_required": action.approvals_required,
        "approvals": [
            {
                "user": approval.username,
                "decision": approval.decision,
                "comment": approval.comment,
                "plan_hash": approval.plan_hash,
                "at": approval.created_at.isoformat(),
            }
            for approval in action.approvals.all()
        ],
        "plan_hash": action.plan_hash,
        "fingerprint": action.fingerprint,
        "sql_sha256": action.sql_sha256,
        "sql_note": action.sql_note,
        "lint": action.lint,
        "progress": {"done": action.progress_done, "total": action.progress_total},
        "worker": action.worker,
        "created_at": _when(action.created_at),
        "queued_at": _when(action.queued_at),
        "run_at": _when(action.run_at),
        "scheduled_for": _when(action.scheduled_for),
        "schedule_note": action.schedule_note,
        "started_at": _when(action.started_at),
        "finished_at": _when(action.finished_at),
        # How long the plan may take, from its revisions' successful runs anywhere.
        **forecast_selectors.forecast_item(action),
    }


def _when(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None


def _run_at(text: str) -> datetime:
    """Read --run-at: an ISO 8601 time with its zone (Z or an offset)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CommandError(
            f"--run-at {text[:60]!r} is not an ISO 8601 time like 2026-06-06T02:30+02:00",
            returncode=1,
        ) from None
    if timezone.is_naive(moment):
        raise CommandError(
            "--run-at needs a time zone: end it with Z or an offset like +02:00", returncode=1
        )
    return moment


class Command(BaseCommand):
    help = (
        "Work with actions: request, approve, reject, cancel, show, list. "
        "A refusal (own approval, wrong role, unknown revision) exits with status 1."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

        request = commands.add_parser(
            "request", help="plan an upgrade, downgrade or stamp and request it"
        )
        request.add_argument("--env", required=True, help="the environment's name")
        way = request.add_mutually_exclusive_group(required=True)
        way.add_argument("--upgrade", metavar="REV", help="id, prefix, head, heads or label@head")
        way.add_argument("--downgrade", metavar="REV", help="id, prefix, base or label@rev")
        way.add_argument(
            "--stamp",
            metavar="REV",
            help="id, prefix, head or heads: write the version table of an environment that has"
            " none (adopting Alembic); runs no revision",
        )
        request.add_argument("--user", required=True, help="who requests it")
        request.add_argument("--reason", default="")
        request.add_argument(
            "--queue-behind",
            metavar="ID",
            type=int,
            help="the environment's last unfinished action: plan from where it ends, run after it",
        )
        request.add_argument(
            "--run-at",
            metavar="ISO",
            help="start no earlier than this time, inside a window (2026-06-06T02:30+02:00)",
        )
        request.add_argument("--json", action="store_true", help="print the action as JSON")

        approve = commands.add_parser("approve", help="approve a requested action")
        approve.add_argument("action_id", metavar="ID", type=int)
        approve.add_argument("--user", required=True)
        approve.add_argument("--comment", default="")
        approve.add_argument(
            "--plan-hash",
            help="the plan hash you reviewed (from `action show`); default: the current one",
        )

        reject = commands.add_parser("reject", help="reject a requested action")
        reject.add_argument("action_id", metavar="ID", type=int)
        reject.add_argument("--user", required=True)
        reject.add_argument("--reason", required=True)

        cancel = commands.add_parser("cancel", help="cancel an action, or stop it if it runs")
        cancel.add_argument("action_id", metavar="ID", type=int)
        cancel.add_argument("--user", required=True)

        show = commands.add_parser("show", help="show one action")
        show.add_argument("action_id", metavar="ID", type=int)
        show.add_argument("--json", action="store_true")

        listing = commands.add_parser("list", help="list actions, newest first")
        listing.add_argument("--env")
        listing.add_argument("--status", choices=Action.Status.values)
        listing.add_argument("--json", action="store_true")

    def handle(self, *args: Any, command: str, **options: Any) -> None:
        try:
            getattr(self, f"_{command}")(**options)
        except actions.ActionRefused as exc:
            raise CommandError(str(exc), returncode=1) from exc

    def _request(
        self,
        *,
        env: str,
        upgrade: str | None,
        downgrade: str | None,
        stamp: str | None,
        user: str,
        reason: str,
        queue_behind: int | None,
        json: bool,
        run_at: str | None = None,
        **_: Any,
    ) -> None:
        start = _run_at(run_at) if run_at is not None else None
        chosen = {"upgrade": upgrade, "downgrade": downgrade, "stamp": stamp}
        direction, target = next((k, v) for k, v in chosen.items() if v is not None)
        try:
            action = actions.action_request(
                user=self._user(user),
                environment=env,
                direction=direction,
                target=target,
                reason=reason,
                prepare=True,
                queue_behind=queue_behind,
                run_at=start,
            )
        except actions.AmbiguousTarget as exc:
            if exc.proposals:
                choices = "\n".join(f"  --{direction} {choice}" for choice in exc.proposals)
                raise CommandError(f"{exc}\nexplicit targets:\n{choices}", returncode=1) from exc
            raise
        if json:
            self._print_json(action)
            return
        behind = f", queued behind #{action.queued_behind_id}" if action.queued_behind_id else ""
        if action.direction == Action.Direction.STAMP:
            runs = (
                f"writes {actions.heads_text(action.target_heads)} into the version table,"
                " runs no revision"
            )
        else:
            runs = f"{len(action.plan)} revisions: {' '.join(action.plan)}"
        self.stdout.write(
            f"action #{action.pk} {action.status}{behind}: {action.direction} {action.environment}"
            f" to {action.target}, {runs}"
        )
        self._describe_review(action)

    def _approve(
        self, *, action_id: int, user: str, comment: str, plan_hash: str | None, **_: Any
    ) -> None:
        current = self._action(action_id)
        action = actions.action_approve(
            user=self._user(user),
            action_id=action_id,
            plan_hash=plan_hash or current.plan_hash,
            comment=comment,
        )
        approvals = action.approvals.filter(decision="approve").count()
        self.stdout.write(
            f"action #{action.pk} approved by {user} ({approvals} of"
            f" {action.approvals_required}): now {action.status}; plan hash {action.plan_hash}"
        )

    def _reject(self, *, action_id: int, user: str, reason: str, **_: Any) -> None:
        action = actions.action_reject(user=self._user(user), action_id=action_id, reason=reason)
        self.stdout.write(f"action #{action.pk} rejected by {user}")

    def _cancel(self, *, action_id: int, user: str, **_: Any) -> None:
        action = actions.action_cancel(user=self._user(user), action_id=action_id)
        if action.status == Action.Status.RUNNING:
            self.stdout.write(f"action #{action.pk} is running: its worker was asked to stop it")
        else:
            self.stdout.write(f"action #{action.pk} cancelled")

    def _show(self, *, action_id: int, json: bool, **_: Any) -> None:
        action = self._action(action_id)
        if json:
            self._print_json(action)
            return
        status, label = action_selectors.status_shown(action)
        recorded = f" (recorded: {action.status})" if status != action.status else ""
        lines = [
            f"action #{action.pk}: {action.direction} {action.environment} to {action.target}",
            f"status:        {label}{recorded}"
            + (f" ({action.progress_done}/{action.progress_total})" if action.plan else ""),
            f"requested by:  {action.requested_by_name}"
            + (f": {action.reason}" if action.reason else ""),
            f"from heads:    {actions.heads_text(action.from_heads)}",
            f"plan:          {' '.join(action.plan)}"
            if action.direction != Action.Direction.STAMP
            else "plan:          no revision runs: a stamp writes the version table only",
            f"target heads:  {actions.heads_text(action.target_heads)}",
            f"plan hash:     {action.plan_hash}",
        ]
        if action.run_at is not None:
            lines.append(f"run at:        {action.run_at.isoformat()}")
        if action.status == Action.Status.SCHEDULED:
            when = action.scheduled_for.isoformat() if action.scheduled_for else "not yet known"
            lines.append(f"scheduled for: {when}: {action.schedule_note}")
        if action.after_heads is not None:
            lines.append(f"after heads:   {actions.heads_text(action.after_heads)}")
        if action.error:
            lines.append(f"error:         {action.error}")
        for approval in action.approvals.all():
            lines.append(
                f"{approval.decision}d by {approval.username} at"
                f" {approval.created_at:%Y-%m-%d %H:%M:%S}"
                + (f": {approval.comment}" if approval.comment else "")
            )
        self.stdout.write("\n".join(lines))
        self._describe_review(action)

    def _list(self, *, env: str | None, status: str | None, json: bool, **_: Any) -> None:
        query = Action.objects.prefetch_related("approvals")
        if env:
            query = query.filter(environment=env)
        now = timezone.now()
        if status:
            query = action_selectors.with_status_shown(query, status, now=now)
        found = list(query[:200])
        if json:
            self.stdout.write(_dumps([action_document(action, now=now) for action in found]))
            return
        for action in found:
            shown, label = action_selectors.status_shown(action, now=now)
            # The label says since when the worker is silent; other statuses need no more words.
            note = f"  ({label.removeprefix(f'{shown} — ')})" if shown != action.status else ""
            self.stdout.write(
                f"#{action.pk:<5} {shown:<11} {action.environment:<16}"
                f" {action.direction:<9} {action.target:<16} {action.requested_by_name}{note}"
            )

    def _describe_review(self, action: Action) -> None:
        if action.sql_note:
            self.stdout.write(f"SQL: {action.sql_note}")
        elif action.sql_sha256:
            self.stdout.write(
                f"SQL sha256 {action.sql_sha256}, {len(action.sql.splitlines())} lines"
            )
        warnings = [item for item in action.lint if item.get("line") is not None]
        for item in warnings:
            self.stdout.write(f"lint line {item['line']}: {item['message']} ({item['rule']})")
        for item in action.lint:
            if item.get("line") is None:
                self.stdout.write(f"lint: {item['message']}")

    def _print_json(self, action: Action) -> None:
        self.stdout.write(_dumps(action_document(action)))

    def _action(self, action_id: int) -> Action:
        action = Action.objects.filter(pk=action_id).first()
        if action is None:
            raise CommandError(f"no action #{action_id}", returncode=1)
        return action

    def _user(self, username: str) -> Any:
        user = get_user_model().objects.filter(username=username).first()
        if user is None or not user.is_active:
            raise CommandError(f"no active user named {username!r}", returncode=1)
        return user


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False)
