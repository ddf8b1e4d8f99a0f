"""Run Alembic for an action: the subprocess, its offline SQL for review, the run's monitor."""

from dashboard.runner.process import (
    LOGGING_SECTIONS,
    OfflineSQLUnavailable,
    ProgressStep,
    RunnerError,
    RunResult,
    downgrade,
    offline_sql,
    parse_progress,
    run_alembic,
    upgrade,
)

__all__ = [
    "LOGGING_SECTIONS",
    "OfflineSQLUnavailable",
    "ProgressStep",
    "RunResult",
    "RunnerError",
    "downgrade",
    "offline_sql",
    "parse_progress",
    "run_alembic",
    "upgrade",
]
