"""Template filters for maintenance windows."""

from __future__ import annotations

from collections.abc import Hashable

from django import template

from dashboard.selectors.windows import (
    WindowsShown,
    environment_windows,
    window_line,
    windows_summaries,
)

register = template.Library()


@register.filter
def next_window(environment: str) -> str:
    """Return when the environment's window next lets actions start ("" without windows)."""
    return window_line(environment_windows(environment))


@register.filter
def windows_of(environment: str) -> WindowsShown | None:
    """Return the environment's windows as pages show them (None without windows)."""
    return environment_windows(environment)


@register.filter
def with_windows(matrix: object) -> Hashable:
    """Return the overview's cache key: the matrix and what each of its rows' next_window says.

    The windows are not in the Matrix, yet its cached HTML shows them: without them in the key
    a clock moving on or an edited window would be served the HTML of another.
    """
    names = [
        row.name
        for project in getattr(matrix, "projects", ())
        for row in (*project.environments, *project.fleets)
    ]
    return (matrix, windows_summaries(names))
