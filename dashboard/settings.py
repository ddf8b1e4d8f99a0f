"""Django settings, read from the environment so one code base serves the demo and production."""

import ipaddress
import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP
from sqlalchemy.engine import make_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("DASHBOARD_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    """Read a yes/no environment variable."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def database_from_url(url: str) -> dict[str, object]:
    """Turn DATABASE_URL into a Django DATABASES entry (SQLAlchemy parses it, never f-strings)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            # The embedded default must work from a clean clone.
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": parsed.database or str(VAR_DIR / "dashboard.sqlite3"),
            # The worker and web server write at once; wait for the lock instead of failing.
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL;",
            },
        }
    if backend == "postgresql":
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": parsed.database or "",
            "USER": parsed.username or "",
            "PASSWORD": parsed.password or "",
            "HOST": parsed.host or "",
            "PORT": str(parsed.port or ""),
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
        }
    raise ImproperlyConfigured(
        f"DATABASE_URL: unsupported database {backend!r} (use sqlite or postgresql)"
    )


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG and os.environ.get("DASHBOARD_INSECURE_DEV_KEY") != "1":
        raise ImproperlyConfigured("SECRET_KEY is not set (set DEBUG=1 for local development)")
    SECRET_KEY = "django-insecure-local-development-only"  # noqa: S105 (only with DEBUG or tests)

ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")
    if h.strip()
]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

DASHBOARD_CONFIG = os.environ.get("DASHBOARD_CONFIG", str(BASE_DIR / "demo" / "dashboard.toml"))
# The worker marks a run whose heartbeat is older than this interrupted, checking this often.
DASHBOARD_HEARTBEAT_LIMIT = float(os.environ.get("DASHBOARD_HEARTBEAT_LIMIT", "60"))
DASHBOARD_HOUSEKEEPING_INTERVAL = float(os.environ.get("DASHBOARD_HOUSEKEEPING_INTERVAL", "30"))
# How often the worker asks Alembic to load an unchanged script directory (a changed one: at once).
DASHBOARD_HISTORY_CHECK_INTERVAL = float(os.environ.get("DASHBOARD_HISTORY_CHECK_INTERVAL", "600"))
# Snapshots that record no change, and finished task rows, are deleted after this many days.
DASHBOARD_RETENTION_DAYS = int(os.environ.get("DASHBOARD_RETENTION_DAYS", "30"))
# How often the worker reads every environment's version table.
DASHBOARD_REFRESH_INTERVAL = float(os.environ.get("DASHBOARD_REFRESH_INTERVAL", "60"))
# Sign-ins of one username from one address are refused for a while after this many failures
# within the window (0: no throttling); each further failure doubles the wait, up to a day.
DASHBOARD_SIGNIN_MAX_FAILURES = int(os.environ.get("DASHBOARD_SIGNIN_MAX_FAILURES", "5"))
DASHBOARD_SIGNIN_WINDOW = int(os.environ.get("DASHBOARD_SIGNIN_WINDOW", str(15 * 60)))
# Every username from one address (an IPv6 /64) is refused after this many failures from it;
# unset means ten times DASHBOARD_SIGNIN_MAX_FAILURES, 0 no ceiling.
_signin_address_max = os.environ.get("DASHBOARD_SIGNIN_ADDRESS_MAX_FAILURES", "").strip()
DASHBOARD_SIGNIN_ADDRESS_MAX_FAILURES = int(_signin_address_max) if _signin_address_max else None
# Client addresses that may read /metrics without a token: comma-separated CIDRs (empty: none).
METRICS_ALLOWED_CIDRS = [
    c.strip() for c in os.environ.get("METRICS_ALLOWED_CIDRS", "").split(",") if c.strip()
]
for _cidr in METRICS_ALLOWED_CIDRS:
    try:
        ipaddress.ip_network(_cidr, strict=False)
    except ValueError as _exc:
        raise ImproperlyConfigured(f"METRICS_ALLOWED_CIDRS: {_exc}") from _exc

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "django_tasks_db",
    "dashboard",
]

MIDDLEWARE = [
    # First, so it counts every answer, the redirects and refusals of the others included.
    "dashboard.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Before the role check: a session the provider no longer backs must not use its role.
    "dashboard.sso.middleware.SSOSessionRefresh",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "dashboard.middleware.RoleRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "dashboard.urls"
WSGI_APPLICATION = "dashboard.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.csp",
                "dashboard.context_processors.navigation",
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'dashboard.sqlite3'}")
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TASKS = {
    "default": {
        "BACKEND": "django_tasks_db.DatabaseBackend",
    }
}

# Passwords (unless [sso] local_accounts = false), then the [sso] table's OpenID Connect provider.
AUTHENTICATION_BACKENDS = [
    "dashboard.sso.backends.LocalAccountsBackend",
    "dashboard.sso.backends.OIDCBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "var" / "static"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
# In DEBUG (demo, tests) files come straight from the app folders; with DEBUG off the manifest
# storage needs `manage.py collectstatic` first (the README's production steps run it).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# No inline scripts or styles anywhere: everything is served from our own origin.
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
    "base-uri": [CSP.SELF],
    "object-src": [CSP.NONE],
}

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
# Preloading is hard to take back: only on request.
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if env_bool("BEHIND_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # Alembic logs every read at INFO; the worker keeps its own run output in the action log.
    "loggers": {
        # Django's default console handler would print every record a second time in DEBUG.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.db.backends": {"level": "WARNING"},
        "alembic": {"level": "WARNING"},
    },
}
