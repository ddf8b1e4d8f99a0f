"""The dashboard app: registers its system checks and signal receivers."""

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    """Configure the dashboard app."""

    name = "dashboard"
    verbose_name = "Migration dashboard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers checks, signal receivers, and the tasks services enqueue by name.
        from dashboard import checks, converters, signals, tasks  # noqa: F401

        converters.register()  # before any URLconf is imported: patterns use <env:name>
