"""Read an Alembic script directory into a history.Graph without running its files."""

from dashboard.scripts.alembic_loader import ALEMBIC_TIMEOUT, load_history_with_alembic
from dashboard.scripts.cache import LoadedHistory, clear_cache, load_history, load_project_files
from dashboard.scripts.ini import ScriptLocationError, ScriptSettings, read_settings
from dashboard.scripts.parse import parse_revision_file, syntax_problems
from dashboard.scripts.scan import fingerprint, fingerprint_files

__all__ = [
    "ALEMBIC_TIMEOUT",
    "LoadedHistory",
    "ScriptLocationError",
    "ScriptSettings",
    "clear_cache",
    "fingerprint",
    "fingerprint_files",
    "load_history",
    "load_history_with_alembic",
    "load_project_files",
    "parse_revision_file",
    "read_settings",
    "syntax_problems",
]
