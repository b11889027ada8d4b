"""A real Celery worker on the real Redis broker sees committed data and writes to the database."""

from datetime import timedelta

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from marketplace.models import IdempotencyRecord
from marketplace.services import organization_create
from marketplace.tasks import purge_idempotency_keys
from tests.conftest import requires_worker, wait_until


@requires_worker
def test_task_enqueued_on_commit_runs_on_real_worker(real_worker):
    organization, _ = organization_create(name="Worker Org", role="lab")
    old = IdempotencyRecord.objects.create(organization=organization, key="old", fingerprint="x")
    IdempotencyRecord.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))
    fresh = IdempotencyRecord.objects.create(organization=organization, key="fresh", fingerprint="y")

    with transaction.atomic():
        purge_idempotency_keys.delay_on_commit()
        # Nothing is sent before the commit.
    wait_until(lambda: not IdempotencyRecord.objects.filter(pk=old.pk).exists())
    assert IdempotencyRecord.objects.filter(pk=fresh.pk).exists()


@requires_worker
def test_a_task_carries_the_id_of_the_request_that_enqueued_it(settings):
    """Sent under a request's id, a task's message carries it; run, the task logs under it, and
    after the run nothing does (config/celery.py connects the handlers of core.observability)."""
    import json
    import uuid

    import redis

    from config.celery import app
    from core import observability

    queue = f"request-id-{uuid.uuid4().hex}"
    broker = redis.Redis.from_url(settings.REDIS_URL)
    token = observability._request_id.set("req-0123")
    app.conf.task_always_eager = False
    try:
        purge_idempotency_keys.apply_async(queue=queue)
    finally:
        app.conf.task_always_eager = settings.CELERY_TASK_ALWAYS_EAGER
        observability._request_id.reset(token)
    try:
        message = json.loads(broker.lpop(queue))
    finally:
        broker.delete(queue)
    assert message["headers"]["request_id"] == "req-0123"

    seen = seen_request_id.apply(headers={"request_id": "req-0123"}).get()
    assert (seen, observability.current_request_id()) == ("req-0123", None)
    assert seen_request_id.apply(headers={"request_id": "not sane!"}).get() is None


@shared_task
def seen_request_id() -> str | None:
    from core.observability import current_request_id

    return current_request_id()
