"""Template filters for maintenance windows."""

from __future__ import annotations

from django import template

from dashboard.selectors.windows import WindowsShown, environment_windows

register = template.Library()


@register.filter
def next_window(environment: str) -> str:
    """Return when the environment's window next lets actions start ("" without windows)."""
    shown = environment_windows(environment)
    if shown is None:
        return ""
    return f"window {shown.summary}" if not shown.problem else "windows unreadable"


@register.filter
def windows_of(environment: str) -> WindowsShown | None:
    """Return the environment's windows as pages show them (None without windows)."""
    return environment_windows(environment)
