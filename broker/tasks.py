"""Celery tasks: the outer layer. Each imports its service inside its body, so the services
can import the tasks they enqueue at the top (no import circle)."""

from celery import shared_task


@shared_task(bind=True, acks_late=True)
def match_segment(self, gpu_model_id: int) -> dict:
    """Match one market segment.

    On a worker, runs coalesce: a run that finds the segment locked leaves (the run holding it
    takes another pass for whatever was marked meanwhile), so runs never pile up retrying.
    In-process (eager) it waits for the lock and makes one pass, so each commit is matched
    before its caller goes on. Queue it with ``broker.services.segment_match_queue``.
    """
    from broker.matching import segment_match, segment_match_coalesced

    if self.request.is_eager:
        return segment_match(gpu_model_id=gpu_model_id, wait=True).__dict__
    return segment_match_coalesced(gpu_model_id=gpu_model_id).__dict__


@shared_task
def rematch_open_requests() -> list[int]:
    """Queue matching for every segment with open requests (new listings, freed capacity,
    requests whose run could not be queued), whatever their pending marks say."""
    from broker.selectors import segments_with_open_requests
    from broker.services import segment_match_queue

    segments = segments_with_open_requests()
    for gpu_model_id in segments:
        segment_match_queue(gpu_model_id=gpu_model_id, force=True)
    return segments


@shared_task
def advance_lifecycle() -> dict:
    """Expire unfilled requests, start and finish contracts by the clock."""
    from broker.services import compute_requests_expire, contracts_advance

    return {"expired_requests": compute_requests_expire(), **contracts_advance()}


@shared_task
def measure_reliability() -> int:
    """Measure every provider's and cluster's reliability over the last 30 days again; returns
    how many clusters and providers were measured."""
    from broker.reliability import reliability_measure

    clusters, providers = reliability_measure()
    return clusters + providers
