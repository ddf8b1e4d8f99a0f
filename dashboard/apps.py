"""The dashboard app: registers its system checks and signal receivers."""

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    """Configure the dashboard app."""

    name = "dashboard"
    verbose_name = "Migration dashboard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from dashboard import checks, signals  # noqa: F401 (registers checks and receivers)
