"""Test settings: the product's settings with a throwaway key and fast password hashing."""

import os

os.environ.setdefault("DASHBOARD_INSECURE_DEV_KEY", "1")

from dashboard.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
# Tests serve static files from the app folders; production runs collectstatic first.
STORAGES = {
    **STORAGES,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
STATIC_ROOT = None

# A file, not Django's in-memory default, so worker and server subprocesses started by tests
# can share the test database (they get its path through DATABASE_URL).
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {
        "NAME": str(VAR_DIR / f"test-dashboard-{os.getpid()}.sqlite3"),
    }
