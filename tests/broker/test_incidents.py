"""The incident API: who may report, read and resolve; what is refused; a race with a booking."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from broker.incidents import incident_open
from broker.models import Allocation, Incident, Replacement
from marketplace.models import Node
from tests.broker.factories import book, make_lab, run_at_once
from tests.conftest import assert_error, make_client
from tests.marketplace.factories import NOW, ClusterFactory, ListingFactory, hour, iso

pytestmark = pytest.mark.usefixtures("frozen")


def url(node) -> str:
    return f"/api/v1/clusters/{node.cluster_id}/nodes/{node.pk}/incidents"


def body(**fields) -> dict:
    return {"kind": "failure", "started_at": iso(NOW - timedelta(minutes=10)), "detail": "PSU"} | fields


@pytest.fixture
def node(provider_client):
    return ClusterFactory(provider=provider_client.organization, node_count=3).nodes.order_by("id").first()


def test_only_the_nodes_provider_reports(node, other_provider_client, lab_client, anon_client):
    assert_error(other_provider_client.post(url(node), body(), format="json"), 404, "not_found")
    assert_error(lab_client.post(url(node), body(), format="json"), 403)
    assert anon_client.post(url(node), body(), format="json").status_code == 401
    wrong_cluster = f"/api/v1/clusters/{node.cluster_id + 1000}/nodes/{node.pk}/incidents"
    assert_error(other_provider_client.post(wrong_cluster, body(), format="json"), 404)
    assert not Incident.objects.exists()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"started_at": iso(NOW + timedelta(minutes=10))}, "started_at"),
        ({"started_at": iso(NOW - timedelta(days=8))}, "started_at"),
        ({"kind": "exploded"}, "kind"),
        ({"colour": "red"}, "colour"),
        ({"detail": "x" * 2001}, "detail"),
    ],
)
def test_bad_reports_are_400s_naming_the_field(provider_client, node, fields, field):
    error = assert_error(provider_client.post(url(node), body(**fields), format="json"), 400)
    assert field in error["fields"]
    assert not Incident.objects.exists()


def test_a_small_clock_skew_is_accepted(provider_client, node):
    response = provider_client.post(url(node), body(started_at=iso(NOW + timedelta(minutes=4))), format="json")
    assert response.status_code == 201, response.content


def test_a_second_report_of_an_open_incident_answers_it(provider_client, node):
    first = provider_client.post(url(node), body(), format="json")
    again = provider_client.post(url(node), body(detail="still down"), format="json")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == first.json()
    degraded = provider_client.post(url(node), body(kind="degraded"), format="json")
    assert degraded.status_code == 201 and degraded.json()["id"] != first.json()["id"]
    assert Incident.objects.count() == 2


def test_after_resolution_a_new_report_is_a_new_incident(provider_client, node):
    first = provider_client.post(url(node), body(), format="json").json()
    provider_client.post(f"/api/v1/incidents/{first['id']}/resolve", {}, format="json")
    second = provider_client.post(url(node), body(), format="json")
    assert second.status_code == 201 and second.json()["id"] != first["id"]
    node.refresh_from_db()
    assert node.status == Node.Status.FAILED


def test_resolve_refuses_a_time_before_the_start_and_others_incidents(provider_client, other_provider_client, node):
    incident = provider_client.post(url(node), body(), format="json").json()
    resolve = f"/api/v1/incidents/{incident['id']}/resolve"
    error = assert_error(
        provider_client.post(resolve, {"resolved_at": iso(NOW - timedelta(hours=1))}, format="json"), 400
    )
    assert "resolved_at" in error["fields"]
    assert_error(other_provider_client.post(resolve, {}, format="json"), 404)
    assert Incident.objects.get().resolved_at is None


def test_maintenance_cannot_put_a_failed_node_back(provider_client, node):
    provider_client.post(url(node), body(), format="json")
    patch = f"/api/v1/clusters/{node.cluster_id}/nodes/{node.pk}"
    assert_error(provider_client.patch(patch, {"status": "in_service"}, format="json"), 409, "node_failed")
    assert_error(provider_client.patch(patch, {"status": "maintenance"}, format="json"), 409, "node_failed")
    node.refresh_from_db()
    assert node.status == Node.Status.FAILED


def test_who_sees_which_incidents(provider_client, lab_client, other_lab_client, frozen):
    frozen.move_to(NOW - timedelta(hours=2))
    cluster = ClusterFactory(provider=provider_client.organization, node_count=4)
    listing = ListingFactory(cluster=cluster, node_count=3, starts_at=hour(-1), ends_at=hour(20))
    frozen.move_to(hour(0) - timedelta(minutes=1))
    contract = book(lab=lab_client.organization, listing=listing, nodes=1, starts_at=hour(0), hours=4)
    frozen.move_to(NOW)
    served = contract.allocations.get().node
    elsewhere = Node.objects.get(cluster=cluster, listing_nodes__isnull=True)  # never served the lab
    on_served = provider_client.post(url(served), body(), format="json").json()
    provider_client.post(url(elsewhere), body(kind="degraded"), format="json")

    assert provider_client.get("/api/v1/incidents").json()["count"] == 2
    lab_view = lab_client.get("/api/v1/incidents").json()
    assert [i["id"] for i in lab_view["results"]] == [on_served["id"]]
    assert [r["contract_id"] for r in lab_view["results"][0]["replacements"]] == [contract.pk]
    assert other_lab_client.get("/api/v1/incidents").json()["count"] == 0
    assert_error(other_lab_client.get(f"/api/v1/incidents/{on_served['id']}"), 404)
    assert lab_client.get(f"/api/v1/incidents/{on_served['id']}").status_code == 200

    def ids(query):
        return sorted(i["id"] for i in provider_client.get(f"/api/v1/incidents?{query}").json()["results"])

    assert ids("kind=degraded") == [on_served["id"] + 1]
    assert ids("status=open") == sorted([on_served["id"], on_served["id"] + 1])
    assert ids("status=resolved") == []
    assert ids(f"cluster={cluster.pk}") == sorted([on_served["id"], on_served["id"] + 1])
    assert ids(f"cluster={cluster.pk + 1}") == []
    assert_error(provider_client.get("/api/v1/incidents?status=closed"), 400)


def test_the_incident_list_costs_the_same_queries_however_many(
    provider_client, lab_client, frozen, django_assert_max_num_queries
):
    frozen.move_to(NOW - timedelta(hours=2))
    cluster = ClusterFactory(provider=provider_client.organization, node_count=12)
    listing = ListingFactory(cluster=cluster, node_count=8, starts_at=hour(-1), ends_at=hour(20))
    frozen.move_to(hour(0) - timedelta(minutes=1))
    for _ in range(4):
        book(lab=lab_client.organization, listing=listing, nodes=1, starts_at=hour(0), hours=4)
    frozen.move_to(NOW)
    sold = list(Allocation.objects.values_list("node_id", flat=True))
    for node in Node.objects.filter(pk__in=sold):
        provider_client.post(url(node), body(), format="json")
    assert Replacement.objects.count() == 4
    for client in (provider_client, lab_client):
        with django_assert_max_num_queries(6):  # key, touch, count, page, replacements
            response = client.get("/api/v1/incidents")
        assert response.json()["count"] == 4


@pytest.mark.django_db(transaction=True)
def test_a_booking_racing_a_failure_never_oversells(transactional_db):
    """A lab books the listing's last free node while its provider reports a sold node failed:
    whichever goes first, the spare is sold at most once for any hour."""
    provider = make_client("Racing provider", "provider")
    lab = make_client("Racing lab", "lab")
    for round_ in range(3):
        cluster = ClusterFactory(provider=provider.organization, node_count=3)
        listing = ListingFactory(cluster=cluster, node_count=3, starts_at=hour(1), ends_at=hour(10))
        contract = book(lab=make_lab(), listing=listing, nodes=2, starts_at=hour(2), hours=4)
        failed = contract.allocations.order_by("node_id").first().node

        booking = {"gpu_count": 8, "starts_at": iso(hour(2)), "duration_hours": 4}
        results = run_at_once(
            lambda node=failed: provider.post(url(node), body(), format="json"),
            lambda path=f"/api/v1/listings/{listing.pk}/book", data=booking: lab.post(path, data, format="json"),
        )
        assert not [r for r in results if isinstance(r, BaseException)], results
        reported, booked = results
        assert reported.status_code == 201, reported.content
        assert booked.status_code in (201, 409), booked.content
        replaced = Replacement.objects.filter(contract=contract).exists()
        # the one spare went to exactly one of them
        assert replaced != (booked.status_code == 201), (round_, replaced, booked.status_code)
        holding = Allocation.objects.holding().filter(listing=listing).values_list("node_id", "starts_at", "ends_at")
        per_node = {}
        for node_id, start, end in holding:
            per_node.setdefault(node_id, []).append((start, end))
        for spans in per_node.values():
            spans.sort()
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans


def test_operators_report_and_resolve_in_the_admin(provider_client, frozen):
    from django.test import Client

    operator = User.objects.create_superuser("ops", "ops@example.com", "pw")
    client = Client()
    client.force_login(operator)
    node = ClusterFactory(provider=provider_client.organization, node_count=2).nodes.order_by("id").first()
    add = reverse("admin:broker_incident_add")

    def started(moment):  # the admin's date and time inputs
        return {"started_at_0": moment.strftime("%Y-%m-%d"), "started_at_1": moment.strftime("%H:%M:%S")}

    refused = client.post(add, {"node": node.pk, "kind": "failure", **started(NOW - timedelta(days=8))})
    assert refused.status_code == 200 and "started_at" in refused.context["adminform"].form.errors
    assert not Incident.objects.exists()
    response = client.post(
        add,
        {
            "node": node.pk,
            "kind": "failure",
            **started(NOW - timedelta(minutes=3)),
            "detail": "seen by the NOC",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    incident = Incident.objects.get()
    assert (incident.kind, incident.detail, incident.provider_id) == (
        "failure",
        "seen by the NOC",
        node.cluster.provider_id,
    )
    node.refresh_from_db()
    assert node.status == Node.Status.FAILED

    response = client.post(
        reverse("admin:broker_incident_changelist"), {"action": "resolve", "_selected_action": [incident.pk]}
    )
    assert response.status_code == 302
    incident.refresh_from_db()
    node.refresh_from_db()
    assert incident.resolved_at == NOW and node.status == Node.Status.IN_SERVICE
    assert client.get(reverse("admin:broker_incident_change", args=[incident.pk])).status_code == 200


def test_the_service_answers_the_open_incident_to_a_second_report(provider_client, node):
    first = incident_open(provider=provider_client.organization, node=node, kind="failure", started_at=NOW)
    second = incident_open(provider=provider_client.organization, node=node, kind="failure", started_at=NOW)
    assert first.created and not second.created and first.incident.pk == second.incident.pk


def test_a_booking_that_waited_for_a_failure_report_never_gets_the_failed_node(transactional_db, monkeypatch):
    """A booking whose statement began before a failure report committed, and waited for the
    report's lock on the listing, read the node in service: the database refuses the sale of
    a node out of service on its latest row, and the booking chooses again (the spare)."""
    import threading

    from django.db import connection

    from broker import incidents
    from broker.booking import listing_book

    provider = make_client("Waiting provider", "provider").organization
    lab = make_lab()
    cluster = ClusterFactory(provider=provider, node_count=2)
    listing = ListingFactory(cluster=cluster, node_count=2, starts_at=hour(1), ends_at=hour(10))
    failed, spare = cluster.nodes.order_by("id")
    holding = threading.Event()
    changed = incidents.listing_inventory_changed

    def hold_until_the_booking_waits(**kwargs):
        changed(**kwargs)  # the listing is locked by the report's transaction from here to its commit
        holding.set()
        with connection.cursor() as cursor:  # until another session waits for a lock
            for _ in range(400):
                # pg_stat_activity is read once per transaction unless its snapshot is cleared
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                if cursor.fetchone()[0]:
                    return
                cursor.execute("SELECT pg_sleep(0.05)")
        raise AssertionError("the booking never waited for the listing")

    monkeypatch.setattr(incidents, "listing_inventory_changed", hold_until_the_booking_waits)

    def report():
        return incident_open(provider=provider, node=failed, kind="failure", started_at=NOW - timedelta(minutes=5))

    def booking():
        assert holding.wait(30)
        listing.refresh_from_db()
        return listing_book(
            lab=lab, listing=listing, gpu_count=cluster.gpus_per_node, starts_at=hour(2), duration_hours=3
        )

    reported, booked = run_at_once(report, booking)
    assert not [r for r in (reported, booked) if isinstance(r, BaseException)], (reported, booked)
    assert Node.objects.get(pk=failed.pk).status == Node.Status.FAILED
    assert list(Allocation.objects.holding().values_list("node_id", flat=True)) == [spare.pk]
