"""The broker's Celery tasks are safe to run twice, one after the other or at the same time."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from django.conf import settings
from django.db import connections
from kombu.exceptions import OperationalError

from broker import matching
from broker.matching import PENDING_KEY, segment_match
from broker.models import Allocation, ComputeRequest, Contract
from broker.tasks import advance_lifecycle, match_segment, rematch_open_requests
from config.celery import app
from tests.broker.factories import book, make_lab, oversell_violations, request_create, run_at_once
from tests.marketplace.factories import ClusterFactory, ListingFactory, gpu_model, hour

pytestmark = pytest.mark.usefixtures("frozen")


def status_of(request: ComputeRequest) -> str:
    return ComputeRequest.objects.get(pk=request.pk).status


def sales() -> tuple[list, list]:
    contracts = sorted(Contract.objects.values_list("id", "request_id", "listing_id", "node_count"))
    allocations = sorted(Allocation.objects.values_list("id", "contract_id", "node_id", "starts_at", "ends_at"))
    return contracts, allocations


@pytest.mark.django_db
def test_match_segment_twice_in_a_row_writes_one_set_of_contracts():
    ListingFactory(node_count=2, starts_at=hour(1))
    ListingFactory(node_count=2, starts_at=hour(1))
    requests = [request_create(lab=make_lab(), gpu_count=16, starts_at=hour(2)) for _ in range(3)]
    first = match_segment.delay(gpu_model().pk).get()
    assert (first["requests_filled"], first["contracts_created"], first["nodes_allocated"]) == (2, 2, 4)
    after_first = sales()
    second = match_segment.delay(gpu_model().pk).get()
    assert (second["requests_filled"], second["contracts_created"], second["nodes_allocated"]) == (0, 0, 0)
    assert sales() == after_first
    assert ComputeRequest.objects.filter(pk__in=[r.pk for r in requests], status="open").count() == 1


@pytest.mark.django_db(transaction=True)
def test_match_segment_delivered_twice_at_once_writes_one_set_of_contracts():
    """Two workers pick up the same task: the segment lock lets one of them fill each request."""
    requests = [request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2)) for _ in range(6)]
    # The listing comes after the requests, so the matching their commits queued found nothing.
    listing = ListingFactory(cluster=ClusterFactory(node_count=4), node_count=4, starts_at=hour(1))
    gpu_model_id = gpu_model().pk
    for _ in range(3):
        results = run_at_once(
            lambda: match_segment.apply(args=[gpu_model_id]).get(),
            lambda: match_segment.apply(args=[gpu_model_id]).get(),
        )
        assert not [r for r in results if isinstance(r, BaseException)], results
    assert Contract.objects.filter(listing=listing).count() == 4
    assert Allocation.objects.count() == 4
    assert ComputeRequest.objects.filter(pk__in=[r.pk for r in requests], status="filled").count() == 4
    assert oversell_violations() == []


@pytest.mark.django_db(transaction=True)
def test_matchers_that_do_not_wait_skip_a_locked_segment():
    requests = [request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2)) for _ in range(3)]
    ListingFactory(cluster=ClusterFactory(node_count=2), node_count=2, starts_at=hour(1))
    gpu_model_id = gpu_model().pk
    results = run_at_once(*[lambda: segment_match(gpu_model_id=gpu_model_id, wait=False)] * 4)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sum(r.requests_filled for r in results) == 2
    assert all(r.requests_filled == 0 for r in results if r.skipped_locked)
    assert Contract.objects.count() == 2
    assert ComputeRequest.objects.filter(pk__in=[r.pk for r in requests], status="open").count() == 1


@pytest.mark.django_db
def test_advance_lifecycle_twice_changes_nothing_the_second_time(frozen):
    listing = ListingFactory(node_count=3, starts_at=hour(1), ends_at=hour(24))
    lab = make_lab()
    ending = book(lab=lab, listing=listing, nodes=1, starts_at=hour(1), hours=2)
    starting = book(lab=lab, listing=listing, nodes=1, starts_at=hour(3), hours=2)
    stale = request_create(lab=lab, gpu_count=8, starts_at=hour(1))
    frozen.move_to(hour(3))

    def snapshot():
        return (
            sorted(Contract.objects.values_list("id", "status", "released_at")),
            sorted(ComputeRequest.objects.values_list("id", "status", "closed_at")),
        )

    assert advance_lifecycle.delay().get() == {"expired_requests": 1, "activated": 1, "completed": 1}
    after_first = snapshot()
    assert advance_lifecycle.delay().get() == {"expired_requests": 0, "activated": 0, "completed": 0}
    assert snapshot() == after_first
    ending.refresh_from_db()
    starting.refresh_from_db()
    stale.refresh_from_db()
    assert (ending.status, starting.status, stale.status) == ("completed", "active", "expired")


@pytest.mark.django_db
def test_rematch_open_requests_queues_each_open_segment():
    request = request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2))
    request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2), slug="a100-sxm-80gb")
    ListingFactory(node_count=1, starts_at=hour(1))
    assert rematch_open_requests.delay().get() == sorted([gpu_model().pk, gpu_model("a100-sxm-80gb").pk])
    request.refresh_from_db()
    assert request.status == "filled"


# --- Coalescing: one matching run in flight per segment, at most one pending -----------------


@pytest.fixture
def pending_marks():
    """The Redis holding the segments' pending marks, emptied of them before and after."""
    client = redis.Redis.from_url(settings.REDIS_URL)

    def clear():
        for key in client.scan_iter(PENDING_KEY.format(gpu_model_id="*")):
            client.delete(key)

    clear()
    yield client
    clear()


@pytest.fixture
def on_a_worker(monkeypatch, pending_marks) -> list[int]:
    """Tasks go to a broker instead of running in-process. The sends are recorded in the list
    returned; a test delivers one as a worker would, with ``match_segment(gpu_model_id)``."""
    sent: list[int] = []

    def send(args=None, kwargs=None, **options):
        sent.append(args[0])

    monkeypatch.setitem(app.conf, "task_always_eager", False)
    monkeypatch.setattr(app.tasks["broker.tasks.match_segment"], "apply_async", send)
    return sent


def is_pending(marks, gpu_model_id: int) -> bool:
    return bool(marks.exists(PENDING_KEY.format(gpu_model_id=gpu_model_id)))


@pytest.mark.django_db
def test_requests_committed_while_a_run_is_pending_queue_no_other(
    on_a_worker, pending_marks, django_capture_on_commit_callbacks
):
    ListingFactory(cluster=ClusterFactory(node_count=50), node_count=50, starts_at=hour(1))
    segment = gpu_model().pk
    with django_capture_on_commit_callbacks(execute=True):
        requests = [request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2)) for _ in range(50)]
    assert on_a_worker == [segment]
    assert is_pending(pending_marks, segment)

    result = match_segment(segment)  # the worker picks it up

    assert (result["passes"], result["requests_filled"]) == (1, 50)
    assert ComputeRequest.objects.filter(pk__in=[r.pk for r in requests], status="filled").count() == 50
    assert not is_pending(pending_marks, segment)
    with django_capture_on_commit_callbacks(execute=True):
        request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2))
    assert on_a_worker == [segment, segment]


@pytest.mark.django_db
def test_a_request_committed_during_a_run_gets_one_more_pass(on_a_worker, django_capture_on_commit_callbacks):
    ListingFactory(node_count=2, starts_at=hour(1))
    segment = gpu_model().pk
    with django_capture_on_commit_callbacks(execute=True):
        first = request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2))
    late = []
    match_once = matching._match_locked

    def match_then_a_request_commits(gpu_model_id, result):
        match_once(gpu_model_id, result)
        if not late:  # committed after this pass read the open requests
            with django_capture_on_commit_callbacks(execute=True):
                late.append(request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2)))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matching, "_match_locked", match_then_a_request_commits)
        result = match_segment(segment)

    assert result["passes"] == 2
    assert [status_of(first), status_of(late[0])] == ["filled", "filled"]
    assert on_a_worker == [segment, segment]  # the late request queued a run; it will find nothing


@pytest.mark.django_db(transaction=True)
def test_a_run_that_finds_the_segment_locked_leaves_and_the_run_in_flight_takes_its_pass(on_a_worker):
    ListingFactory(node_count=2, starts_at=hour(1))
    segment = gpu_model().pk
    first = request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2))
    assert on_a_worker == [segment]
    reading_done, go_on = threading.Event(), threading.Event()
    match_once = matching._match_locked

    def slow_pass(gpu_model_id, result):
        match_once(gpu_model_id, result)
        if result.passes == 1:
            reading_done.set()
            assert go_on.wait(30)

    def in_flight():
        try:
            return match_segment(segment)
        finally:
            connections.close_all()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matching, "_match_locked", slow_pass)
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(in_flight)
            assert reading_done.wait(30)
            late = request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2))
            assert on_a_worker == [segment, segment]
            left = match_segment(segment)  # the late request's run: the segment is locked
            go_on.set()
            result = running.result(timeout=60)

    assert (left["skipped_locked"], left["passes"]) == (True, 0)  # no retry: it just left
    assert result["passes"] == 2
    assert [status_of(first), status_of(late)] == ["filled", "filled"]


@pytest.mark.django_db
def test_a_failed_send_clears_the_mark_so_the_next_request_queues_a_run(
    on_a_worker, pending_marks, monkeypatch, django_capture_on_commit_callbacks
):
    segment = gpu_model().pk

    def refuse(*args, **kwargs):
        raise OperationalError("Connection refused.")

    with monkeypatch.context() as patch:
        patch.setattr(app.tasks["broker.tasks.match_segment"], "apply_async", refuse)
        with django_capture_on_commit_callbacks(execute=True):
            request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2))
    assert not is_pending(pending_marks, segment)
    with django_capture_on_commit_callbacks(execute=True):
        request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2))
    assert on_a_worker == [segment]


@pytest.mark.django_db
def test_the_sweep_queues_a_run_even_if_a_mark_was_left_behind(on_a_worker, pending_marks):
    request = request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2))  # not committed: no run queued
    ListingFactory(node_count=1, starts_at=hour(1))
    segment = gpu_model().pk
    pending_marks.set(PENDING_KEY.format(gpu_model_id=segment), 1)  # its run was lost
    assert rematch_open_requests() == [segment]
    assert on_a_worker == [segment]
    match_segment(segment)
    assert status_of(request) == "filled"


@pytest.mark.django_db
def test_in_process_every_commit_is_matched_at_once(django_capture_on_commit_callbacks, pending_marks):
    """Eager mode (tests, the embedded mode): each commit runs its matching right away."""
    ListingFactory(node_count=3, starts_at=hour(1))
    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            request = request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2))
        assert status_of(request) == "filled"
    assert not list(pending_marks.scan_iter(PENDING_KEY.format(gpu_model_id="*")))
