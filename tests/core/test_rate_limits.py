"""The API's rate limits: requests per API key, failed authentications per client address.

Each test counts in a cache namespace of its own (the suite's Redis when REDIS_URL is set),
with a low rate and a frozen clock, 10 seconds into a minute.
"""

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from tests.conftest import assert_error

ORGANIZATION = "/api/v1/organization"
TEN_SECONDS_INTO_A_MINUTE = datetime(2026, 12, 2, 12, 0, 10, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh_cache(settings):
    settings.CACHES = {"default": {**settings.CACHES["default"], "KEY_PREFIX": f"test-{uuid.uuid4().hex}"}}


@pytest.fixture(autouse=True)
def frozen(time_machine):
    time_machine.move_to(TEN_SECONDS_INTO_A_MINUTE, tick=False)


class TestPerApiKey:
    @pytest.fixture(autouse=True)
    def three_a_minute(self, settings):
        settings.API_RATE_LIMIT = "3/min"

    def test_past_its_rate_a_key_gets_429_in_the_error_shape_with_retry_after(self, lab_client):
        for _ in range(3):
            assert lab_client.get(ORGANIZATION).status_code == 200
        response = lab_client.get(ORGANIZATION)
        assert_error(response, 429, "throttled")
        assert response["Retry-After"] == "50"  # the minute's window ends in 50 seconds

    def test_each_key_has_its_own_count(self, lab_client, other_lab_client):
        for _ in range(3):
            lab_client.get(ORGANIZATION)
        assert lab_client.get(ORGANIZATION).status_code == 429
        assert other_lab_client.get(ORGANIZATION).status_code == 200

    def test_the_next_window_starts_a_new_count(self, lab_client, time_machine):
        for _ in range(3):
            lab_client.get(ORGANIZATION)
        assert lab_client.get(ORGANIZATION).status_code == 429
        time_machine.shift(50)
        assert lab_client.get(ORGANIZATION).status_code == 200

    def test_replays_of_an_idempotent_request_count_too(self, lab_client):
        body = {
            "gpu_model": "h100-sxm-80gb",
            "gpu_count": 8,
            "starts_at": "2026-12-02T14:00:00Z",
            "duration_hours": 2,
            "max_price_per_gpu_hour": "2.00",
            "billing_mode": "committed",
        }

        def post():
            return lab_client.post("/api/v1/compute-requests", body, format="json", HTTP_IDEMPOTENCY_KEY="req-1")

        assert post().status_code == 201
        assert [post()["Idempotent-Replayed"] for _ in range(2)] == ["true", "true"]
        response = post()
        assert_error(response, 429, "throttled")
        assert response["Retry-After"] == "50"
        assert lab_client.get(ORGANIZATION).status_code == 429

    def test_none_means_no_limit(self, lab_client, settings):
        settings.API_RATE_LIMIT = None
        assert {lab_client.get(ORGANIZATION).status_code for _ in range(10)} == {200}

    def test_the_public_catalog_counts_no_key(self, anon_client, db):
        assert {anon_client.get("/api/v1/gpu-models").status_code for _ in range(5)} == {200}


class TestAuthenticationFailuresPerAddress:
    @pytest.fixture(autouse=True)
    def three_a_minute(self, settings):
        settings.API_AUTH_FAILURE_RATE_LIMIT = "3/min"

    @staticmethod
    def fail_three_times(client, address="127.0.0.1"):
        client.credentials(HTTP_AUTHORIZATION="Bearer gpb_abcdefgh_not-a-key")
        for _ in range(3):
            assert_error(client.get(ORGANIZATION, REMOTE_ADDR=address), 401)

    def test_past_the_limit_even_a_good_key_gets_429_and_is_not_looked_up(
        self, anon_client, lab_client, django_assert_num_queries
    ):
        self.fail_three_times(anon_client)
        with django_assert_num_queries(0):
            response = lab_client.get(ORGANIZATION)
        error = assert_error(response, 429, "throttled")
        assert error["message"].startswith("Too many failed authentications from this address.")
        assert response["Retry-After"] == "50"

    def test_a_missing_key_counts_as_a_failure(self, anon_client, lab_client):
        for _ in range(3):
            assert_error(anon_client.get(ORGANIZATION), 401, "not_authenticated")
        assert_error(lab_client.get(ORGANIZATION), 429, "throttled")

    def test_another_address_is_not_refused(self, anon_client, lab_client):
        self.fail_three_times(anon_client, address="198.51.100.7")
        assert lab_client.get(ORGANIZATION, REMOTE_ADDR="198.51.100.8").status_code == 200
        assert_error(lab_client.get(ORGANIZATION, REMOTE_ADDR="198.51.100.7"), 429)

    def test_a_forwarded_for_header_does_not_change_the_address(self, anon_client, lab_client):
        """With no trusted proxy in front (NUM_PROXIES=0), X-Forwarded-For is the client's say."""
        self.fail_three_times(anon_client)
        assert_error(lab_client.get(ORGANIZATION, HTTP_X_FORWARDED_FOR="203.0.113.9"), 429)

    def test_successes_do_not_count(self, anon_client, lab_client):
        for _ in range(10):
            assert lab_client.get(ORGANIZATION).status_code == 200
        anon_client.credentials(HTTP_AUTHORIZATION="Bearer gpb_abcdefgh_not-a-key")
        assert_error(anon_client.get(ORGANIZATION), 401)

    def test_the_address_is_served_again_in_the_next_window(self, anon_client, lab_client, time_machine):
        self.fail_three_times(anon_client)
        time_machine.shift(50)
        assert lab_client.get(ORGANIZATION).status_code == 200


COUNT_IN_ANOTHER_PROCESS = """
import sys, django, time_machine
django.setup()
from django.test import RequestFactory, override_settings
from marketplace.throttling import AuthFailureThrottle
with time_machine.travel(float(sys.argv[2]), tick=False), override_settings(API_AUTH_FAILURE_RATE_LIMIT="3/day"):
    throttle = AuthFailureThrottle()
    print(throttle.exceeded(throttle.get_cache_key(RequestFactory().get("/", REMOTE_ADDR=sys.argv[1]))))
"""


@pytest.mark.skipif(not django_settings.REDIS_URL, reason="the embedded mode counts in each process's memory")
def test_the_count_is_shared_with_other_processes(settings):
    """Three failures counted here are seen by another process (another API worker)."""
    from django.test import RequestFactory

    from marketplace.throttling import AuthFailureThrottle

    settings.CACHES = {"default": {**settings.CACHES["default"], "KEY_PREFIX": "gpubroker"}}  # as configured
    settings.API_AUTH_FAILURE_RATE_LIMIT = "3/day"
    address = f"2001:db8::{uuid.uuid4().hex[:4]}"
    request = RequestFactory().get("/", REMOTE_ADDR=address)
    for _ in range(3):
        AuthFailureThrottle().record_failure(request)

    done = subprocess.run(
        # the other process's clock is frozen at the same instant
        [sys.executable, "-c", COUNT_IN_ANOTHER_PROCESS, address, str(TEN_SECONDS_INTO_A_MINUTE.timestamp())],
        cwd=ROOT, env=os.environ | {"LOG_LEVEL": "WARNING"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "True"
