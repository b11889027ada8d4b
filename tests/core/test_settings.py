"""The settings refuse what production must not run with, and the embedded mode still runs.

Each case loads the settings in a process of its own, from an environment made for it (none
of the suite's variables leak in), and reads back what Django was configured with.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "test-only-" + "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH"  # 54 characters, many distinct
PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": SECRET,
    "ALLOWED_HOSTS": "api.example.com,testserver",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/gpubroker",
    "REDIS_URL": "redis://127.0.0.1:6379/15",
}
# No server is started for the embedded mode's cases: only the settings are under test.
NO_EMBEDDED_SERVER = (
    "import core.local_postgres as embedded; "
    "embedded.ensure_server = lambda *args: {'ENGINE': 'django.db.backends.postgresql', 'NAME': 'unused'}; "
)
READ_SETTINGS = """
import json, django
django.setup()
from django.conf import settings as s
print(json.dumps({
    "DEBUG": s.DEBUG,
    "SECRET_KEY_LENGTH": len(s.SECRET_KEY),
    "CELERY_TASK_ALWAYS_EAGER": s.CELERY_TASK_ALWAYS_EAGER,
    "SESSION_COOKIE_SECURE": s.SESSION_COOKIE_SECURE,
    "SESSION_COOKIE_HTTPONLY": s.SESSION_COOKIE_HTTPONLY,
    "SESSION_COOKIE_AGE": s.SESSION_COOKIE_AGE,
    "CSRF_COOKIE_SECURE": s.CSRF_COOKIE_SECURE,
    "CSRF_COOKIE_HTTPONLY": s.CSRF_COOKIE_HTTPONLY,
    "SECURE_HSTS_SECONDS": s.SECURE_HSTS_SECONDS,
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": s.SECURE_HSTS_INCLUDE_SUBDOMAINS,
    "SECURE_SSL_REDIRECT": s.SECURE_SSL_REDIRECT,
    "SECURE_PROXY_SSL_HEADER": s.SECURE_PROXY_SSL_HEADER,
    "SECURE_CONTENT_TYPE_NOSNIFF": s.SECURE_CONTENT_TYPE_NOSNIFF,
    "CACHE": s.CACHES["default"]["BACKEND"].rsplit(".", 1)[-1],
    "API_RATE_LIMIT": s.API_RATE_LIMIT,
    "API_AUTH_FAILURE_RATE_LIMIT": s.API_AUTH_FAILURE_RATE_LIMIT,
    "AXES_FAILURE_LIMIT": s.AXES_FAILURE_LIMIT,
    "AXES_COOLOFF_MINUTES": s.AXES_COOLOFF_TIME.total_seconds() / 60,
    "DEFAULT_CREDIT_LIMIT": None if s.DEFAULT_CREDIT_LIMIT is None else str(s.DEFAULT_CREDIT_LIMIT),
}))
"""


def run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "config.settings", "LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean | env, capture_output=True, text=True, timeout=120
    )


def loaded(env: dict[str, str], *, embedded: bool = False) -> dict:
    done = run((NO_EMBEDDED_SERVER if embedded else "") + READ_SETTINGS, env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def refused(env: dict[str, str], *, embedded: bool = False) -> str:
    """The message of the ImproperlyConfigured that stopped the settings from loading."""
    done = run((NO_EMBEDDED_SERVER if embedded else "") + READ_SETTINGS, env)
    assert done.returncode != 0, done.stdout
    assert "django.core.exceptions.ImproperlyConfigured" in done.stderr, done.stderr[-3000:]
    return done.stderr.strip().splitlines()[-1]


class TestSecretKey:
    def test_production_without_a_secret_key_refuses_to_start(self):
        env = PRODUCTION.copy()
        del env["SECRET_KEY"]
        message = refused(env)
        assert "SECRET_KEY" in message and "50 characters" in message

    def test_production_with_a_short_secret_key_refuses_to_start(self):
        assert "SECRET_KEY" in refused(PRODUCTION | {"SECRET_KEY": SECRET[:49]})

    def test_a_long_key_of_one_character_repeated_is_refused(self):
        assert "SECRET_KEY" in refused(PRODUCTION | {"SECRET_KEY": "a" * 60})

    def test_debug_off_in_the_embedded_mode_needs_a_key_too(self):
        assert "SECRET_KEY" in refused({"DEBUG": "false"}, embedded=True)

    def test_production_with_a_key_starts(self):
        configured = loaded(PRODUCTION)
        assert configured["DEBUG"] is False
        assert configured["SECRET_KEY_LENGTH"] == len(SECRET)


class TestHttpsOnly:
    def test_production_sends_cookies_over_https_only_hides_them_from_scripts_and_asks_for_hsts(self):
        configured = loaded(PRODUCTION)
        assert configured["SESSION_COOKIE_SECURE"] is True
        assert configured["CSRF_COOKIE_SECURE"] is True
        assert configured["SESSION_COOKIE_HTTPONLY"] is True
        assert configured["CSRF_COOKIE_HTTPONLY"] is True
        assert configured["SECURE_HSTS_SECONDS"] == 365 * 24 * 3600
        assert configured["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
        assert configured["SECURE_SSL_REDIRECT"] is True
        assert configured["SECURE_PROXY_SSL_HEADER"] is None
        assert configured["SECURE_CONTENT_TYPE_NOSNIFF"] is True

    def test_the_environment_sets_the_redirect_the_proxy_header_and_the_hsts_duration(self):
        env = {"SECURE_SSL_REDIRECT": "false", "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO"}
        configured = loaded(PRODUCTION | env | {"SECURE_HSTS_SECONDS": "3600"})
        assert configured["SECURE_SSL_REDIRECT"] is False
        assert configured["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
        assert configured["SECURE_HSTS_SECONDS"] == 3600

    def test_the_proxy_header_may_be_named_as_sent(self):
        configured = loaded(PRODUCTION | {"SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto"})
        assert configured["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]

    def test_the_embedded_mode_serves_plain_http(self):
        configured = loaded({}, embedded=True)
        assert configured["SECURE_SSL_REDIRECT"] is False
        assert configured["SESSION_COOKIE_SECURE"] is False
        assert configured["SECURE_HSTS_SECONDS"] == 0


RESPONSES = """
import json, django
django.setup()
from django.test import Client
http = Client().get("/admin/login/")
https = Client().get("/admin/login/", secure=True)
proxied = Client().get("/admin/login/", headers={"X-Forwarded-Proto": "https"})
print(json.dumps({
    "http": [http.status_code, http.get("Location")],
    "https": [https.status_code, https.get("Strict-Transport-Security"), https.cookies["csrftoken"].output()],
    "proxied": proxied.status_code,
}))
"""


def test_a_production_server_redirects_to_https_and_answers_it_with_hsts_and_secure_cookies():
    done = run(RESPONSES, PRODUCTION | {"SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO"})
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert answers["http"] == [301, "https://testserver/admin/login/"]
    status, hsts, cookie = answers["https"]
    assert status == 200
    assert hsts == "max-age=31536000; includeSubDomains"
    assert "; Secure" in cookie and "; HttpOnly" in cookie
    assert answers["proxied"] == 200  # the proxy said https


class TestTasks:
    def test_a_server_database_without_redis_refuses_to_start(self):
        env = PRODUCTION.copy()
        del env["REDIS_URL"]
        message = refused(env)
        assert "REDIS_URL" in message and "CELERY_TASK_ALWAYS_EAGER=true" in message

    def test_in_process_tasks_asked_for_run_without_redis(self):
        """The benchmarks' environment: a server database, tasks in-process, nothing else."""
        configured = loaded({"DATABASE_URL": PRODUCTION["DATABASE_URL"], "CELERY_TASK_ALWAYS_EAGER": "true"})
        assert configured["CELERY_TASK_ALWAYS_EAGER"] is True
        assert configured["DEBUG"] is True  # a local run

    def test_in_process_tasks_in_production_still_need_the_key(self):
        env = PRODUCTION | {"CELERY_TASK_ALWAYS_EAGER": "true"}
        del env["REDIS_URL"], env["SECRET_KEY"]
        assert "SECRET_KEY" in refused(env)

    def test_the_test_suites_celery_worker_starts(self):
        """pytest marks its session with PYTEST_VERSION; the worker the suite starts inherits it."""
        env = PRODUCTION | {"CELERY_TASK_ALWAYS_EAGER": "false", "PYTEST_VERSION": "9"}
        del env["DEBUG"], env["SECRET_KEY"]
        configured = loaded(env)
        assert configured["CELERY_TASK_ALWAYS_EAGER"] is False
        assert configured["DEBUG"] is True

    def test_the_embedded_mode_runs_tasks_in_process_with_debug_on(self):
        configured = loaded({}, embedded=True)
        assert configured["DEBUG"] is True
        assert configured["CELERY_TASK_ALWAYS_EAGER"] is True
        assert configured["CACHE"] == "LocMemCache"

    def test_the_embedded_mode_refuses_to_send_tasks_nowhere(self):
        assert "REDIS_URL" in refused({"CELERY_TASK_ALWAYS_EAGER": "false"}, embedded=True)


class TestAdminLogin:
    def test_a_handful_of_failures_locks_for_a_quarter_hour_and_a_session_lasts_four_hours(self):
        configured = loaded(PRODUCTION)
        assert configured["AXES_FAILURE_LIMIT"] == 5
        assert configured["AXES_COOLOFF_MINUTES"] == 15
        assert configured["SESSION_COOKIE_AGE"] == 4 * 3600

    def test_the_environment_sets_them(self):
        env = {"ADMIN_LOGIN_FAILURE_LIMIT": "3", "ADMIN_LOGIN_COOLOFF_MINUTES": "60", "SESSION_COOKIE_AGE": "1800"}
        configured = loaded(PRODUCTION | env)
        assert configured["AXES_FAILURE_LIMIT"] == 3
        assert configured["AXES_COOLOFF_MINUTES"] == 60
        assert configured["SESSION_COOKIE_AGE"] == 1800


class TestRateLimits:
    def test_production_counts_in_redis_with_the_default_rates(self):
        configured = loaded(PRODUCTION)
        assert configured["CACHE"] == "RedisCache"
        assert configured["API_RATE_LIMIT"] == "6000/min"
        assert configured["API_AUTH_FAILURE_RATE_LIMIT"] == "30/min"

    def test_the_rates_are_read_from_the_environment(self):
        configured = loaded(PRODUCTION | {"API_RATE_LIMIT": "none", "API_AUTH_FAILURE_RATE_LIMIT": "10/s"})
        assert configured["API_RATE_LIMIT"] is None
        assert configured["API_AUTH_FAILURE_RATE_LIMIT"] == "10/s"

    @pytest.mark.parametrize("rate", ["fast", "0/min", "100/fortnight", "100"])
    def test_a_rate_that_is_not_one_refuses_to_start(self, rate):
        assert "API_RATE_LIMIT" in refused(PRODUCTION | {"API_RATE_LIMIT": rate})


class TestCreditLimit:
    def test_new_labs_start_at_100000_unless_the_environment_says_otherwise(self):
        assert loaded(PRODUCTION)["DEFAULT_CREDIT_LIMIT"] == "100000.00"
        assert loaded(PRODUCTION | {"DEFAULT_CREDIT_LIMIT": "250000"})["DEFAULT_CREDIT_LIMIT"] == "250000"
        assert loaded(PRODUCTION | {"DEFAULT_CREDIT_LIMIT": "none"})["DEFAULT_CREDIT_LIMIT"] is None

    @pytest.mark.parametrize("limit", ["lots", "-1", "0.001", "1e14", "NaN", "Infinity"])
    def test_a_limit_that_is_not_an_amount_refuses_to_start(self, limit):
        assert "DEFAULT_CREDIT_LIMIT" in refused(PRODUCTION | {"DEFAULT_CREDIT_LIMIT": limit})


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    return run(
        "from django.core.management import execute_from_command_line; "
        "execute_from_command_line(['manage.py', 'check', '--deploy', '--fail-level', 'WARNING'])",
        env,
    )


def test_check_deploy_is_clean_in_production():
    done = check_deploy(PRODUCTION)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "System check identified no issues" in done.stdout


def test_check_deploy_warns_when_the_rate_limits_are_per_process():
    env = PRODUCTION | {"CELERY_TASK_ALWAYS_EAGER": "true"}
    del env["REDIS_URL"]
    done = check_deploy(env)
    assert done.returncode != 0
    assert "core.W001" in done.stderr
