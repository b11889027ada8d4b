"""Quotes: POST /api/v1/quotes answers what the matching engine would fill now, and
POST /api/v1/quotes/{id}/accept books exactly that, at those prices, or nothing."""

import random
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from billing.credit import lab_exposure, lab_exposures_recomputed
from broker.matching import OpenRequest, OrderBook
from broker.models import Allocation, ComputeRequest, Contract, Quote
from broker.quotes import quote_accept, quote_create
from core.errors import CapacityUnavailable, InvalidInput
from events.models import Event
from marketplace.models import BillingMode, Listing, Organization
from marketplace.services import listing_update, organization_set_status
from tests.broker.factories import book, make_lab, oversell_violations, run_at_once
from tests.conftest import OrgClient, assert_error, make_client, wait_until
from tests.marketplace.factories import NOW, ClusterFactory, ListingFactory, OrganizationFactory, gpu_model, hour, iso

pytestmark = pytest.mark.usefixtures("frozen")

WINDOW = {"starts_at": iso(hour(2)), "duration_hours": 4}


def offer(*, nodes: int = 2, price: str = "2.00", gpus_per_node: int = 8, **extra) -> Listing:
    """A listing of ``nodes`` nodes on a cluster of its own, open for a day from the next hour."""
    cluster_terms = {name: extra.pop(name) for name in ("region", "provider") if name in extra}
    return ListingFactory(
        cluster=ClusterFactory(node_count=nodes, gpus_per_node=gpus_per_node, **cluster_terms),
        node_count=nodes,
        starts_at=hour(1),
        ends_at=hour(25),
        price_per_gpu_hour=Decimal(price),
        **extra,
    )


def ask(client, **overrides):
    data = {"gpu_model": "h100-sxm-80gb", "gpu_count": 32, "billing_mode": "committed", "colocated": False, **WINDOW}
    data.update(overrides)
    return client.post("/api/v1/quotes", data, format="json")


def accept(client, quote_id: int, **headers):
    return client.post(f"/api/v1/quotes/{quote_id}/accept", format="json", **headers)


def lines_of(body: dict) -> list[tuple[int, int, str]]:
    return [(line["listing_id"], line["gpu_count"], line["price_per_gpu_hour"]) for line in body["lines"]]


@pytest.fixture
def two_offers():
    """16 GPUs at 1.50 and 16 at 2.00 per GPU-hour, on two clusters."""
    return offer(price="1.50"), offer(price="2.00")


@pytest.fixture
def spread_quote(lab_client, two_offers) -> dict:
    response = ask(lab_client)
    assert response.status_code == 201, response.json()
    return response.json()


def nothing_booked() -> bool:
    return not Contract.objects.exists() and not Allocation.objects.exists()


@pytest.mark.django_db
class TestQuoting:
    def test_a_quote_is_the_fill_with_its_prices_and_expiry(self, lab_client, two_offers, spread_quote):
        cheap, dear = two_offers
        assert lines_of(spread_quote) == [(cheap.pk, 16, "1.5000"), (dear.pk, 16, "2.0000")]
        assert spread_quote["total_amount"] == "224.00"  # 16 x 4 x 1.50 + 16 x 4 x 2.00
        assert spread_quote["average_price_per_gpu_hour"] == "1.7500"
        assert spread_quote["status"] == "open"
        assert spread_quote["expires_at"] == "2031-03-10T09:18:23Z"  # QUOTE_TTL_SECONDS (60) from now
        assert (spread_quote["accepted_at"], spread_quote["contract_ids"]) == (None, [])
        assert (spread_quote["starts_at"], spread_quote["ends_at"]) == (iso(hour(2)), iso(hour(6)))
        assert lab_client.get(f"/api/v1/quotes/{spread_quote['id']}").json() == spread_quote

    def test_a_quote_holds_no_capacity(self, lab_client, other_lab_client, two_offers, spread_quote):
        """Nothing is written but the quote: no request, no contract; the capacity is anyone's."""
        assert not ComputeRequest.objects.exists()
        assert nothing_booked()
        cheap, _ = two_offers
        assert book(lab=other_lab_client.organization, listing=cheap, nodes=2, starts_at=hour(2), hours=4)

    def test_colocated_takes_one_cluster(self, lab_client, two_offers):
        cheap, _ = two_offers
        large = offer(nodes=4, price="2.40")  # the only cluster with 32 GPUs free
        assert lines_of(ask(lab_client, colocated=True).json()) == [(large.pk, 32, "2.4000")]
        assert lines_of(ask(lab_client, colocated=True, gpu_count=16).json()) == [(cheap.pk, 16, "1.5000")]

    def test_terms_narrow_the_offers(self, lab_client, two_offers):
        west = offer(price="2.90", region="us-west-2")
        metered = offer(price="1.00", billing_mode=BillingMode.METERED)
        small_nodes = offer(price="1.20", gpus_per_node=4)
        assert lines_of(ask(lab_client, gpu_count=8, region="us-west-2").json()) == [(west.pk, 8, "2.9000")]
        assert lines_of(ask(lab_client, gpu_count=8, billing_mode="metered").json()) == [(metered.pk, 8, "1.0000")]
        assert lines_of(ask(lab_client, gpu_count=4).json()) == [(small_nodes.pk, 4, "1.2000")]  # 8-GPU nodes cannot
        assert lines_of(ask(lab_client, gpu_count=8, colocated=True).json()) == [(small_nodes.pk, 8, "1.2000")]
        beyond = ask(lab_client, gpu_count=8, duration_hours=24)  # every listing ends at hour 25
        assert assert_error(beyond, 409, "capacity_unavailable")["fields"] == {"reason": ["no_offer"]}

    def test_the_labs_own_listings_are_left_out(self, both_client, two_offers):
        offer(price="0.90", provider=both_client.organization)
        cheap, _ = two_offers
        assert lines_of(ask(both_client, gpu_count=8).json()) == [(cheap.pk, 8, "1.5000")]

    def test_sold_hours_are_not_quoted(self, lab_client, other_lab_client, two_offers):
        cheap, dear = two_offers
        book(lab=other_lab_client.organization, listing=cheap, nodes=1, starts_at=hour(5), hours=2)
        assert lines_of(ask(lab_client, gpu_count=24).json()) == [(cheap.pk, 8, "1.5000"), (dear.pk, 16, "2.0000")]
        error = assert_error(ask(lab_client, gpu_count=32), 409, "capacity_unavailable")
        assert error["fields"] == {"reason": ["no_capacity"]}

    def test_no_fill_is_409_with_the_engines_reason(self, lab_client, two_offers):
        error = assert_error(ask(lab_client, gpu_count=48), 409, "capacity_unavailable")
        assert error["fields"] == {"reason": ["no_capacity"]}
        assert error["message"] == (
            "No listing can deliver 48 h100-sxm-80gb GPUs for that window; the most all listings together can "
            "deliver is 32 GPUs, at up to 2.0000 per GPU-hour."
        )
        error = assert_error(ask(lab_client, region="eu-west-1"), 409, "capacity_unavailable")
        assert error["fields"] == {"reason": ["no_offer"]}
        assert error["message"].startswith("No listing offers 32 h100-sxm-80gb GPUs for that window")
        assert not Quote.objects.exists()

    def test_offers_sold_out_for_the_window_are_no_capacity_not_no_offer(self, lab_client, other_lab_client):
        sold_out = offer(nodes=1)
        book(lab=other_lab_client.organization, listing=sold_out, nodes=1, starts_at=hour(3), hours=1)
        error = assert_error(ask(lab_client, gpu_count=8), 409, "capacity_unavailable")
        assert error["fields"] == {"reason": ["no_capacity"]}
        assert error["message"] == (
            "No listing can deliver 8 h100-sxm-80gb GPUs for that window; the most all listings together can "
            "deliver is 0 GPUs."
        )

    def test_a_quote_the_credit_limit_would_refuse_is_409(self, lab_client, two_offers):
        Organization.objects.filter(pk=lab_client.organization.pk).update(credit_limit=Decimal("223.99"))
        error = assert_error(ask(lab_client), 409, "credit_limit_exceeded")
        assert error["fields"] == {"limit": ["223.99"], "exposure": ["0.00"], "amount": ["224.00"]}
        assert not Quote.objects.exists()

    @override_settings(QUOTE_TTL_SECONDS=5)
    def test_it_expires_after_the_ttl_or_at_its_start(self, lab_client, two_offers, frozen):
        assert ask(lab_client).json()["expires_at"] == "2031-03-10T09:17:28Z"
        frozen.move_to(hour(2) - timedelta(seconds=2))
        assert ask(lab_client).json()["expires_at"] == iso(hour(2))

    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"gpu_model": "h900"}, "gpu_model"),
            ({"gpu_count": 0}, "gpu_count"),
            ({"duration_hours": 0}, "duration_hours"),
            ({"starts_at": iso(hour(-1))}, "starts_at"),
            ({"starts_at": "2031-03-10T11:30:00Z"}, "starts_at"),
            ({"billing_mode": "spot"}, "billing_mode"),
            ({"region": "Not a region!"}, "region"),
            ({"max_price_per_gpu_hour": "2.00"}, "max_price_per_gpu_hour"),
        ],
    )
    def test_bad_terms_are_400(self, lab_client, two_offers, overrides, field):
        error = assert_error(ask(lab_client, **overrides), 400, "invalid")
        assert field in error["fields"], error
        assert not Quote.objects.exists()

    def test_only_labs_quote(self, provider_client, two_offers):
        assert_error(ask(provider_client), 403, "permission_denied")
        with pytest.raises(InvalidInput):
            quote_create(
                lab=provider_client.organization,
                gpu_model=gpu_model(),
                gpu_count=8,
                starts_at=hour(2),
                duration_hours=4,
                billing_mode="committed",
            )

    def test_a_lab_reads_and_lists_only_its_own_quotes(self, lab_client, other_lab_client, spread_quote):
        mine_later = ask(lab_client, gpu_count=8).json()
        theirs = ask(other_lab_client, gpu_count=8).json()
        listed = lab_client.get("/api/v1/quotes").json()
        assert listed["count"] == 2
        assert [quote["id"] for quote in listed["results"]] == [mine_later["id"], spread_quote["id"]]
        assert_error(lab_client.get(f"/api/v1/quotes/{theirs['id']}"), 404, "not_found")
        assert_error(accept(lab_client, theirs["id"]), 404, "not_found")
        assert Quote.objects.get(pk=theirs["id"]).accepted_at is None
        assert lab_client.get("/api/v1/quotes?page_size=1").json()["next"].endswith("page=2&page_size=1")

    def test_provider_cannot_list_quotes(self, provider_client):
        assert_error(provider_client.get("/api/v1/quotes"), 403, "permission_denied")


@pytest.mark.django_db
class TestTheEnginesPlan:
    def test_quotes_are_the_plans_of_the_whole_segments_book(self, lab_client):
        """The quote loads only the listings that could serve it; its fill is the one the engine
        plans on the whole segment, over a market of mixed terms, sizes and sales."""
        rng = random.Random(14)
        providers = [OrganizationFactory() for _ in range(3)]
        other = make_lab()
        listings = []
        for _ in range(14):
            start = rng.choice([1, 1, 2, 4])
            listings.append(
                ListingFactory(
                    cluster=ClusterFactory(
                        provider=rng.choice(providers),
                        node_count=4,
                        gpus_per_node=rng.choice([4, 8, 8]),
                        region=rng.choice(["us-south-1", "eu-west-1"]),
                    ),
                    node_count=rng.choice([2, 3, 4]),
                    starts_at=hour(start),
                    ends_at=hour(start + rng.choice([8, 16, 24])),
                    price_per_gpu_hour=Decimal(f"{rng.uniform(1.5, 2.5):.2f}"),
                    min_duration_hours=rng.choice([1, 1, 6]),
                    billing_mode=rng.choice(BillingMode.values),
                )
            )
        for listing in rng.sample(listings, 6):
            hours = max(listing.min_duration_hours, rng.choice([2, 4]))
            book(lab=other, listing=listing, nodes=1, starts_at=listing.starts_at + timedelta(hours=1), hours=hours)
        lab = lab_client.organization
        whole = OrderBook(gpu_model().pk)
        whole.load()
        answers = set()
        for _ in range(60):
            terms = {
                "gpu_count": rng.choice([4, 8, 16, 24, 32, 48]),
                "starts_at": hour(rng.choice([2, 3, 5])),
                "duration_hours": rng.choice([2, 4, 8]),
                "billing_mode": rng.choice(BillingMode.values),
                "colocated": rng.random() < 0.5,
                "region": rng.choice(["", "", "us-south-1", "eu-west-1"]),
            }
            request = OpenRequest(
                0, lab.pk, terms["gpu_count"], terms["starts_at"],
                terms["starts_at"] + timedelta(hours=terms["duration_hours"]), terms["duration_hours"],
                Decimal("1000"), terms["billing_mode"], terms["colocated"], terms["region"], "", "", "", None,
            )  # fmt: skip
            fill = whole.plan(request, priced=False)
            expected = (
                [(listing.id, len(nodes) * listing.gpus_per_node, listing.price) for listing, nodes in fill.parts]
                if fill
                else whole.explain(request).detail
            )
            try:
                quote = quote_create(lab=lab, gpu_model=gpu_model(), **terms)
                got = [
                    (line["listing_id"], line["gpu_count"], Decimal(line["price_per_gpu_hour"])) for line in quote.lines
                ]
            except CapacityUnavailable as refused:
                got = refused.message
                answers.add(refused.fields["reason"][0])
            else:
                answers.add("filled")
            assert got == expected, terms
        assert answers == {"filled", "no_offer", "no_capacity"}  # each answer was compared


@pytest.mark.django_db
class TestAccepting:
    def test_an_accepted_quote_books_at_the_quoted_prices(self, lab_client, two_offers, spread_quote):
        cheap, dear = two_offers
        response = accept(lab_client, spread_quote["id"])
        assert response.status_code == 200, response.json()
        body = response.json()
        assert (body["status"], body["accepted_at"]) == ("accepted", "2031-03-10T09:17:23Z")
        contracts = list(Contract.objects.filter(pk__in=body["contract_ids"]).order_by("price_per_gpu_hour"))
        assert [c.pk for c in contracts] == body["contract_ids"]
        assert [(c.listing_id, c.gpu_count, c.price_per_gpu_hour, c.total_amount) for c in contracts] == [
            (cheap.pk, 16, Decimal("1.5000"), Decimal("96.00")),
            (dear.pk, 16, Decimal("2.0000"), Decimal("128.00")),
        ]
        assert sum(c.total_amount for c in contracts) == Decimal(spread_quote["total_amount"])
        assert {(c.lab_id, c.starts_at, c.ends_at, c.request_id) for c in contracts} == {
            (lab_client.organization.pk, hour(2), hour(6), None)
        }
        assert Allocation.objects.count() == 4
        assert lab_client.get(f"/api/v1/quotes/{spread_quote['id']}").json() == body
        lab = lab_client.organization.pk
        assert lab_exposure(lab).committed == Decimal("224") == lab_exposures_recomputed([lab])[lab][0]
        created = Event.objects.filter(organization_id=lab, type="contract.created")
        assert sorted(created.values_list("data__id", flat=True)) == sorted(body["contract_ids"])
        assert oversell_violations() == []

    def test_a_resale_is_quoted_and_booked_like_any_listing(self, lab_client):
        from broker.resale import resale_create

        holder = make_lab()
        bought = book(lab=holder, listing=offer(price="2.00"), nodes=2, starts_at=hour(2), hours=8)
        resale = resale_create(
            holder=holder,
            contract_id=bought.pk,
            node_count=1,
            starts_at=hour(2),
            ends_at=hour(10),
            price_per_gpu_hour=Decimal("1.80"),
        )
        quote = ask(lab_client, gpu_count=8).json()
        assert lines_of(quote) == [(resale.pk, 8, "1.8000")]
        body = accept(lab_client, quote["id"]).json()
        contract = Contract.objects.get(pk=body["contract_ids"][0])
        assert (contract.listing_id, contract.price_per_gpu_hour, contract.provider_id) == (
            resale.pk,
            Decimal("1.8000"),
            holder.pk,
        )
        assert set(Allocation.objects.filter(contract=contract).values_list("depth", flat=True)) == {1}

    def test_an_expired_quote_is_409_and_books_nothing(self, lab_client, spread_quote, frozen):
        frozen.move_to(NOW + timedelta(seconds=60))
        error = assert_error(accept(lab_client, spread_quote["id"]), 409, "quote_expired")
        assert error["message"] == "This quote expired at 2031-03-10T09:18:23Z; ask for a new one."
        assert nothing_booked()
        assert lab_client.get(f"/api/v1/quotes/{spread_quote['id']}").json()["status"] == "expired"

    def test_accepting_just_before_expiry_books(self, lab_client, spread_quote, frozen):
        frozen.move_to(NOW + timedelta(seconds=59))
        assert accept(lab_client, spread_quote["id"]).status_code == 200

    def test_a_price_changed_since_is_409_and_books_nothing(self, lab_client, two_offers, spread_quote):
        _, dear = two_offers
        listing_update(listing=dear, price_per_gpu_hour=Decimal("2.01"))
        error = assert_error(accept(lab_client, spread_quote["id"]), 409, "quote_price_changed")
        assert error["fields"] == {"listing_id": [str(dear.pk)]}
        assert error["message"] == (
            f"The price of listing {dear.pk} is 2.0100 per GPU-hour, quoted at 2.0000. Nothing was booked; ask for a "
            "new quote."
        )
        assert nothing_booked()
        assert Quote.objects.get(pk=spread_quote["id"]).accepted_at is None

    def test_a_cut_price_is_a_change_too(self, lab_client, two_offers, spread_quote):
        cheap, _ = two_offers
        listing_update(listing=cheap, price_per_gpu_hour=Decimal("1.40"))
        assert_error(accept(lab_client, spread_quote["id"]), 409, "quote_price_changed")
        assert nothing_booked()

    def test_the_second_line_sold_since_undoes_the_first(self, lab_client, other_lab_client, two_offers, spread_quote):
        """All or none: the first line is booked, the second refuses, and the first is rolled back."""
        cheap, dear = two_offers
        taken = book(lab=other_lab_client.organization, listing=dear, nodes=1, starts_at=hour(3), hours=1)
        before = Event.objects.count()
        with CaptureQueriesContext(connection) as queries:
            error = assert_error(accept(lab_client, spread_quote["id"]), 409, "capacity_unavailable")
        bookings = [query for query in queries.captured_queries if "EXECUTE broker_listing_book" in query["sql"]]
        assert len(bookings) == 2  # the first line was booked before the second refused
        assert error["fields"] == {"listing_id": [str(dear.pk)]}
        assert error["message"] == (
            f"Listing {dear.pk}: Only 8 GPUs of this listing are free for that window. Nothing was booked; ask for "
            "a new quote."
        )
        assert list(Contract.objects.values_list("pk", flat=True)) == [taken.pk]
        assert not Allocation.objects.filter(listing=cheap).exists()
        lab = lab_client.organization.pk
        assert lab_exposure(lab).total == Decimal("0.00") == sum(lab_exposures_recomputed([lab])[lab])
        assert Event.objects.count() == before
        assert Quote.objects.get(pk=spread_quote["id"]).accepted_at is None

    def test_a_listing_no_longer_on_offer_is_409(self, lab_client, two_offers, spread_quote):
        cheap, _ = two_offers
        listing_update(listing=cheap, status=Listing.Status.PAUSED)
        error = assert_error(accept(lab_client, spread_quote["id"]), 409, "capacity_unavailable")
        assert error["fields"] == {"listing_id": [str(cheap.pk)]}
        assert nothing_booked()

    def test_a_suspended_provider_is_409(self, lab_client, two_offers, spread_quote):
        _, dear = two_offers
        organization_set_status(organization=dear.provider, status="suspended")
        assert_error(accept(lab_client, spread_quote["id"]), 409, "capacity_unavailable")
        assert nothing_booked()

    def test_the_credit_limit_is_held_for_the_whole_quote(self, lab_client, two_offers, spread_quote):
        Organization.objects.filter(pk=lab_client.organization.pk).update(credit_limit=Decimal("223.99"))
        error = assert_error(accept(lab_client, spread_quote["id"]), 409, "credit_limit_exceeded")
        assert error["fields"] == {"limit": ["223.99"], "exposure": ["0.00"], "amount": ["224.00"]}
        assert error["message"].startswith("Accepting this quote (224.00) would take your exposure")
        assert nothing_booked()

    def test_accepting_twice_books_once(self, lab_client):
        offer(nodes=8, price="1.50")  # room for the quote twice over: only the quote stops a second booking
        quote = ask(lab_client, gpu_count=16).json()
        first = accept(lab_client, quote["id"]).json()
        error = assert_error(accept(lab_client, quote["id"]), 409, "quote_accepted")
        assert error["message"] == (
            f"This quote was accepted at 2031-03-10T09:17:23Z; its contracts are {first['contract_ids'][0]}."
        )
        assert Contract.objects.count() == 1

    def test_a_retry_with_its_idempotency_key_answers_the_first_acceptance(self, lab_client, spread_quote):
        first = accept(lab_client, spread_quote["id"], HTTP_IDEMPOTENCY_KEY="accept-1")
        again = accept(lab_client, spread_quote["id"], HTTP_IDEMPOTENCY_KEY="accept-1")
        assert (first.status_code, again.status_code) == (200, 200)
        assert again["Idempotent-Replayed"] == "true"
        assert again.content == first.content
        assert Contract.objects.count() == 2

    def test_a_read_only_key_cannot_accept(self, lab_client, spread_quote):
        from marketplace.models import ApiKey
        from marketplace.services import api_key_create

        issued = api_key_create(organization=lab_client.organization, name="reader", scope=ApiKey.Scope.READ_ONLY)
        reader = OrgClient()
        reader.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.secret}")
        assert_error(accept(reader, spread_quote["id"]), 403, "permission_denied")
        assert reader.get(f"/api/v1/quotes/{spread_quote['id']}").status_code == 200
        assert nothing_booked()

    def test_another_labs_quote_is_refused_by_the_service(self, other_lab_client, spread_quote):
        from core.errors import NotAllowed

        with pytest.raises(NotAllowed):
            quote_accept(quote=Quote.objects.get(pk=spread_quote["id"]), lab=other_lab_client.organization)
        assert nothing_booked()


def _waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


@pytest.fixture
def racing_lab(transactional_db) -> OrgClient:
    return make_client("Racing Lab", "lab")


def _same_key_client(client: OrgClient) -> OrgClient:
    """Another client (another thread, another connection) with the same organization's key."""
    twin = OrgClient()
    twin.credentials(HTTP_AUTHORIZATION=f"Bearer {client.secret}")
    return twin


@pytest.mark.django_db(transaction=True)
class TestRacingAcceptances:
    def test_a_second_acceptance_waiting_on_the_first_books_nothing(self, racing_lab):
        """Two sessions: the first holds its acceptance open until the second waits on the quote,
        then commits; the second finds it accepted."""
        offer(nodes=8, price="1.50")  # room for the quote twice over
        quote = quote_create(
            lab=racing_lab.organization, gpu_model=gpu_model(), gpu_count=32, starts_at=hour(2), duration_hours=4,
            billing_mode="committed", colocated=False,
        )  # fmt: skip
        first_booked, release_first = threading.Event(), threading.Event()
        outcome: dict[str, object] = {}

        def first() -> None:
            try:
                with transaction.atomic():
                    outcome["first"] = quote_accept(quote=Quote.objects.get(pk=quote.pk), lab=racing_lab.organization)
                    first_booked.set()
                    release_first.wait(timeout=30)
            finally:
                connection.close()

        def second() -> None:
            try:
                outcome["second"] = accept(_same_key_client(racing_lab), quote.pk)
            finally:
                connection.close()

        first_thread = threading.Thread(target=first, daemon=True)
        first_thread.start()
        assert first_booked.wait(timeout=30)
        second_thread = threading.Thread(target=second, daemon=True)
        second_thread.start()
        wait_until(_waiting_on_a_lock)
        release_first.set()
        first_thread.join(30)
        second_thread.join(30)

        assert_error(outcome["second"], 409, "quote_accepted")
        assert sorted(Contract.objects.values_list("pk", flat=True)) == sorted(outcome["first"].contract_ids)
        assert len(outcome["first"].contract_ids) == 1
        assert oversell_violations() == []

    def test_acceptances_at_once_book_once(self, racing_lab):
        offer(nodes=8, price="1.50")
        quote = ask(racing_lab).json()
        clients = [_same_key_client(racing_lab) for _ in range(4)]
        responses = run_at_once(*(lambda client=client: accept(client, quote["id"]) for client in clients))
        assert sorted(response.status_code for response in responses) == [200, 409, 409, 409]
        for response in responses:
            if response.status_code == 409:
                assert_error(response, 409, "quote_accepted")
        assert Contract.objects.count() == 1
        assert oversell_violations() == []

    def test_acceptances_at_once_with_one_idempotency_key_book_once_and_answer_alike(self, racing_lab):
        offer(nodes=8, price="1.50")
        quote = ask(racing_lab).json()
        clients = [_same_key_client(racing_lab) for _ in range(3)]
        responses = run_at_once(
            *(lambda client=client: accept(client, quote["id"], HTTP_IDEMPOTENCY_KEY="once") for client in clients)
        )
        assert [response.status_code for response in responses] == [200, 200, 200]
        assert len({response.content for response in responses}) == 1
        assert sum(response.get("Idempotent-Replayed") == "true" for response in responses) == 2
        assert Contract.objects.count() == 1
