"""Env-driven settings: DJANGO_* for Django's own, YOI_* for ours, DATABASE_URL, REDIS_URL.

Every value comes from the environment with a safe development default; a malformed value fails fast with
ImproperlyConfigured instead of starting a half-configured service.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    """Read a string setting from the environment."""
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    """Read a boolean setting (1/0, true/false, yes/no, on/off)."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_float(name: str, default: float) -> float:
    """Read a positive float setting."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from exc
    if value <= 0:
        raise ImproperlyConfigured(f"{name} must be positive, got {raw!r}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    """Read a comma-separated list setting."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", True)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG=0")
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"  # noqa: S105 - development default

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

YOI_DATA_DIR = Path(env_str("YOI_DATA_DIR", str(BASE_DIR / "var"))).resolve()
YOI_RUNTIMES_CONFIG = env_str("YOI_RUNTIMES_CONFIG", "")
# How long cached runtime status stays fresh before a detail read refreshes it.
YOI_STATUS_STALE_SECONDS = env_float("YOI_STATUS_STALE_SECONDS", 30.0)
# How often a running process re-reads runtime rows to pick up admin / sync changes.
YOI_REGISTRY_REFRESH_SECONDS = env_float("YOI_REGISTRY_REFRESH_SECONDS", 2.0)
# Threads serving HTTP requests (yoi_backend/handler.py). A request holds its thread while it waits on a
# runtime, so this bounds how many requests can wait at once; each thread keeps one database connection.
YOI_HTTP_THREADS = int(env_float("YOI_HTTP_THREADS", 128))
# The event relay (workers/relay/): how long an upstream outlives its last browser, how many frames a
# browser may have queued before it is sent a reset, the per-worker replay buffer, and reconnect backoff.
YOI_RELAY_LINGER_SECONDS = env_float("YOI_RELAY_LINGER_SECONDS", 2.0)
YOI_RELAY_SUBSCRIBER_FRAMES = int(env_float("YOI_RELAY_SUBSCRIBER_FRAMES", 2048))
YOI_RELAY_BUFFER_EVENTS = int(env_float("YOI_RELAY_BUFFER_EVENTS", 4096))
YOI_RELAY_BACKOFF_BASE = env_float("YOI_RELAY_BACKOFF_BASE", 0.5)
YOI_RELAY_BACKOFF_CAP = env_float("YOI_RELAY_BACKOFF_CAP", 15.0)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "runtimes",
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "yoi_backend.urls"
ASGI_APPLICATION = "yoi_backend.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "yoi_backend" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{YOI_DATA_DIR / 'db.sqlite3'}"), conn_max_age=60
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL + a busy timeout let the request threads and management commands share the file. Transactions
    # take the write lock when they begin (IMMEDIATE): one that read first and wrote later would otherwise
    # fail at once with "database is locked" if another connection wrote in between, busy timeout or not.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Sessions are read from a cache and written through to the database (a request's session lookup is a
# cache hit, not a query). With REDIS_URL (several processes) the cache is Redis, shared by all; without
# it each process keeps sessions in memory for at most YOI_SESSION_CACHE_SECONDS, so a session ended
# elsewhere (another process, a management command) stops working here within that time.
YOI_SESSION_CACHE_SECONDS = env_float("YOI_SESSION_CACHE_SECONDS", 5.0)
CACHES: dict[str, dict[str, object]]
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {
        "default": {
            "BACKEND": "yoi_backend.caches.BoundedLocMemCache",
            "LOCATION": "yoi",
            "TIMEOUT": YOI_SESSION_CACHE_SECONDS,
        }
    }
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT", str(YOI_DATA_DIR / "static")))
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

WHITENOISE_USE_FINDERS = DEBUG

# Django's ModelBackend, with the per-request user lookup of a session served from the cache (auth.py).
AUTHENTICATION_BACKENDS = ["yoi_backend.auth.CachedModelBackend"]

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
# Under /api/ a CSRF failure answers the JSON error envelope; elsewhere Django's own page.
CSRF_FAILURE_VIEW = "workers.exceptions.csrf_failure"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "EXCEPTION_HANDLER": "workers.exceptions.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# The OpenAPI 3 schema (/api/schema/) and Swagger UI (/api/docs/); the UI's files come from the sidecar
# package through our own static files, so the docs page loads nothing from a CDN.
SPECTACULAR_SETTINGS = {
    "TITLE": "Yoi Workspace Backend API",
    "VERSION": "1.0.0",
    "DESCRIPTION": (
        "The browser API of the Yoi Workspace Backend: runtimes and their workers, addressed by "
        'runtime_id + worker_id. Every error is the envelope {"error": {...}} (see ErrorEnvelope). '
        "Authenticate with the session cookie (plus X-CSRFToken on POST) or `Authorization: Token <key>`."
    ),
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "ENUM_NAME_OVERRIDES": {
        "ErrorCodeEnum": "workers.schema.ERROR_CODE_CHOICES",
        "RuntimeStateEnum": "workers.serializers.RUNTIME_STATES",
    },
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # Each operation lists these two (from REST_FRAMEWORK's authentication classes); defined here to say how.
    "APPEND_COMPONENTS": {
        "securitySchemes": {
            "cookieAuth": {
                "type": "apiKey",
                "in": "cookie",
                "name": "sessionid",
                "description": "Django session (log in at /admin/login/); POST also needs X-CSRFToken.",
            },
            "tokenAuth": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "`Token <key>`; make a key with `manage.py drf_create_token <username>`.",
            },
        }
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Tracebacks with every exception message scrubbed: no runtime URL or store path (yoi_backend/logs.py).
    "formatters": {
        "plain": {
            "()": "yoi_backend.logs.ScrubbingFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("YOI_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.request": {"level": "ERROR"},
        # urllib3 names the runtime host in its own log lines (pool warnings, debug): runtime
        # addresses never reach a log, so it only speaks when something is badly wrong.
        "urllib3": {"level": "ERROR"},
    },
}
