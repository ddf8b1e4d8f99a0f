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
