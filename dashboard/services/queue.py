"""Hand work to the task queue by name, so services never import the tasks that call them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.tasks import Task, TaskResultStatus
from django.utils import timezone

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


def schedule_once(name: str, *, delay: float = 0.0) -> bool:
    """Enqueue the task called name after `delay` seconds unless one waits; say if this did."""
    from django_tasks_db.backend import DatabaseBackend
    from django_tasks_db.models import DBTaskResult

    periodic = task_named(name)
    # Only the database backend can run a task later and be asked what is waiting.
    if not isinstance(periodic.get_backend(), DatabaseBackend):
        return False
    waiting = DBTaskResult.objects.filter(
        task_path=periodic.module_path, status=TaskResultStatus.READY
    )
    if waiting.exists():
        return False
    result = periodic.using(run_after=timezone.now() + timedelta(seconds=delay)).enqueue()
    # Two workers starting together can both find none waiting: keep the earliest only.
    kept = waiting.order_by("run_after", "enqueued_at", "id").values_list("id", flat=True)
    ids = [str(pk) for pk in kept]
    if len(ids) > 1:
        waiting.filter(id__in=ids[1:]).delete()
    return bool(ids) and ids[0] == str(result.id)
