"""Hand work to the task queue by name, so services never import the tasks that call them."""

from __future__ import annotations

from typing import Any

from django.tasks import Task

_tasks: dict[str, Task[Any, Any]] = {}


def register[T: Task[Any, Any]](task: T) -> T:
    """Make a task (from dashboard.tasks) available to services under its function's name."""
    _tasks[task.name] = task
    return task


def task_named(name: str) -> Task[Any, Any]:
    """Return the registered task called name (the app's ready() imports dashboard.tasks)."""
    try:
        return _tasks[name]
    except KeyError:
        raise LookupError(f"no task {name!r} is registered; is dashboard.tasks imported?") from None
