"""The conventions every endpoint follows: auth, the error shape, bad input, idempotency."""

import json
import threading
from datetime import timedelta

import psycopg
import pytest
from django.db import connection, connections
from django.test import RequestFactory, override_settings
from django.utils import timezone

from core.local_postgres import database_url
from marketplace.idempotency import _fingerprint
from marketplace.models import ApiKey, Cluster, IdempotencyRecord
from tests.conftest import assert_error, make_client, wait_until

CLUSTER = {"name": "c", "gpu_model": "h100-sxm-80gb", "region": "us-east-1",
           "interconnect": "infiniband", "gpus_per_node": 8, "node_count": 1}  # fmt: skip


def waiting_on_a_lock() -> bool:
    """Whether another session waits on a lock (the retry, on the first request's record)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        return bool(cursor.fetchone()[0])


pytestmark = pytest.mark.django_db


def post_raw(client, path, body: bytes, **extra):
    return client.generic("POST", path, body, content_type="application/json", **extra)


class TestAuthentication:
    def test_missing_key_is_401_in_error_shape(self, anon_client):
        response = anon_client.get("/api/v1/organization")
        assert_error(response, 401, "not_authenticated")
        assert response["WWW-Authenticate"].startswith("Bearer")

    def test_wrong_scheme_is_401(self, provider_client):
        provider_client.credentials(HTTP_AUTHORIZATION=f"Token {provider_client.secret}")
        assert_error(provider_client.get("/api/v1/organization"), 401)

    def test_garbage_key_is_401(self, anon_client):
        anon_client.credentials(HTTP_AUTHORIZATION="Bearer gpb_abcdefgh_nope")
        assert_error(anon_client.get("/api/v1/organization"), 401)

    @pytest.mark.parametrize(
        "key", ["gpb_ab\x00cdefg_secret", "gpb_ABCDEFGH_secret", "gpb_abcdéfgh_secret", "gpb_abcdefgh_x\x00y"]
    )
    def test_a_key_not_shaped_as_issued_is_401(self, anon_client, key):
        anon_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        assert_error(anon_client.get("/api/v1/organization"), 401)

    def test_valid_key_authenticates_and_records_use(self, provider_client):
        response = provider_client.get("/api/v1/organization")
        assert response.status_code == 200
        assert response.json()["name"] == "Provider One"
        assert response.json()["role"] == "provider"
        assert ApiKey.objects.get(organization=provider_client.organization).last_used_at is not None

    def test_revoked_key_stops_working(self, provider_client):
        key_id = ApiKey.objects.get(organization=provider_client.organization).pk
        response = provider_client.post(f"/api/v1/api-keys/{key_id}/revoke")
        assert response.status_code == 200
        assert response.json()["revoked_at"] is not None
        assert_error(provider_client.get("/api/v1/organization"), 401)

    def test_suspended_organization_key_stops_working(self, provider_client):
        from marketplace.services import organization_set_status

        organization_set_status(organization=provider_client.organization, status="suspended")
        assert_error(provider_client.get("/api/v1/organization"), 401)


class TestApiKeys:
    def test_secret_shown_once_and_stored_hashed(self, lab_client):
        response = lab_client.post("/api/v1/api-keys", {"name": "ci"}, format="json")
        assert response.status_code == 201
        secret = response.json()["secret"]
        assert secret.startswith(response.json()["prefix"] + "_")
        stored = ApiKey.objects.get(pk=response.json()["id"])
        assert secret not in (stored.key_hash, stored.prefix)
        listed = lab_client.get("/api/v1/api-keys").json()
        assert listed["count"] == 2
        assert all("secret" not in item for item in listed["results"])
        assert secret not in json.dumps(lab_client.get(f"/api/v1/api-keys/{stored.pk}").json())

    def test_new_key_authenticates(self, lab_client, anon_client):
        secret = lab_client.post("/api/v1/api-keys", {"name": "ci"}, format="json").json()["secret"]
        anon_client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        assert anon_client.get("/api/v1/organization").json()["name"] == "Lab One"

    def test_other_organizations_key_is_404(self, lab_client, provider_client):
        other_key = ApiKey.objects.get(organization=provider_client.organization)
        assert_error(lab_client.get(f"/api/v1/api-keys/{other_key.pk}"), 404, "not_found")
        assert_error(lab_client.post(f"/api/v1/api-keys/{other_key.pk}/revoke"), 404)
        other_key.refresh_from_db()
        assert other_key.revoked_at is None


class TestBadInput:
    def test_malformed_json(self, lab_client):
        error = assert_error(post_raw(lab_client, "/api/v1/api-keys", b'{"name": '), 400, "malformed_request")
        assert "JSON" in error["message"]

    def test_nan_literal_is_rejected(self, lab_client):
        assert_error(post_raw(lab_client, "/api/v1/api-keys", b'{"name": NaN}'), 400)

    def test_wrong_type(self, lab_client):
        error = assert_error(lab_client.post("/api/v1/api-keys", {"name": {"a": 1}}, format="json"), 400, "invalid")
        assert "name" in error["fields"]

    def test_non_object_body(self, lab_client):
        assert_error(post_raw(lab_client, "/api/v1/api-keys", b"[1, 2, 3]"), 400)

    @override_settings(API_MAX_BODY_BYTES=1024)
    def test_oversized_body_is_413(self, lab_client):
        body = json.dumps({"name": "x" * 5000}).encode()
        assert_error(post_raw(lab_client, "/api/v1/api-keys", body), 413, "payload_too_large")
        assert ApiKey.objects.filter(organization=lab_client.organization).count() == 1

    @pytest.mark.parametrize("page_size", ["0", "501", "abc", "null", "1.5", "-1", "\u00b2", ""])
    @pytest.mark.parametrize("path", ["/api/v1/api-keys", "/api/v1/listings", "/api/v1/contracts"])
    def test_a_bad_page_size_is_400_naming_it(self, lab_client, path, page_size):
        error = assert_error(lab_client.get(path, {"page_size": page_size}), 400, "invalid")
        assert "page_size" in error["fields"]

    def test_a_page_size_in_bounds_is_used(self, lab_client):
        for _ in range(2):
            lab_client.post("/api/v1/api-keys", {"name": "more"}, format="json")
        body = lab_client.get("/api/v1/api-keys", {"page_size": "2"}).json()
        assert len(body["results"]) == 2 and "page_size=2" in body["next"]

    def test_unknown_api_path_is_json_404(self, lab_client):
        assert_error(lab_client.get("/api/v1/no-such-thing"), 404)

    def test_wrong_method_is_405_in_shape(self, lab_client):
        assert_error(lab_client.delete("/api/v1/organization"), 405, "method_not_allowed")

    def test_unsupported_media_type(self, lab_client):
        response = lab_client.generic("POST", "/api/v1/api-keys", "name=x", content_type="text/plain")
        assert_error(response, 415)


class TestIdempotency:
    def test_retry_returns_first_response_and_does_work_once(self, provider_client):
        cluster = {"name": "retry", "gpu_model": "h100-sxm-80gb", "region": "us-east-1",
                   "interconnect": "infiniband", "gpus_per_node": 8, "node_count": 2}  # fmt: skip
        first = provider_client.post("/api/v1/clusters", cluster, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
        second = provider_client.post("/api/v1/clusters", cluster, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
        assert first.status_code == second.status_code == 201
        assert first.content == second.content  # the same bytes, not the same data re-encoded
        assert second["Idempotent-Replayed"] == "true"
        assert Cluster.objects.filter(provider=provider_client.organization, name="retry").count() == 1

    def test_a_response_carrying_a_secret_is_never_stored_and_its_retry_is_409(self, lab_client):
        first = lab_client.post("/api/v1/api-keys", {"name": "retry"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
        assert first.status_code == 201 and first.json()["secret"]
        assert "no-store" in first["Cache-Control"]
        record = IdempotencyRecord.objects.get(organization=lab_client.organization, key="k-1")
        assert (record.response_status, record.response_body, record.withheld) == (201, None, True)
        assert record.response_content is None
        assert not IdempotencyRecord.objects.filter(response_body__icontains=first.json()["secret"]).exists()

        second = lab_client.post("/api/v1/api-keys", {"name": "retry"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
        error = assert_error(second, 409, "idempotent_replay_withheld")
        assert first.json()["secret"] not in json.dumps(error)
        assert ApiKey.objects.filter(organization=lab_client.organization, name="retry").count() == 1

    def test_same_key_different_body_is_409(self, lab_client):
        lab_client.post("/api/v1/api-keys", {"name": "a"}, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
        response = lab_client.post("/api/v1/api-keys", {"name": "b"}, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
        assert_error(response, 409, "idempotency_key_reused")
        assert not ApiKey.objects.filter(name="b").exists()

    def test_a_key_past_its_time_to_live_is_claimed_afresh(self, provider_client, settings):
        cluster = {"name": "old", "gpu_model": "h100-sxm-80gb", "region": "us-east-1",
                   "interconnect": "infiniband", "gpus_per_node": 8, "node_count": 1}  # fmt: skip
        assert (
            provider_client.post("/api/v1/clusters", cluster, format="json", HTTP_IDEMPOTENCY_KEY="k-3").status_code
            == 201
        )
        record = IdempotencyRecord.objects.get(organization=provider_client.organization, key="k-3")
        aged = record.created_at - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS, seconds=1)
        IdempotencyRecord.objects.filter(pk=record.pk).update(created_at=aged)
        # Another body under the same key: not a reuse any more, but a new request.
        renamed = provider_client.post(
            "/api/v1/clusters", cluster | {"name": "new"}, format="json", HTTP_IDEMPOTENCY_KEY="k-3"
        )
        assert renamed.status_code == 201 and "Idempotent-Replayed" not in renamed
        again = provider_client.post(
            "/api/v1/clusters", cluster | {"name": "new"}, format="json", HTTP_IDEMPOTENCY_KEY="k-3"
        )
        assert again["Idempotent-Replayed"] == "true" and again.content == renamed.content
        (kept,) = IdempotencyRecord.objects.filter(organization=provider_client.organization, key="k-3")
        assert kept.pk != record.pk and kept.created_at > aged
        assert Cluster.objects.filter(provider=provider_client.organization, name="new").count() == 1

    def test_a_refused_request_leaves_no_record_and_its_retry_runs(self, lab_client):
        refused = lab_client.post("/api/v1/api-keys", {"name": ""}, format="json", HTTP_IDEMPOTENCY_KEY="k-4")
        assert_error(refused, 400)
        assert not IdempotencyRecord.objects.filter(key="k-4").exists()
        fixed = lab_client.post("/api/v1/api-keys", {"name": "fixed"}, format="json", HTTP_IDEMPOTENCY_KEY="k-4")
        assert fixed.status_code == 201 and "Idempotent-Replayed" not in fixed

    def test_a_key_revoked_while_its_retry_waits_on_the_first_request_is_refused(self, transactional_db):
        """The retry waits on the first request's record (the unique index); the first fails,
        so the retry runs: with its key as it is then, not as it was before the wait."""
        client = make_client("Waiting Provider", "provider")
        fingerprint = _fingerprint(
            RequestFactory().post("/api/v1/clusters", data=json.dumps(CLUSTER), content_type="application/json")
        )
        first = psycopg.connect(database_url(connection.settings_dict))
        first.execute(  # the first request with the key, not yet committed
            "INSERT INTO marketplace_idempotencyrecord (organization_id, key, fingerprint, withheld, created_at)"
            " VALUES (%s, 'k', %s, false, now())",
            [client.organization.pk, fingerprint],
        )
        answered = {}

        def retry():
            try:
                answered["retry"] = client.post("/api/v1/clusters", CLUSTER, format="json", HTTP_IDEMPOTENCY_KEY="k")
            finally:
                connections.close_all()

        thread = threading.Thread(target=retry)
        thread.start()
        try:
            wait_until(waiting_on_a_lock, timeout=20)
            ApiKey.objects.filter(organization=client.organization).update(revoked_at=timezone.now())
        finally:
            first.rollback()  # the first request failed: the retry runs
            thread.join(20)
            first.close()
        assert_error(answered["retry"], 401, "not_authenticated")
        assert not Cluster.objects.filter(provider=client.organization).exists()

    def test_keys_are_scoped_per_organization(self, lab_client, other_lab_client):
        lab_client.post("/api/v1/api-keys", {"name": "x"}, format="json", HTTP_IDEMPOTENCY_KEY="shared")
        response = other_lab_client.post(
            "/api/v1/api-keys", {"name": "x"}, format="json", HTTP_IDEMPOTENCY_KEY="shared"
        )
        assert response.status_code == 201
        assert "Idempotent-Replayed" not in response

    def test_failed_request_is_not_remembered(self, lab_client):
        bad = lab_client.post("/api/v1/api-keys", {"name": ""}, format="json", HTTP_IDEMPOTENCY_KEY="k-3")
        assert_error(bad, 400)
        good = lab_client.post("/api/v1/api-keys", {"name": ""}, format="json", HTTP_IDEMPOTENCY_KEY="k-3")
        assert good.status_code == 400  # the same bad body fails the same way, nothing cached

    def test_key_expires_after_retention(self, lab_client):
        import time_machine

        with time_machine.travel("2030-01-01 00:00Z", tick=False):
            lab_client.post("/api/v1/api-keys", {"name": "old"}, format="json", HTTP_IDEMPOTENCY_KEY="k-4")
        with time_machine.travel("2030-01-02 23:00Z", tick=False):
            retry = lab_client.post("/api/v1/api-keys", {"name": "old"}, format="json", HTTP_IDEMPOTENCY_KEY="k-4")
            assert_error(retry, 409, "idempotent_replay_withheld")  # remembered: the key's secret is not
        with time_machine.travel("2030-01-03 01:00Z", tick=False):
            fresh = lab_client.post("/api/v1/api-keys", {"name": "old"}, format="json", HTTP_IDEMPOTENCY_KEY="k-4")
            assert "Idempotent-Replayed" not in fresh
        assert ApiKey.objects.filter(name="old").count() == 2


class TestDocs:
    def test_schema_and_docs_are_served(self, anon_client):
        schema = anon_client.get("/api/v1/schema/")
        assert schema.status_code == 200
        assert b"openapi: 3" in schema.content
        assert anon_client.get("/api/v1/docs/").status_code == 200

    def test_gpu_catalog_is_public(self, anon_client):
        slugs = {item["slug"] for item in anon_client.get("/api/v1/gpu-models").json()["results"]}
        assert {"a100-sxm-80gb", "h100-sxm-80gb", "h200-sxm-141gb", "b200", "gb200", "mi300x"} <= slugs


class TestIndex:
    def test_the_index_lists_every_resource_without_a_key(self, anon_client, lab_client):
        response = anon_client.get("/api/v1/")
        assert response.status_code == 200
        body = response.json()
        assert body["schema"] == "http://testserver/api/v1/schema/"
        assert {"listings", "clusters", "compute-requests", "contracts", "usage", "invoices", "payouts"} <= set(
            body["resources"]
        )
        for name, url in body["resources"].items():
            assert url == f"http://testserver/api/v1/{name}"
            # served: a lab may not read payouts, and a preview needs its month
            assert lab_client.get(url).status_code in {200, 400, 403}, name


class TestIdempotencyAndRouting:
    def test_a_method_a_path_lacks_is_405_whatever_the_key(self, provider_client):
        cluster = {"name": "routed", "gpu_model": "h100-sxm-80gb", "region": "us-south-1",
                   "interconnect": "infiniband", "gpus_per_node": 8, "node_count": 2}  # fmt: skip
        assert (
            provider_client.post("/api/v1/clusters", cluster, format="json", HTTP_IDEMPOTENCY_KEY="k").status_code
            == 201
        )
        for method in (provider_client.put, provider_client.delete):
            assert_error(method("/api/v1/clusters", {}, format="json", HTTP_IDEMPOTENCY_KEY="k"), 405)
        assert_error(provider_client.post("/api/v1/nowhere", {}, format="json", HTTP_IDEMPOTENCY_KEY="k"), 404)
        assert IdempotencyRecord.objects.filter(key="k").count() == 1


class TestFilters:
    @pytest.mark.parametrize("path", ["/api/v1/contracts", "/api/v1/invoices", "/api/v1/compute-requests"])
    def test_a_filter_sent_empty_is_400_naming_it(self, lab_client, path):
        error = assert_error(lab_client.get(path, {"status": ""}), 400, "invalid")
        assert error["fields"] == {"status": ["Give a value, or leave the parameter out."]}

    @pytest.mark.parametrize("param", ["status", "gpu_model", "mine", "starts_at"])
    def test_a_search_parameter_sent_empty_is_400_naming_it(self, lab_client, param):
        error = assert_error(lab_client.get("/api/v1/listings", {param: ""}), 400, "invalid")
        assert error["fields"] == {param: ["Give a value, or leave the parameter out."]}

    def test_a_filter_outside_its_choices_is_400(self, lab_client):
        assert "status" in assert_error(lab_client.get("/api/v1/contracts", {"status": "nope"}), 400)["fields"]
