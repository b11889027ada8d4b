"""Credit limits on every sale: instant booking, compute requests and the matching engine,
and bookers of one lab racing each other and the engine (billing.credit)."""

import threading
from decimal import Decimal

import pytest
from django.db import connection, connections, transaction

from billing.credit import lab_exposure, lab_exposures_recomputed
from broker.booking import listing_book
from broker.matching import segment_match
from broker.models import Allocation, ComputeRequest, Contract
from core.errors import CreditLimitExceeded
from marketplace.models import Organization
from marketplace.services import api_key_create
from tests.broker.factories import book, make_lab, request_create, run_at_once
from tests.conftest import OrgClient, assert_error, make_client
from tests.marketplace.factories import ClusterFactory, ListingFactory, gpu_model, hour, iso

pytestmark = pytest.mark.usefixtures("frozen")

LIMIT = Decimal("1000.00")


def limit_to(organization: Organization, limit: Decimal | None) -> None:
    Organization.objects.filter(pk=organization.pk).update(credit_limit=limit)
    organization.refresh_from_db()


def book_over_api(client, listing, *, gpus: int = 8, hours: int = 10, start: int = 2):
    return client.post(
        f"/api/v1/listings/{listing.pk}/book",
        {"gpu_count": gpus, "starts_at": iso(hour(start)), "duration_hours": hours},
        format="json",
    )


def big_listing(nodes: int = 16, price: str = "2.50", slug: str = "h100-sxm-80gb", **extra):
    """``nodes`` nodes of 8 GPUs for two days from the next hour: 8 GPUs x 10 hours cost 200.00."""
    return ListingFactory(
        cluster=ClusterFactory(node_count=nodes, gpu_model=gpu_model(slug)),
        node_count=nodes,
        starts_at=hour(1),
        ends_at=hour(49),
        price_per_gpu_hour=Decimal(price),
        **extra,
    )


@pytest.mark.django_db
class TestInstantBooking:
    def test_booking_up_to_the_limit_passes_and_past_it_is_409_with_the_figures(self, lab_client):
        limit_to(lab_client.organization, LIMIT)
        listing = big_listing()
        assert book_over_api(lab_client, listing, hours=40).status_code == 201  # 800.00
        assert book_over_api(lab_client, listing, hours=10).status_code == 201  # 200.00: exactly the limit
        contracts, allocations = Contract.objects.count(), Allocation.objects.count()
        before = lab_exposure(lab_client.organization.pk)

        error = assert_error(book_over_api(lab_client, listing, hours=1), 409, "credit_limit_exceeded")

        assert error["fields"] == {"limit": ["1000.00"], "exposure": ["1000.00"], "amount": ["20.00"]}
        assert "credit limit" in error["message"]
        assert (Contract.objects.count(), Allocation.objects.count()) == (contracts, allocations)
        assert lab_exposure(lab_client.organization.pk) == before

    def test_a_metered_contract_counts_at_its_ceiling(self, lab_client):
        limit_to(lab_client.organization, LIMIT)
        listing = big_listing(billing_mode="metered")
        assert book_over_api(lab_client, listing, hours=48 - 2).status_code == 201  # 8 x 46 x 2.50 = 920.00
        error = assert_error(book_over_api(lab_client, listing, hours=5, start=2), 409, "credit_limit_exceeded")
        assert error["fields"]["exposure"] == ["920.00"]
        assert error["fields"]["amount"] == ["100.00"]

    def test_the_capacity_refusal_comes_before_the_credit_one(self, lab_client):
        limit_to(lab_client.organization, Decimal("0.00"))
        listing = big_listing(nodes=1)
        assert_error(book_over_api(lab_client, listing, gpus=16), 409, "capacity_unavailable")
        assert_error(book_over_api(lab_client, listing, gpus=8), 409, "credit_limit_exceeded")

    def test_no_limit_means_no_limit(self, lab_client):
        limit_to(lab_client.organization, None)
        listing = big_listing(price="1000.00")
        assert book_over_api(lab_client, listing, gpus=128, hours=40).status_code == 201  # 5,120,000.00

    def test_each_lab_has_its_own_limit(self, lab_client, other_lab_client):
        limit_to(lab_client.organization, Decimal("200.00"))
        listing = big_listing()
        assert book_over_api(lab_client, listing).status_code == 201
        assert book_over_api(other_lab_client, listing).status_code == 201
        assert_error(book_over_api(lab_client, listing), 409, "credit_limit_exceeded")


@pytest.mark.django_db
class TestComputeRequests:
    URL = "/api/v1/compute-requests"

    def create(self, client, *, gpus: int, hours: int, max_price: str):
        body = {
            "gpu_model": "h100-sxm-80gb",
            "gpu_count": gpus,
            "starts_at": iso(hour(2)),
            "duration_hours": hours,
            "max_price_per_gpu_hour": max_price,
            "billing_mode": "committed",
        }
        return client.post(self.URL, body, format="json")

    def test_a_request_is_refused_when_at_its_most_it_would_pass_the_limit(self, lab_client):
        limit_to(lab_client.organization, LIMIT)
        book_over_api(lab_client, big_listing(), hours=20)  # 400.00

        error = assert_error(self.create(lab_client, gpus=16, hours=10, max_price="3.76"), 409, "credit_limit_exceeded")

        assert error["fields"] == {"limit": ["1000.00"], "exposure": ["400.00"], "amount": ["601.60"]}
        assert not ComputeRequest.objects.exists()
        assert self.create(lab_client, gpus=16, hours=10, max_price="3.75").status_code == 201  # 600.00

    def test_an_open_request_the_limit_holds_back_stays_open_and_says_so(self, lab_client):
        lab = lab_client.organization
        limit_to(lab, LIMIT)
        waiting = request_create(lab=lab, gpu_count=8, starts_at=hour(2), duration_hours=10, max_price="3.00")
        book(lab=lab, listing=big_listing(nodes=2, price="4.00"), nodes=1, starts_at=hour(2), hours=28)  # 896.00
        big_listing(nodes=1)  # the offer: 8 x 10 x 2.50 = 200.00, and 896.00 + 200.00 > 1000.00

        segment_match(gpu_model_id=gpu_model().pk, wait=True)

        waiting.refresh_from_db()
        assert waiting.status == ComputeRequest.Status.OPEN
        assert waiting.unfilled_reason == "credit_limit_exceeded"
        assert "(200.00)" in waiting.unfilled_detail and "(896.00)" in waiting.unfilled_detail
        shown = lab_client.get(f"{self.URL}/{waiting.pk}").json()
        assert (shown["status"], shown["unfilled_reason"]) == ("open", "credit_limit_exceeded")

        limit_to(lab, Decimal("2000.00"))
        segment_match(gpu_model_id=gpu_model().pk, wait=True)

        waiting.refresh_from_db()
        assert waiting.status == ComputeRequest.Status.FILLED
        assert (waiting.unfilled_reason, waiting.unfilled_detail) == ("", "")

    def test_one_run_spends_a_labs_headroom_fill_by_fill_and_others_still_buy(self, lab_client):
        lab = lab_client.organization
        limit_to(lab, LIMIT)
        mine = [
            request_create(lab=lab, gpu_count=8, starts_at=hour(2), duration_hours=20, max_price="3.00")
            for _ in range(3)
        ]  # 400.00 each at the offer's price: two fit in 1,000.00
        theirs = request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2), duration_hours=20, max_price="3.00")
        big_listing(nodes=3)

        segment_match(gpu_model_id=gpu_model().pk, wait=True)

        statuses = [ComputeRequest.objects.get(pk=request.pk).status for request in [*mine, theirs]]
        assert statuses == ["filled", "filled", "open", "filled"]
        assert ComputeRequest.objects.get(pk=mine[2].pk).unfilled_reason == "credit_limit_exceeded"
        assert lab_exposure(lab.pk).total == Decimal("800.00")
        kept = lab_exposure(lab.pk)
        assert (kept.committed, kept.metered, kept.unpaid) == lab_exposures_recomputed([lab.pk])[lab.pk]


def lab_clients(organization: Organization, count: int) -> list[OrgClient]:
    """``count`` API clients of one organization, each with its own key."""
    clients = []
    for index in range(count):
        client = OrgClient()
        issued = api_key_create(organization=organization, name=f"racer-{index}")
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.secret}")
        client.organization = organization
        clients.append(client)
    return clients


BOOKERS = 12
ROUNDS = 4


@pytest.mark.django_db(transaction=True)
def test_bookers_of_one_lab_racing_on_many_listings_never_pass_its_limit():
    """Twelve bookings of 200.00 at once, on six listings, against 1,000.00: five pass."""
    for round_ in range(ROUNDS):
        lab_client = make_client(f"Racing lab {round_}", "lab")
        limit_to(lab_client.organization, LIMIT)
        listings = [big_listing(nodes=2) for _ in range(BOOKERS // 2)]
        clients = lab_clients(lab_client.organization, BOOKERS)

        responses = run_at_once(
            *(lambda c=client, at=listings[i // 2]: book_over_api(c, at) for i, client in enumerate(clients))
        )

        failures = [response for response in responses if isinstance(response, BaseException)]
        assert not failures, failures
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [201] * 5 + [409] * (BOOKERS - 5), statuses
        for response in responses:
            if response.status_code == 409:
                assert response.json()["error"]["code"] == "credit_limit_exceeded"
        assert lab_exposure(lab_client.organization.pk).total == LIMIT


@pytest.mark.django_db(transaction=True)
def test_bookers_and_the_matching_engine_of_one_lab_never_pass_its_limit():
    for round_ in range(ROUNDS):
        lab = make_client(f"Matched lab {round_}", "lab").organization
        limit_to(lab, LIMIT)
        for _ in range(3):  # 8 x 10 x 2.50 = 200.00 each once filled
            request_create(lab=lab, gpu_count=8, starts_at=hour(2), duration_hours=10, max_price="2.50")
        listings = [big_listing(nodes=4) for _ in range(3)]
        clients = lab_clients(lab, 6)

        results = run_at_once(
            lambda: segment_match(gpu_model_id=gpu_model().pk, wait=True),
            *(lambda c=client, at=listings[i % 3]: book_over_api(c, at) for i, client in enumerate(clients)),
        )

        failures = [result for result in results if isinstance(result, BaseException)]
        assert not failures, failures
        booked = sum(response.status_code == 201 for response in results[1:])
        filled = ComputeRequest.objects.filter(lab=lab, status=ComputeRequest.Status.FILLED).count()
        assert booked + filled == 5, (booked, filled)
        assert lab_exposure(lab.pk).total == LIMIT
        ComputeRequest.objects.filter(lab=lab).update(status=ComputeRequest.Status.CANCELLED)


def _waiting_on_a_lock() -> bool:
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


def _book_second(lab, listing) -> object:
    try:
        listing_book(lab=lab, listing=listing, gpu_count=8, starts_at=hour(2), duration_hours=20)
    except CreditLimitExceeded as refusal:
        return refusal.fields
    return "booked"


def _match_second(lab, listing) -> object:
    segment_match(gpu_model_id=gpu_model().pk, wait=True)
    request = ComputeRequest.objects.get(lab=lab)
    return request.unfilled_reason or request.status


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("second_sale", "refused"),
    [
        (_book_second, {"limit": ["1000.00"], "exposure": ["800.00"], "amount": ["400.00"]}),
        (_match_second, "credit_limit_exceeded"),
    ],
    ids=["booking", "matching"],
)
def test_a_sale_that_waited_for_another_sale_to_its_lab_sees_it(second_sale, refused):
    """A first booking of 800.00 is written but not committed when a second sale of 400.00
    (a booking, or the matching engine filling a request) starts: the second must wait for
    the lab and then count the 800.00, whatever it read before."""
    from tests.conftest import wait_until

    lab = make_lab()
    limit_to(lab, LIMIT)
    # The engine's order, placed before there is any offer (its matching run finds none).
    request_create(lab=lab, gpu_count=8, starts_at=hour(2), duration_hours=20, max_price="2.50")
    first_listing = big_listing(slug="h200-sxm-141gb")  # another segment: the two share only the lab
    request_lab_listing = {}
    first_booked, release_first = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def first() -> None:
        try:
            with transaction.atomic():
                listing_book(lab=lab, listing=first_listing, gpu_count=8, starts_at=hour(2), duration_hours=40)
                first_booked.set()
                release_first.wait(timeout=30)
        finally:
            connection.close()

    def second() -> None:
        try:
            outcome["second"] = second_sale(lab, request_lab_listing["listing"])
        finally:
            connection.close()

    # The second sale's offer, listed before the first booking so its listing lock is free.
    request_lab_listing["listing"] = big_listing()
    first_thread = threading.Thread(target=first, daemon=True)
    first_thread.start()
    assert first_booked.wait(timeout=30)
    second_thread = threading.Thread(target=second, daemon=True)
    second_thread.start()
    wait_until(_waiting_on_a_lock)
    release_first.set()
    first_thread.join(30)
    second_thread.join(30)

    assert outcome["second"] == refused
    assert lab_exposure(lab.pk).total == Decimal("800.00")
