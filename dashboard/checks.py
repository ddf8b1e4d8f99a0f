"""System checks: a broken config is reported at start-up, naming file, table and key."""

from typing import Any

from django.core import checks

from dashboard.config import ConfigError, current_config


@checks.register()
def check_dashboard_config(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    """Load the config file and report why it cannot be used."""
    try:
        current_config()
    except ConfigError as exc:
        return [
            checks.Error(
                str(exc), hint="Fix the file named by DASHBOARD_CONFIG.", id="dashboard.E001"
            )
        ]
    return []


@checks.register()
def check_heartbeat_limit(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    """Refuse a heartbeat limit so short that live runs would be declared interrupted."""
    from dashboard.worker import HEARTBEAT_INTERVAL, heartbeat_limit

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
