"""Resale: a lab sells on unused future hours of a committed contract it holds (broker.resale).

End to end through the API: a provider's listing is bought by lab A, which resells part of it;
lab B finds it in search (`resale: true`) and books it; the close invoices A as before, B for
its resale, and pays A the proceeds less the resale fee, every ledger transaction balanced.
Then the rules: what can be resold, by whom, once; the database's refusals whatever the code
does; a race for the last resold node; the engine filling a request from a resale; resale of
a resale; withdrawal; and a failure of a resold node.
"""

from datetime import date, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import IntegrityError, transaction
from django.test import override_settings

from billing.models import Invoice, LedgerTransaction, PayoutStatement
from broker.incidents import incident_open
from broker.matching import segment_match
from broker.models import Allocation, Contract, Resale
from broker.resale import resale_create
from broker.services import contract_cancel
from core.errors import InvalidInput, InvalidTransition
from marketplace.models import Listing, ListingNode, Node
from tests.billing.factories import close
from tests.billing.test_ledger import assert_every_transaction_balances
from tests.broker.factories import book, make_lab, oversell_violations, request_create, run_at_once
from tests.conftest import assert_error, make_client
from tests.marketplace.factories import NOW, ClusterFactory, ListingFactory, gpu_model, hour, iso

D = Decimal
LISTINGS = "/api/v1/listings"
MARCH = date(2031, 3, 1)


def book_via_api(client, listing_id: int, *, gpus: int, starts_at, hours: int):
    return client.post(
        f"{LISTINGS}/{listing_id}/book",
        {"gpu_count": gpus, "starts_at": iso(starts_at), "duration_hours": hours},
        format="json",
    )


def resell_via_api(client, contract_id: int, *, nodes: int, starts_at, ends_at, price: str, min_hours: int = 1):
    return client.post(
        LISTINGS,
        {
            "contract": contract_id,
            "node_count": nodes,
            "starts_at": iso(starts_at),
            "ends_at": iso(ends_at),
            "price_per_gpu_hour": price,
            "min_duration_hours": min_hours,
        },
        format="json",
    )


def resell(held, client, *, nodes: int = 2, starts_at=None, ends_at=None, price: str = "3"):
    """The held contract's buyer resells ``nodes`` of its nodes, by default for its last 24 hours."""
    return resale_create(
        holder=client.organization,
        contract_id=held["contract"].pk,
        node_count=nodes,
        starts_at=starts_at or hour(39),
        ends_at=ends_at or hour(63),
        price_per_gpu_hour=D(price),
    )


@pytest.fixture
def held(frozen, provider_client, lab_client):
    """Lab A holds all 4 nodes (8 GPUs each) of a provider's listing for 48 hours at 2.00,
    from hour(15) (2031-03-11 00:00 UTC): a committed contract of 3,072.00."""
    cluster = ClusterFactory(provider=provider_client.organization, node_count=4)
    listing = ListingFactory(
        cluster=cluster, node_count=4, starts_at=hour(15), ends_at=hour(63), price_per_gpu_hour=D("2")
    )
    response = book_via_api(lab_client, listing.pk, gpus=32, starts_at=hour(15), hours=48)
    assert response.status_code == 201, response.content
    return {"listing": listing, "contract": Contract.objects.get(pk=response.json()["id"]), "cluster": cluster}


@pytest.mark.django_db
class TestEndToEnd:
    def test_a_resale_is_searched_booked_invoiced_and_paid_out_with_the_fee(
        self, held, provider_client, lab_client, other_lab_client
    ):
        contract = held["contract"]
        response = resell_via_api(
            lab_client, contract.pk, nodes=2, starts_at=hour(39), ends_at=hour(63), price="3.00", min_hours=6
        )
        assert response.status_code == 201, response.content
        resale = response.json()
        assert resale["resale"] is True
        assert resale["provider"] == lab_client.organization.name
        assert resale["cluster"]["id"] == held["cluster"].pk
        assert (resale["billing_mode"], resale["node_count"], resale["available_nodes"]) == ("committed", 2, 2)
        assert Resale.objects.get(listing_id=resale["id"]).contract_id == contract.pk

        found = other_lab_client.get(
            LISTINGS, {"gpu_model": gpu_model().slug, "starts_at": iso(hour(45)), "ends_at": iso(hour(57))}
        ).json()["results"]
        assert [(row["id"], row["resale"], row["available_nodes"]) for row in found] == [(resale["id"], True, 2)]

        response = book_via_api(other_lab_client, resale["id"], gpus=8, starts_at=hour(45), hours=12)
        assert response.status_code == 201, response.content
        bought = Contract.objects.get(pk=response.json()["id"])
        assert (bought.provider_id, bought.lab_id, bought.price_per_gpu_hour, bought.total_amount) == (
            lab_client.organization.pk,
            other_lab_client.organization.pk,
            D("3.0000"),
            D("288.00"),  # 8 GPUs x 12 h x 3.00
        )
        # The buyer holds one of A's nodes for those hours, one depth down; A's contract is unchanged.
        (allocation,) = bought.allocations.all()
        assert allocation.depth == 1
        assert allocation.node_id in set(contract.allocations.values_list("node_id", flat=True))
        assert contract.allocations.count() == 4 and set(contract.allocations.values_list("depth", flat=True)) == {0}
        # The seller sees its sale among its contracts; the buyer sees its seller as the provider.
        assert bought.pk in {row["id"] for row in lab_client.get("/api/v1/contracts").json()["results"]}
        assert other_lab_client.get(f"/api/v1/contracts/{bought.pk}").json()["provider"] == lab_client.organization.name
        # What A has left to resell for those hours: one node.
        assert lab_client.get(f"{LISTINGS}/{resale['id']}").json()["available_nodes"] == 1
        assert oversell_violations() == []

        close(MARCH)
        invoices = {
            invoice.lab_id: invoice for invoice in Invoice.objects.filter(period=MARCH).prefetch_related("lines")
        }
        lab_a, lab_b = lab_client.organization.pk, other_lab_client.organization.pk
        assert invoices[lab_a].total == D("3072.00")  # 32 GPUs x 48 h x 2.00: invoiced as before
        assert invoices[lab_b].total == D("288.00")
        (line,) = invoices[lab_b].lines.all()
        assert (line.provider_id, line.fee_rate, line.fee_amount) == (lab_a, D("0.02"), D("5.76"))
        statements = {
            row[0]: row[1:] for row in PayoutStatement.objects.values_list("provider_id", "gross", "fee", "net")
        }
        assert statements == {
            provider_client.organization.pk: (D("3072.00"), D("153.60"), D("2918.40")),  # 5% platform fee
            lab_a: (D("288.00"), D("5.76"), D("282.24")),  # 2% resale fee
        }
        assert_every_transaction_balances()
        with time_machine.travel(NOW + timedelta(days=30), tick=False):
            payouts = lab_client.get("/api/v1/payouts").json()["results"]
        assert [(row["gross"], row["fee"], row["net"]) for row in payouts] == [("288.00", "5.76", "282.24")]

    @override_settings(RESALE_FEE_RATE=D("0.1"))
    def test_the_fee_is_the_setting(self, held, lab_client, other_lab_client):
        listing = resell(held, lab_client, nodes=1, price="2.50")
        book(lab=other_lab_client.organization, listing=listing, nodes=1, starts_at=hour(39), hours=24)
        close(MARCH)
        gross, fee = PayoutStatement.objects.filter(provider=lab_client.organization).values_list("gross", "fee").get()
        assert (gross, fee) == (D("480.00"), D("48.00"))  # 8 x 24 x 2.50, 10%


@pytest.mark.django_db
class TestRules:
    def resell(self, held, lab, **overrides):
        terms = {
            "holder": lab,
            "contract_id": held["contract"].pk,
            "node_count": 2,
            "starts_at": hour(39),
            "ends_at": hour(63),
            "price_per_gpu_hour": D("3"),
        } | overrides
        return resale_create(**terms)

    def test_the_same_hours_cannot_be_listed_twice(self, held, lab_client):
        self.resell(held, lab_client.organization, node_count=3)
        with pytest.raises(InvalidInput, match="Only 1 nodes"):
            self.resell(held, lab_client.organization, node_count=2, starts_at=hour(50), ends_at=hour(60))
        self.resell(held, lab_client.organization, node_count=1, starts_at=hour(50), ends_at=hour(60))
        assert ListingNode.objects.filter(depth=1, released=False).count() == 4

    def test_other_hours_of_the_same_nodes_can_be_listed(self, held, lab_client):
        self.resell(held, lab_client.organization, node_count=4, starts_at=hour(16), ends_at=hour(39))
        self.resell(held, lab_client.organization, node_count=4, starts_at=hour(39), ends_at=hour(63))

    def test_withdrawal_gives_the_unsold_hours_back(self, held, lab_client, other_lab_client):
        listing = self.resell(held, lab_client.organization, node_count=4)
        book(lab=other_lab_client.organization, listing=listing, nodes=1, starts_at=hour(39), hours=24)
        response = lab_client.post(f"{LISTINGS}/{listing.pk}/withdraw")
        assert response.status_code == 200 and response.json()["status"] == "withdrawn"
        # Three nodes come back; the one sold stays sold.
        again = self.resell(held, lab_client.organization, node_count=3)
        with pytest.raises(InvalidInput, match="Only 0 nodes"):
            self.resell(held, lab_client.organization, node_count=1)
        assert again.listing_nodes.count() == 3
        assert oversell_violations() == []

    def test_a_resale_is_repriced_and_paused_by_its_seller(self, held, lab_client):
        listing = self.resell(held, lab_client.organization)
        response = lab_client.patch(f"{LISTINGS}/{listing.pk}", {"price_per_gpu_hour": "2.75"}, format="json")
        assert response.status_code == 200 and response.json()["price_per_gpu_hour"] == "2.7500"

    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"starts_at": hour(9)}, "starts_at"),  # the current hour: the next one at the earliest
            ({"starts_at": hour(14), "ends_at": hour(20)}, "starts_at"),  # before the contract's start
            ({"ends_at": hour(64)}, "ends_at"),  # past the contract's end
            ({"node_count": 5}, "node_count"),
            ({"min_duration_hours": 25}, "min_duration_hours"),
            ({"price_per_gpu_hour": "0"}, "price_per_gpu_hour"),
        ],
    )
    def test_a_resale_outside_the_contract_is_a_400(self, held, lab_client, overrides, field):
        body = {
            "contract": held["contract"].pk,
            "node_count": 2,
            "starts_at": iso(hour(39)),
            "ends_at": iso(hour(63)),
            "price_per_gpu_hour": "3.00",
        } | {key: iso(value) if hasattr(value, "tzinfo") else value for key, value in overrides.items()}
        error = assert_error(lab_client.post(LISTINGS, body, format="json"), 400)
        assert field in error["fields"], error
        assert not Listing.objects.filter(depth=1).exists()

    def test_only_the_holder_resells(self, held, other_lab_client, provider_client):
        for client in (other_lab_client, provider_client):
            response = resell_via_api(
                client, held["contract"].pk, nodes=1, starts_at=hour(39), ends_at=hour(63), price="3.00"
            )
            assert "contract" in assert_error(response, 400)["fields"]

    def test_a_metered_contract_cannot_be_resold(self, frozen, provider_client, lab_client):
        listing = ListingFactory(
            cluster=ClusterFactory(provider=provider_client.organization),
            starts_at=hour(15),
            ends_at=hour(63),
            billing_mode="metered",
        )
        contract = book(lab=lab_client.organization, listing=listing, nodes=1, starts_at=hour(15), hours=48)
        response = resell_via_api(lab_client, contract.pk, nodes=1, starts_at=hour(39), ends_at=hour(63), price="3")
        assert "metered" in assert_error(response, 400)["message"].lower()

    def test_a_lab_lists_no_cluster_of_its_own(self, lab_client, frozen):
        cluster = ClusterFactory()
        body = {
            "cluster": cluster.pk,
            "node_count": 1,
            "starts_at": iso(hour(15)),
            "ends_at": iso(hour(20)),
            "price_per_gpu_hour": "2.00",
            "billing_mode": "committed",
        }
        assert_error(lab_client.post(LISTINGS, body, format="json"), 403, "permission_denied")

    def test_a_buyer_resells_in_turn(self, held, lab_client, other_lab_client):
        first = self.resell(held, lab_client.organization, node_count=2)
        bought = book(lab=other_lab_client.organization, listing=first, nodes=2, starts_at=hour(39), hours=24)
        second = resale_create(
            holder=other_lab_client.organization,
            contract_id=bought.pk,
            node_count=1,
            starts_at=hour(45),
            ends_at=hour(55),
            price_per_gpu_hour=D("4"),
        )
        assert second.depth == 2
        third_lab = make_lab("Lab C")
        last = book(lab=third_lab, listing=second, nodes=1, starts_at=hour(45), hours=10)
        assert last.allocations.get().depth == 2 and last.provider_id == other_lab_client.organization.pk
        assert oversell_violations() == []


@pytest.mark.django_db
class TestTheDatabaseRefuses:
    def test_a_resale_reservation_outside_its_sellers_hours(self, held, lab_client):
        listing = resell(held, lab_client, nodes=1, ends_at=hour(50))
        node = listing.listing_nodes.get()
        with pytest.raises(IntegrityError, match="does not hold"), transaction.atomic():
            ListingNode.objects.filter(pk=node.pk).update(ends_at=hour(70))  # past the contract's end
        stranger = (
            Node.objects.exclude(pk__in=held["contract"].allocations.values("node_id")).first()
            or ClusterFactory(node_count=1).nodes.get()
        )
        with pytest.raises(IntegrityError, match="does not hold"), transaction.atomic():
            ListingNode.objects.create(listing=listing, node=stranger, starts_at=hour(39), ends_at=hour(50), depth=1)

    def test_an_hour_sold_twice_at_one_depth(self, held, lab_client, other_lab_client):
        listing = resell(held, lab_client, nodes=1, ends_at=hour(50))
        first = book(lab=other_lab_client.organization, listing=listing, nodes=1, starts_at=hour(39), hours=11)
        allocation = first.allocations.get()
        second = Contract.objects.create(
            listing=listing,
            lab=make_lab(),
            provider=lab_client.organization,
            cluster_id=first.cluster_id,
            gpu_count=8,
            node_count=1,
            starts_at=hour(40),
            ends_at=hour(41),
            price_per_gpu_hour=D("3"),
            billing_mode="committed",
            total_amount=D("24"),
        )
        with pytest.raises(IntegrityError), transaction.atomic():
            Allocation.objects.create(
                contract=second,
                listing_node_id=allocation.listing_node_id,
                node_id=allocation.node_id,
                listing=listing,
                starts_at=hour(40),
                ends_at=hour(41),
                depth=1,
            )
        with pytest.raises(IntegrityError), transaction.atomic():  # a depth its reservation does not have
            Allocation.objects.create(
                contract=second,
                listing_node_id=allocation.listing_node_id,
                node_id=allocation.node_id,
                listing=listing,
                starts_at=hour(40),
                ends_at=hour(41),
                depth=0,
            )
            Allocation.objects.filter(contract=second).update(starts_at=hour(40))  # checks the deferred key now


@pytest.mark.django_db(transaction=True)
def test_racing_buyers_of_resold_hours_never_share_a_node(frozen):
    """Twelve labs race for the last two resold nodes, and the engine for a request, at once."""
    provider = make_client("Race Provider", "provider").organization
    holder = make_client("Race Holder", "lab").organization
    listing = ListingFactory(
        cluster=ClusterFactory(provider=provider, node_count=4), node_count=4, starts_at=hour(15), ends_at=hour(63)
    )
    contract = book(lab=holder, listing=listing, nodes=4, starts_at=hour(15), hours=48)
    resale = resale_create(
        holder=holder,
        contract_id=contract.pk,
        node_count=4,
        starts_at=hour(20),
        ends_at=hour(40),
        price_per_gpu_hour=D("2.10"),
    )
    book(lab=make_lab(), listing=resale, nodes=2, starts_at=hour(22), hours=4)
    request = request_create(lab=make_lab(), gpu_count=8, starts_at=hour(22), duration_hours=4, max_price="5")
    clients = [make_client(f"Resale Racer {index}", "lab") for index in range(12)]
    calls = [
        lambda client=client: book_via_api(client, resale.pk, gpus=8, starts_at=hour(22), hours=4) for client in clients
    ]
    calls.append(lambda: segment_match(gpu_model_id=gpu_model().pk, wait=True))
    results = run_at_once(*calls)
    failures = [result for result in results if isinstance(result, BaseException)]
    assert not failures, failures
    booked = [result for result in results[:-1] if result.status_code == 201]
    refused = [result for result in results[:-1] if result.status_code == 409]
    request.refresh_from_db()
    filled = request.status == "filled"
    assert len(booked) + filled == 2 and len(booked) + len(refused) == 12
    assert Allocation.objects.filter(listing=resale, starts_at__lt=hour(26), ends_at__gt=hour(22)).count() == 4
    assert oversell_violations() == []


@pytest.mark.django_db
def test_the_engine_fills_a_request_from_a_resale(held, lab_client, other_lab_client):
    resale = resale_create(
        holder=lab_client.organization,
        contract_id=held["contract"].pk,
        node_count=2,
        starts_at=hour(39),
        ends_at=hour(63),
        price_per_gpu_hour=D("1.50"),  # under every provider's price
    )
    ListingFactory(cluster=ClusterFactory(node_count=4), node_count=4, starts_at=hour(30), ends_at=hour(70))
    request = request_create(
        lab=other_lab_client.organization, gpu_count=16, starts_at=hour(40), duration_hours=10, max_price="3"
    )
    segment_match(gpu_model_id=gpu_model().pk, wait=True)
    (contract,) = Contract.objects.filter(request=request)
    assert (contract.listing_id, contract.provider_id, contract.price_per_gpu_hour) == (
        resale.pk,
        lab_client.organization.pk,
        D("1.5000"),
    )
    assert set(contract.allocations.values_list("depth", flat=True)) == {1}
    assert oversell_violations() == []


@pytest.mark.django_db
def test_a_failed_resold_node_moves_the_buyer_to_a_spare_of_the_resale(held, lab_client, other_lab_client):
    resale = resell(held, lab_client)
    bought = book(lab=other_lab_client.organization, listing=resale, nodes=1, starts_at=hour(39), hours=24)
    failed = bought.allocations.get().node
    with time_machine.travel(hour(40) + timedelta(minutes=5), tick=False):
        incident_open(provider=held["cluster"].provider, node=failed, kind="failure", started_at=hour(40))
    # The buyer moved to the resale's other node from the next hour, at the resale's depth (a
    # node its seller holds); the resale's reservation of the failed node is released, so its
    # seller cannot sell on hours it may no longer hold.
    moved = bought.allocations.filter(depth=1).exclude(node=failed).get()
    assert moved.starts_at == hour(41) and moved.node_id in set(
        held["contract"].allocations.values_list("node_id", flat=True)
    )
    assert bought.allocations.get(node=failed).ends_at == hour(41)
    assert ListingNode.objects.get(listing=resale, node=failed).released


@pytest.mark.django_db
def test_a_failed_resold_node_with_no_spare_stays_with_its_buyer_and_its_holder(frozen, provider_client, lab_client):
    """No spare in the resale: the buyer keeps the failed node (its lost hours are credited), and
    so does the holder, though an unlisted node could replace it: were the holder moved, the
    failed node's hours would be free to sell again at the holder's depth while a buyer holds
    them one depth down."""
    cluster = ClusterFactory(provider=provider_client.organization, node_count=5)  # one node unlisted
    listing = ListingFactory(cluster=cluster, node_count=4, starts_at=hour(15), ends_at=hour(63))
    contract = book(lab=lab_client.organization, listing=listing, nodes=4, starts_at=hour(15), hours=48)
    resale = resale_create(
        holder=lab_client.organization,
        contract_id=contract.pk,
        node_count=1,
        starts_at=hour(39),
        ends_at=hour(63),
        price_per_gpu_hour=D("3"),
    )
    bought = book(lab=make_lab(), listing=resale, nodes=1, starts_at=hour(39), hours=24)
    failed = bought.allocations.get().node
    with time_machine.travel(hour(40) + timedelta(minutes=5), tick=False):
        incident_open(provider=provider_client.organization, node=failed, kind="failure", started_at=hour(40))
    assert list(bought.allocations.values_list("node_id", "ends_at")) == [(failed.pk, hour(63))]
    assert contract.allocations.get(node=failed).ends_at == hour(63)
    assert not contract.replacements.exists() and not bought.replacements.exists()
    assert oversell_violations() == []


@pytest.mark.django_db
class TestCancellation:
    def test_cancelling_a_contract_withdraws_its_unsold_resales(self, held, lab_client):
        resale = resell(held, lab_client)
        contract_cancel(contract=held["contract"], reason="fraud review")
        resale.refresh_from_db()
        assert resale.status == Listing.Status.WITHDRAWN
        assert not resale.listing_nodes.holding().exists()

    def test_a_contract_whose_hours_were_sold_on_cannot_be_cancelled(self, held, lab_client, other_lab_client):
        resale = resell(held, lab_client)
        book(lab=other_lab_client.organization, listing=resale, nodes=1, starts_at=hour(39), hours=4)
        with pytest.raises(InvalidTransition) as refused:
            contract_cancel(contract=held["contract"], reason="fraud review")
        assert refused.value.code == "contract_resold"
        held["contract"].refresh_from_db()
        resale.refresh_from_db()
        assert (held["contract"].status, resale.status) == (Contract.Status.SCHEDULED, Listing.Status.ACTIVE)


@pytest.mark.django_db
def test_operators_see_resale_activity_per_organization(held, lab_client, other_lab_client):
    from django.contrib.auth import get_user_model
    from django.test import Client

    resale = resell(held, lab_client)
    book(lab=other_lab_client.organization, listing=resale, nodes=1, starts_at=hour(39), hours=10)
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("ops", "ops@example.com", None))
    page = client.get("/admin/broker/resale/")
    assert page.status_code == 200
    rows = page.context["resale_activity"]
    assert [(row["organization"], row["listings"], row["contracts_sold"]) for row in rows] == [
        (lab_client.organization.name, 1, 1),
        (other_lab_client.organization.name, 0, 0),
    ]
    seller, buyer = rows
    assert (seller["gpu_hours_listed"], seller["gpu_hours_sold"], seller["proceeds"]) == (384, 80, D("240.00"))
    assert buyer["gpu_hours_bought"] == 80
    html = page.content.decode()
    assert "Resale activity per organization" in html and lab_client.organization.name in html
    assert client.get(f"/admin/broker/resale/{resale.resale_of.pk}/change/").status_code == 200


@pytest.mark.django_db
def test_a_resale_credited_in_full_posts_no_empty_ledger_transaction(
    held, provider_client, lab_client, other_lab_client
):
    """The buyer of a resold node that fails with no spare gets everything back (the breach
    rate past the promise, capped at what was billed): its invoice nets to 0.00 and posts no
    ledger transaction, rather than one with no entries."""
    resale = resell(held, lab_client, nodes=1)
    bought = book(lab=other_lab_client.organization, listing=resale, nodes=1, starts_at=hour(39), hours=24)
    with time_machine.travel(hour(40) + timedelta(minutes=5), tick=False):
        incident_open(
            provider=provider_client.organization, node=bought.allocations.get().node, kind="failure",
            started_at=hour(40),
        )  # fmt: skip
    close(MARCH)
    assert Invoice.objects.get(lab=other_lab_client.organization, period=MARCH).total == D("0.00")
    assert not LedgerTransaction.objects.filter(entries__isnull=True).exists()
    assert_every_transaction_balances()
