"""Matching on a real Celery worker over the real Redis broker, against the test database.

The worker runs on the real clock, so these tests do not freeze time.
"""

import os
from datetime import timedelta
from decimal import Decimal
from functools import partial

import redis
from django.conf import settings
from django.db import transaction

from broker.models import Allocation, ComputeRequest, Contract
from broker.tasks import match_segment
from config.celery import app
from core.timeutils import next_hour
from tests.broker.factories import make_lab, request_create, run_at_once
from tests.conftest import requires_worker, wait_until
from tests.marketplace.factories import ClusterFactory, ListingFactory, gpu_model, iso


def broker_drained():
    """A predicate: nothing waits in the queue and nothing delivered is unacknowledged (tasks ack late).

    It must hold on three polls in a row, so a message caught between the queue and the
    worker's unacked set does not count as done. Entries left in Redis before the test are
    ignored.
    """
    client = redis.Redis.from_url(settings.REDIS_URL)
    baseline = client.hlen("unacked")
    streak = 0

    def drained() -> bool:
        nonlocal streak
        idle = client.llen(settings.CELERY_TASK_DEFAULT_QUEUE) == 0 and client.hlen("unacked") <= baseline
        streak = streak + 1 if idle else 0
        return streak >= 3

    return drained


@requires_worker
def test_posted_request_is_filled_by_the_worker(real_worker, lab_client, provider_client):
    gpu_model()
    cluster = ClusterFactory(provider=provider_client.organization, node_count=2, hostnames=["w-1", "w-2"])
    ListingFactory(cluster=cluster, node_count=2, starts_at=next_hour(), ends_at=next_hour() + timedelta(hours=24))

    response = lab_client.post(
        "/api/v1/compute-requests",
        {
            "gpu_model": "h100-sxm-80gb",
            "gpu_count": 16,
            "starts_at": iso(next_hour() + timedelta(hours=1)),
            "duration_hours": 3,
            "max_price_per_gpu_hour": "5",
            "billing_mode": "committed",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["status"] == "open"
    url = f"/api/v1/compute-requests/{response.json()['id']}"

    detail = wait_until(lambda: (data := lab_client.get(url).json())["status"] == "filled" and data)
    [contract_id] = detail["contracts"]
    contract = lab_client.get(f"/api/v1/contracts/{contract_id}").json()
    assert contract["nodes"] == ["w-1", "w-2"]
    assert (contract["gpu_count"], contract["status"]) == (16, "scheduled")
    assert provider_client.get(f"/api/v1/contracts/{contract_id}").json()["nodes"] == ["w-1", "w-2"]


@requires_worker
def test_same_match_task_twice_on_the_worker_writes_one_set_of_contracts(real_worker):
    gpu_model_id = gpu_model().pk
    ListingFactory(
        cluster=ClusterFactory(node_count=3),
        node_count=3,
        starts_at=next_hour(),
        ends_at=next_hour() + timedelta(hours=24),
    )
    drained = broker_drained()
    with transaction.atomic():
        # The service queues match_segment on commit; a second copy of the task goes with it.
        request = request_create(lab=make_lab(), gpu_count=16, starts_at=next_hour() + timedelta(hours=1))
        match_segment.delay_on_commit(gpu_model_id)

    wait_until(lambda: ComputeRequest.objects.get(pk=request.pk).status == "filled")
    wait_until(drained)
    assert Contract.objects.filter(request=request).count() == 1
    assert Allocation.objects.filter(contract__request=request).count() == 2

    # Delivered again later (at-least-once delivery): still one set.
    drained = broker_drained()
    match_segment.delay(gpu_model_id)
    match_segment.delay(gpu_model_id)
    wait_until(drained)
    assert Contract.objects.count() == 1
    assert Allocation.objects.count() == 2


def match_segment_runs() -> int:
    """How many match_segment tasks this session's worker has run (its own statistics)."""
    replies = app.control.inspect(timeout=2).stats() or {}
    [stats] = [stats for name, stats in replies.items() if name.startswith(f"test-{os.getpid()}@")]
    return stats.get("total", {}).get("broker.tasks.match_segment", 0)


@requires_worker
def test_a_burst_of_requests_in_one_segment_is_matched_by_a_few_runs(real_worker):
    """200 requests committed back to back: matching runs coalesce (one in flight, at most one
    pending), and every request that capacity can fill is filled."""
    window = next_hour() + timedelta(hours=1)
    ListingFactory(
        cluster=ClusterFactory(node_count=100),
        node_count=100,
        starts_at=window,
        ends_at=window + timedelta(hours=8),
        price_per_gpu_hour=Decimal("2.00"),
    )
    labs = [make_lab() for _ in range(10)]
    drained = broker_drained()
    runs_before = match_segment_runs()

    def burst(lab) -> list[ComputeRequest]:
        return [
            request_create(lab=lab, gpu_count=8, starts_at=window + timedelta(hours=4 * (n % 2))) for n in range(20)
        ]

    fillable = [request for batch in run_at_once(*[partial(burst, lab) for lab in labs]) for request in batch]
    too_cheap = [request_create(lab=labs[n], gpu_count=8, starts_at=window, max_price="1.00") for n in range(10)]

    wait_until(lambda: ComputeRequest.objects.filter(status="filled").count() == len(fillable), timeout=60)
    wait_until(drained, timeout=60)
    assert ComputeRequest.objects.filter(pk__in=[r.pk for r in fillable], status="filled").count() == 200
    assert ComputeRequest.objects.filter(pk__in=[r.pk for r in too_cheap], status="open").count() == 10
    assert Contract.objects.count() == 200
    runs = match_segment_runs() - runs_before
    assert runs <= 40, runs  # before coalescing: one per request (210), plus lock-busy retries
