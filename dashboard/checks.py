"""System checks: config and environment URL errors at start-up, naming file, table and key."""

from typing import Any

from django.core import checks

from dashboard.config import ConfigError, current_config


@checks.register()
def check_dashboard_config(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    """Load the config file and report why it cannot be used."""
    try:
        config = current_config()
    except ConfigError as exc:
        return [
            checks.Error(
                str(exc), hint="Fix the file named by DASHBOARD_CONFIG.", id="dashboard.E001"
            )
        ]
    # Pages serve the other environments meanwhile; a deploy must still notice.
    return [
        checks.Error(
            problem,
            hint="Fix that environment's url or windows in the file named by DASHBOARD_CONFIG.",
            id="dashboard.E003",
        )
        for problem in config.environment_problems()
    ]


@checks.register()
def check_heartbeat_limit(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    """Refuse a heartbeat limit so short that live runs would be declared interrupted."""
    from dashboard.runner.monitor import HEARTBEAT_INTERVAL, heartbeat_limit

    if heartbeat_limit() < 1.5 * HEARTBEAT_INTERVAL:
        return [
            checks.Error(
                f"DASHBOARD_HEARTBEAT_LIMIT is {heartbeat_limit():g} s, but workers heartbeat every "
                f"{HEARTBEAT_INTERVAL:g} s: every live run would be marked interrupted.",
                hint=f"Use at least {1.5 * HEARTBEAT_INTERVAL:g} s (the default is 60).",
                id="dashboard.E002",
            )
        ]
    return []
