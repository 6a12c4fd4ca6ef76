"""Env-driven settings: DJANGO_* for Django's own, YOI_* for ours, DATABASE_URL, REDIS_URL.

Values come from the environment, and from a ``.env`` file in the repository root when there is one
(``YOI_ENV_FILE`` names another); the environment wins over the file. Every value has a safe development
default (``.env.example`` lists them all); a malformed value fails fast with ImproperlyConfigured instead
of starting a half-configured service. Parsing is django-environ's.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import dj_database_url
import environ
from django.core.exceptions import ImproperlyConfigured

from yoi_backend.dotenv import load_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv()

env = environ.Env()
_BOOL_WORDS = frozenset({"1", "0", "true", "false", "yes", "no", "on", "off"})


def bool_setting(name: str, default: bool) -> bool:
    """A boolean (1/0, true/false, yes/no, on/off): environ's parsing, but anything else fails fast."""
    raw = env.str(name, default="").strip().lower()
    if raw and raw not in _BOOL_WORDS:
        raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")
    return bool(env.bool(name)) if raw else default


def number_setting(name: str, default: float, *, allow_zero: bool = False) -> float:
    """A positive number (or zero with ``allow_zero``), failing fast on anything else."""
    if not env.str(name, default=""):
        return default
    try:
        value = float(env.float(name))
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {env.str(name)!r}") from exc
    if value < 0 or (value == 0 and not allow_zero):
        raise ImproperlyConfigured(f"{name} must be {'>= 0' if allow_zero else 'positive'}, got {value:g}")
    return value


def count_setting(name: str, default: int) -> int:
    """A whole number >= 0 (where 0 usually turns a limit off), failing fast on anything else."""
    value = number_setting(name, default, allow_zero=True)
    if value != int(value):
        raise ImproperlyConfigured(f"{name} must be a whole number, got {value:g}")
    return int(value)


_RATE_RE = re.compile(r"(\d+)/(s|sec|second|m|min|minute|h|hour|d|day)")


def rate_setting(name: str, default: str) -> str | None:
    """A rate in DRF's ``N/period`` form (period s, min, hour or day); ``0`` turns it off (None)."""
    value = (env.str(name, default="") or default).strip().replace(" ", "")
    if value == "0":
        return None
    match = _RATE_RE.fullmatch(value)
    if match is None or int(match.group(1)) < 1:
        raise ImproperlyConfigured(f"{name} must be N/period (e.g. 1200/min; period s, min, hour, day) or 0")
    return value


def list_setting(name: str, default: list[str]) -> list[str]:
    """A comma-separated list, items trimmed, empty ones dropped."""
    return [item.strip() for item in env.list(name, default=default) if item.strip()]


def secret_setting(name: str) -> str:
    """A secret, taken as it is: environ would read a value starting with ``$`` as another variable's name."""
    return os.environ.get(name, "")


DEBUG = bool_setting("DJANGO_DEBUG", True)
SECRET_KEY = secret_setting("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG=0")
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"  # noqa: S105 - development default

ALLOWED_HOSTS = list_setting("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = list_setting("DJANGO_CSRF_TRUSTED_ORIGINS", [])

# HTTPS, for a deployment behind a TLS-terminating proxy (the production block of .env.example; with it,
# `manage.py check --deploy` reports nothing). Off by default: make run and the tests serve plain http on
# loopback. The proxy's X-Forwarded-Proto reaches Django as the request's scheme when the server runs with
# --proxy-headers (docs/operations.md). Health checks stay reachable over http.
SECURE_SSL_REDIRECT = bool_setting("DJANGO_SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^(healthz|livez|readyz)$"]
SECURE_HSTS_SECONDS = int(number_setting("DJANGO_SECURE_HSTS_SECONDS", 0, allow_zero=True))
SECURE_HSTS_INCLUDE_SUBDOMAINS = bool_setting("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = bool_setting("DJANGO_SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = bool_setting("DJANGO_SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = bool_setting("DJANGO_CSRF_COOKIE_SECURE", False)

YOI_DATA_DIR = Path(env.str("YOI_DATA_DIR", default="") or BASE_DIR / "var").resolve()
YOI_RUNTIMES_CONFIG = env.str("YOI_RUNTIMES_CONFIG", default="")
# Secret refs of runtime rows are confined (runtimes/secrets.py): env: refs name only variables with this
# prefix, file: refs only files inside this directory (symlinks followed).
YOI_TOKEN_ENV_PREFIX = env.str("YOI_TOKEN_ENV_PREFIX", default="") or "YOI_RUNTIME_TOKEN_"
if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{3,}", YOI_TOKEN_ENV_PREFIX) or any(
    own.startswith(YOI_TOKEN_ENV_PREFIX)
    for own in ("DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "YOI_METRICS_TOKEN")
):
    raise ImproperlyConfigured(
        "YOI_TOKEN_ENV_PREFIX must be at least 4 characters of [A-Za-z0-9_] and must not cover the Backend's "
        f"own variables, got {YOI_TOKEN_ENV_PREFIX!r}"
    )
YOI_SECRETS_DIR = Path(env.str("YOI_SECRETS_DIR", default="") or YOI_DATA_DIR / "secrets").resolve()
# How long cached runtime status stays fresh before a detail read refreshes it.
YOI_STATUS_STALE_SECONDS = number_setting("YOI_STATUS_STALE_SECONDS", 30.0)
# How often a running process re-reads runtime rows to pick up admin / sync changes.
YOI_REGISTRY_REFRESH_SECONDS = number_setting("YOI_REGISTRY_REFRESH_SECONDS", 2.0)
# Threads serving HTTP requests (yoi_backend/handler.py). A request holds its thread while it waits on a
# runtime, so this bounds how many requests can wait at once; each thread keeps one database connection.
YOI_HTTP_THREADS = int(number_setting("YOI_HTTP_THREADS", 128))
# The event relay (workers/relay/): how long an upstream outlives its last browser, how many frames a
# browser may have queued before it is sent a reset, the per-worker replay buffer, and reconnect backoff.
YOI_RELAY_LINGER_SECONDS = number_setting("YOI_RELAY_LINGER_SECONDS", 2.0)
YOI_RELAY_SUBSCRIBER_FRAMES = int(number_setting("YOI_RELAY_SUBSCRIBER_FRAMES", 2048))
YOI_RELAY_BUFFER_EVENTS = int(number_setting("YOI_RELAY_BUFFER_EVENTS", 4096))
YOI_RELAY_BACKOFF_BASE = number_setting("YOI_RELAY_BACKOFF_BASE", 0.5)
YOI_RELAY_BACKOFF_CAP = number_setting("YOI_RELAY_BACKOFF_CAP", 15.0)

# Event sockets (workers/consumers.py, workers/sockets.py): open sockets per user (0 = no cap; counted across
# processes in Redis when REDIS_URL is set), how often every open socket's session, user and runtime
# visibility are checked again, how long the runtime/worker lookup of a new socket may take, and what an
# observation-only socket tolerates from a client before it is closed 4400.
YOI_MAX_SOCKETS_PER_USER = count_setting("YOI_MAX_SOCKETS_PER_USER", 64)
YOI_SOCKET_REVALIDATE_SECONDS = number_setting("YOI_SOCKET_REVALIDATE_SECONDS", 20.0)
YOI_SOCKET_LOOKUP_TIMEOUT_SECONDS = number_setting("YOI_SOCKET_LOOKUP_TIMEOUT_SECONDS", 10.0)
YOI_SOCKET_MAX_CLIENT_MESSAGE_BYTES = count_setting("YOI_SOCKET_MAX_CLIENT_MESSAGE_BYTES", 4096)
YOI_SOCKET_MAX_CLIENT_MESSAGES = count_setting("YOI_SOCKET_MAX_CLIENT_MESSAGES", 10)
# How often a serving process re-probes runtimes whose breaker half-opened (runtimes/health.py); 0 = never.
YOI_HEALTH_MONITOR_SECONDS = number_setting("YOI_HEALTH_MONITOR_SECONDS", 1.0, allow_zero=True)
# /metrics (Prometheus) answers only with "Authorization: Bearer <this>"; unset, the endpoint is off (404).
YOI_METRICS_TOKEN = secret_setting("YOI_METRICS_TOKEN")
# "plain" (the event name, then key=value fields) or "json" (one JSON object per line).
YOI_LOG_FORMAT = (env.str("YOI_LOG_FORMAT", default="") or "plain").strip().lower()
if YOI_LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"YOI_LOG_FORMAT must be plain or json, got {YOI_LOG_FORMAT!r}")

# --- Limits (docs/operations.md, "Limits") ------------------------------------------------------------------
# Login forms (/login/, /admin/login/), through django-axes: after YOI_LOGIN_FAILURE_LIMIT failed logins for
# one username, or from one client address, that username or address is refused for YOI_LOGIN_COOLOFF_SECONDS.
YOI_LOGIN_FAILURE_LIMIT = int(number_setting("YOI_LOGIN_FAILURE_LIMIT", 5))
YOI_LOGIN_COOLOFF_SECONDS = number_setting("YOI_LOGIN_COOLOFF_SECONDS", 300.0)
# Worker commands (create, input, stop, cancel) per user: DRF's N/period; 0 turns the limit off.
YOI_RATE_COMMANDS = rate_setting("YOI_RATE_COMMANDS", "1200/min")
# Request bodies: the server entry point (yoi_backend/serve.py) refuses a larger one with 413 from its
# Content-Length before reading it, and cuts a chunked one when it passes the cap. A request without
# credentials may carry a body only to a login form, of at most YOI_MAX_LOGIN_BODY_BYTES.
YOI_MAX_REQUEST_BYTES = int(number_setting("YOI_MAX_REQUEST_BYTES", 2_621_440))
YOI_MAX_LOGIN_BODY_BYTES = int(number_setting("YOI_MAX_LOGIN_BODY_BYTES", 65_536))
# The same cap where Django itself reads a body (another ASGI server, the test client).
DATA_UPLOAD_MAX_MEMORY_SIZE = YOI_MAX_REQUEST_BYTES

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
    "axes",
    "runtimes",
    "workers",
    "yoi_backend.apps.YoiBackendConfig",
]

MIDDLEWARE = [
    # First: the request id and metrics cover everything below; then /livez, /readyz and /metrics, answered
    # before host checks and sessions (yoi_backend/middleware.py).
    "yoi_backend.middleware.RequestObservabilityMiddleware",
    "yoi_backend.middleware.OperationsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "yoi_backend.security.ContentSecurityPolicyMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout answer (workers/lockout.py).
    "axes.middleware.AxesMiddleware",
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
        env.str("DATABASE_URL", default="") or f"sqlite:///{YOI_DATA_DIR / 'db.sqlite3'}", conn_max_age=60
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

REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    # channels_redis waits for messages with BZPOPMIN blocking 5 s, and redis-py's default socket timeout is
    # also 5 s: the read could time out first and kill the consumer (1011). A longer read timeout avoids it.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15, "socket_connect_timeout": 5}]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Sessions are read from a cache and written through to the database (a request's session lookup is a
# cache hit, not a query). With REDIS_URL (several processes) the cache is Redis, shared by all; without
# it each process keeps sessions in memory for at most YOI_SESSION_CACHE_SECONDS, so a session ended
# elsewhere (another process, a management command) stops working here within that time.
YOI_SESSION_CACHE_SECONDS = number_setting("YOI_SESSION_CACHE_SECONDS", 5.0)
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
# Rate-limit counters (workers/throttling.py) need the lifetimes they ask for, not the session cache's cap:
# in Redis with REDIS_URL (one count for every process), else in this process's memory.
if REDIS_URL:
    CACHES["limits"] = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "yoi-limits",
    }
else:
    CACHES["limits"] = {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "yoi-limits",
        "OPTIONS": {"MAX_ENTRIES": 100_000},
    }
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

# Django's four standard validators (admin password forms, createsuperuser, changepassword).
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("DJANGO_STATIC_ROOT", default="") or YOI_DATA_DIR / "static")
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
# First, django-axes' backend: a locked-out username or address is refused before any password is checked.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "yoi_backend.auth.CachedModelBackend"]

# Login throttling (django-axes, database handler: shared by every Backend process). Locked by username and,
# separately, by client address (REMOTE_ADDR: behind a proxy, serve with --proxy-headers so that it is the
# client's). The cool-off runs from the lockout: refused attempts during it neither count nor extend it.
AXES_FAILURE_LIMIT = YOI_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(seconds=YOI_LOGIN_COOLOFF_SECONDS)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "workers.lockout.lockout_response"
AXES_SENSITIVE_PARAMETERS = ["username", "ip_address", "password", "csrfmiddlewaretoken"]

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
    # Every line carries its fields (key=value, or JSON keys) and the request id; tracebacks keep their frames
    # with every exception message scrubbed: no runtime URL or store path (yoi_backend/logs.py).
    "filters": {"request_id": {"()": "yoi_backend.logs.RequestIdFilter"}},
    "formatters": {
        "plain": {
            "()": "yoi_backend.logs.FieldsFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "json": {
            "()": "yoi_backend.logs.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": YOI_LOG_FORMAT, "filters": ["request_id"]}
    },
    "root": {"handlers": ["console"], "level": env.str("YOI_LOG_LEVEL", default="") or "INFO"},
    "loggers": {
        "django.request": {"level": "ERROR"},
        # urllib3 names the runtime host in its own log lines (pool warnings, debug): runtime
        # addresses never reach a log, so it only speaks when something is badly wrong.
        "urllib3": {"level": "ERROR"},
    },
}
