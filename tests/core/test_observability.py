"""Health probes, Prometheus metrics, request ids and JSON logs (core.observability, core.metrics).

Failures are real ones: a database connection to a port nothing listens on, a broker URL on
such a port. The last test serves the app with gunicorn, two workers in multiprocess mode.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import time_machine
from django.conf import settings
from django.db import connection, connections
from django.test import Client, override_settings
from prometheus_client import REGISTRY
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from billing.services import usage_ingest
from broker.matching import MatchResult, segment_match
from broker.tasks import match_segment
from core import metrics, observability
from core.local_postgres import database_url
from core.observability import RequestIdFilter
from tests.billing.factories import contract_create, make_provider, record
from tests.billing.factories import make_lab as make_billing_lab
from tests.broker.factories import make_lab, request_create
from tests.conftest import _redis_unreachable, stop_process, wait_until
from tests.marketplace.factories import NOW, ClusterFactory, ListingFactory, gpu_model, hour, iso

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "metrics-token-for-tests-" + "0123456789abcdefghij"
BOOK_ROUTE = "api/v1/listings/<pk>/book"

requires_redis = pytest.mark.skipif(bool(_redis_unreachable()), reason=f"needs Redis: {_redis_unreachable()}")


def sample(name: str, **labels: str) -> float:
    """This process's value of a sample (the tests run without PROMETHEUS_MULTIPROC_DIR)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape() -> dict[tuple[str, tuple], float]:
    """GET /metrics (open: no token, DEBUG on) and read it: (sample name, sorted labels) -> value."""
    with override_settings(METRICS_TOKEN="", DEBUG=True):
        response = Client().get("/metrics")
    assert response.status_code == 200, response.content[:500]
    return parse_exposition(response.content.decode())


def parse_exposition(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (item.name, tuple(sorted(item.labels.items()))): item.value
        for family in text_string_to_metric_families(text)
        for item in family.samples
    }


@pytest.fixture
def closed_port():
    """A port on 127.0.0.1 that refuses connections: bound (so nothing else takes it), not listening."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@pytest.fixture
def frozen():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


# -- /healthz ----------------------------------------------------------------------------------


class TestHealthz:
    def test_answers_200_without_the_database_or_a_key(self):
        # No database fixture: pytest-django refuses any query, so this also proves it reads none.
        response = Client().get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        assert "no-cache" in response["Cache-Control"]
        assert Client().head("/healthz").status_code == 200

    def test_refuses_writes(self):
        assert Client().post("/healthz").status_code == 405

    @pytest.mark.django_db
    @override_settings(SECURE_SSL_REDIRECT=True, ALLOWED_HOSTS=["api.example.com"], DEBUG=False)
    def test_a_load_balancer_probes_over_plain_http_by_address(self):
        client = Client()  # built under the settings: SecurityMiddleware reads them once
        for path in ("/healthz", "/readyz"):
            response = client.get(path, HTTP_HOST="10.1.2.3:8000")
            assert response.status_code == 200, (path, response.status_code)
            assert response.json()["status"] == "ok"
        # Everything else is still redirected to HTTPS, and refused for a host not allowed.
        assert client.get("/api/v1/", HTTP_HOST="api.example.com").status_code == 301
        assert client.get("/api/v1/", HTTP_HOST="10.1.2.3:8000").status_code == 400

    @pytest.mark.django_db
    def test_the_settings_exempt_the_probes_from_the_https_redirect_too(self):
        without_probe_middleware = [m for m in settings.MIDDLEWARE if not m.endswith(".HealthProbeMiddleware")]
        with override_settings(SECURE_SSL_REDIRECT=True, MIDDLEWARE=without_probe_middleware):
            client = Client()
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 200
            assert client.get("/api/v1/").status_code == 301


# -- /readyz -----------------------------------------------------------------------------------


@pytest.mark.django_db
class TestReadyz:
    def test_ready_in_process_mode_the_broker_is_not_used(self):
        response = Client().get("/readyz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "not used"}}

    @requires_redis
    def test_ready_with_the_broker_answering(self):
        with override_settings(CELERY_TASK_ALWAYS_EAGER=False, CELERY_BROKER_URL=settings.REDIS_URL):
            response = Client().get("/readyz")
        assert response.status_code == 200, response.json()
        assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}

    def test_broker_unreachable_is_503_naming_it(self, closed_port, caplog):
        url = f"redis://127.0.0.1:{closed_port}/0"
        with override_settings(CELERY_TASK_ALWAYS_EAGER=False, CELERY_BROKER_URL=url):
            response = Client().get("/readyz")
        assert response.status_code == 503
        assert response.json() == {
            "status": "unavailable",
            "checks": {"database": "ok", "broker": "down: ConnectionError"},
        }
        # The details (where it tried) go to the log, not to the unauthenticated caller.
        assert str(closed_port) not in response.content.decode()
        assert any("broker is down" in r.getMessage() and r.exc_info for r in caplog.records)

    def test_database_unreachable_is_503_naming_it(self, closed_port, monkeypatch, caplog):
        default = connections["default"]
        unreachable = default.__class__(
            {**default.settings_dict, "HOST": "127.0.0.1", "PORT": str(closed_port)}, alias="default"
        )
        monkeypatch.setattr(observability, "connections", {"default": unreachable})
        try:
            response = Client().get("/readyz")
        finally:
            unreachable.close()
        assert response.status_code == 503
        assert response.json() == {
            "status": "unavailable",
            "checks": {"database": "down: OperationalError", "broker": "not used"},
        }
        assert any("database is down" in r.getMessage() and r.exc_info for r in caplog.records)

    @pytest.mark.timeout(60)  # without a connect timeout this would wait for the kernel's, minutes
    def test_a_database_host_that_never_answers_is_503_once_the_connect_timeout_passes(self, monkeypatch):
        assert connections["default"].settings_dict["OPTIONS"]["connect_timeout"] == settings.DATABASE_CONNECT_TIMEOUT
        silent = socket.socket()  # accepts the connection (its backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        default = connections["default"]
        options = {**default.settings_dict["OPTIONS"], "connect_timeout": 1}
        unreachable = default.__class__(
            {**default.settings_dict, "HOST": "127.0.0.1", "PORT": str(silent.getsockname()[1]), "OPTIONS": options},
            alias="default",
        )
        monkeypatch.setattr(observability, "connections", {"default": unreachable})
        try:
            response = Client().get("/readyz")
        finally:
            unreachable.close()
            silent.close()
        assert response.status_code == 503
        assert response.json()["checks"]["database"] == "down: OperationalError"

    def test_needs_no_key_and_is_not_rate_limited(self):
        client = Client()
        # Past the per-address limit of failed authentications (30/min by default), were it counted.
        answers = {client.get("/readyz", HTTP_AUTHORIZATION="Bearer gpb_not-a-key").status_code for _ in range(40)}
        assert answers == {200}

    def test_the_probes_and_metrics_are_not_in_the_api_schema(self):
        paths = Client().get("/api/v1/schema/", {"format": "json"}).json()["paths"]
        assert not [path for path in paths if path.rstrip("/").endswith(("healthz", "readyz", "metrics"))]


# -- /metrics: who may read it ------------------------------------------------------------------


@pytest.mark.django_db
class TestMetricsAccess:
    @override_settings(METRICS_TOKEN="", DEBUG=False)
    def test_without_a_token_it_is_a_404(self):
        assert Client().get("/metrics").status_code == 404

    @override_settings(METRICS_TOKEN="", DEBUG=True)
    def test_without_a_token_debug_serves_it(self):
        response = Client().get("/metrics")
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain")

    @override_settings(METRICS_TOKEN=TOKEN, DEBUG=True)
    @pytest.mark.parametrize(
        "authorization",
        [None, "Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer ", f"Bearer {TOKEN[:-1]}\u00e9"],
    )
    def test_with_a_token_only_its_bearer_reads_it(self, authorization):
        headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
        response = Client().get("/metrics", **headers)
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert b"gpubroker_" not in response.content

    @override_settings(METRICS_TOKEN=TOKEN, DEBUG=False)
    def test_the_bearer_of_the_token_reads_it(self):
        response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        assert response.status_code == 200
        assert b"# TYPE gpubroker_http_requests_total counter" in response.content

    @override_settings(METRICS_TOKEN="", DEBUG=True)
    def test_openmetrics_when_the_scraper_asks_for_it(self):
        response = Client().get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
        assert response["Content-Type"].startswith("application/openmetrics-text")
        assert response.content.rstrip().endswith(b"# EOF")
        odd = Client().get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=x.y")
        assert odd.status_code == 200


# -- what is counted ----------------------------------------------------------------------------


@pytest.mark.django_db
class TestHttpMetrics:
    def test_a_request_is_counted_by_its_route_never_its_path(self, lab_client):
        before = sample("gpubroker_http_requests_total", method="POST", route=BOOK_ROUTE, status="404")
        timed = sample("gpubroker_http_request_duration_seconds_count", method="POST", route=BOOK_ROUTE)
        response = lab_client.post("/api/v1/listings/987654321/book", {}, format="json")
        assert response.status_code == 404
        assert sample("gpubroker_http_requests_total", method="POST", route=BOOK_ROUTE, status="404") == before + 1
        assert sample("gpubroker_http_request_duration_seconds_count", method="POST", route=BOOK_ROUTE) == timed + 1
        assert not [key for key in scrape() if "987654321" in str(key)]

    def test_paths_no_pattern_takes_are_unmatched(self):
        before = sample("gpubroker_http_requests_total", method="GET", route="unmatched", status="404")
        for path in ("/api/v1/no-such-thing", "/api/nothing/here", "/no-such-page", "/api/v1/listings/12a"):
            assert Client().get(path).status_code == 404
        assert sample("gpubroker_http_requests_total", method="GET", route="unmatched", status="404") == before + 4

    def test_an_admin_page_is_counted_by_its_pattern(self):
        route = "admin/auth/user/<path:object_id>/change/"
        before = sample("gpubroker_http_requests_total", method="GET", route=route, status="302")
        assert Client().get("/admin/auth/user/41/change/").status_code == 302  # to the login page
        assert sample("gpubroker_http_requests_total", method="GET", route=route, status="302") == before + 1

    def test_requests_answered_before_resolving_are_counted_by_their_route(self):
        before = sample("gpubroker_http_requests_total", method="GET", route="api/v1/", status="301")
        with override_settings(SECURE_SSL_REDIRECT=True):
            assert Client().get("/api/v1/").status_code == 301
        assert sample("gpubroker_http_requests_total", method="GET", route="api/v1/", status="301") == before + 1

    def test_unknown_methods_share_one_label(self):
        before = sample("gpubroker_http_requests_total", method="other", route="api/v1/", status="405")
        assert Client().generic("BREW", "/api/v1/").status_code == 405
        assert sample("gpubroker_http_requests_total", method="other", route="api/v1/", status="405") == before + 1

    def test_route_labels_show_named_groups_by_name(self):
        assert metrics._route_label("api/v1/listings/(?P<pk>[0-9]{1,18})/book$") == BOOK_ROUTE
        assert metrics._route_label("api/v1/contracts/(?P<pk>(?:[0-9]+))/nodes\\Z") == "api/v1/contracts/<pk>/nodes"
        assert metrics._route_label("") == "/"


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen")
class TestBookingConflicts:
    def test_a_booking_conflict_is_counted_by_route_status_and_code(self, lab_client, other_lab_client):
        cluster = ClusterFactory(node_count=2, gpus_per_node=8)
        listing = ListingFactory(cluster=cluster, node_count=2, starts_at=hour(1), ends_at=hour(25))
        body = {"gpu_count": 16, "starts_at": iso(hour(2)), "duration_hours": 4}
        labels = {"route": BOOK_ROUTE, "status": "409", "code": "capacity_unavailable"}
        before = sample("gpubroker_api_errors_total", **labels)
        assert lab_client.post(f"/api/v1/listings/{listing.pk}/book", body, format="json").status_code == 201
        conflict = other_lab_client.post(f"/api/v1/listings/{listing.pk}/book", body, format="json")
        assert conflict.status_code == 409
        assert sample("gpubroker_api_errors_total", **labels) == before + 1

    def test_other_client_errors_are_counted_by_code(self, lab_client):
        labels = {"route": BOOK_ROUTE, "status": "404", "code": "not_found"}
        before = sample("gpubroker_api_errors_total", **labels)
        lab_client.post("/api/v1/listings/55555/book", {}, format="json")
        assert sample("gpubroker_api_errors_total", **labels) == before + 1


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen")
class TestMatchingMetrics:
    def test_a_run_is_counted_timed_and_its_fills_added_per_segment(self):
        ListingFactory(cluster=ClusterFactory(), node_count=2, starts_at=hour(1), ends_at=hour(25))
        lab = make_lab()
        request_create(lab=lab, gpu_count=8, starts_at=hour(2), max_price="5")
        request_create(lab=lab, gpu_count=8, starts_at=hour(3), max_price="5")
        segment = str(gpu_model().pk)
        runs = sample("gpubroker_matching_runs_total", segment=segment, outcome="matched")
        timed = sample("gpubroker_matching_run_duration_seconds_count", segment=segment)
        filled = sample("gpubroker_matching_requests_filled_total", segment=segment)
        result = match_segment.delay(gpu_model().pk).get()  # the task, run in-process here
        assert result["requests_filled"] == 2
        assert sample("gpubroker_matching_runs_total", segment=segment, outcome="matched") == runs + 1
        assert sample("gpubroker_matching_run_duration_seconds_count", segment=segment) == timed + 1
        assert sample("gpubroker_matching_requests_filled_total", segment=segment) == filled + 2

    def test_a_failed_run_is_counted_as_failed(self, monkeypatch):
        segment = str(gpu_model().pk)
        before = sample("gpubroker_matching_runs_total", segment=segment, outcome="failed")

        def broken(gpu_model_id, result):
            raise RuntimeError("the engine broke")

        monkeypatch.setattr("broker.matching._match_locked", broken)
        with pytest.raises(RuntimeError):
            segment_match(gpu_model_id=gpu_model().pk, wait=True)
        assert sample("gpubroker_matching_runs_total", segment=segment, outcome="failed") == before + 1

    def test_a_run_that_found_the_segment_locked_is_counted_as_skipped(self):
        before = sample("gpubroker_matching_runs_total", segment="77", outcome="skipped_locked")
        metrics.matching_run(lambda *, gpu_model_id: MatchResult(segment=gpu_model_id, skipped_locked=True))(
            gpu_model_id=77
        )
        assert sample("gpubroker_matching_runs_total", segment="77", outcome="skipped_locked") == before + 1


@pytest.mark.django_db
class TestUsageMetrics:
    def test_records_are_counted_accepted_duplicate_or_rejected_by_reason(self):
        provider = make_provider()
        start = NOW.replace(minute=0, second=0) - timedelta(hours=30)
        contract = contract_create(lab=make_billing_lab(), provider=provider, starts_at=start, hours=24)
        one_hour = start + timedelta(hours=1)
        records = [
            record("ok", contract, start, one_hour, 3600),
            record("ok", contract, start, one_hour, 3600),  # the same event again: a duplicate
            record("later", contract, NOW + timedelta(hours=1), NOW + timedelta(hours=2), 10),
            record("backwards", contract, one_hour, start, 10),
        ]
        before = {
            outcome: sample("gpubroker_usage_records_total", outcome=outcome)
            for outcome in ("accepted", "duplicate", "rejected")
        }
        future = sample("gpubroker_usage_records_rejected_total", reason="in_the_future")
        invalid = sample("gpubroker_usage_records_rejected_total", reason="invalid")
        with time_machine.travel(NOW, tick=False):
            result = usage_ingest(provider=provider, records=records)
        assert (len(result.accepted), len(result.duplicates), len(result.rejected)) == (1, 1, 2)
        assert sample("gpubroker_usage_records_total", outcome="accepted") == before["accepted"] + 1
        assert sample("gpubroker_usage_records_total", outcome="duplicate") == before["duplicate"] + 1
        assert sample("gpubroker_usage_records_total", outcome="rejected") == before["rejected"] + 2
        assert sample("gpubroker_usage_records_rejected_total", reason="in_the_future") == future + 1
        assert sample("gpubroker_usage_records_rejected_total", reason="invalid") == invalid + 1


# -- read at scrape time ------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen")
class TestScrapeTimeGauges:
    def test_open_requests_per_segment_every_model_listed(self, django_assert_num_queries):
        lab = make_lab()
        for offset in (2, 3, 4):
            request_create(lab=lab, gpu_count=8, starts_at=hour(offset), max_price="5")  # no listing: stays open
        request_create(lab=lab, gpu_count=8, starts_at=hour(2), slug="b200")
        with django_assert_num_queries(1):
            [family] = list(metrics.OpenComputeRequestsCollector().collect())
        values = {item.labels["gpu_model"]: item.value for item in family.samples}
        assert values["h100-sxm-80gb"] == 3
        assert values["b200"] == 1
        assert values["mi300x"] == 0
        h100 = gpu_model()
        scraped = scrape()
        labels = (("gpu_model", "h100-sxm-80gb"), ("segment", str(h100.pk)))
        assert scraped[("gpubroker_open_compute_requests", labels)] == 3

    def test_no_queue_length_when_tasks_run_in_process(self):
        assert not [key for key in scrape() if key[0] == "gpubroker_celery_queue_length"]

    @requires_redis
    def test_queue_length_is_read_from_the_broker(self):
        queue = f"obs-test-{uuid.uuid4().hex}"
        client = redis.Redis.from_url(settings.REDIS_URL)
        client.rpush(queue, "a", "b", "c")
        client.rpush(f"{queue}\x06\x166", "urgent")  # kombu's list for priority 6
        try:
            with override_settings(
                CELERY_TASK_ALWAYS_EAGER=False, CELERY_BROKER_URL=settings.REDIS_URL, CELERY_TASK_DEFAULT_QUEUE=queue
            ):
                scraped = scrape()
        finally:
            client.delete(queue, f"{queue}\x06\x166")
        assert scraped[("gpubroker_celery_queue_length", (("queue", queue),))] == 4

    def test_an_unreachable_broker_leaves_the_rest_of_the_metrics(self, closed_port):
        url = f"redis://127.0.0.1:{closed_port}/0"
        with override_settings(CELERY_TASK_ALWAYS_EAGER=False, CELERY_BROKER_URL=url):
            scraped = scrape()
        assert not [key for key in scraped if key[0] == "gpubroker_celery_queue_length"]
        assert [key for key in scraped if key[0] == "gpubroker_open_compute_requests"]


# -- request ids and logs -----------------------------------------------------------------------


@pytest.mark.django_db
class TestRequestIds:
    def test_a_sane_incoming_id_is_kept(self):
        for incoming in ("abc-123", "A.b_C-9", "x" * 128):
            assert Client().get("/healthz", HTTP_X_REQUEST_ID=incoming)["X-Request-ID"] == incoming

    @pytest.mark.parametrize("incoming", ["", "x" * 129, "has space", "semi;colon", "caf\u00e9", "a/b", "{json}"])
    def test_anything_else_is_replaced_by_a_new_id(self, incoming):
        answered = Client().get("/healthz", HTTP_X_REQUEST_ID=incoming)["X-Request-ID"]
        assert answered != incoming
        assert len(answered) == 32 and int(answered, 16) >= 0

    def test_every_request_gets_its_own(self):
        assert len({Client().get("/healthz")["X-Request-ID"] for _ in range(5)}) == 5

    def test_every_kind_of_answer_carries_it(self, lab_client):
        answers = {
            "api": lab_client.get("/api/v1/organization"),
            "api error": lab_client.get("/api/v1/contracts/987654"),
            "api 404": Client().get("/api/v1/nowhere"),
            "admin": Client().get("/admin/login/"),
            "page 404": Client().get("/no-such-page"),
            "bad host": Client().get("/api/v1/", HTTP_HOST="evil.example.com"),
            "metrics": Client().get("/metrics"),  # a 404: no token, and the tests run with DEBUG off
        }
        with override_settings(SECURE_SSL_REDIRECT=True):
            answers["redirect"] = Client().get("/api/v1/")
        statuses = {name: response.status_code for name, response in answers.items()}
        assert statuses == {
            "api": 200,
            "api error": 404,
            "api 404": 404,
            "admin": 200,
            "page 404": 404,
            "bad host": 400,
            "metrics": 404,
            "redirect": 301,
        }
        assert all(len(response["X-Request-ID"]) == 32 for response in answers.values())

    def test_a_server_error_carries_it_and_so_does_its_log(self, monkeypatch, caplog):
        def broken(self, request):
            raise RuntimeError("boom")

        monkeypatch.setattr("core.views.ApiIndexView.get", broken)
        caplog.handler.addFilter(RequestIdFilter())  # the filter the console handler has
        response = Client(raise_request_exception=False).get("/api/v1/", HTTP_X_REQUEST_ID="trace-500")
        assert response.status_code == 500
        assert response["X-Request-ID"] == "trace-500"
        [logged] = [r for r in caplog.records if r.name == "django.request"]
        assert logged.request_id == "trace-500"

    def test_outside_a_request_records_have_none(self):
        record = observability.logging.LogRecord("x", 20, __file__, 1, "message", None, None)
        RequestIdFilter().filter(record)
        assert record.request_id is None


JSON_LOG_SCRIPT = """
import logging, django
import core.local_postgres as embedded
embedded.ensure_server = lambda *args: {"ENGINE": "django.db.backends.postgresql", "NAME": "unused"}
django.setup()
from unittest import mock
from django.test import Client
from core import views

def broken(self, request):
    logging.getLogger("gpubroker.check").warning("inside %s", "the request")
    raise RuntimeError("boom")

with mock.patch.object(views.ApiIndexView, "get", broken):
    response = Client(raise_request_exception=False).get("/api/v1/", HTTP_X_REQUEST_ID="trace-42")
logging.getLogger("gpubroker.check").warning("outside")
print(response.status_code, response["X-Request-ID"])
"""


def run_settings_script(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``code`` in a process of its own whose environment holds only ``env`` (and PATH)."""
    clean = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "config.settings"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean | env, capture_output=True, text=True, timeout=120
    )


class TestJsonLogs:
    def test_log_format_json_writes_one_object_per_line_with_the_request_id(self):
        done = run_settings_script(JSON_LOG_SCRIPT, {"LOG_FORMAT": "json"})
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.split() == ["500", "trace-42"]
        lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line is one JSON object
        inside = next(line for line in lines if line["message"] == "inside the request")
        assert (inside["level"], inside["logger"], inside["request_id"]) == ("WARNING", "gpubroker.check", "trace-42")
        assert "time" in inside
        error = next(line for line in lines if line["logger"] == "django.request")
        assert error["request_id"] == "trace-42"
        assert "RuntimeError: boom" in error["exc_info"]
        outside = next(line for line in lines if line["message"] == "outside")
        assert outside["request_id"] is None

    def test_text_is_the_default(self):
        done = run_settings_script(JSON_LOG_SCRIPT, {})
        assert done.returncode == 0, done.stderr[-3000:]
        assert "inside the request" in done.stderr.splitlines()
        assert not [line for line in done.stderr.splitlines() if line.startswith("{")]


class TestSettings:
    @pytest.mark.parametrize(
        ("env", "complaint"),
        [
            ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be text or json"),
            ({"METRICS_TOKEN": "short"}, "METRICS_TOKEN must be at least 32"),
            ({"PROMETHEUS_MULTIPROC_DIR": "/nonexistent/metrics"}, "PROMETHEUS_MULTIPROC_DIR must name"),
        ],
    )
    def test_refused_at_load(self, env, complaint):
        code = (
            "import core.local_postgres as embedded; "
            "embedded.ensure_server = lambda *args: {'ENGINE': 'django.db.backends.postgresql', 'NAME': 'unused'}; "
            "import django; django.setup()"
        )
        done = run_settings_script(code, env)
        assert done.returncode != 0
        assert "ImproperlyConfigured" in done.stderr and complaint in done.stderr, done.stderr[-2000:]


# -- several gunicorn workers -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str, **headers: str) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (a local server)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (a local server)
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


HEALTHZ = ("gpubroker_http_requests_total", (("method", "GET"), ("route", "healthz"), ("status", "200")))


def _healthz_count(directory: Path) -> float:
    return parse_exposition_from(MultiProcessCollector(None, path=str(directory))).get(HEALTHZ, 0.0)


def parse_exposition_from(collector) -> dict[tuple[str, tuple], float]:
    return {
        (item.name, tuple(sorted(item.labels.items()))): item.value
        for family in collector.collect()
        for item in family.samples
    }


@pytest.mark.postgres
def test_gunicorn_workers_share_their_metrics(transactional_db, tmp_path):
    """Two workers in multiprocess mode: /metrics, served by either, counts both workers'
    requests; the last run's files are cleared at start."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # A file a previous run left: 1,000 healthz requests that must not be served again.
    stale = MmapedDict(str(metrics_dir / "counter_999999.db"))
    help_text = metrics.HTTP_REQUESTS._documentation
    key = mmap_key(HEALTHZ[0], HEALTHZ[0], ["method", "route", "status"], ["GET", "healthz", "200"], help_text)
    stale.write_value(key, 1000.0, 0.0)
    stale.close()
    (metrics_dir / "keep.txt").write_text("not the library's")

    port, log_path = _free_port(), tmp_path / "gunicorn.log"
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "DATABASE_URL": database_url(connection.settings_dict),
        "CELERY_TASK_ALWAYS_EAGER": "true",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "METRICS_TOKEN": TOKEN,
    }
    gunicorn = Path(sys.executable).parent / "gunicorn"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(gunicorn), "-c", "config/gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "--workers", "2",
             "--timeout", "60", "--graceful-timeout", "5", "--no-control-socket"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    served = 0
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, headers, _ = _get(f"{base}/healthz")
            except OSError:
                status = None
            if status == 200:
                served += 1
                assert len(headers["X-Request-ID"]) == 32
                break
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not serve /healthz:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)

        # Hold one worker: a request whose headers have not ended. It is first in the accept
        # queue, so the first worker to accept takes it and waits; the next requests can only
        # be served by the other worker. Then the held request ends and its worker answers.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as held:
            held.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            for _ in range(3):
                assert _get(f"{base}/healthz")[0] == 200
                served += 1
            held.sendall(b"Connection: close\r\n\r\n")
            answer = b""
            while chunk := held.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        served += 1

        assert _get(f"{base}/metrics")[0] == 401
        status, headers, body = _get(f"{base}/metrics", Authorization=f"Bearer {TOKEN}")
        assert status == 200, body[:500]
        scraped = parse_exposition(body.decode())
    finally:
        stop_process(server)

    assert scraped[HEALTHZ] == served  # the stale 1,000 cleared; both workers' requests summed
    assert not (metrics_dir / "counter_999999.db").exists()
    assert (metrics_dir / "keep.txt").exists()
    assert [key for key in scraped if key[0] == "gpubroker_open_compute_requests"]
    # Each worker counted its own share in its own file.
    per_worker = []
    for counter_file in sorted(metrics_dir.glob("counter_*.db")):
        alone = tmp_path / f"alone-{counter_file.stem}"
        alone.mkdir()
        shutil.copy(counter_file, alone)
        per_worker.append(_healthz_count(alone))
    assert len([count for count in per_worker if count >= 1]) == 2, per_worker
    assert sum(per_worker) == served


@requires_redis
@pytest.mark.django_db(transaction=True)
def test_a_worker_serves_the_matching_runs_its_pool_made(tmp_path):
    """A real `celery worker` (prefork pool) with WORKER_METRICS_PORT serves, on its own bind,
    the matching runs its pool process made: counted per segment, timed."""
    segment = str(gpu_model().pk)
    queue = f"metrics-test-{uuid.uuid4().hex[:8]}"  # its own queue: no other worker takes the task
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics_dir = tmp_path / "worker-metrics"
    metrics_dir.mkdir()
    env = os.environ | {
        "DATABASE_URL": database_url(connection.settings_dict),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "CELERY_QUEUE": queue,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "WORKER_METRICS_PORT": str(port),
        "LOG_LEVEL": "WARNING",
    }
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=prefork", "--concurrency=1",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-Q", queue],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def scraped() -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
                return parse_exposition(response.read().decode())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            assert worker.poll() is None, log_path.read_text()[-3000:]
            return None

    runs = ("gpubroker_matching_runs_total", (("outcome", "matched"), ("segment", segment)))
    timed = ("gpubroker_matching_run_duration_seconds_count", (("segment", segment),))
    try:
        wait_until(lambda: scraped() is not None, timeout=60, interval=0.3)  # serving, nothing recorded yet
        from config.celery import app

        eager, app.conf.task_always_eager = app.conf.task_always_eager, False  # sent to the worker
        try:
            match_segment.apply_async(args=[int(segment)], queue=queue)
        finally:
            app.conf.task_always_eager = eager
        served = wait_until(lambda: (found := scraped()) and found.get(runs) and found, timeout=60, interval=0.3)
    finally:
        stop_process(worker)
        redis.Redis.from_url(settings.REDIS_URL).delete(queue)
    assert served[runs] == 1 and served[timed] == 1
    assert not [key for key in served if key[0] == "gpubroker_open_compute_requests"]  # the API serves those
