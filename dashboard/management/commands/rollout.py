"""Request, decide, steer, show and list rollouts of fleets from the command line."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard.models import Rollout
from dashboard.selectors import rollouts as rollout_selectors
from dashboard.services import rollouts
from dashboard.services.actions import ActionRefused, heads_text

ERROR_SHOWN = 300  # characters of a member's error the text output shows (--json has it all)
# Every member of a running rollout is approved: the text says what that means for one not started.
LABELS = {"approved": "waiting"}


class Command(BaseCommand):
    help = (
        "Work with rollouts of fleets: request, approve, reject, pause, resume, cancel, show, "
        "list. A refusal (own approval, wrong role, wrong state, unknown rollout) exits with "
        "status 1."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

        request = commands.add_parser(
            "request",
            help="read the fleet's members, group them by plan, render each group's SQL, and"
            " request the rollout",
        )
        request.add_argument("--fleet", required=True, help="the fleet's name")
        way = request.add_mutually_exclusive_group(required=True)
        way.add_argument("--upgrade", metavar="REV", help="id, prefix, head, heads or label@head")
        way.add_argument("--downgrade", metavar="REV", help="id, prefix, base or label@rev")
        request.add_argument("--user", required=True, help="who requests it")
        request.add_argument(
            "--members",
            metavar="GLOB",
            default="*",
            help="only the members whose name (without the fleet) matches, e.g. 'tenant_1*'",
        )
        request.add_argument("--reason", default="")
        request.add_argument("--json", action="store_true", help="print the rollout as JSON")

        approve = commands.add_parser("approve", help="approve a requested rollout")
        approve.add_argument("rollout_id", metavar="ID", type=int)
        approve.add_argument("--user", required=True)
        approve.add_argument("--comment", default="")
        approve.add_argument(
            "--rollout-hash",
            metavar="H",
            help="the rollout hash you reviewed (from `rollout show`); default: the current one,"
            " so you approve whatever the rollout is now",
        )

        reject = commands.add_parser("reject", help="reject a requested rollout")
        reject.add_argument("rollout_id", metavar="ID", type=int)
        reject.add_argument("--user", required=True)
        reject.add_argument("--comment", default="")

        pause = commands.add_parser(
            "pause", help="pause a running rollout: running members finish, no new one starts"
        )
        pause.add_argument("rollout_id", metavar="ID", type=int)
        pause.add_argument("--user", required=True)

        resume = commands.add_parser(
            "resume", help="resume a paused rollout, skipping the members that failed so far"
        )
        resume.add_argument("rollout_id", metavar="ID", type=int)
        resume.add_argument("--user", required=True)

        cancel = commands.add_parser(
            "cancel",
            help="cancel a rollout: members not started are cancelled, running ones finish",
        )
        cancel.add_argument("rollout_id", metavar="ID", type=int)
        cancel.add_argument("--user", required=True)

        show = commands.add_parser("show", help="show one rollout: waves, counts, members")
        show.add_argument("rollout_id", metavar="ID", type=int)
        show.add_argument("--sql", action="store_true", help="with each group's offline SQL")
        show.add_argument("--json", action="store_true")

        listing = commands.add_parser("list", help="list rollouts, newest first")
        listing.add_argument("--fleet")
        listing.add_argument("--json", action="store_true")

    def handle(self, *args: Any, command: str, **options: Any) -> None:
        try:
            getattr(self, f"_{command}")(**options)
        except ActionRefused as exc:
            raise CommandError(str(exc), returncode=1) from exc

    def _request(
        self,
        *,
        fleet: str,
        upgrade: str | None,
        downgrade: str | None,
        user: str,
        members: str,
        reason: str,
        json: bool,
        **_: Any,
    ) -> None:
        direction, target = (
            ("upgrade", upgrade) if upgrade is not None else ("downgrade", downgrade)
        )
        rollout = rollouts.rollout_request(
            user=self._user(user),
            fleet=fleet,
            direction=direction,
            target=target or "",
            members=members,
            reason=reason,
            prepare=True,
        )
        summary = self._summary(rollout.pk)
        if json:
            self.stdout.write(_dumps(summary))
            return
        self.stdout.write(
            f"rollout #{rollout.pk} {rollout.status}: {rollout.direction} {rollout.member_count}"
            f" member(s) of {rollout.fleet} to {rollout.target} in waves of"
            f" {', '.join(str(n) for n in rollout.wave_sizes)}, at most {rollout.parallel} at once,"
            f" on error {rollout.on_error}"
        )
        self._describe_groups(summary)
        self._describe_left_out(summary)
        if rollout.status == Rollout.Status.REQUESTED:
            self.stdout.write(
                f"needs {rollout.approvals_required} approval(s); rollout hash"
                f" {rollout.rollout_hash}"
            )
        elif rollout.error:
            self.stdout.write(f"error: {rollout.error}")

    def _approve(
        self, *, rollout_id: int, user: str, comment: str, rollout_hash: str | None, **_: Any
    ) -> None:
        current = self._rollout(rollout_id)
        rollout = rollouts.rollout_approve(
            user=self._user(user),
            rollout_id=rollout_id,
            rollout_hash=rollout_hash or current.rollout_hash,
            comment=comment,
        )
        approvals = rollout.approvals.filter(decision="approve").count()
        self.stdout.write(
            f"rollout #{rollout.pk} approved by {user} ({approvals} of"
            f" {rollout.approvals_required}): now {rollout.status}; rollout hash"
            f" {rollout.rollout_hash}"
        )

    def _reject(self, *, rollout_id: int, user: str, comment: str, **_: Any) -> None:
        rollout = rollouts.rollout_reject(
            user=self._user(user), rollout_id=rollout_id, comment=comment
        )
        self.stdout.write(f"rollout #{rollout.pk} rejected by {user}")

    def _pause(self, *, rollout_id: int, user: str, **_: Any) -> None:
        rollout = rollouts.rollout_pause(user=self._user(user), rollout_id=rollout_id)
        self.stdout.write(
            f"rollout #{rollout.pk} paused in wave {rollout.current_wave}: running members"
            " finish, no new one starts"
        )

    def _resume(self, *, rollout_id: int, user: str, **_: Any) -> None:
        before = set(self._rollout(rollout_id).skipped)
        rollout = rollouts.rollout_resume(user=self._user(user), rollout_id=rollout_id)
        newly = [name for name in rollout.skipped if name not in before]
        skipping = f", skipping {', '.join(newly)}" if newly else ""
        self.stdout.write(f"rollout #{rollout.pk} resumed{skipping}: now {rollout.status}")

    def _cancel(self, *, rollout_id: int, user: str, **_: Any) -> None:
        rollout = rollouts.rollout_cancel(user=self._user(user), rollout_id=rollout_id)
        self.stdout.write(f"rollout #{rollout.pk} cancelled: {rollout.error}")

    def _show(self, *, rollout_id: int, sql: bool, json: bool, **_: Any) -> None:
        summary = self._summary(rollout_id, with_sql=sql)
        if json:
            self.stdout.write(_dumps(summary))
            return
        progress = summary["progress"]
        lines = [
            f"rollout #{summary['id']}: {summary['direction']} {summary['fleet']} to"
            f" {summary['target']}"
            + (f" (members {summary['members_glob']})" if summary["members_glob"] != "*" else ""),
            f"status:        {summary['status']}"
            f" ({progress['done']}/{progress['total']} members finished)",
            f"requested by:  {summary['requested_by']}"
            + (f": {summary['reason']}" if summary["reason"] else ""),
            f"parallel:      {summary['parallel']}, on error {summary['on_error']}",
            f"rollout hash:  {summary['rollout_hash'] or '(SQL not prepared yet)'}",
            f"counts:        {_counts_text(summary['counts'])}",
        ]
        if summary["paused_reason"]:
            lines.append(f"paused:        {summary['paused_reason']}")
        if summary["error"]:
            lines.append(f"error:         {summary['error']}")
        for approval in summary["approvals"]:
            lines.append(
                f"{approval['decision']}d by {approval['user']}"
                + (f": {approval['comment']}" if approval["comment"] else "")
            )
        for wave in summary["waves"]:
            current = (
                " (current)"
                if wave["wave"] == summary["current_wave"]
                and summary["status"] in (Rollout.Status.RUNNING, Rollout.Status.PAUSED)
                else ""
            )
            lines.append(
                f"wave {wave['wave']}: {wave['size']} member(s){current}:"
                f" {_counts_text(wave['counts'])}"
            )
        self.stdout.write("\n".join(lines))
        self._describe_groups(summary)
        self._describe_left_out(summary)
        self.stdout.write("members:")
        for member in summary["members"]:
            skipped = " (skipped)" if member["skipped"] else ""
            error = member["error"]
            if len(error) > ERROR_SHOWN:
                error = "…" + error[-ERROR_SHOWN:]
            self.stdout.write(
                f"  {member['name']:<24} wave {member['wave'] or '-'}"
                f"  {LABELS.get(member['status'], member['status'])}{skipped}"
                + (f": {_one_line(error)}" if error else "")
            )

    def _list(self, *, fleet: str | None, json: bool, **_: Any) -> None:
        rows = rollout_selectors.rollout_rows(fleet=fleet)
        if json:
            self.stdout.write(_dumps(rows))
            return
        for row in rows:
            progress = row["progress"]
            self.stdout.write(
                f"#{row['id']:<5} {row['status']:<10} {row['fleet']:<16} {row['direction']:<9}"
                f" {row['target']:<16} {progress['done']}/{progress['total']}"
                f"  {_counts_text(row['counts'])}  {row['requested_by']}"
            )

    def _describe_groups(self, summary: dict[str, Any]) -> None:
        for number, group in enumerate(summary["groups"], start=1):
            self.stdout.write(
                f"group {number}: {group['member_count']} member(s) from"
                f" {heads_text(group['from_heads'])}, {len(group['plan'])} revision(s):"
                f" {' '.join(group['plan'])}"
            )
            if group["sql_note"]:
                self.stdout.write(f"  SQL: {group['sql_note']}")
            elif group["sql_sha256"]:
                self.stdout.write(f"  SQL sha256 {group['sql_sha256']}")
            for item in group["lint"]:
                where = f"line {item['line']}: " if item.get("line") is not None else ""
                self.stdout.write(f"  lint {where}{item.get('message', '')}")
            if "sql" in group:
                self.stdout.write(group["sql"])

    def _describe_left_out(self, summary: dict[str, Any]) -> None:
        if summary["left_out"]:
            self.stdout.write(f"left out: {len(summary['left_out'])} member(s)")
        for item in summary["left_out"]:
            self.stdout.write(f"  {item['member']}: {item['reason']}")

    def _summary(self, rollout_id: int, *, with_sql: bool = False) -> dict[str, Any]:
        summary = rollout_selectors.rollout_summary(rollout_id=rollout_id, with_sql=with_sql)
        if summary is None:
            raise CommandError(f"no rollout #{rollout_id}", returncode=1)
        return summary

    def _rollout(self, rollout_id: int) -> Rollout:
        rollout = Rollout.objects.filter(pk=rollout_id).first()
        if rollout is None:
            raise CommandError(f"no rollout #{rollout_id}", returncode=1)
        return rollout

    def _user(self, username: str) -> Any:
        user = get_user_model().objects.filter(username=username).first()
        if user is None or not user.is_active:
            raise CommandError(f"no active user named {username!r}", returncode=1)
        return user


def _counts_text(counts: dict[str, int]) -> str:
    shown = ", ".join(f"{n} {LABELS.get(status, status)}" for status, n in counts.items())
    return shown or "no members"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False)
