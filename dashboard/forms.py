"""Forms validate what a page posts or filters by; the decisions are the services'."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

from django import forms
from django.utils import timezone

from dashboard.models import Action

REASON_MAX = 2000


class ActionRequestForm(forms.Form):
    """An upgrade, rollback or stamp request: direction, a target from the picker, and why."""

    direction = forms.ChoiceField(choices=Action.Direction.choices)
    target = forms.ChoiceField(choices=())
    reason = forms.CharField(
        max_length=REASON_MAX,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "why, and what you checked"}),
    )
    # The unfinished action to queue behind (the page's checkbox carries its id).
    queue_behind = forms.IntegerField(required=False, min_value=1)
    # The earliest start, read in the environment's window zone unless it carries an offset.
    run_at = forms.CharField(
        required=False,
        max_length=40,
        strip=True,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )

    def __init__(
        self, *args: Any, targets: list[tuple[str, str]], zone: str = "UTC", **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.zone = zone
        # The picker's entries are the only targets the page offered.
        cast(forms.ChoiceField, self.fields["target"]).choices = targets

    def clean_run_at(self) -> datetime | None:
        text = self.cleaned_data.get("run_at") or ""
        if not text:
            return None
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise forms.ValidationError(
                "Give a date and time like 2026-06-06T02:30 (or with an offset, +02:00)."
            ) from None
        if timezone.is_naive(moment):
            moment = moment.replace(tzinfo=ZoneInfo(self.zone))
        return moment


class ApprovalForm(forms.Form):
    """An approval, bound to the plan hash the approver saw."""

    plan_hash = forms.CharField(max_length=64)
    comment = forms.CharField(max_length=REASON_MAX, required=False, strip=True)


class RejectionForm(forms.Form):
    """A rejection and its reason."""

    reason = forms.CharField(max_length=REASON_MAX, strip=True)


class RolloutRequestForm(forms.Form):
    """A rollout request: direction, a target, the members it covers (a glob), and why."""

    direction = forms.ChoiceField(
        choices=[(Action.Direction.UPGRADE, "Upgrade"), (Action.Direction.DOWNGRADE, "Roll back")]
    )
    target = forms.CharField(max_length=255, strip=True, initial="heads")
    members = forms.CharField(max_length=200, strip=True, initial="*")
    reason = forms.CharField(
        max_length=REASON_MAX,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "why, and what you checked"}),
    )


class RolloutApprovalForm(forms.Form):
    """An approval, bound to the rollout hash the approver saw."""

    # Not required: a missing hash is a mismatch, and the service says so.
    rollout_hash = forms.CharField(max_length=64, required=False)
    comment = forms.CharField(max_length=REASON_MAX, required=False, strip=True)


class RolloutRejectionForm(forms.Form):
    """A rollout's rejection and its reason."""

    comment = forms.CharField(max_length=REASON_MAX, strip=True)


class ActionFilterForm(forms.Form):
    """The actions list's filters."""

    environment = forms.CharField(max_length=100, required=False)
    status = forms.ChoiceField(choices=[("", "any"), *Action.Status.choices], required=False)


class AuditFilterForm(forms.Form):
    """The audit page's filters, shared by its exports."""

    environment = forms.CharField(max_length=100, required=False)
    user = forms.CharField(max_length=150, required=False)
    verb = forms.CharField(max_length=64, required=False)
    date_from = forms.DateField(required=False)
    date_to = forms.DateField(required=False)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        start, end = cleaned.get("date_from"), cleaned.get("date_to")
        if start and end and start > end:
            raise forms.ValidationError("The start date is after the end date.")
        return cleaned
