"""POST/GET /api/v1/compute-requests and cancel: who may, what is refused, what it answers."""

import logging
from contextlib import contextmanager
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import transaction
from kombu.exceptions import OperationalError

from broker.matching import segment_match
from broker.models import ComputeRequest
from broker.services import compute_request_rematch
from broker.tasks import rematch_open_requests
from core.models import AuditEvent
from marketplace.models import GpuModel
from tests.conftest import assert_error
from tests.marketplace.factories import ListingFactory, gpu_model, hour, iso

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen")]

URL = "/api/v1/compute-requests"


def body(**overrides) -> dict:
    data = {
        "gpu_model": "h100-sxm-80gb",
        "gpu_count": 16,
        "starts_at": iso(hour(2)),
        "duration_hours": 4,
        "max_price_per_gpu_hour": "3.00",
        "billing_mode": "committed",
    }
    data.update(overrides)
    return data


def create(client, **overrides):
    return client.post(URL, body(**overrides), format="json")


def fill(request_id: int) -> None:
    """Give the request capacity and run the matching engine."""
    ListingFactory(node_count=2, starts_at=hour(1), ends_at=hour(24), price_per_gpu_hour=Decimal("2.00"))
    segment_match(gpu_model_id=gpu_model().pk, wait=True)
    assert ComputeRequest.objects.get(pk=request_id).status == ComputeRequest.Status.FILLED


class TestCreate:
    def test_answers_201_open_with_defaults(self, lab_client):
        response = create(lab_client)
        assert response.status_code == 201, response.json()
        data = response.json()
        assert data["status"] == "open"
        assert data["colocated"] is True
        assert data["region"] == ""
        assert data["interconnect"] == ""
        assert data["contracts"] == []
        assert data["gpu_model"] == "h100-sxm-80gb"
        assert data["gpu_count"] == 16
        assert data["starts_at"] == iso(hour(2))
        assert data["ends_at"] == iso(hour(6))
        assert data["max_price_per_gpu_hour"] == "3.0000"
        assert data["filled_at"] is None and data["closed_at"] is None
        stored = ComputeRequest.objects.get(pk=data["id"])
        assert stored.lab == lab_client.organization
        assert stored.ends_at == hour(6)

    def test_region_interconnect_and_spread_are_kept(self, lab_client):
        response = create(lab_client, colocated=False, region="eu-west-2", interconnect="roce", billing_mode="metered")
        assert response.status_code == 201, response.json()
        data = response.json()
        assert (data["colocated"], data["region"], data["interconnect"], data["billing_mode"]) == (
            False,
            "eu-west-2",
            "roce",
            "metered",
        )

    def test_the_hour_already_begun_is_refused_the_next_is_accepted(self, lab_client):
        # It is 09:17: a start at 09:00 would charge for 17 minutes already past.
        error = assert_error(create(lab_client, starts_at=iso(hour(0))), 400, "invalid")
        assert "starts_at" in error["fields"]
        assert create(lab_client, starts_at=iso(hour(1))).status_code == 201

    def test_an_organization_with_both_roles_may_request(self, both_client):
        assert create(both_client).status_code == 201

    def test_provider_only_organization_is_403(self, provider_client):
        assert_error(create(provider_client), 403, "permission_denied")
        assert_error(provider_client.get(URL), 403)
        assert not ComputeRequest.objects.exists()

    def test_commit_queues_matching_which_fills_it(self, lab_client, django_capture_on_commit_callbacks):
        ListingFactory(node_count=2, starts_at=hour(1), ends_at=hour(24), price_per_gpu_hour=Decimal("2.00"))
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            response = create(lab_client)
        assert response.status_code == 201
        assert len(callbacks) == 1
        detail = lab_client.get(f"{URL}/{response.json()['id']}").json()
        assert detail["status"] == "filled"
        assert len(detail["contracts"]) == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"starts_at": "2031-03-10T11:30:00Z"}, "starts_at"),
        ({"starts_at": "2031-03-10T11:00:01Z"}, "starts_at"),
        ({"starts_at": iso(hour(-1))}, "starts_at"),
        ({"starts_at": iso(hour(0))}, "starts_at"),  # 09:00, already begun at 09:17
        ({"starts_at": "9999-12-31T23:00:00Z"}, "starts_at"),  # once an OverflowError
        ({"starts_at": "2099-12-31T23:00:00Z", "duration_hours": 2}, "duration_hours"),  # ends past the horizon
        ({"gpu_count": 0}, "gpu_count"),
        ({"gpu_count": 1_000_000, "duration_hours": 10_001}, "gpu_count"),  # over MAX_CONTRACT_TOTAL at the ceiling
        ({"max_price_per_gpu_hour": "2.125"}, "max_price_per_gpu_hour"),  # not whole cents
        ({"max_price_per_gpu_hour": "1000.01"}, "max_price_per_gpu_hour"),  # over the ceiling
        ({"gpu_count": -8}, "gpu_count"),
        ({"max_price_per_gpu_hour": "0"}, "max_price_per_gpu_hour"),
        ({"max_price_per_gpu_hour": "-1.00"}, "max_price_per_gpu_hour"),
        ({"max_price_per_gpu_hour": "2.12345"}, "max_price_per_gpu_hour"),
        ({"gpu_model": "h900-imaginary"}, "gpu_model"),
        ({"colour": "green"}, "colour"),
        ({"duration_hours": 0}, "duration_hours"),
        ({"billing_mode": "spot"}, "billing_mode"),
        ({"region": "US South"}, "region"),
        ({"interconnect": "nvlink"}, "interconnect"),
    ],
)
def test_bad_input_is_400_naming_the_field(lab_client, overrides, field):
    error = assert_error(create(lab_client, **overrides), 400, "invalid")
    assert field in error["fields"], error
    assert not ComputeRequest.objects.exists()


@pytest.mark.parametrize("value", ["h900-imaginary", "H100 SXM", 100, ["h100-sxm-80gb"]])
def test_unknown_gpu_model_is_400_listing_the_catalog(lab_client, value):
    error = assert_error(create(lab_client, gpu_model=value), 400, "invalid")
    slugs = list(GpuModel.objects.order_by("slug").values_list("slug", flat=True))
    assert "h100-sxm-80gb" in slugs
    [message] = error["fields"]["gpu_model"]
    assert message.endswith(f"Valid: {', '.join(slugs)} (GET /api/v1/gpu-models).")
    assert message in error["message"]
    assert not ComputeRequest.objects.exists()


@pytest.mark.parametrize("field", ["gpu_model", "gpu_count", "starts_at", "duration_hours", "billing_mode"])
def test_missing_required_field_is_400_naming_it(lab_client, field):
    data = body()
    del data[field]
    error = assert_error(lab_client.post(URL, data, format="json"), 400, "invalid")
    assert field in error["fields"], error


class TestReadAndCancel:
    def test_list_and_detail_show_only_own_requests(self, lab_client, other_lab_client):
        mine = create(lab_client).json()["id"]
        theirs = create(other_lab_client, gpu_count=8).json()["id"]
        listed = lab_client.get(URL).json()
        assert listed["count"] == 1
        assert [item["id"] for item in listed["results"]] == [mine]
        assert lab_client.get(f"{URL}/{mine}").json()["status"] == "open"
        assert_error(lab_client.get(f"{URL}/{theirs}"), 404, "not_found")

    def test_list_filters_by_status(self, lab_client):
        first = create(lab_client).json()["id"]
        create(lab_client, gpu_count=8)
        lab_client.post(f"{URL}/{first}/cancel")
        assert [item["id"] for item in lab_client.get(URL, {"status": "cancelled"}).json()["results"]] == [first]
        assert lab_client.get(URL, {"status": "open"}).json()["count"] == 1

    def test_cancel_open_request(self, lab_client):
        request_id = create(lab_client).json()["id"]
        response = lab_client.post(f"{URL}/{request_id}/cancel")
        assert response.status_code == 200
        assert response.json()["status"] == "cancelled"
        assert response.json()["closed_at"] is not None
        # Cancelling twice is harmless.
        assert lab_client.post(f"{URL}/{request_id}/cancel").json()["status"] == "cancelled"

    def test_cancelled_request_is_never_matched(self, lab_client):
        request_id = create(lab_client).json()["id"]
        lab_client.post(f"{URL}/{request_id}/cancel")
        ListingFactory(node_count=2, starts_at=hour(1), ends_at=hour(24), price_per_gpu_hour=Decimal("2.00"))
        segment_match(gpu_model_id=gpu_model().pk, wait=True)
        assert lab_client.get(f"{URL}/{request_id}").json()["contracts"] == []

    def test_cancel_filled_request_is_409(self, lab_client):
        request_id = create(lab_client).json()["id"]
        fill(request_id)
        assert_error(lab_client.post(f"{URL}/{request_id}/cancel"), 409, "invalid_transition")
        assert ComputeRequest.objects.get(pk=request_id).status == "filled"

    def test_other_lab_cannot_cancel(self, lab_client, other_lab_client):
        request_id = create(lab_client).json()["id"]
        assert_error(other_lab_client.post(f"{URL}/{request_id}/cancel"), 404)
        assert ComputeRequest.objects.get(pk=request_id).status == "open"

    def test_provider_cannot_cancel(self, lab_client, provider_client):
        request_id = create(lab_client).json()["id"]
        assert_error(provider_client.post(f"{URL}/{request_id}/cancel"), 403)

    def test_filled_request_lists_its_contracts(self, lab_client):
        request_id = create(lab_client).json()["id"]
        fill(request_id)
        detail = lab_client.get(f"{URL}/{request_id}").json()
        assert detail["status"] == "filled"
        assert detail["filled_at"] is not None
        assert len(detail["contracts"]) == 1


@contextmanager
def broker_unreachable():
    """Redis is down: tasks go to a real broker (not in-process), the pending marks are out of
    reach, and every publish fails as kombu fails when it cannot connect."""
    from config.celery import app

    def refuse(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(app.conf, "task_always_eager", False)
        patch.setattr(app.tasks["broker.tasks.match_segment"], "apply_async", refuse)
        patch.setattr(settings, "REDIS_URL", "redis://127.0.0.1:1/9")  # nothing listens on port 1
        yield


def enqueue_failures(caplog, request_id: int) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.levelno >= logging.WARNING and f"request {request_id}" in record.getMessage()
    ]


@pytest.mark.django_db(transaction=True)
class TestBrokerUnreachable:
    """A request that committed is a 201 even when matching cannot be queued: a 500 would
    make the client retry and buy the same capacity twice. The periodic sweep matches it."""

    def test_create_is_201_stored_once_logged_and_the_sweep_fills_it(self, lab_client, caplog):
        with broker_unreachable(), caplog.at_level(logging.WARNING):
            response = create(lab_client)
        assert response.status_code == 201, response.content[:500]
        request_id = response.json()["id"]
        assert list(ComputeRequest.objects.values_list("id", "status")) == [(request_id, "open")]
        assert enqueue_failures(caplog, request_id)

        ListingFactory(node_count=2, starts_at=hour(1), ends_at=hour(24), price_per_gpu_hour=Decimal("2.00"))
        rematch_open_requests.apply()
        assert ComputeRequest.objects.get(pk=request_id).status == "filled"

    def test_rematch_commits_its_audit_and_logs(self, lab_client, caplog):
        request_id = create(lab_client).json()["id"]
        with broker_unreachable(), caplog.at_level(logging.WARNING), transaction.atomic():
            compute_request_rematch(request=ComputeRequest.objects.get(pk=request_id), actor_label="ops")
        assert AuditEvent.objects.filter(action="request_rematched", target_id=str(request_id)).count() == 1
        assert enqueue_failures(caplog, request_id)
