"""The audit trail of marketplace actions: the services record them, so a key issued or
revoked, a node taken out of service and a listing repriced, paused, resumed or withdrawn
through the API leave one record each, naming the key that acted; a command and a caller
without a name leave the same records."""

from decimal import Decimal

import pytest
from django.core.management import call_command

from core.models import AuditEvent
from marketplace.models import ApiKey, Listing, Node
from marketplace.selectors import api_key_prefix_of
from marketplace.services import api_key_revoke, listing_update, organization_create
from tests.marketplace.factories import ClusterFactory, ListingFactory, sell

pytestmark = pytest.mark.django_db

API_KEYS = "/api/v1/api-keys"
LISTINGS = "/api/v1/listings"


def events(**filters) -> list[tuple]:
    return list(
        AuditEvent.objects.filter(**filters)
        .order_by("id")
        .values_list("actor", "actor_label", "action", "target_type", "target_id", "message")
    )


def label_of(client) -> str:
    """How the trail names a caller of the API: the key it used, and its organization."""
    return f"api key {api_key_prefix_of(client.secret)} ({client.organization.name})"


class TestApiKeys:
    def test_issuing_a_key_is_recorded_once(self, lab_client):
        response = lab_client.post(API_KEYS, {"name": "ci"}, format="json")
        assert response.status_code == 201, response.content
        key_id = str(response.json()["id"])
        assert events(target_type="marketplace.apikey", target_id=key_id) == [
            (None, label_of(lab_client), "api_key_issued", "marketplace.apikey", key_id, "for Lab One")
        ]

    def test_revoking_a_key_is_recorded_once(self, lab_client):
        spare = lab_client.post(API_KEYS, {"name": "spare"}, format="json").json()["id"]
        assert lab_client.post(f"{API_KEYS}/{spare}/revoke").status_code == 200
        assert lab_client.post(f"{API_KEYS}/{spare}/revoke").status_code == 200  # already revoked: no-op
        assert events(action="api_key_revoked") == [
            (None, label_of(lab_client), "api_key_revoked", "marketplace.apikey", str(spare), "")
        ]


class TestNodes:
    def test_maintenance_and_back_are_recorded_once_each(self, provider_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=2)
        node = cluster.nodes.order_by("id").first()
        path = f"/api/v1/clusters/{cluster.pk}/nodes/{node.pk}"
        for status in ("maintenance", "maintenance", "in_service"):  # the second changes nothing
            assert provider_client.patch(path, {"status": status}, format="json").status_code == 200
        label = label_of(provider_client)
        assert events(target_type="marketplace.node") == [
            (None, label, "node_maintenance", "marketplace.node", str(node.pk), "in_service -> maintenance"),
            (None, label, "node_in_service", "marketplace.node", str(node.pk), "maintenance -> in_service"),
        ]

    def test_a_refused_change_is_not_recorded(self, provider_client, lab_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=1)
        listing = ListingFactory(cluster=cluster, node_count=1)
        sold = sell(listing, 1, listing.starts_at, listing.ends_at, lab_client.organization).allocations.get()
        path = f"/api/v1/clusters/{cluster.pk}/nodes/{sold.node_id}"
        assert provider_client.patch(path, {"status": "maintenance"}, format="json").status_code == 409
        assert Node.objects.get(pk=sold.node_id).status == Node.Status.IN_SERVICE
        assert events(target_type="marketplace.node") == []


class TestListings:
    @pytest.fixture
    def listing(self, provider_client) -> Listing:
        return ListingFactory(cluster=ClusterFactory(provider=provider_client.organization))

    def test_reprice_is_recorded_once(self, provider_client, listing):
        body = {"price_per_gpu_hour": "3.75"}
        assert provider_client.patch(f"{LISTINGS}/{listing.pk}", body, format="json").status_code == 200
        assert events(target_type="marketplace.listing") == [
            (None, label_of(provider_client), "listing_repriced", "marketplace.listing", str(listing.pk),
             "2.5000 -> 3.7500"),
        ]  # fmt: skip

    def test_pause_and_resume_are_recorded_once_each(self, provider_client, listing):
        path = f"{LISTINGS}/{listing.pk}"
        assert provider_client.patch(path, {"status": "paused"}, format="json").status_code == 200
        assert provider_client.patch(path, {"status": "active"}, format="json").status_code == 200
        label = label_of(provider_client)
        assert events(target_type="marketplace.listing") == [
            (None, label, "listing_paused", "marketplace.listing", str(listing.pk), "active -> paused"),
            (None, label, "listing_resumed", "marketplace.listing", str(listing.pk), "paused -> active"),
        ]

    def test_reprice_and_pause_in_one_call_are_two_records(self, provider_client, listing):
        body = {"price_per_gpu_hour": "1.5", "status": "paused"}
        assert provider_client.patch(f"{LISTINGS}/{listing.pk}", body, format="json").status_code == 200
        assert [event[2] for event in events(target_type="marketplace.listing")] == [
            "listing_repriced",
            "listing_paused",
        ]

    def test_the_same_price_and_status_again_are_not_recorded(self, provider_client, listing):
        body = {"price_per_gpu_hour": "2.5", "status": "active"}
        assert provider_client.patch(f"{LISTINGS}/{listing.pk}", body, format="json").status_code == 200
        assert events(target_type="marketplace.listing") == []

    def test_withdraw_is_recorded_once(self, provider_client, listing):
        for _ in range(2):  # the second is a no-op
            assert provider_client.post(f"{LISTINGS}/{listing.pk}/withdraw").status_code == 200
        assert events(target_type="marketplace.listing") == [
            (None, label_of(provider_client), "listing_withdrawn", "marketplace.listing", str(listing.pk),
             "active -> withdrawn; 2 reservations released"),
        ]  # fmt: skip

    def test_a_refused_change_is_not_recorded(self, provider_client, listing):
        provider_client.post(f"{LISTINGS}/{listing.pk}/withdraw")
        response = provider_client.patch(f"{LISTINGS}/{listing.pk}", {"price_per_gpu_hour": "9"}, format="json")
        assert response.status_code == 409
        assert [event[2] for event in events(target_type="marketplace.listing")] == ["listing_withdrawn"]


class TestOtherCallers:
    def test_a_command_names_itself(self):
        call_command("create_organization", "Cmd Lab", "--role", "lab")
        key = ApiKey.objects.get(organization__name="Cmd Lab")
        assert events(target_type="marketplace.apikey", target_id=str(key.pk)) == [
            (None, "manage.py create_organization", "api_key_issued", "marketplace.apikey", str(key.pk),
             "for Cmd Lab"),
        ]  # fmt: skip

    def test_a_caller_without_a_name_is_the_system(self):
        _, issued = organization_create(name="Quiet Lab", role="lab")
        api_key_revoke(api_key=issued.api_key)
        listing_update(listing=ListingFactory(), price_per_gpu_hour=Decimal("4"))
        assert [(label, action) for _, label, action, *_ in events(actor_label="system")] == [
            ("system", "api_key_issued"),
            ("system", "api_key_revoked"),
            ("system", "listing_repriced"),
        ]

    def test_a_long_organization_name_is_cut_to_the_label_length(self, provider_client):
        provider_client.organization.name = "x" * 200
        provider_client.organization.save(update_fields=["name"])
        assert provider_client.post(API_KEYS, {"name": "long"}, format="json").status_code == 201
        [(_, label, *_)] = events(action="api_key_issued", actor_label__startswith="api key")
        assert label == f"api key {api_key_prefix_of(provider_client.secret)} ({'x' * 200}"[:200]
