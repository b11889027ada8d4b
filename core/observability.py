"""What operators and their machines read from outside: request ids in the logs, the health
probes and the Prometheus metrics.

- ``/healthz``: 200 while the process answers; it reads nothing.
- ``/readyz``: 200 when PostgreSQL answers a trivial query and the Celery broker (Redis)
  answers a ping within a second, else 503 naming what is down. With tasks run in-process
  there is no broker: its check says "not used".
- ``/metrics``: the Prometheus metrics of ``core.metrics``, only with
  ``Authorization: Bearer <METRICS_TOKEN>``; with no METRICS_TOKEN, a 404 unless DEBUG is on.

None of them is an API operation: no API key, no rate limit, not in the OpenAPI schema.
The middleware here sit first in ``settings.MIDDLEWARE``: ``RequestIdMiddleware`` (every
response carries ``X-Request-ID``, every log record of the request its ``request_id``),
``RequestMetricsMiddleware`` (count and time every request by route), then
``HealthProbeMiddleware``, which answers the two probes before the host check and the HTTPS
redirect: load balancers probe each server by its address, over plain HTTP. They live here
rather than in ``core.middleware``, which the WSGI wrapper imports before Django is set up.
"""

import contextvars
import hmac
import logging
import re
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.db import connections
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from core import metrics

logger = logging.getLogger(__name__)

# -- request ids -----------------------------------------------------------------------------

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def request_id_for(incoming: str | None) -> str:
    """The id of a request: the client's (or proxy's) ``X-Request-ID`` if it is sane, that is
    1 to 128 of ``[A-Za-z0-9._-]``; else a new one."""
    if incoming and _SANE_REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The id of the request being answered in this context, if any."""
    return _request_id.get()


# A task carries the id of the request that enqueued it, in its message's headers, and its
# worker logs under that id while it runs (the Celery signals connected in config/celery.py).
TASK_REQUEST_ID_HEADER = "request_id"
_task_tokens: dict[str, contextvars.Token] = {}


def task_request_id_send(headers=None, **kwargs) -> None:
    """``before_task_publish``: put the current request's id in the task's headers."""
    request_id = _request_id.get()
    if request_id and headers is not None:
        headers.setdefault(TASK_REQUEST_ID_HEADER, request_id)


def task_request_id_take(task_id=None, task=None, **kwargs) -> None:
    """``task_prerun``: log the task's run under the id of the request that enqueued it."""
    request = getattr(task, "request", None)
    request_id = getattr(request, TASK_REQUEST_ID_HEADER, None) or (getattr(request, "headers", None) or {}).get(
        TASK_REQUEST_ID_HEADER
    )
    if request_id and task_id and _SANE_REQUEST_ID.fullmatch(str(request_id)):
        _task_tokens[task_id] = _request_id.set(str(request_id))


def task_request_id_drop(task_id=None, **kwargs) -> None:
    """``task_postrun``: the run is over; its records carry no request id any more."""
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        _request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Put the current request's id on every record as ``request_id`` (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        return True


# -- probes ----------------------------------------------------------------------------------


@never_cache
@require_safe
def healthz(request: HttpRequest) -> HttpResponse:
    """Alive: the process answers. Reads nothing, so a database outage never restarts it."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
def readyz(request: HttpRequest) -> HttpResponse:
    """Ready: PostgreSQL and the Celery broker answer. A check that fails says only which kind of
    error it met (the details, hosts included, go to the log, not to an unauthenticated caller)."""
    checks = {"database": _check(_database_answers, "database"), "broker": _broker_check()}
    ready = all(result in ("ok", "not used") for result in checks.values())
    body = {"status": "ok" if ready else "unavailable", "checks": checks}
    return JsonResponse(body, status=200 if ready else 503)


def _check(probe, name: str) -> str:
    try:
        probe()
    except Exception as exc:  # whatever fails, the dependency is not usable: say so, never a 500
        logger.warning("readiness: %s is down", name, exc_info=True)
        return f"down: {type(exc).__name__}"
    return "ok"


def _database_answers() -> None:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _broker_check() -> str:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return "not used"  # tasks run in the calling process: there is no broker to wait for
    return _check(lambda: metrics.broker_client(settings.CELERY_BROKER_URL).ping(), "broker")


# -- metrics ---------------------------------------------------------------------------------


@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus metrics, for the bearer of METRICS_TOKEN (or anyone under DEBUG with no
    token set)."""
    token = settings.METRICS_TOKEN
    if not token:
        if not settings.DEBUG:
            raise Http404
    elif not _bearer_matches(request.headers.get("Authorization", ""), token):
        response = HttpResponse("A valid metrics token is required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body, content_type = metrics.exposition(request.headers.get("Accept"))
    return HttpResponse(body, content_type=content_type)


def _bearer_matches(header: str, token: str) -> bool:
    scheme, _, presented = header.partition(" ")
    # Compared in constant time, as bytes: a header may carry any latin-1 character.
    matches = hmac.compare_digest(presented.strip().encode(), token.encode())
    return scheme.lower() == "bearer" and matches


# -- middleware ------------------------------------------------------------------------------

GetResponse = Callable[[HttpRequest], HttpResponse]


class RequestIdMiddleware:
    """Give each request an id (``request_id_for``), known to every log record emitted while it
    is answered and returned in the ``X-Request-ID`` header of whatever answers it."""

    def __init__(self, get_response: GetResponse):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.request_id = request_id_for(request.META.get("HTTP_X_REQUEST_ID"))
        token = _request_id.set(request.request_id)
        try:
            response = self.get_response(request)
        finally:
            _request_id.reset(token)
        response[REQUEST_ID_HEADER] = request.request_id
        return response


class RequestMetricsMiddleware:
    """Count and time each request by method, route (``core.metrics.route_of``) and status."""

    def __init__(self, get_response: GetResponse):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        metrics.http_request_observed(
            method=request.method or "",
            route=metrics.route_of(request),
            status=response.status_code,
            seconds=time.perf_counter() - started,
        )
        return response


class HealthProbeMiddleware:
    """Answer ``/healthz`` and ``/readyz`` before the middleware that would refuse a load
    balancer's probe: the HTTPS redirect (it probes over plain HTTP) and the host check (its
    Host header is the server's address, not a name in ALLOWED_HOSTS). The probes read no
    host, cookie or session."""

    PROBES = {"/healthz": healthz, "/readyz": readyz}

    def __init__(self, get_response: GetResponse):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = self.PROBES.get(request.path_info)
        if probe is not None:
            return probe(request)
        return self.get_response(request)
