"""Small presentation filters shared by the pages."""

from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone
from django.utils.timesince import timesince

register = template.Library()


@register.filter
def ago(moment: datetime | None) -> str:
    """Render how long ago a moment was: 'just now' under a minute, else '3 minutes ago'."""
    if moment is None:
        return ""
    if (timezone.now() - moment).total_seconds() < 60:
        return "just now"
    return f"{timesince(moment)} ago"


@register.filter
def run_lock_text(holder: dict[str, Any] | None) -> str:
    """Render who holds an environment's run lock ("" when nobody does)."""
    # Here, not at the top: selectors import ago() from this module, CLI reads among them.
    from dashboard.selectors import actions

    return actions.run_lock_text(holder or {})
