"""Clusters and nodes through the API: registration in bulk, access, maintenance."""

import json

import pytest

from marketplace.models import Cluster, GpuModel, Node
from tests.conftest import assert_error
from tests.marketplace.factories import ClusterFactory, ListingFactory, hour, iso, reserved_nodes, sell

pytestmark = pytest.mark.django_db

CLUSTERS = "/api/v1/clusters"


def cluster_payload(**overrides) -> dict:
    return {
        "name": "iad-h100-a",
        "gpu_model": "h100-sxm-80gb",
        "region": "us-east-1",
        "interconnect": "infiniband",
        "gpus_per_node": 8,
        "node_count": 3,
    } | overrides


def post_json(client, path: str, body: dict):
    return client.generic("POST", path, json.dumps(body), content_type="application/json")


def node_ids(cluster: Cluster) -> list[int]:
    return list(cluster.nodes.order_by("id").values_list("id", flat=True))


def test_gpu_catalog_is_public(anon_client):
    body = anon_client.get("/api/v1/gpu-models").json()
    slugs = {item["slug"] for item in body["results"]} if isinstance(body, dict) else {item["slug"] for item in body}
    assert {"h100-sxm-80gb", "a100-sxm-80gb", "mi300x"} <= slugs


class TestClusterCreate:
    def test_registers_cluster_and_one_record_per_node(self, provider_client):
        response = provider_client.post(CLUSTERS, cluster_payload(), format="json")
        assert response.status_code == 201, response.content
        body = response.json()
        assert body["name"] == "iad-h100-a"
        assert body["gpu_model"] == "h100-sxm-80gb"
        assert (body["region"], body["interconnect"], body["gpus_per_node"]) == ("us-east-1", "infiniband", 8)
        assert body["node_count"] == 3
        assert body["nodes_in_service"] == 3
        cluster = Cluster.objects.get(pk=body["id"])
        assert cluster.provider == provider_client.organization
        nodes = list(cluster.nodes.all())
        assert len(nodes) == 3
        assert len({node.hostname for node in nodes}) == 3
        assert {node.status for node in nodes} == {Node.Status.IN_SERVICE}

    def test_given_hostnames_are_used(self, provider_client):
        hostnames = ["gpu-a01.iad", "gpu-a02.iad", "gpu-a03.iad"]
        response = provider_client.post(CLUSTERS, cluster_payload(hostnames=hostnames), format="json")
        assert response.status_code == 201, response.content
        listed = provider_client.get(f"{CLUSTERS}/{response.json()['id']}/nodes").json()
        assert [node["hostname"] for node in listed["results"]] == hostnames
        assert {node["status"] for node in listed["results"]} == {"in_service"}

    def test_duplicate_hostnames_are_refused_and_nothing_is_created(self, provider_client):
        payload = cluster_payload(hostnames=["gpu-1", "gpu-2", "gpu-1"])
        error = assert_error(provider_client.post(CLUSTERS, payload, format="json"), 400, "invalid")
        assert "hostnames" in error["fields"]
        assert not Cluster.objects.exists()
        assert not Node.objects.exists()

    def test_hostname_count_must_match_node_count(self, provider_client):
        payload = cluster_payload(hostnames=["gpu-1", "gpu-2"])
        error = assert_error(provider_client.post(CLUSTERS, payload, format="json"), 400)
        assert "hostnames" in error["fields"]
        assert not Cluster.objects.exists()

    @pytest.mark.parametrize("hostname", ["has space", "-leading-dash", "", "x" * 254, "under_score"])
    def test_malformed_hostname_is_400(self, provider_client, hostname):
        payload = cluster_payload(node_count=1, hostnames=[hostname])
        error = assert_error(provider_client.post(CLUSTERS, payload, format="json"), 400)
        assert "hostnames" in error["fields"]
        assert not Cluster.objects.exists()

    def test_unknown_gpu_model_is_400_listing_the_catalog(self, provider_client):
        error = assert_error(
            provider_client.post(CLUSTERS, cluster_payload(gpu_model="h900"), format="json"), 400, "invalid"
        )
        slugs = ", ".join(GpuModel.objects.order_by("slug").values_list("slug", flat=True))
        assert "h100-sxm-80gb" in slugs
        [message] = error["fields"]["gpu_model"]
        assert message == f"Unknown GPU model 'h900'. Valid: {slugs} (GET /api/v1/gpu-models)."
        assert error["message"] == f"gpu_model: {message}"
        assert not Cluster.objects.exists()

    @pytest.mark.parametrize("region", ["US-East-1", "us east 1", "", "-us", "us_east", "a" * 64, None])
    def test_bad_region_is_400(self, provider_client, region):
        error = assert_error(provider_client.post(CLUSTERS, cluster_payload(region=region), format="json"), 400)
        assert "region" in error["fields"]
        assert not Cluster.objects.exists()

    @pytest.mark.parametrize("interconnect", ["nvlink", "InfiniBand", "", None, 1])
    def test_bad_interconnect_is_400(self, provider_client, interconnect):
        payload = cluster_payload(interconnect=interconnect)
        error = assert_error(provider_client.post(CLUSTERS, payload, format="json"), 400)
        assert "interconnect" in error["fields"]

    @pytest.mark.parametrize("interconnect", ["infiniband", "roce", "ethernet"])
    def test_each_interconnect_is_accepted(self, provider_client, interconnect):
        response = provider_client.post(CLUSTERS, cluster_payload(interconnect=interconnect), format="json")
        assert response.status_code == 201
        assert response.json()["interconnect"] == interconnect

    @pytest.mark.parametrize("node_count", [0, -1, 20_001, 10**30, 1e30, "NaN", "nan", "Infinity", 2.5, "ten", None])
    def test_bad_node_count_is_400_and_nothing_is_created(self, provider_client, node_count):
        payload = cluster_payload(node_count=node_count)
        error = assert_error(provider_client.post(CLUSTERS, payload, format="json"), 400, "invalid")
        assert "node_count" in error["fields"]
        assert not Cluster.objects.exists()
        assert not Node.objects.exists()

    def test_nan_literal_node_count_is_400(self, provider_client):
        body = json.dumps(cluster_payload()).replace('"node_count": 3', '"node_count": NaN')
        response = provider_client.generic("POST", CLUSTERS, body, content_type="application/json")
        assert_error(response, 400)
        assert not Cluster.objects.exists()

    @pytest.mark.parametrize("gpus_per_node", [0, 65, "eight", None])
    def test_bad_gpus_per_node_is_400(self, provider_client, gpus_per_node):
        payload = cluster_payload(gpus_per_node=gpus_per_node)
        error = assert_error(provider_client.post(CLUSTERS, payload, format="json"), 400)
        assert "gpus_per_node" in error["fields"]

    def test_missing_fields_are_named(self, provider_client):
        error = assert_error(provider_client.post(CLUSTERS, {}, format="json"), 400)
        assert set(error["fields"]) == {"name", "gpu_model", "region", "interconnect", "gpus_per_node", "node_count"}

    def test_unknown_field_is_400(self, provider_client):
        error = assert_error(provider_client.post(CLUSTERS, cluster_payload(colour="red"), format="json"), 400)
        assert "colour" in error["fields"]

    def test_duplicate_name_is_400_for_the_same_provider_only(self, provider_client, other_provider_client):
        assert provider_client.post(CLUSTERS, cluster_payload(), format="json").status_code == 201
        error = assert_error(provider_client.post(CLUSTERS, cluster_payload(), format="json"), 400)
        assert "name" in error["fields"]
        assert Cluster.objects.count() == 1
        assert Node.objects.count() == 3
        assert other_provider_client.post(CLUSTERS, cluster_payload(), format="json").status_code == 201

    def test_a_both_organization_registers_clusters(self, both_client):
        assert both_client.post(CLUSTERS, cluster_payload(), format="json").status_code == 201


class TestLargeCluster:
    def test_12500_nodes_register_in_one_call(self, provider_client):
        response = provider_client.post(CLUSTERS, cluster_payload(node_count=12_500), format="json")
        assert response.status_code == 201, response.content
        assert response.json()["node_count"] == 12_500
        assert response.json()["nodes_in_service"] == 12_500
        nodes = Node.objects.filter(cluster_id=response.json()["id"])
        assert nodes.count() == 12_500
        assert nodes.values("hostname").distinct().count() == 12_500

    def test_12500_given_hostnames_register_in_one_call(self, provider_client):
        hostnames = [f"rack{index // 32:03d}-gpu{index % 32:02d}" for index in range(12_500)]
        response = post_json(provider_client, CLUSTERS, cluster_payload(node_count=12_500, hostnames=hostnames))
        assert response.status_code == 201, response.content
        stored = Node.objects.filter(cluster_id=response.json()["id"]).order_by("id").values_list("hostname", flat=True)
        assert list(stored) == hostnames


class TestClusterAccess:
    @pytest.mark.parametrize(
        ("method", "suffix", "body"),
        [
            ("get", "", None),
            ("post", "", "create"),
            ("get", "/{id}", None),
            ("patch", "/{id}", {"name": "mine now"}),
            ("get", "/{id}/nodes", None),
            ("post", "/{id}/nodes", {"count": 1}),
            ("patch", "/{id}/nodes/{node}", {"status": "maintenance"}),
        ],
    )
    def test_labs_get_403(self, lab_client, method, suffix, body):
        cluster = ClusterFactory()
        path = CLUSTERS + suffix.format(id=cluster.pk, node=node_ids(cluster)[0])
        payload = cluster_payload() if body == "create" else body
        response = getattr(lab_client, method)(path, payload, format="json")
        assert_error(response, 403, "permission_denied")
        assert Cluster.objects.count() == 1
        assert cluster.nodes.count() == 4
        assert not cluster.nodes.exclude(status=Node.Status.IN_SERVICE).exists()
        assert "n0000" not in response.content.decode()  # no hostname leaks

    def test_anonymous_gets_401(self, anon_client):
        assert_error(anon_client.get(CLUSTERS), 401)

    @pytest.mark.parametrize(
        ("method", "suffix", "body"),
        [
            ("get", "/{id}", None),
            ("patch", "/{id}", {"name": "mine now"}),
            ("get", "/{id}/nodes", None),
            ("post", "/{id}/nodes", {"count": 1}),
            ("patch", "/{id}/nodes/{node}", {"status": "maintenance"}),
        ],
    )
    def test_another_providers_cluster_is_404(self, provider_client, method, suffix, body):
        cluster = ClusterFactory()
        path = CLUSTERS + suffix.format(id=cluster.pk, node=node_ids(cluster)[0])
        assert_error(getattr(provider_client, method)(path, body, format="json"), 404, "not_found")
        cluster.refresh_from_db()
        assert cluster.name != "mine now"
        assert cluster.nodes.count() == 4
        assert not cluster.nodes.exclude(status=Node.Status.IN_SERVICE).exists()

    def test_list_shows_only_own_clusters(self, provider_client):
        mine = ClusterFactory(provider=provider_client.organization, node_count=2)
        ClusterFactory(node_count=3)
        body = provider_client.get(CLUSTERS).json()
        assert body["count"] == 1
        assert [item["id"] for item in body["results"]] == [mine.pk]
        assert body["results"][0]["node_count"] == 2


class TestClusterReadUpdate:
    def test_retrieve(self, provider_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=5)
        body = provider_client.get(f"{CLUSTERS}/{cluster.pk}").json()
        assert body["id"] == cluster.pk
        assert body["name"] == cluster.name
        assert (body["node_count"], body["nodes_in_service"]) == (5, 5)

    def test_list_is_paginated(self, provider_client):
        for _ in range(3):
            ClusterFactory(provider=provider_client.organization, node_count=1)
        body = provider_client.get(CLUSTERS, {"page_size": 2}).json()
        assert body["count"] == 3
        assert len(body["results"]) == 2
        assert body["next"] is not None
        assert len(provider_client.get(body["next"]).json()["results"]) == 1

    def test_rename(self, provider_client):
        cluster = ClusterFactory(provider=provider_client.organization)
        response = provider_client.patch(f"{CLUSTERS}/{cluster.pk}", {"name": "renamed"}, format="json")
        assert response.status_code == 200
        assert response.json()["name"] == "renamed"
        assert response.json()["node_count"] == 4
        cluster.refresh_from_db()
        assert cluster.name == "renamed"

    def test_rename_to_a_used_name_is_400(self, provider_client):
        first = ClusterFactory(provider=provider_client.organization, name="alpha")
        second = ClusterFactory(provider=provider_client.organization, name="beta")
        error = assert_error(provider_client.patch(f"{CLUSTERS}/{second.pk}", {"name": "alpha"}, format="json"), 400)
        assert "name" in error["fields"]
        second.refresh_from_db()
        assert (first.name, second.name) == ("alpha", "beta")

    @pytest.mark.parametrize(
        "body", [{"region": "eu-west-1"}, {"gpus_per_node": 4}, {"gpu_model": "a100-sxm-80gb"}, {"name": ""}]
    )
    def test_hardware_and_place_cannot_change(self, provider_client, body):
        cluster = ClusterFactory(provider=provider_client.organization)
        assert_error(provider_client.patch(f"{CLUSTERS}/{cluster.pk}", body, format="json"), 400)
        refreshed = Cluster.objects.get(pk=cluster.pk)
        assert (refreshed.name, refreshed.region, refreshed.gpus_per_node, refreshed.gpu_model_id) == (
            cluster.name,
            cluster.region,
            cluster.gpus_per_node,
            cluster.gpu_model_id,
        )


class TestNodes:
    def test_list_nodes_is_paginated(self, provider_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=7)
        body = provider_client.get(f"{CLUSTERS}/{cluster.pk}/nodes", {"page_size": 5}).json()
        assert body["count"] == 7
        assert [node["id"] for node in body["results"]] == node_ids(cluster)[:5]
        assert set(body["results"][0]) == {"id", "hostname", "status"}

    def test_add_nodes_with_generated_hostnames(self, provider_client):
        created = provider_client.post(CLUSTERS, cluster_payload(node_count=2), format="json").json()
        response = provider_client.post(f"{CLUSTERS}/{created['id']}/nodes", {"count": 3}, format="json")
        assert response.status_code == 201, response.content
        assert response.json()["node_count"] == 5
        hostnames = Node.objects.filter(cluster_id=created["id"]).values_list("hostname", flat=True)
        assert len(set(hostnames)) == 5

    def test_add_nodes_with_given_hostnames(self, provider_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=1)
        response = provider_client.post(
            f"{CLUSTERS}/{cluster.pk}/nodes", {"count": 2, "hostnames": ["extra-1", "extra-2"]}, format="json"
        )
        assert response.status_code == 201
        assert set(cluster.nodes.values_list("hostname", flat=True)) >= {"extra-1", "extra-2"}

    def test_add_nodes_with_a_used_hostname_adds_nothing(self, provider_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=2)
        used = cluster.nodes.first().hostname
        response = provider_client.post(
            f"{CLUSTERS}/{cluster.pk}/nodes", {"count": 2, "hostnames": ["fresh-1", used]}, format="json"
        )
        error = assert_error(response, 400)
        assert "hostnames" in error["fields"]
        assert cluster.nodes.count() == 2

    @pytest.mark.parametrize("count", [0, -3, 20_001, 1e30, "NaN"])
    def test_add_nodes_bad_count_is_400(self, provider_client, count):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=1)
        error = assert_error(
            provider_client.post(f"{CLUSTERS}/{cluster.pk}/nodes", {"count": count}, format="json"), 400
        )
        assert "count" in error["fields"]
        assert cluster.nodes.count() == 1

    def test_maintenance_and_back(self, provider_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=3)
        node_id = node_ids(cluster)[1]
        path = f"{CLUSTERS}/{cluster.pk}/nodes/{node_id}"
        response = provider_client.patch(path, {"status": "maintenance"}, format="json")
        assert response.status_code == 200, response.content
        assert response.json()["status"] == "maintenance"
        assert Node.objects.get(pk=node_id).status == Node.Status.MAINTENANCE
        assert provider_client.get(f"{CLUSTERS}/{cluster.pk}").json()["nodes_in_service"] == 2
        # Asking for the state it is already in changes nothing.
        assert provider_client.patch(path, {"status": "maintenance"}, format="json").status_code == 200
        response = provider_client.patch(path, {"status": "in_service"}, format="json")
        assert response.json()["status"] == "in_service"
        assert provider_client.get(f"{CLUSTERS}/{cluster.pk}").json()["nodes_in_service"] == 3

    @pytest.mark.parametrize("status", ["broken", "", None, "MAINTENANCE"])
    def test_bad_status_is_400(self, provider_client, status):
        cluster = ClusterFactory(provider=provider_client.organization)
        path = f"{CLUSTERS}/{cluster.pk}/nodes/{node_ids(cluster)[0]}"
        error = assert_error(provider_client.patch(path, {"status": status}, format="json"), 400)
        assert "status" in error["fields"]

    def test_an_empty_patch_changes_nothing(self, provider_client):
        cluster = ClusterFactory(provider=provider_client.organization)
        node = Node.objects.get(pk=node_ids(cluster)[0])
        response = provider_client.patch(f"{CLUSTERS}/{cluster.pk}/nodes/{node.pk}", {}, format="json")
        assert response.json() == {"id": node.pk, "hostname": node.hostname, "status": "in_service"}
        assert not Node.objects.filter(status=Node.Status.MAINTENANCE).exists()

    def test_node_of_another_cluster_is_404(self, provider_client):
        first = ClusterFactory(provider=provider_client.organization)
        second = ClusterFactory(provider=provider_client.organization)
        path = f"{CLUSTERS}/{first.pk}/nodes/{node_ids(second)[0]}"
        assert_error(provider_client.patch(path, {"status": "maintenance"}, format="json"), 404)
        assert not Node.objects.filter(status=Node.Status.MAINTENANCE).exists()

    def test_node_sold_for_a_future_hour_cannot_go_into_maintenance(self, provider_client, lab_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=2)
        listing = ListingFactory(cluster=cluster, node_count=2, starts_at=hour(1), ends_at=hour(25))
        contract = sell(listing, 1, hour(10), hour(12), lab_client.organization)
        sold_node = contract.allocations.get().node_id
        path = f"{CLUSTERS}/{cluster.pk}/nodes/{sold_node}"
        assert_error(provider_client.patch(path, {"status": "maintenance"}, format="json"), 409, "node_in_use")
        assert Node.objects.get(pk=sold_node).status == Node.Status.IN_SERVICE

    def test_node_in_use_now_cannot_go_into_maintenance(self, provider_client, lab_client, frozen_time):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=1)
        listing = ListingFactory(cluster=cluster, node_count=1, starts_at=hour(0), ends_at=hour(5))
        contract = sell(listing, 1, hour(0), hour(2), lab_client.organization)
        frozen_time.move_to(hour(1))
        path = f"{CLUSTERS}/{cluster.pk}/nodes/{contract.allocations.get().node_id}"
        assert_error(provider_client.patch(path, {"status": "maintenance"}, format="json"), 409, "node_in_use")

    def test_node_sold_only_in_the_past_can_go_into_maintenance(self, provider_client, lab_client, frozen_time):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=1)
        listing = ListingFactory(cluster=cluster, node_count=1, starts_at=hour(0), ends_at=hour(3))
        contract = sell(listing, 1, hour(0), hour(2), lab_client.organization)
        frozen_time.move_to(hour(5))
        path = f"{CLUSTERS}/{cluster.pk}/nodes/{contract.allocations.get().node_id}"
        response = provider_client.patch(path, {"status": "maintenance"}, format="json")
        assert response.status_code == 200, response.content
        assert contract.allocations.count() == 1

    def test_maintenance_moves_an_unsold_reservation_to_a_free_node(self, provider_client, lab_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=3)
        listing = ListingFactory(cluster=cluster, node_count=2, starts_at=hour(1), ends_at=hour(25))
        reserved = set(listing.listing_nodes.values_list("node_id", flat=True))
        spare = (set(node_ids(cluster)) - reserved).pop()
        leaving = min(reserved)
        path = f"{CLUSTERS}/{cluster.pk}/nodes/{leaving}"
        assert provider_client.patch(path, {"status": "maintenance"}, format="json").status_code == 200
        assert reserved_nodes(listing.pk) == (reserved - {leaving}) | {spare}
        found = lab_client.get("/api/v1/listings").json()["results"]
        assert [(item["id"], item["available_nodes"]) for item in found] == [(listing.pk, 2)]
        own = provider_client.get(f"/api/v1/listings/{listing.pk}").json()
        assert own["available_nodes"] == 2

    def test_maintenance_without_a_free_node_reduces_availability_until_back(self, provider_client, lab_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=2)
        listing = ListingFactory(cluster=cluster, node_count=2, starts_at=hour(1), ends_at=hour(25))
        path = f"{CLUSTERS}/{cluster.pk}/nodes/{node_ids(cluster)[0]}"
        provider_client.patch(path, {"status": "maintenance"}, format="json")
        found = lab_client.get("/api/v1/listings").json()["results"]
        assert [(item["id"], item["available_nodes"]) for item in found] == [(listing.pk, 1)]
        assert lab_client.get("/api/v1/listings", {"min_gpus": 9}).json()["count"] == 0
        provider_client.patch(path, {"status": "in_service"}, format="json")
        assert lab_client.get("/api/v1/listings").json()["results"][0]["available_nodes"] == 2

    def test_maintenance_does_not_move_a_reservation_onto_a_node_another_listing_holds(
        self, provider_client, lab_client
    ):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=3)
        first = ListingFactory(cluster=cluster, node_count=2, starts_at=hour(1), ends_at=hour(25))
        second = ListingFactory(cluster=cluster, node_count=1, starts_at=hour(1), ends_at=hour(25))
        second_node = second.listing_nodes.get().node_id
        leaving = first.listing_nodes.order_by("node_id").first().node_id
        provider_client.patch(f"{CLUSTERS}/{cluster.pk}/nodes/{leaving}", {"status": "maintenance"}, format="json")
        assert second_node not in set(first.listing_nodes.values_list("node_id", flat=True))
        assert second.listing_nodes.get().node_id == second_node
        available = {
            item["id"]: item["available_nodes"] for item in lab_client.get("/api/v1/listings").json()["results"]
        }
        assert available == {first.pk: 1, second.pk: 1}

    def test_maintenance_leaves_sold_reservations_in_place(self, provider_client, lab_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=3)
        listing = ListingFactory(cluster=cluster, node_count=2, starts_at=hour(1), ends_at=hour(25))
        sell(listing, 1, hour(1), hour(3), lab_client.organization)
        before = set(listing.listing_nodes.values_list("id", "node_id"))
        sold_node = listing.contracts.get().allocations.get().node_id
        path = f"{CLUSTERS}/{cluster.pk}/nodes/{sold_node}"
        assert_error(provider_client.patch(path, {"status": "maintenance"}, format="json"), 409)
        assert set(listing.listing_nodes.values_list("id", "node_id")) == before

    def test_maintenance_moves_the_unsold_rest_of_a_reservation_sold_in_the_past(
        self, provider_client, lab_client, frozen_time
    ):
        """A reservation sold only for hours already over is unsold from now on: the rest moves to a free node."""
        cluster = ClusterFactory(provider=provider_client.organization, node_count=2)
        listing = ListingFactory(cluster=cluster, node_count=1, starts_at=hour(0), ends_at=hour(24))
        contract = sell(listing, 1, hour(0), hour(2), lab_client.organization)
        frozen_time.move_to(hour(3))
        path = f"{CLUSTERS}/{cluster.pk}/nodes/{contract.allocations.get().node_id}"
        assert provider_client.patch(path, {"status": "maintenance"}, format="json").status_code == 200
        assert contract.allocations.count() == 1
        found = lab_client.get("/api/v1/listings").json()["results"]
        assert [(item["id"], item["available_nodes"]) for item in found] == [(listing.pk, 1)]

    def test_hostnames_never_reach_labs(self, provider_client, lab_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=2, name="secret-site")
        listing = ListingFactory(cluster=cluster, node_count=2, starts_at=hour(1), ends_at=hour(25))
        hostnames = list(cluster.nodes.values_list("hostname", flat=True))
        for path in ("/api/v1/listings", f"/api/v1/listings/{listing.pk}"):
            response = lab_client.get(path)
            assert response.status_code == 200
            assert not any(hostname in response.content.decode() for hostname in hostnames)
        assert iso(listing.starts_at) in lab_client.get(f"/api/v1/listings/{listing.pk}").content.decode()
