"""Handover: the lab attaches keys and a note, the provider reads the access manifest and reports
delivery; an undelivered contract is marked late DELIVERY_GRACE_MINUTES after its start."""

from datetime import timedelta

import pytest

from broker import handover
from broker.models import Allocation, Contract
from broker.services import contract_cancel, contracts_advance
from events.models import Event
from marketplace.models import ListingNode, SshKey
from tests.broker.factories import book
from tests.conftest import assert_error
from tests.marketplace.factories import NOW, ClusterFactory, ListingFactory, hour, iso
from tests.marketplace.test_ssh_keys import ECDSA_256, ED25519

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen")]

HOSTNAMES = ["gpu-a01", "gpu-a02", "gpu-a03"]


@pytest.fixture
def listing(provider_client):
    cluster = ClusterFactory(provider=provider_client.organization, node_count=3, hostnames=HOSTNAMES)
    return ListingFactory(cluster=cluster, node_count=3, starts_at=hour(0), ends_at=hour(48))


@pytest.fixture
def contract(lab_client, listing) -> Contract:
    """Two nodes from 10:00 (the clock says 09:17) for 10 hours."""
    return book(lab=lab_client.organization, listing=listing, nodes=2, starts_at=hour(1), hours=10)


def access_url(contract) -> str:
    return f"/api/v1/contracts/{contract.pk}/access"


def delivered_url(contract) -> str:
    return f"/api/v1/contracts/{contract.pk}/delivered"


def register(client, name, public_key) -> dict:
    response = client.post("/api/v1/ssh-keys", {"name": name, "public_key": public_key}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def attach(client, contract, ssh_key_ids, note="", **headers):
    return client.put(access_url(contract), {"ssh_key_ids": ssh_key_ids, "note": note}, format="json", **headers)


def deliver(client, contract, endpoint="ssh://login.memphis.example:22", detail="", **headers):
    return client.post(delivered_url(contract), {"endpoint": endpoint, "detail": detail}, format="json", **headers)


def events(type: str) -> list[tuple[int, dict]]:
    return list(Event.objects.filter(type=type).order_by("id").values_list("organization_id", "data"))


NO_DELIVERY = {"endpoint": "", "detail": "", "delivered_at": None, "late": False, "delivery_late_at": None}


class TestAccess:
    def test_the_lab_attaches_keys_and_a_note_and_the_provider_reads_them(self, lab_client, provider_client, contract):
        laptop = register(lab_client, "laptop", ED25519)
        ci = register(lab_client, "ci", ECDSA_256)
        response = attach(lab_client, contract, [ci["id"], laptop["id"], ci["id"]], note=" Slurm account: lab-one ")
        assert response.status_code == 200, response.content
        manifest = provider_client.get(access_url(contract)).json()
        assert manifest == response.json() == lab_client.get(access_url(contract)).json()
        assert manifest == {
            "contract": contract.pk,
            "status": "scheduled",
            "starts_at": iso(hour(1)),
            "ends_at": iso(hour(11)),
            "node_count": 2,
            "nodes": [
                {
                    "id": node_id,
                    "hostname": hostname,
                    "starts_at": iso(hour(1)),
                    "ends_at": iso(hour(11)),
                    "replaces": None,
                }
                for node_id, hostname in Allocation.objects.filter(contract=contract)
                .order_by("node__hostname")
                .values_list("node_id", "node__hostname")
            ],
            "nodes_url": f"/api/v1/contracts/{contract.pk}/nodes",
            "ssh_keys": [
                {key: ci[key] for key in ("id", "name", "fingerprint", "public_key")},
                {key: laptop[key] for key in ("id", "name", "fingerprint", "public_key")},
            ],
            "note": "Slurm account: lab-one",
            "delivery": NO_DELIVERY,
        }
        assert [node["hostname"] for node in manifest["nodes"]] == ["gpu-a01", "gpu-a02"]

    def test_attaching_replaces_and_a_deleted_key_stays_on_the_contract(self, lab_client, provider_client, contract):
        laptop = register(lab_client, "laptop", ED25519)
        ci = register(lab_client, "ci", ECDSA_256)
        attach(lab_client, contract, [laptop["id"], ci["id"]], note="first")
        assert attach(lab_client, contract, [laptop["id"]]).status_code == 200
        assert lab_client.delete(f"/api/v1/ssh-keys/{laptop['id']}").status_code == 204
        manifest = provider_client.get(access_url(contract)).json()
        assert [key["public_key"] for key in manifest["ssh_keys"]] == [ED25519]
        assert manifest["note"] == ""
        assert SshKey.objects.count() == 1

    def test_only_the_buying_lab_attaches_and_only_its_own_keys(
        self, lab_client, other_lab_client, provider_client, contract
    ):
        mine = register(lab_client, "laptop", ED25519)
        theirs = register(other_lab_client, "laptop", ED25519)
        assert_error(attach(provider_client, contract, []), 403, "permission_denied")
        assert_error(attach(other_lab_client, contract, [theirs["id"]]), 404, "not_found")
        error = assert_error(attach(lab_client, contract, [mine["id"], theirs["id"]]), 400, "invalid")
        assert error["fields"] == {"ssh_key_ids": [f"No key of yours has id {theirs['id']}."]}
        assert Contract.objects.get(pk=contract.pk).access_keys == []

    def test_nobody_else_reads_the_manifest(self, other_lab_client, other_provider_client, contract):
        assert_error(other_lab_client.get(access_url(contract)), 404, "not_found")
        assert_error(other_provider_client.get(access_url(contract)), 404, "not_found")
        assert_error(deliver(other_provider_client, contract), 404, "not_found")

    def test_a_note_over_its_length_and_unknown_fields_are_refused(self, lab_client, contract):
        error = assert_error(attach(lab_client, contract, [], note="x" * 2001), 400, "invalid")
        assert "note" in error["fields"]
        body = {"ssh_key_ids": [], "password": "x"}
        assert_error(lab_client.put(access_url(contract), body, format="json"), 400, "invalid")

    def test_only_a_scheduled_or_active_contract_takes_keys(self, lab_client, contract):
        contract_cancel(contract=contract, reason="operator test")
        assert_error(attach(lab_client, contract, [], note="late"), 409, "invalid_transition")

    def test_a_retried_put_with_its_key_is_answered_again(self, lab_client, contract):
        laptop = register(lab_client, "laptop", ED25519)
        first = attach(lab_client, contract, [laptop["id"]], HTTP_IDEMPOTENCY_KEY="access-1")
        again = attach(lab_client, contract, [laptop["id"]], HTTP_IDEMPOTENCY_KEY="access-1")
        assert (first.status_code, again.status_code, again.headers["Idempotent-Replayed"]) == (200, 200, "true")
        assert again.json() == first.json()

    def test_a_node_replaced_mid_contract_appears_for_its_hours(self, provider_client, contract, listing):
        first, second = Allocation.objects.filter(contract=contract).order_by("node__hostname")
        spare = ListingNode.objects.filter(listing=listing).exclude(node_id__in=[first.node_id, second.node_id]).get()
        Allocation.objects.filter(pk=first.pk).update(ends_at=hour(4))
        Allocation.objects.create(
            contract=contract,
            listing_node=spare,
            node_id=spare.node_id,
            listing=listing,
            starts_at=hour(4),
            ends_at=hour(11),
        )
        manifest = provider_client.get(access_url(contract)).json()
        assert manifest["node_count"] == 3
        assert [(node["hostname"], node["starts_at"], node["ends_at"]) for node in manifest["nodes"]] == [
            ("gpu-a01", iso(hour(1)), iso(hour(4))),
            ("gpu-a02", iso(hour(1)), iso(hour(11))),
            ("gpu-a03", iso(hour(4)), iso(hour(11))),
        ]

    def test_a_large_contract_shows_its_first_nodes_and_counts_them_all(self, provider_client, contract, monkeypatch):
        monkeypatch.setattr(handover, "MANIFEST_NODES", 1)
        manifest = provider_client.get(access_url(contract)).json()
        assert (manifest["node_count"], [node["hostname"] for node in manifest["nodes"]]) == (2, ["gpu-a01"])
        assert provider_client.get(manifest["nodes_url"]).json()["count"] == 2


class TestDelivered:
    def test_the_provider_reports_delivery_once_and_may_correct_it(self, lab_client, provider_client, contract, frozen):
        response = deliver(provider_client, contract, detail="User lab-one; nodes behind the login host.")
        assert response.status_code == 200, response.content
        assert response.json()["delivery"] == {
            "endpoint": "ssh://login.memphis.example:22",
            "detail": "User lab-one; nodes behind the login host.",
            "delivered_at": iso(NOW),
            "late": False,
            "delivery_late_at": None,
        }
        first_at = Contract.objects.get(pk=contract.pk).delivered_at
        assert first_at == NOW
        # The same report again changes nothing and tells nobody again.
        assert (
            deliver(provider_client, contract, detail="User lab-one; nodes behind the login host.").status_code == 200
        )
        assert len(events("contract.delivered")) == 2  # the lab and the provider, once
        frozen.shift(timedelta(minutes=5))
        corrected = deliver(provider_client, contract, endpoint="ssh://login2.memphis.example:22")
        assert corrected.json()["delivery"]["endpoint"] == "ssh://login2.memphis.example:22"
        assert corrected.json()["delivery"]["delivered_at"] == iso(first_at)  # the first time stands
        assert Contract.objects.get(pk=contract.pk).delivered_at == first_at
        told = events("contract.delivered")
        assert [organization for organization, _ in told] == [
            lab_client.organization.pk,
            provider_client.organization.pk,
        ] * 2
        assert told[-1][1]["delivery"]["endpoint"] == "ssh://login2.memphis.example:22"
        assert lab_client.get(access_url(contract)).json()["delivery"]["endpoint"] == "ssh://login2.memphis.example:22"

    def test_only_the_selling_provider_reports(self, lab_client, contract):
        assert_error(deliver(lab_client, contract), 403, "permission_denied")
        assert Contract.objects.get(pk=contract.pk).delivered_at is None

    @pytest.mark.parametrize(
        ("body", "fields"),
        [
            ({"endpoint": "login:22", "detail": "-----BEGIN OPENSSH PRIVATE KEY-----\nabc"}, ["detail"]),
            ({"endpoint": "login:22", "detail": "root password: hunter2"}, ["detail"]),
            ({"endpoint": "login:22", "detail": "TOKEN=abc123"}, ["detail"]),
            ({"endpoint": "ssh://lab:hunter2@login.example:22"}, ["endpoint"]),
            ({"endpoint": "https://user:pw@portal.example/jupyter", "detail": "secret = x"}, ["detail", "endpoint"]),
            ({"endpoint": "login:22", "password": "hunter2"}, ["password"]),
            ({"endpoint": "login:22", "Private_Key": "..."}, ["Private_Key"]),
        ],
    )
    def test_anything_like_a_secret_is_refused(self, provider_client, contract, body, fields):
        error = assert_error(provider_client.post(delivered_url(contract), body, format="json"), 400, "secret_refused")
        assert "connection details only" in error["message"]
        assert sorted(error["fields"]) == sorted(fields)
        assert Contract.objects.get(pk=contract.pk).delivered_at is None
        assert events("contract.delivered") == []

    @pytest.mark.parametrize(
        "detail",
        ["Log in as lab-one with your key; the token of your Slurm account is its name.", "Namespace: lab-one"],
    )
    def test_connection_details_that_mention_secrets_are_not_secrets(self, provider_client, contract, detail):
        assert deliver(provider_client, contract, endpoint="login.example:2222", detail=detail).status_code == 200

    @pytest.mark.parametrize("endpoint", ["   ", "login.example 22", "login.example:22\u0000"])
    def test_an_endpoint_is_one_url_or_host_port(self, provider_client, contract, endpoint):
        error = assert_error(deliver(provider_client, contract, endpoint=endpoint), 400, "invalid")
        assert "endpoint" in error["fields"]

    def test_from_48_hours_before_the_start_until_the_end(self, lab_client, provider_client, listing, frozen):
        later = book(lab=lab_client.organization, listing=listing, nodes=1, starts_at=hour(47), hours=1)
        frozen.move_to(hour(47) - timedelta(hours=48, seconds=1))
        assert_error(deliver(provider_client, later), 409, "delivery_too_early")
        frozen.move_to(hour(47) - timedelta(hours=48))
        assert deliver(provider_client, later).status_code == 200
        frozen.move_to(hour(48) - timedelta(seconds=1))
        assert deliver(provider_client, later, detail="Moved to login2").status_code == 200
        frozen.move_to(hour(48))  # its end
        assert_error(deliver(provider_client, later, detail="Moved to login3"), 409, "invalid_transition")

    def test_a_cancelled_contract_is_not_delivered(self, provider_client, contract):
        contract_cancel(contract=contract, reason="operator test")
        assert_error(deliver(provider_client, contract), 409, "invalid_transition")

    def test_a_retried_report_with_its_key_is_answered_again(self, provider_client, contract):
        first = deliver(provider_client, contract, HTTP_IDEMPOTENCY_KEY="delivered-1")
        again = deliver(provider_client, contract, HTTP_IDEMPOTENCY_KEY="delivered-1")
        assert (first.status_code, again.status_code, again.headers["Idempotent-Replayed"]) == (200, 200, "true")
        assert again.content == first.content


class TestLate:
    def test_undelivered_at_start_plus_grace_is_late_not_a_second_before(
        self, lab_client, provider_client, contract, frozen, settings
    ):
        settings.DELIVERY_GRACE_MINUTES = 30
        frozen.move_to(hour(1) + timedelta(minutes=30) - timedelta(microseconds=1))
        contracts_advance()
        assert Contract.objects.get(pk=contract.pk).delivery_late_at is None
        frozen.move_to(hour(1) + timedelta(minutes=30))
        contracts_advance()
        assert Contract.objects.get(pk=contract.pk).delivery_late_at == hour(1) + timedelta(minutes=30)
        frozen.move_to(hour(1) + timedelta(minutes=31))
        contracts_advance()  # again: nothing changes, nobody is told again
        assert Contract.objects.get(pk=contract.pk).delivery_late_at == hour(1) + timedelta(minutes=30)
        told = events("contract.delivery_late")
        assert [organization for organization, _ in told] == [
            lab_client.organization.pk,
            provider_client.organization.pk,
        ]
        assert told[0][1]["delivery_late_at"] == iso(hour(1) + timedelta(minutes=30))
        assert told[0][1]["id"] == contract.pk
        # Delivered afterwards: the delivery time is recorded (the credit stops there), still late.
        frozen.move_to(hour(2))
        delivery = deliver(provider_client, contract).json()["delivery"]
        assert (delivery["delivered_at"], delivery["late"]) == (iso(hour(2)), True)
        assert delivery["delivery_late_at"] == iso(hour(1) + timedelta(minutes=30))

    def test_the_grace_is_the_setting(self, contract, frozen, settings):
        settings.DELIVERY_GRACE_MINUTES = 5
        frozen.move_to(hour(1) + timedelta(minutes=5))
        contracts_advance()
        assert Contract.objects.get(pk=contract.pk).delivery_late_at == hour(1) + timedelta(minutes=5)

    def test_a_contract_delivered_in_time_is_never_late(self, provider_client, contract, frozen):
        frozen.move_to(hour(1) + timedelta(minutes=10))
        contracts_advance()
        assert deliver(provider_client, contract).status_code == 200
        frozen.move_to(hour(5))
        contracts_advance()
        assert Contract.objects.get(pk=contract.pk).delivery_late_at is None
        assert events("contract.delivery_late") == []

    def test_a_contract_that_ends_undelivered_in_the_same_run_is_marked_late_too(self, lab_client, listing, frozen):
        short = book(lab=lab_client.organization, listing=listing, nodes=1, starts_at=hour(1), hours=1)
        frozen.move_to(hour(3))  # the lifecycle did not run meanwhile
        contracts_advance()
        short.refresh_from_db()
        assert (short.status, short.delivery_late_at) == ("completed", hour(3))

    def test_a_cancelled_contract_is_not_marked_late(self, contract, frozen):
        contract_cancel(contract=contract, reason="operator test")
        frozen.move_to(hour(2))
        contracts_advance()
        assert Contract.objects.get(pk=contract.pk).delivery_late_at is None
