"""A real Celery worker on the real Redis broker sees committed data and writes to the database."""

from datetime import timedelta

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
