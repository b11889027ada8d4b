"""The service's Prometheus metrics: what the apps count, and what /metrics reads at scrape time.

Counters and histograms are module-level objects of ``prometheus_client``; the apps record
into them through the functions below (one line at each place that does the work), so no app
touches the library. With ``PROMETHEUS_MULTIPROC_DIR`` set before the process starts, the
library keeps every process's values in a file of that directory and ``exposition`` adds up
all the files: each of gunicorn's workers records its own requests, and any of them serves
the sum (``config/gunicorn.conf.py`` clears the directory at start and drops dead workers).
Without it the values live in the process and ``exposition`` serves the default registry.

Two gauges are read when /metrics is scraped, not recorded: the open compute requests per
market segment (one GROUP BY query) and the length of each Celery queue in Redis. They are
collectors registered on the registry each scrape builds, since the multiprocess files hold
only what processes recorded.

Labels are bounded: a request is labelled with its URL pattern's route, never its path; an
error with its code; a matching run with its segment (the GPU model's id, as in
``match_segment`` and its pending key).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import redis
from django.apps import apps
from django.conf import settings
from django.db.models import Count, FilteredRelation, Q
from django.urls import Resolver404, resolve
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

logger = logging.getLogger(__name__)

# The route label of a request no URL pattern took, and the name of a catch-all pattern that
# stands for "no such resource" (the API's JSON 404) so that its requests count as unmatched too.
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BROKER_TIMEOUT_SECONDS = 1.0  # a Redis answer slower than this counts as no answer

HTTP_REQUESTS = Counter(
    "gpubroker_http_requests",
    "HTTP requests answered, by method, route (the URL pattern, not the path) and status code.",
    ["method", "route", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "gpubroker_http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route.",
    ["method", "route"],
)
API_ERRORS = Counter(
    "gpubroker_api_errors",
    "API error answers (4xx in the API's error shape), by route, status and error code; booking "
    "conflicts are route api/v1/listings/<pk>/book, status 409.",
    ["route", "status", "code"],
)
MATCHING_RUNS = Counter(
    "gpubroker_matching_runs",
    "Matching runs of a segment (GPU model id), by outcome: matched, skipped_locked (another run held "
    "the segment) or failed.",
    ["segment", "outcome"],
)
MATCHING_RUN_DURATION = Histogram(
    "gpubroker_matching_run_duration_seconds",
    "Time a matching run of a segment took, its passes and lock waits included.",
    ["segment"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
MATCHING_REQUESTS_FILLED = Counter(
    "gpubroker_matching_requests_filled",
    "Compute requests the matching engine filled, by segment (GPU model id).",
    ["segment"],
)
USAGE_RECORDS = Counter(
    "gpubroker_usage_records",
    "Usage records received, by outcome: accepted, duplicate or rejected.",
    ["outcome"],
)
USAGE_RECORDS_REJECTED = Counter(
    "gpubroker_usage_records_rejected",
    "Usage records rejected, by reason (the code each rejection reports).",
    ["reason"],
)


# -- recording -------------------------------------------------------------------------------


def route_of(request: Any) -> str:
    """The route label of a request: its URL pattern's route, with each named group shown as
    ``<name>`` (``api/v1/listings/<pk>/book``), or ``unmatched``."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        # Answered before the URL was resolved (a redirect, a refused body, a probe): resolve it.
        try:
            match = resolve(request.path_info, getattr(request, "urlconf", None))
        except Resolver404:
            return UNMATCHED
    if match.url_name == UNMATCHED:  # a catch-all pattern that stands for "no such resource"
        return UNMATCHED
    return _route_label(match.route)


@functools.lru_cache(maxsize=1024)  # one entry per URL pattern: the routes are the code's
def _route_label(route: str) -> str:
    label, index = [], 0
    while index < len(route):
        if route.startswith("(?P<", index):
            name_end = route.index(">", index)
            label.append(f"<{route[index + 4 : name_end]}>")
            index = _group_end(route, index)
        else:
            label.append(route[index])
            index += 1
    text = "".join(label)
    text = re.sub(r"(\\Z|\$)$", "", text.removeprefix("^"))
    return text or "/"


def _group_end(pattern: str, start: int) -> int:
    """The index just past the group opened at ``start`` (nested groups and escapes skipped)."""
    depth, index = 0, start
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return len(pattern)


def http_request_observed(*, method: str, route: str, status: int, seconds: float) -> None:
    method = method if method in _METHODS else "other"
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_REQUEST_DURATION.labels(method, route).observe(seconds)


def api_error_observed(*, request: Any, status: int, code: str) -> None:
    API_ERRORS.labels(route_of(request), str(status), code).inc()


ResultT = TypeVar("ResultT")


def matching_run(function: Callable[..., ResultT]) -> Callable[..., ResultT]:
    """Count and time each call of a matching run of one segment.

    The run returns a result with ``segment``, ``requests_filled`` and ``skipped_locked``; one
    that raises is counted as failed under its ``gpu_model_id`` keyword argument.
    """

    @functools.wraps(function)
    def counted(*args: Any, **kwargs: Any) -> ResultT:
        started = time.perf_counter()
        try:
            result = function(*args, **kwargs)
        except Exception:
            segment = str(kwargs.get("gpu_model_id", "unknown"))
            MATCHING_RUNS.labels(segment, "failed").inc()
            MATCHING_RUN_DURATION.labels(segment).observe(time.perf_counter() - started)
            raise
        segment = str(result.segment)
        MATCHING_RUNS.labels(segment, "skipped_locked" if result.skipped_locked else "matched").inc()
        MATCHING_RUN_DURATION.labels(segment).observe(time.perf_counter() - started)
        if result.requests_filled:
            MATCHING_REQUESTS_FILLED.labels(segment).inc(result.requests_filled)
        return result

    return counted


def usage_records_observed(*, accepted: int, duplicates: int, rejected: Iterable[str]) -> None:
    """Count a usage batch's records: ``rejected`` holds each rejected record's reason code."""
    USAGE_RECORDS.labels("accepted").inc(accepted)
    USAGE_RECORDS.labels("duplicate").inc(duplicates)
    reasons = list(rejected)
    USAGE_RECORDS.labels("rejected").inc(len(reasons))
    for reason in reasons:
        USAGE_RECORDS_REJECTED.labels(reason).inc()


# -- read at scrape time ---------------------------------------------------------------------


class OpenComputeRequestsCollector:
    """Open compute requests per market segment, every GPU model of the catalog included (0
    when it has none), counted by one GROUP BY query at each scrape.

    The models are looked up in the app registry by label: the ground floor imports no app.
    """

    NAME = "gpubroker_open_compute_requests"

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        gpu_model = apps.get_model("marketplace", "GpuModel")
        open_status = apps.get_model("broker", "ComputeRequest").Status.OPEN
        try:
            rows = list(
                gpu_model.objects.annotate(
                    open_request=FilteredRelation("compute_requests", condition=Q(compute_requests__status=open_status))
                )
                .values_list("pk", "slug")
                .annotate(count=Count("open_request"))
                .order_by("pk")
            )
        except Exception:
            logger.warning("metrics: the open compute requests could not be counted", exc_info=True)
            return
        family = self._family()
        for pk, slug, count in rows:
            family.add_metric([str(pk), slug], count)
        yield family

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            self.NAME,
            "Open compute requests waiting for the matching engine, by segment (GPU model id) and GPU model.",
            labels=["segment", "gpu_model"],
        )


class CeleryQueueLengthCollector:
    """The messages waiting in each Celery queue, read from Redis (LLEN) at each scrape; nothing
    when tasks run in-process (no broker)."""

    NAME = "gpubroker_celery_queue_length"

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        if settings.CELERY_TASK_ALWAYS_EAGER:
            return
        queues = celery_queues()
        try:
            pipeline = broker_client(settings.CELERY_BROKER_URL).pipeline(transaction=False)
            for queue in queues:
                for key in _priority_keys(queue):
                    pipeline.llen(key)
            lengths = pipeline.execute()
        except (redis.RedisError, ValueError):
            logger.warning("metrics: the Celery queues could not be read from the broker", exc_info=True)
            return
        family = self._family()
        steps = len(_PRIORITY_STEPS)
        for position, queue in enumerate(queues):
            family.add_metric([queue], sum(lengths[position * steps : (position + 1) * steps]))
        yield family

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.NAME, "Tasks waiting in a Celery queue (Redis LLEN).", labels=["queue"])


# kombu's Redis transport keeps a queue's messages of priority p > 0 in the list
# "<queue>\x06\x16<p>" beside the queue's own, for each of its default priority steps.
_PRIORITY_STEPS = (0, 3, 6, 9)
_PRIORITY_SEPARATOR = "\x06\x16"


def _priority_keys(queue: str) -> list[str]:
    return [queue if step == 0 else f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS]


def celery_queues() -> list[str]:
    """The queues tasks are sent to: the default one and any the settings declare or route to."""
    names = {settings.CELERY_TASK_DEFAULT_QUEUE}
    for queue in getattr(settings, "CELERY_TASK_QUEUES", None) or ():
        names.add(getattr(queue, "name", queue))
    routes = getattr(settings, "CELERY_TASK_ROUTES", None)
    if isinstance(routes, dict):
        names.update(route["queue"] for route in routes.values() if isinstance(route, dict) and "queue" in route)
    return sorted(names)


@functools.cache
def broker_client(url: str) -> redis.Redis:
    """A client of the Celery broker that gives up after ``BROKER_TIMEOUT_SECONDS``."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=BROKER_TIMEOUT_SECONDS, socket_timeout=BROKER_TIMEOUT_SECONDS
    )


# -- exposition ------------------------------------------------------------------------------


def multiprocess_mode() -> bool:
    """Whether the library keeps values in PROMETHEUS_MULTIPROC_DIR (read when it was imported)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def scrape_registry() -> CollectorRegistry:
    """A registry for one scrape: every process's files in multiprocess mode, else this
    process's default registry; and the gauges read now."""
    registry = CollectorRegistry()
    if multiprocess_mode():
        MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)
    registry.register(OpenComputeRequestsCollector())
    registry.register(CeleryQueueLengthCollector())
    return registry


def worker_registry() -> CollectorRegistry:
    """What a Celery worker serves: what its processes recorded (every pool process's files in
    multiprocess mode, else its own), without the gauges read from the database and the broker,
    which the API's /metrics serves once for everyone."""
    registry = CollectorRegistry()
    if multiprocess_mode():
        MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)
    return registry


def serve_worker_metrics(*, port: int, addr: str) -> None:
    """Serve ``worker_registry`` over HTTP on (addr, port), from a thread of this process."""
    start_http_server(port, addr=addr, registry=worker_registry())


def exposition(accept: str | None) -> tuple[bytes, str]:
    """The metrics in the format the scraper accepts (Prometheus text, or OpenMetrics), and its
    content type."""
    try:
        encoder, content_type = choose_encoder(accept or "")
    except (ValueError, TypeError):  # an Accept header whose version is no version (the library chokes)
        encoder, content_type = choose_encoder("")
    return encoder(scrape_registry()), content_type
