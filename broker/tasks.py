"""Celery tasks: the outer layer. Each imports its service inside its body, so the services
can import the tasks they enqueue at the top (no import circle)."""

from celery import shared_task
from django.conf import settings


@shared_task(bind=True, max_retries=None, acks_late=True)
def match_segment(self, gpu_model_id: int) -> dict:
    """Match one market segment. If another worker is matching it, try again shortly."""
    from broker.matching import segment_match

    wait = settings.CELERY_TASK_ALWAYS_EAGER  # in-process: block instead of spinning
    result = segment_match(gpu_model_id=gpu_model_id, wait=wait)
    if result.skipped_locked:
        raise self.retry(countdown=2)
    return result.__dict__


@shared_task
def rematch_open_requests() -> list[int]:
    """Queue matching for every segment with open requests (new listings, freed capacity)."""
    from broker.selectors import segments_with_open_requests

    segments = segments_with_open_requests()
    for gpu_model_id in segments:
        match_segment.delay(gpu_model_id)
    return segments


@shared_task
def advance_lifecycle() -> dict:
    """Expire unfilled requests, start and finish contracts by the clock."""
    from broker.services import compute_requests_expire, contracts_advance

    return {"expired_requests": compute_requests_expire(), **contracts_advance()}
