"""Every operator action, driven through the admin views as a browser would post it."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from rest_framework.test import APIClient

from billing.ledger import account_balance
from billing.models import Account, CreditNote, Invoice, LedgerTransaction, Payment, PayoutStatement
from billing.services import billing_period_close
from broker.booking import listing_book
from broker.models import Allocation, ComputeRequest, Contract
from broker.services import compute_request_create, contract_cancel
from core.errors import CapacityUnavailable
from core.models import AuditEvent
from core.timeutils import HOUR, next_hour
from marketplace.models import ApiKey, GpuModel, Listing, ListingNode, Node, Organization
from tests.backoffice import factories
from tests.backoffice.conftest import OPERATOR, SEPTEMBER
from tests.backoffice.factories import (
    add_url,
    change_url,
    changeform_data,
    changelist_url,
    done,
    messages_of,
    run_action,
    shown_secrets,
)

RELEASE = datetime(2026, 10, 1, 15, tzinfo=UTC)  # the whole hour after 14:20, when september_closed leaves the clock


def api(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def searched_listing_ids(secret: str) -> set[int]:
    response = api(secret).get("/api/v1/listings")
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


def last_event(action: str) -> AuditEvent:
    event = AuditEvent.objects.filter(action=action).first()
    assert event is not None, f"no {action} in {list(AuditEvent.objects.values_list('action', flat=True))}"
    return event


# --- Organizations and API keys -------------------------------------------------------------


def test_verify_an_organization(operator_client, market):
    response = run_action(operator_client, Organization, "verify", [market.provider])
    assert done(response)
    assert messages_of(response) == ["1 organization(s) now verified."]
    market.provider.refresh_from_db()
    assert market.provider.status == Organization.Status.VERIFIED
    event = last_event("organization_verified")
    assert (event.actor.username, event.target_id, event.message) == (OPERATOR, str(market.provider.pk),
                                                                     "active -> verified")  # fmt: skip


def test_suspending_an_organization_locks_its_keys_and_hides_its_listings(operator_client, market):
    assert api(market.provider_secret).get("/api/v1/organization").status_code == 200
    assert searched_listing_ids(market.lab_secret) == {market.listing.pk}

    response = run_action(operator_client, Organization, "suspend", [market.provider])
    assert done(response)
    market.provider.refresh_from_db()
    assert market.provider.status == Organization.Status.SUSPENDED
    assert api(market.provider_secret).get("/api/v1/organization").status_code == 401
    assert searched_listing_ids(market.lab_secret) == set()
    with pytest.raises(CapacityUnavailable):
        listing_book(lab=market.lab, listing=market.listing, gpu_count=8, starts_at=next_hour(), duration_hours=1)
    assert last_event("organization_suspended").actor.username == OPERATOR

    run_action(operator_client, Organization, "reactivate", [market.provider])
    assert api(market.provider_secret).get("/api/v1/organization").status_code == 200
    assert searched_listing_ids(market.lab_secret) == {market.listing.pk}


def test_issue_an_api_key_from_the_organization_list(operator_client, market):
    response = run_action(operator_client, Organization, "issue_api_key", [market.lab])
    [secret] = shown_secrets(response)
    response = api(secret).get("/api/v1/organization")
    assert response.status_code == 200 and response.json()["name"] == market.lab.name
    assert market.lab.api_keys.filter(name="admin-issued", revoked_at__isnull=True).count() == 1


def test_add_an_api_key_in_the_admin_shows_a_working_secret_once(operator_client, market):
    form = operator_client.get(add_url(ApiKey))
    assert form.status_code == 200
    assert list(form.context["adminform"].form.fields) == ["organization", "name", "scope"]

    response = operator_client.post(
        add_url(ApiKey), {"organization": market.lab.pk, "name": "ci runner", "scope": "full"}
    )
    secrets = shown_secrets(response)
    assert len(secrets) == 1
    key = ApiKey.objects.get(organization=market.lab, name="ci runner")
    assert secrets[0].startswith(key.prefix) and secrets[0] not in key.key_hash
    response = api(secrets[0]).get("/api/v1/organization")
    assert response.status_code == 200 and response.json()["name"] == market.lab.name
    # Shown once: the key's page never shows the secret again.
    assert secrets[0] not in operator_client.get(change_url(key)).content.decode()
    event = last_event("api_key_issued")
    assert (event.target_type, event.target_id, event.actor.username) == ("marketplace.apikey", str(key.pk), OPERATOR)


def test_revoke_an_api_key(operator_client, market):
    key = market.lab.api_keys.get()
    assert api(market.lab_secret).get("/api/v1/organization").status_code == 200
    response = run_action(operator_client, ApiKey, "revoke", [key])
    assert messages_of(response) == ["1 key(s) revoked."]
    key.refresh_from_db()
    assert key.revoked_at == datetime(2026, 9, 29, 10, 17, 23, tzinfo=UTC)
    assert api(market.lab_secret).get("/api/v1/organization").status_code == 401


def test_set_a_providers_fee_rate_on_the_change_form(operator_client, market, frozen):
    contract = factories.contract(lab=market.lab, listing=market.listing, starts_at=next_hour(), hours=10, nodes=1)
    page = operator_client.get(change_url(market.provider))
    assert page.status_code == 200
    data = changeform_data(page)
    assert data["platform_fee_rate"] == ""

    response = operator_client.post(change_url(market.provider), {**data, "platform_fee_rate": "0.1250"})
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    market.provider.refresh_from_db()
    assert market.provider.platform_fee_rate == Decimal("0.1250")
    event = last_event("fee_rate_set")
    assert (event.actor.username, event.message) == (OPERATOR, "default -> 0.1250")
    assert "platform_fee_rate" in last_event("admin_change").message.lower().replace(" ", "_")

    # The next close takes 12.5% of this provider's revenue: 10 h x 8 GPUs x 2.0000 = 160.00.
    frozen.move_to(datetime(2026, 10, 1, 0, 5, tzinfo=UTC))
    billing_period_close(period=SEPTEMBER)
    [line] = contract.invoice_lines.all()
    assert (line.amount, line.fee_rate, line.fee_amount) == (Decimal("160.00"), Decimal("0.1250"), Decimal("20.00"))
    statement = PayoutStatement.objects.get(provider=market.provider)
    assert (statement.gross, statement.fee, statement.net) == (Decimal("160.00"), Decimal("20.00"), Decimal("140.00"))


def test_set_a_labs_credit_limit_on_the_change_form_beside_its_exposure(operator_client, market, frozen):
    factories.contract(lab=market.lab, listing=market.listing, starts_at=next_hour(), hours=10, nodes=1)
    page = operator_client.get(change_url(market.lab))
    shown = "160.00 (160.00 committed, 0.00 metered at most, 0.00 unpaid invoices); 99,840.00 available"
    assert shown in page.content.decode()  # 10 h x 8 GPUs x 2.0000, read-only
    data = changeform_data(page)
    assert data["credit_limit"] == "100000.00"

    response = operator_client.post(change_url(market.lab), {**data, "credit_limit": "150.00"})
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    market.lab.refresh_from_db()
    assert market.lab.credit_limit == Decimal("150.00")
    event = last_event("credit_limit_set")
    assert (event.actor.username, event.message) == (OPERATOR, "100000.00 -> 150.00")
    # Over its new limit, the lab buys nothing more; the contract it has stands.
    response = api(market.lab_secret).post(
        f"/api/v1/listings/{market.listing.pk}/book",
        {"gpu_count": 8, "starts_at": next_hour().isoformat(), "duration_hours": 1},
        format="json",
    )
    assert (response.status_code, response.json()["error"]["code"]) == (409, "credit_limit_exceeded")

    response = operator_client.post(change_url(market.lab), {**data, "credit_limit": ""})
    assert response.status_code == 302
    market.lab.refresh_from_db()
    assert market.lab.credit_limit is None
    messages = AuditEvent.objects.filter(action="credit_limit_set").order_by("id").values_list("message", flat=True)
    assert list(messages) == ["100000.00 -> 150.00", "150.00 -> no limit"]


def test_a_fee_rate_of_one_is_refused_by_the_form(operator_client, market):
    data = changeform_data(operator_client.get(change_url(market.provider)))
    response = operator_client.post(change_url(market.provider), {**data, "platform_fee_rate": "1"})
    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    market.provider.refresh_from_db()
    assert market.provider.platform_fee_rate is None
    assert not AuditEvent.objects.filter(action="fee_rate_set").exists()


# --- Contracts -------------------------------------------------------------------------------


def test_cancel_a_contract_with_a_reason(operator_client, september_closed):
    market = september_closed
    contract, invoice = market.contract, market.invoice
    [line] = invoice.lines.filter(contract=contract)
    assert contract.status == Contract.Status.ACTIVE

    # Go: the action asks for a reason first, listing what it applies to.
    form = run_action(operator_client, Contract, "cancel", [contract])
    assert not done(form)
    assert "admin/action_form.html" in [template.name for template in form.templates]
    assert form.context["objects"] == [contract]
    assert 'name="reason"' in form.content.decode()

    response = run_action(operator_client, Contract, "cancel", [contract], apply="1", reason="Provider GPU fault")
    assert done(response)
    assert messages_of(response) == [f"{contract}: cancelled; nodes free from 2026-10-01 15:00 UTC."]

    contract.refresh_from_db()
    assert contract.status == Contract.Status.CANCELLED
    assert contract.cancel_reason == "Provider GPU fault"
    assert contract.released_at == RELEASE
    assert set(contract.allocations.values_list("ends_at", flat=True)) == {RELEASE}
    assert contract.allocations.count() == 2

    # The unpaid September line of this contract is credited in full, which voids the invoice.
    [note] = CreditNote.objects.filter(invoice=invoice)
    assert note.amount == line.amount == Decimal("1184.00")
    assert [(part.invoice_line_id, part.amount) for part in note.lines.all()] == [(line.pk, line.amount)]
    assert "Provider GPU fault" in note.reason
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.VOID
    assert account_balance(kind=Account.Kind.LAB_RECEIVABLE, organization_id=market.lab.pk) == 0

    # Its nodes are sold until 15:00 and free from then on.
    assert Allocation.objects.holding_during(RELEASE - HOUR, RELEASE).filter(contract=contract).count() == 2
    rebooked = listing_book(lab=market.lab, listing=market.listing, gpu_count=32, starts_at=RELEASE, duration_hours=24)
    assert set(rebooked.allocations.values_list("node_id", flat=True)) >= set(
        contract.allocations.values_list("node_id", flat=True)
    )

    event = last_event("contract_cancelled")
    assert (event.actor.username, event.target_id) == (OPERATOR, str(contract.pk))
    assert "Provider GPU fault" in event.message and note.number in event.message


@pytest.mark.parametrize("reason", ["", "   "])
def test_cancel_without_a_reason_asks_again_and_changes_nothing(operator_client, september_closed, reason):
    contract = september_closed.contract
    response = run_action(operator_client, Contract, "cancel", [contract], apply="1", reason=reason)
    assert not done(response)
    assert "admin/action_form.html" in [template.name for template in response.templates]
    assert response.context["form"].errors == {"reason": ["This field is required."]}
    assert messages_of(response) == []
    contract.refresh_from_db()
    assert (contract.status, contract.cancel_reason, contract.released_at) == (Contract.Status.ACTIVE, "", None)
    assert set(contract.allocations.values_list("ends_at", flat=True)) == {contract.ends_at}
    assert not CreditNote.objects.exists()
    assert not AuditEvent.objects.filter(action="contract_cancelled").exists()


def test_cancel_refuses_a_completed_contract_with_a_message(operator_client, september_closed, frozen):
    contract = september_closed.contract
    contract_cancel(contract=contract, reason="first")
    response = run_action(operator_client, Contract, "cancel", [contract], apply="1", reason="again")
    assert done(response)
    assert messages_of(response) == [f"{contract}: cancelled; nodes free from 2026-10-01 15:00 UTC."]  # a no-op
    contract.refresh_from_db()
    assert contract.cancel_reason == "first"

    frozen.move_to(datetime(2026, 10, 10, tzinfo=UTC))
    other = Contract.objects.get(pk=factories.contract(
        lab=september_closed.lab, listing=factories.listing(cluster=september_closed.cluster, starts_at=next_hour(),
                                                            hours=2, nodes=1),
        starts_at=next_hour(), hours=1,
    ).pk)  # fmt: skip
    frozen.move_to(datetime(2026, 10, 10, 3, tzinfo=UTC))
    Contract.objects.filter(pk=other.pk).update(status=Contract.Status.COMPLETED)
    response = run_action(operator_client, Contract, "cancel", [other], apply="1", reason="too late")
    assert done(response)
    assert messages_of(response) == [f"{other}: A completed contract cannot be cancelled."]
    other.refresh_from_db()
    assert other.status == Contract.Status.COMPLETED


def test_rematch_fills_an_open_request_once_capacity_exists(
    operator_client, market, django_capture_on_commit_callbacks
):
    request = compute_request_create(
        lab=market.lab,
        gpu_model=GpuModel.objects.get(slug=factories.H100),
        gpu_count=16,
        starts_at=next_hour(),
        duration_hours=12,
        max_price_per_gpu_hour=Decimal("1.5000"),  # below the market's only listing, at 2.0000
        billing_mode="committed",
    )
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = run_action(operator_client, ComputeRequest, "rematch", [request])
    assert messages_of(response) == [f"Request {request.pk}: matching queued."]
    assert callbacks  # the matching ran after the action's commit, and found nothing
    request.refresh_from_db()
    assert request.status == ComputeRequest.Status.OPEN

    cheaper = factories.listing(
        cluster=factories.cluster(provider=market.provider, name="c2", nodes=2),
        starts_at=next_hour(),
        hours=24,
        price="1.2000",
    )
    request.refresh_from_db()
    assert request.status == ComputeRequest.Status.OPEN  # a new listing does not match by itself here
    with django_capture_on_commit_callbacks(execute=True):
        run_action(operator_client, ComputeRequest, "rematch", [request])
    request.refresh_from_db()
    assert request.status == ComputeRequest.Status.FILLED
    [contract] = request.contracts.all()
    assert (contract.gpu_count, contract.listing_id, contract.lab_id) == (16, cheaper.pk, market.lab.pk)
    assert contract.price_per_gpu_hour == Decimal("1.2000")
    assert contract.allocations.count() == 2
    assert AuditEvent.objects.filter(action="request_rematched", actor__username=OPERATOR).count() == 2

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = run_action(operator_client, ComputeRequest, "rematch", [request])
    assert messages_of(response) == [f"Request {request.pk}: Only an open request is matched; this one is filled."]
    assert callbacks == []


# --- Capacity ----------------------------------------------------------------------------------


def test_nodes_to_maintenance_and_back(operator_client, market):
    unlisted = factories.cluster(provider=market.provider, name="spare", nodes=2)
    nodes = list(unlisted.nodes.order_by("id"))
    response = run_action(operator_client, Node, "to_maintenance", nodes)
    assert done(response) and messages_of(response) == []
    assert set(Node.objects.filter(cluster=unlisted).values_list("status", flat=True)) == {Node.Status.MAINTENANCE}
    assert AuditEvent.objects.filter(action="node_maintenance", actor__username=OPERATOR).count() == 2

    run_action(operator_client, Node, "to_service", nodes)
    assert set(Node.objects.filter(cluster=unlisted).values_list("status", flat=True)) == {Node.Status.IN_SERVICE}
    assert AuditEvent.objects.filter(action="node_in_service").count() == 2


def test_a_sold_node_stays_in_service(operator_client, market):
    contract = factories.contract(lab=market.lab, listing=market.listing, starts_at=next_hour(), hours=4, nodes=1)
    sold = Node.objects.get(pk=contract.allocations.get().node_id)
    response = run_action(operator_client, Node, "to_maintenance", [sold])
    [message] = messages_of(response)
    assert "cannot go into maintenance" in message
    sold.refresh_from_db()
    assert sold.status == Node.Status.IN_SERVICE
    assert not AuditEvent.objects.filter(action="node_maintenance").exists()


def test_pause_resume_and_withdraw_listings(operator_client, market):
    listing = market.listing
    run_action(operator_client, Listing, "pause", [listing])
    listing.refresh_from_db()
    assert listing.status == Listing.Status.PAUSED
    assert searched_listing_ids(market.lab_secret) == set()

    run_action(operator_client, Listing, "resume", [listing])
    listing.refresh_from_db()
    assert listing.status == Listing.Status.ACTIVE
    assert searched_listing_ids(market.lab_secret) == {listing.pk}

    run_action(operator_client, Listing, "withdraw", [listing])
    listing.refresh_from_db()
    assert listing.status == Listing.Status.WITHDRAWN
    assert not ListingNode.objects.filter(listing=listing, released=False).exists()
    assert searched_listing_ids(market.lab_secret) == set()
    actions = list(AuditEvent.objects.filter(target_type="marketplace.listing").values_list("action", flat=True))
    assert sorted(actions) == ["listing_paused", "listing_resumed", "listing_withdrawn"]

    response = run_action(operator_client, Listing, "pause", [listing])
    assert messages_of(response) == [f"{listing}: A withdrawn listing cannot change."]
    listing.refresh_from_db()
    assert listing.status == Listing.Status.WITHDRAWN


# --- Money -------------------------------------------------------------------------------------


def test_void_an_issued_invoice(operator_client, september_closed):
    invoice = september_closed.invoice
    form = run_action(operator_client, Invoice, "void", [invoice])
    assert not done(form) and form.context["objects"] == [invoice]
    assert not done(run_action(operator_client, Invoice, "void", [invoice], apply="1", reason=""))

    response = run_action(operator_client, Invoice, "void", [invoice], apply="1", reason="Billed in error")
    assert done(response)
    [note] = invoice.credit_notes.all()
    assert messages_of(response) == [f"{invoice}: voided by credit note {note.number} (1184.00)."]
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.VOID and invoice.voided_at is not None
    assert (note.amount, note.reason) == (invoice.total, "Billed in error")
    assert account_balance(kind=Account.Kind.LAB_RECEIVABLE, organization_id=september_closed.lab.pk) == 0
    event = last_event("invoice_voided")
    assert (event.actor.username, event.target_repr) == (OPERATOR, invoice.number)


def test_record_the_whole_payment(operator_client, september_closed):
    invoice = september_closed.invoice
    form = run_action(operator_client, Invoice, "record_payment", [invoice])
    assert not done(form) and set(form.context["form"].fields) == {"amount", "reference"}

    response = run_action(
        operator_client, Invoice, "record_payment", [invoice], apply="1", amount="", reference="wire 42"
    )
    assert done(response)
    assert messages_of(response) == [f"{invoice}: payment of 1184.00 recorded; invoice is paid."]
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID and invoice.paid_at is not None
    [payment] = Payment.objects.filter(invoice=invoice)
    assert (payment.amount, payment.reference) == (Decimal("1184.00"), "wire 42")
    [txn] = LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.PAYMENT)
    legs = {(entry.account.kind, entry.account.organization_id): entry.amount for entry in txn.entries.all()}
    assert legs == {
        (Account.Kind.CASH, None): Decimal("1184.00"),
        (Account.Kind.LAB_RECEIVABLE, september_closed.lab.pk): Decimal("-1184.00"),
    }
    assert account_balance(kind=Account.Kind.LAB_RECEIVABLE, organization_id=september_closed.lab.pk) == 0
    assert last_event("payment_recorded").actor.username == OPERATOR


def test_record_a_part_payment_then_the_rest(operator_client, september_closed):
    invoice = september_closed.invoice
    run_action(operator_client, Invoice, "record_payment", [invoice], apply="1", amount="184.00", reference="")
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.ISSUED
    assert account_balance(kind=Account.Kind.LAB_RECEIVABLE, organization_id=september_closed.lab.pk) == Decimal(
        "1000.00"
    )
    response = run_action(operator_client, Invoice, "record_payment", [invoice], apply="1", amount="1000.01")
    assert messages_of(response) == [f"{invoice}: Only 1000.00 is due."]
    run_action(operator_client, Invoice, "record_payment", [invoice], apply="1", amount="")
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert sorted(invoice.payments.values_list("amount", flat=True)) == [Decimal("184.00"), Decimal("1000.00")]


def test_mark_a_payout_paid(operator_client, september_closed):
    statement = september_closed.statement
    assert (statement.gross, statement.fee, statement.net) == (Decimal("1184.00"), Decimal("59.20"),
                                                               Decimal("1124.80"))  # fmt: skip
    response = run_action(operator_client, PayoutStatement, "mark_paid", [statement])
    assert messages_of(response) == ["1 payout(s) marked paid."]
    statement.refresh_from_db()
    assert statement.status == PayoutStatement.Status.PAID
    assert statement.paid_at == datetime(2026, 10, 1, 14, 20, tzinfo=UTC)
    provider = september_closed.provider.pk
    assert account_balance(kind=Account.Kind.PROVIDER_PAYABLE, organization_id=provider) == 0
    assert account_balance(kind=Account.Kind.CASH) == Decimal("-1124.80")
    event = last_event("payout_paid")
    assert (event.actor.username, event.message) == (OPERATOR, "net 1124.80")


OFFERED = {
    Organization: {"verify", "suspend", "reactivate", "issue_api_key"},
    ApiKey: {"revoke"},
    Node: {"to_maintenance", "to_service"},
    Listing: {"pause", "resume", "withdraw"},
    ComputeRequest: {"rematch"},
    Contract: {"cancel"},
    Invoice: {"record_payment", "void"},
    PayoutStatement: {"mark_paid"},
}


@pytest.mark.parametrize("model", OFFERED, ids=lambda model: model.__name__)
def test_each_changelist_offers_its_actions(operator_client, model):
    response = operator_client.get(changelist_url(model))
    assert response.status_code == 200
    offered = {name for name, _ in response.context["action_form"].fields["action"].choices if name}
    assert offered == OFFERED[model]


def test_a_view_only_staff_user_runs_no_action(september_closed):
    """Django's view permission is for looking: a support clerk who may only view must not
    cancel contracts, void invoices, record payments or suspend organizations."""
    clerk = get_user_model().objects.create_user("support-clerk", is_staff=True)
    clerk.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    client = Client()
    client.force_login(clerk)

    offered = {}
    for model in OFFERED:
        response = client.get(changelist_url(model))
        assert response.status_code == 200
        form = response.context["action_form"]  # None when no action is offered at all
        offered[model.__name__] = {name for name, _ in form.fields["action"].choices if name} if form else set()
    contract = september_closed.contract
    run_action(client, Contract, "cancel", [contract], apply="1", reason="clicked by mistake")
    contract.refresh_from_db()

    assert {name: actions for name, actions in offered.items() if actions} == {}
    assert contract.status == Contract.Status.ACTIVE
