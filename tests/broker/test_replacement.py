"""Break-fix: a failed node is cordoned and replaced in the contracts holding it, from the next
whole hour, under every no-oversell guarantee of the database."""

import contextlib
from collections import Counter
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.free_spans import free_spans_drift
from broker.incidents import incident_open, incident_resolve
from broker.models import Allocation, Contract, Incident, Replacement
from core.errors import DomainError
from core.timeutils import HOUR
from events.models import Event
from marketplace.models import Listing, ListingNode, Node
from marketplace.selectors import listing_available_nodes
from tests.broker.factories import book, make_lab
from tests.marketplace.factories import NOW, ClusterFactory, ListingFactory, hour, iso

pytestmark = pytest.mark.usefixtures("frozen")

FROM_HOUR = hour(1)  # the next whole hour after NOW (09:17:23)


def reservations_per_hour_ok(listing: Listing, start, end) -> bool:
    """The listing reserves at most node_count nodes in every hour of [start, end)."""
    rows = list(ListingNode.objects.holding().filter(listing=listing).values_list("starts_at", "ends_at"))
    moment = start
    while moment < end:
        if sum(1 for s, e in rows if s <= moment < e) > listing.node_count:
            return False
        moment += HOUR
    return True


def serving_problems() -> list[str]:
    """Every hour in which a node serves two contracts, or a contract is served by other than
    node_count nodes (from its first to its last hour, up to an early release)."""
    problems = []
    per_node: Counter = Counter()
    per_contract: Counter = Counter()
    for node_id, contract_id, start, end in Allocation.objects.holding().values_list(
        "node_id", "contract_id", "starts_at", "ends_at"
    ):
        moment = start
        while moment < end:
            per_node[(node_id, moment)] += 1
            per_contract[(contract_id, moment)] += 1
            moment += HOUR
    problems += [f"node {n} at {m}: {c} contracts" for (n, m), c in per_node.items() if c > 1]
    for contract in Contract.objects.all():
        moment = contract.starts_at
        end = contract.released_at or contract.ends_at
        while moment < end:
            if per_contract[(contract.pk, moment)] != contract.node_count:
                problems.append(f"contract {contract.pk} at {moment}: {per_contract[(contract.pk, moment)]} nodes")
            moment += HOUR
    return problems


def report(client, node, **body):
    body = {"kind": "failure", "started_at": iso(NOW - timedelta(minutes=10))} | body
    return client.post(f"/api/v1/clusters/{node.cluster_id}/nodes/{node.pk}/incidents", body, format="json")


def listed_market(provider, *, nodes: int, listed: int, frozen):
    """A cluster of ``nodes`` nodes, ``listed`` of them listed from two hours ago for a day."""
    frozen.move_to(NOW - timedelta(hours=3))
    cluster = ClusterFactory(provider=provider, node_count=nodes)
    listing = ListingFactory(cluster=cluster, node_count=listed, starts_at=hour(-2), ends_at=hour(22))
    return cluster, listing


def running(listing, *, nodes: int, lab, starts: int, hours: int, frozen) -> Contract:
    frozen.move_to(hour(starts) - timedelta(minutes=1))
    return book(lab=lab, listing=listing, nodes=nodes, starts_at=hour(starts), hours=hours)


def test_a_spare_of_the_same_listing_replaces_the_failed_node(provider_client, lab_client, frozen):
    cluster, listing = listed_market(provider_client.organization, nodes=4, listed=3, frozen=frozen)
    contract = running(listing, nodes=2, lab=lab_client.organization, starts=-1, hours=6, frozen=frozen)
    frozen.move_to(NOW)
    held = sorted(contract.allocations.values_list("node_id", flat=True))
    spare = ListingNode.objects.filter(listing=listing).exclude(node_id__in=held).get()
    failed = Node.objects.get(pk=held[0])

    response = report(provider_client, failed)

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["kind"] == "failure" and body["is_open"] and body["hostname"] == failed.hostname
    assert body["replacements"] == [
        {
            "contract_id": contract.pk,
            "failed_node": failed.hostname,
            "replacement_node": spare.node.hostname,
            "from_hour": iso(FROM_HOUR),
            "created_at": body["replacements"][0]["created_at"],
        }
    ]
    failed.refresh_from_db()
    assert failed.status == Node.Status.FAILED
    rows = {
        (a.node_id, a.starts_at, a.ends_at, a.listing_node_id)
        for a in Allocation.objects.filter(contract=contract, node_id__in=[failed.pk, spare.node_id])
    }
    cut = ListingNode.objects.get(listing=listing, node=failed).pk
    assert rows == {(failed.pk, hour(-1), FROM_HOUR, cut), (spare.node_id, FROM_HOUR, hour(5), spare.pk)}
    assert serving_problems() == []
    assert reservations_per_hour_ok(listing, hour(-2), hour(22))
    # the spare was the listing's own: its reservations are unchanged
    assert ListingNode.objects.holding().filter(listing=listing).count() == 3


def test_an_unlisted_free_node_takes_the_failed_nodes_reservation_over(provider_client, lab_client, frozen):
    cluster, listing = listed_market(provider_client.organization, nodes=4, listed=2, frozen=frozen)
    first = running(listing, nodes=2, lab=lab_client.organization, starts=-1, hours=4, frozen=frozen)
    later = running(listing, nodes=2, lab=lab_client.organization, starts=5, hours=3, frozen=frozen)
    frozen.move_to(NOW)
    failed = Node.objects.get(pk=min(first.allocations.values_list("node_id", flat=True)))
    unlisted = Node.objects.filter(cluster=cluster, listing_nodes__isnull=True).order_by("id").first()

    response = report(provider_client, failed)

    assert response.status_code == 201, response.content
    assert Replacement.objects.filter(failed_node=failed).count() == 2
    assert set(Replacement.objects.values_list("contract_id", "replacement_node_id", "from_hour")) == {
        (first.pk, unlisted.pk, FROM_HOUR),
        (later.pk, unlisted.pk, hour(5)),
    }
    old = ListingNode.objects.get(listing=listing, node=failed)
    new = ListingNode.objects.get(listing=listing, node=unlisted)
    assert old.released and not new.released
    assert (new.starts_at, new.ends_at) == (FROM_HOUR, hour(22))
    # the later contract had not started: it keeps no hours on the failed node
    assert Allocation.objects.get(contract=later, node=failed).ends_at == hour(5)
    assert Allocation.objects.get(contract=later, node=failed).starts_at == hour(5)
    assert serving_problems() == []
    assert reservations_per_hour_ok(listing, hour(-2), hour(22))

    # Back in service, the failed node cannot let the listing sell a third node.
    incident_resolve(provider=provider_client.organization, incident=Incident.objects.get())
    failed.refresh_from_db()
    assert failed.status == Node.Status.IN_SERVICE
    assert listing_available_nodes(listing=listing) == 0
    response = lab_client.post(
        f"/api/v1/listings/{listing.pk}/book",
        {"gpu_count": 8, "starts_at": iso(hour(2)), "duration_hours": 2},
        format="json",
    )
    assert response.status_code == 409, response.content


def test_with_no_free_node_the_contract_keeps_its_allocation(provider_client, lab_client, frozen):
    cluster, listing = listed_market(provider_client.organization, nodes=2, listed=2, frozen=frozen)
    contract = running(listing, nodes=2, lab=lab_client.organization, starts=-1, hours=6, frozen=frozen)
    frozen.move_to(NOW)
    failed = Node.objects.get(pk=min(contract.allocations.values_list("node_id", flat=True)))

    response = report(provider_client, failed)

    assert response.status_code == 201, response.content
    assert response.json()["replacements"] == []
    assert not Replacement.objects.exists()
    allocation = Allocation.objects.get(contract=contract, node=failed)
    assert (allocation.starts_at, allocation.ends_at) == (hour(-1), hour(5))
    failed.refresh_from_db()
    assert failed.status == Node.Status.FAILED
    assert not ListingNode.objects.get(listing=listing, node=failed).released


def test_replacement_events_go_to_both_parties(provider_client, lab_client, frozen):
    cluster, listing = listed_market(provider_client.organization, nodes=4, listed=3, frozen=frozen)
    contract = running(listing, nodes=1, lab=lab_client.organization, starts=-1, hours=6, frozen=frozen)
    frozen.move_to(NOW)
    failed = contract.allocations.get().node

    report(provider_client, failed)

    replaced = Event.objects.filter(type="contract.node_replaced")
    assert sorted(replaced.values_list("organization_id", flat=True)) == sorted(
        [provider_client.organization.pk, lab_client.organization.pk]
    )
    data = replaced.first().data
    assert data["object"] == "contract" and data["id"] == contract.pk
    assert data["replacement"]["failed_node"] == failed.hostname
    assert data["replacement"]["from_hour"].startswith(FROM_HOUR.strftime("%Y-%m-%dT%H:%M"))
    opened = Event.objects.filter(type="incident.opened")
    assert sorted(opened.values_list("organization_id", flat=True)) == sorted(
        [provider_client.organization.pk, lab_client.organization.pk]
    )
    assert opened.first().data["hostname"] == failed.hostname


def test_the_contracts_node_list_shows_the_history(provider_client, lab_client, frozen):
    cluster, listing = listed_market(provider_client.organization, nodes=4, listed=3, frozen=frozen)
    contract = running(listing, nodes=1, lab=lab_client.organization, starts=-1, hours=6, frozen=frozen)
    later = running(listing, nodes=1, lab=lab_client.organization, starts=5, hours=2, frozen=frozen)
    frozen.move_to(NOW)
    failed = contract.allocations.get().node
    assert later.allocations.get().node == failed  # first fit: the same node
    report(provider_client, failed)
    spare = Replacement.objects.get(contract=contract).replacement_node

    rows = lab_client.get(f"/api/v1/contracts/{contract.pk}/nodes").json()["results"]
    assert [(r["hostname"], r["starts_at"], r["ends_at"], r["replaces"]) for r in rows] == sorted(
        [
            (failed.hostname, iso(hour(-1)), iso(FROM_HOUR), None),
            (spare.hostname, iso(FROM_HOUR), iso(hour(5)), failed.hostname),
        ]
    )
    # moved before it started: the failed node never served it, and is listed only in its history
    later_rows = lab_client.get(f"/api/v1/contracts/{later.pk}/nodes").json()["results"]
    assert [r["hostname"] for r in later_rows] == [Replacement.objects.get(contract=later).replacement_node.hostname]
    history = lab_client.get(f"/api/v1/contracts/{later.pk}/nodes?history=true").json()["results"]
    assert sorted(r["hostname"] for r in history) == sorted(
        [failed.hostname, Replacement.objects.get(contract=later).replacement_node.hostname]
    )
    detail = lab_client.get(f"/api/v1/contracts/{later.pk}").json()
    assert detail["nodes"] == [Replacement.objects.get(contract=later).replacement_node.hostname]


def test_a_degradation_never_cordons(provider_client, lab_client, frozen):
    cluster, listing = listed_market(provider_client.organization, nodes=4, listed=3, frozen=frozen)
    contract = running(listing, nodes=1, lab=lab_client.organization, starts=-1, hours=6, frozen=frozen)
    frozen.move_to(NOW)
    node = contract.allocations.get().node

    response = report(provider_client, node, kind="degraded")

    assert response.status_code == 201
    node.refresh_from_db()
    assert node.status == Node.Status.IN_SERVICE
    assert not Replacement.objects.exists()


def test_resolution_returns_the_node_and_is_idempotent(provider_client, frozen):
    cluster, listing = listed_market(provider_client.organization, nodes=2, listed=1, frozen=frozen)
    frozen.move_to(NOW)
    node = Node.objects.filter(cluster=cluster).first()
    opened = incident_open(
        provider=provider_client.organization, node=node, kind="failure", started_at=NOW - timedelta(hours=1)
    )
    node.refresh_from_db()
    assert node.status == Node.Status.FAILED

    response = provider_client.post(f"/api/v1/incidents/{opened.incident.pk}/resolve", {}, format="json")
    assert response.status_code == 200, response.content
    assert Incident.objects.get().resolved_at == NOW
    node.refresh_from_db()
    assert node.status == Node.Status.IN_SERVICE
    again = provider_client.post(
        f"/api/v1/incidents/{opened.incident.pk}/resolve",
        {"resolved_at": iso(NOW - timedelta(minutes=1))},
        format="json",
    )
    assert again.status_code == 200
    assert again.json()["resolved_at"] == response.json()["resolved_at"]


@st.composite
def markets(draw):
    """Sales of two listings on an 8-node cluster (4 + 2 nodes listed, 2 unlisted), some running,
    then failures of some nodes, in order."""
    sales = draw(
        st.lists(
            st.tuples(
                st.integers(0, 1),  # which listing
                st.integers(1, 2),  # nodes
                st.integers(-2, 8),  # start hour (a running contract when <= 0)
                st.integers(1, 6),  # hours
            ),
            max_size=10,
        )
    )
    failures = draw(st.lists(st.integers(0, 7), min_size=1, max_size=4, unique=True))
    return sales, failures


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(market=markets())
def test_random_sales_and_failures_never_oversell(db, frozen, market):
    """Whatever was sold and whatever fails: no node serves two contracts in an hour, every
    contract has its node count in every hour, no listing reserves more than node_count nodes
    in any hour, and the free spans stay their definition."""
    sales, failures = market
    lab = make_lab()
    frozen.move_to(NOW - timedelta(hours=4))
    cluster = ClusterFactory(node_count=8)
    listings = [
        ListingFactory(cluster=cluster, node_count=4, starts_at=hour(-3), ends_at=hour(12)),
        ListingFactory(cluster=cluster, node_count=2, starts_at=hour(-3), ends_at=hour(12)),
    ]
    for which, nodes, start, hours in sales:
        listing = listings[which]
        end = min(start + hours, 12)
        frozen.move_to(hour(start) - timedelta(minutes=1))
        with contextlib.suppress(DomainError):  # sold out for that window
            book(lab=lab, listing=listing, nodes=nodes, starts_at=hour(start), hours=end - start)
    frozen.move_to(NOW)
    nodes = list(cluster.nodes.order_by("id"))
    for index in failures:
        incident_open(provider=cluster.provider, node=nodes[index], kind="failure", started_at=NOW)

    assert serving_problems() == []
    for listing in listings:
        assert reservations_per_hour_ok(listing, hour(-3), hour(12))
    assert free_spans_drift() == []
    for replacement in Replacement.objects.filter(contract__cluster=cluster):
        assert replacement.from_hour >= FROM_HOUR
    for incident in Incident.objects.filter(cluster=cluster):
        incident_resolve(provider=cluster.provider, incident=incident)
    for listing in listings:
        assert reservations_per_hour_ok(listing, hour(-3), hour(12))
    assert free_spans_drift() == []


def test_a_node_the_contract_had_is_never_its_replacement(provider_client, lab_client, other_lab_client):
    """The first failed node, back in service and free, is not given back to a contract it
    served: a contract holds a node once (its allocations are its history)."""
    cluster = ClusterFactory(provider=provider_client.organization, node_count=3)
    listing = ListingFactory(cluster=cluster, node_count=3, starts_at=hour(1), ends_at=hour(10))
    contract = book(lab=lab_client.organization, listing=listing, nodes=1, starts_at=hour(2), hours=4)
    book(lab=other_lab_client.organization, listing=listing, nodes=1, starts_at=hour(2), hours=4)
    first = contract.allocations.get().node
    opened = incident_open(provider=cluster.provider, node=first, kind="failure", started_at=NOW)
    incident_resolve(provider=cluster.provider, incident=opened.incident)
    second = Replacement.objects.get(contract=contract).replacement_node

    incident_open(provider=cluster.provider, node=second, kind="failure", started_at=NOW)

    # the only node free for the window is the first: no replacement, the allocation stays
    assert not Replacement.objects.filter(failed_node=second).exists()
    assert [row.node_id for row in contract.allocations.holding()] == [second.pk]
    assert serving_problems() == []
