import shutil

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from marketplace.services import organization_create


class OrgClient(APIClient):
    """An API client authenticated as one organization."""

    organization = None
    secret = None


def make_client(name: str, role: str) -> OrgClient:
    organization, issued = organization_create(name=name, role=role)
    client = OrgClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.secret}")
    client.organization = organization
    client.secret = issued.secret
    return client


@pytest.fixture
def anon_client() -> APIClient:
    return APIClient()


@pytest.fixture
def provider_client(db) -> OrgClient:
    return make_client("Provider One", "provider")


@pytest.fixture
def other_provider_client(db) -> OrgClient:
    return make_client("Provider Two", "provider")


@pytest.fixture
def lab_client(db) -> OrgClient:
    return make_client("Lab One", "lab")


@pytest.fixture
def other_lab_client(db) -> OrgClient:
    return make_client("Lab Two", "lab")


@pytest.fixture
def both_client(db) -> OrgClient:
    return make_client("Both Corp", "both")


def assert_error(response, status: int, code: str | None = None) -> dict:
    """Check the one error shape and return its ``error`` object."""
    assert response.status_code == status, (response.status_code, getattr(response, "content", b"")[:500])
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "fields"}, error
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def _redis_unreachable() -> str:
    """Why no Celery worker can run here ("" when one can)."""
    if not settings.REDIS_URL:
        return "REDIS_URL is not set"
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2).ping()
    except redis.RedisError as exc:
        return f"Redis is not reachable at {settings.REDIS_URL} ({exc})"
    return ""


_no_redis = _redis_unreachable()
requires_worker = pytest.mark.skipif(bool(_no_redis), reason=f"needs Redis for a real Celery worker: {_no_redis}")


def _worker_database_url() -> str:
    from django.db import connection

    from core.local_postgres import database_url

    return database_url(connection.settings_dict)


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker, tmp_path_factory):
    """A real `celery worker` process on the real Redis broker, against the test database."""
    import os
    import subprocess
    import sys
    import time

    import redis

    from config.celery import app

    redis.Redis.from_url(settings.REDIS_URL).delete(settings.CELERY_TASK_DEFAULT_QUEUE)
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    env = os.environ | {
        "DATABASE_URL": _worker_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        # Webhook tests deliver to a receiver on 127.0.0.1 (events.webhooks).
        "WEBHOOK_ALLOW_LOOPBACK": "true",
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=threads", "--concurrency=4",
             "--without-gossip", "--without-mingle", "--loglevel=INFO", f"--hostname=test-{os.getpid()}@%h"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while not app.control.ping(timeout=0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the Celery worker did not start:\n{log_path.read_text()[-3000:]}")
    try:
        yield process
    finally:
        stop_process(process)


@pytest.fixture
def real_worker(celery_worker_process, transactional_db):
    """Send tasks to the real worker instead of running them in-process."""
    from config.celery import app

    app.conf.task_always_eager = False
    try:
        yield celery_worker_process
    finally:
        app.conf.task_always_eager = settings.CELERY_TASK_ALWAYS_EAGER


def stop_process(process, timeout: float = 20) -> None:
    """Stop a server or worker this test started: terminate, and kill it if it lingers."""
    import subprocess

    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.1):
    """Poll for an effect of another process (a worker), failing after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture(autouse=True)
def _gpu_catalog(request):
    """Transactional tests flush every table, the catalog loaded by a data migration
    included; put it back for any test that uses the database."""
    marker = request.node.get_closest_marker("django_db")
    uses_db = marker is not None or {"db", "transactional_db", "live_server"} & set(request.fixturenames)
    if not uses_db:
        yield
        return
    import importlib

    from marketplace.models import GpuModel

    request.getfixturevalue("transactional_db" if "transactional_db" in request.fixturenames else "db")
    if not GpuModel.objects.exists():
        catalog = importlib.import_module("marketplace.migrations.0002_gpu_catalog").CATALOG
        for slug, name, vendor, memory_gb, tflops in catalog:
            GpuModel.objects.get_or_create(
                slug=slug, defaults={"name": name, "vendor": vendor, "memory_gb": memory_gb, "bf16_tflops": tflops}
            )
    yield


# --- A real browser: Debian's headless Chromium and its chromedriver, never a downloaded one ---

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_SECONDS = 20


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(autouse=True)
def free_spans_agree_with_their_definition(request):
    """After every test that used the database, the free spans PostgreSQL keeps (broker.free_spans)
    are exactly what their definition says: whatever the test sold, freed, listed or released."""
    yield
    if not {"db", "transactional_db", "django_db_reset_sequences"} & set(request.fixturenames):
        return
    if request.node.get_closest_marker("no_free_span_check"):
        return
    from django.db import connection

    from broker.free_spans import free_spans_drift

    if connection.needs_rollback:  # the test ended inside a failed transaction, as it meant to
        return
    drift = free_spans_drift()
    assert drift == [], f"free spans drifted from their definition: {drift[:10]}"
