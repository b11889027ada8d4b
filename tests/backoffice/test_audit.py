"""The audit trail: who did what, when, for every change made in the admin and for every
contract cancellation and invoice void, wherever it comes from."""

from datetime import UTC, datetime
from decimal import Decimal

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import RequestFactory

from billing.models import Invoice
from billing.services import credit_note_create, invoice_void
from broker.models import Contract
from broker.services import contract_cancel
from core.admin import AuditedAdmin
from core.models import AuditEvent
from core.timeutils import next_hour
from marketplace.models import ApiKey, GpuModel, Membership, Organization
from marketplace.services import membership_add
from tests.backoffice import factories
from tests.backoffice.conftest import NOW, OPERATOR
from tests.backoffice.factories import (
    add_url,
    change_url,
    changeform_data,
    changelist_url,
    done,
    run_action,
    shown_secrets,
)

CANCELLED_AT = datetime(2026, 10, 1, 14, 20, tzinfo=UTC)  # where september_closed leaves the clock


def events(**filters) -> list[tuple]:
    return list(
        AuditEvent.objects.filter(**filters)
        .order_by("id")
        .values_list("actor__username", "actor_label", "action", "target_type", "target_id", "created_at")
    )


def test_every_admin_that_can_write_is_audited(db):
    request = RequestFactory().get("/admin/")
    request.user = get_user_model()(username="root", is_staff=True, is_superuser=True, is_active=True)
    writable = [
        model._meta.label
        for model, model_admin in admin.site._registry.items()
        if model_admin.has_add_permission(request)
        or model_admin.has_change_permission(request)
        or model_admin.has_delete_permission(request)
    ]
    assert "auth.User" in writable
    unaudited = [label for label in writable if not isinstance(admin.site._registry[_model(label)], AuditedAdmin)]
    assert unaudited == []


def _model(label: str):
    return next(model for model in admin.site._registry if model._meta.label == label)


def test_adding_an_organization_in_the_admin_is_audited(operator_client, frozen):
    data = changeform_data(operator_client.get(add_url(Organization)))
    data.update(name="Orbital", is_lab="on", status="active")
    response = operator_client.post(add_url(Organization), data)
    organization = Organization.objects.get(name="Orbital")
    assert len(shown_secrets(response)) == 1
    assert events(target_type="marketplace.organization") == [
        (OPERATOR, OPERATOR, "admin_add", "marketplace.organization", str(organization.pk), NOW)
    ]


def test_changing_and_deleting_in_the_admin_is_audited(operator_client, market):
    h100 = GpuModel.objects.get(slug="h100-sxm-80gb")
    data = changeform_data(operator_client.get(change_url(h100)))
    assert done(operator_client.post(change_url(h100), {**data, "name": "H100 SXM5 80GB"}, follow=True))
    [event] = AuditEvent.objects.filter(action="admin_change")
    assert (event.actor.username, event.target_repr, event.created_at) == (OPERATOR, "H100 SXM5 80GB", NOW)
    assert event.message == "changed Name"

    membership = membership_add(organization=market.lab, username="lab-dev")
    delete = change_url(membership).replace("/change/", "/delete/")
    assert done(operator_client.post(delete, {"post": "yes"}, follow=True))
    assert not Membership.objects.exists()
    assert events(action="admin_delete") == [
        (OPERATOR, OPERATOR, "admin_delete", "marketplace.membership", str(membership.pk), NOW)
    ]

    second = membership_add(organization=market.lab, username="lab-ops")
    response = run_action(operator_client, Membership, "delete_selected", [second], post="yes")
    assert done(response) and not Membership.objects.filter(pk=second.pk).exists()
    assert events(action="admin_delete", target_type="marketplace.membership")[-1] == (
        OPERATOR,
        OPERATOR,
        "admin_delete",
        "marketplace.membership",
        str(second.pk),
        NOW,
    )

    # Market records are never hard-deleted: keys are revoked, listings withdrawn.
    key = market.lab.api_keys.get()
    assert operator_client.post(change_url(key).replace("/change/", "/delete/"), {"post": "yes"}).status_code == 403
    assert ApiKey.objects.filter(pk=key.pk).exists()


def test_granting_an_operator_rights_is_audited(operator_client, frozen):
    clerk = get_user_model().objects.create_user("ops-dave", is_staff=True)
    user_admin = operator_client.get(change_url(clerk))
    data = changeform_data(user_admin)
    response = operator_client.post(change_url(clerk), {**data, "is_superuser": "on"}, follow=True)
    assert done(response)
    clerk.refresh_from_db()
    assert clerk.is_superuser
    [event] = AuditEvent.objects.filter(target_type="auth.user")
    assert (event.actor.username, event.action, event.target_repr, event.created_at) == (
        OPERATOR, "admin_change", "ops-dave", NOW,
    )  # fmt: skip
    assert event.message.startswith("changed Superuser status")


def test_revoking_and_issuing_keys_in_the_admin_are_audited(operator_client, market):
    key = market.lab.api_keys.get()
    run_action(operator_client, ApiKey, "revoke", [key])
    assert events(target_type="marketplace.apikey", target_id=str(key.pk)) == [
        (None, "system", "api_key_issued", "marketplace.apikey", str(key.pk), NOW),
        (OPERATOR, OPERATOR, "api_key_revoked", "marketplace.apikey", str(key.pk), NOW),
    ]

    run_action(operator_client, Organization, "issue_api_key", [market.lab])
    issued = market.lab.api_keys.get(name="admin-issued")
    assert events(target_type="marketplace.apikey", target_id=str(issued.pk)) == [
        (OPERATOR, OPERATOR, "api_key_issued", "marketplace.apikey", str(issued.pk), NOW)
    ]


def test_a_cancellation_by_the_service_is_audited_with_its_caller(september_closed):
    contract = september_closed.contract
    contract_cancel(contract=contract, reason="Customer request by phone", actor_label="ops-cli")
    [event] = AuditEvent.objects.filter(action="contract_cancelled")
    assert (event.actor, event.actor_label, event.target_type, event.target_id, event.created_at) == (
        None, "ops-cli", "broker.contract", str(contract.pk), CANCELLED_AT,
    )  # fmt: skip
    assert event.message.startswith("Customer request by phone (nodes free from 2026-10-01T15:00Z; credited: CN-")

    contract_cancel(contract=contract, reason="twice")  # already cancelled: nothing happens, nothing recorded
    assert AuditEvent.objects.filter(action="contract_cancelled").count() == 1


def test_a_cancellation_without_a_caller_is_recorded_as_the_system(market):
    contract = factories.contract(lab=market.lab, listing=market.listing, starts_at=next_hour(), hours=2)
    contract_cancel(contract=contract, reason="Fraud hold")
    assert events(action="contract_cancelled") == [
        (None, "system", "contract_cancelled", "broker.contract", str(contract.pk), NOW)
    ]
    assert Contract.objects.get(pk=contract.pk).status == Contract.Status.CANCELLED


def test_a_void_by_the_service_is_audited_with_its_caller(september_closed):
    invoice = september_closed.invoice
    operator = get_user_model().objects.create_user("ops-carol")
    note = invoice_void(invoice=invoice, reason="Duplicate", actor=operator)
    [event] = AuditEvent.objects.filter(action="invoice_voided")
    assert (event.actor, event.actor_label, event.target_id, event.created_at) == (
        operator, "ops-carol", str(invoice.pk), CANCELLED_AT,
    )  # fmt: skip
    assert event.message == f"Duplicate (credit note {note.number}, 1184.00)"


def test_an_invoice_voided_by_a_cancellation_is_audited_on_the_invoice(operator_client, september_closed):
    """Cancelling the only contract of an unpaid invoice credits all of it, which voids the
    invoice: that void must be found in the invoice's own audit trail."""
    invoice = september_closed.invoice
    run_action(operator_client, Contract, "cancel", [september_closed.contract], apply="1", reason="Outage")
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.VOID
    assert events(target_type="billing.invoice", target_id=str(invoice.pk), action="invoice_voided") == [
        (OPERATOR, OPERATOR, "invoice_voided", "billing.invoice", str(invoice.pk), CANCELLED_AT)
    ]


def test_an_invoice_voided_by_a_full_credit_note_is_audited(september_closed):
    invoice = september_closed.invoice
    credit_note_create(invoice=invoice, reason="Goodwill", amount=Decimal("1184.00"))
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.VOID
    assert events(target_type="billing.invoice", target_id=str(invoice.pk), action="invoice_voided") == [
        (None, "system", "invoice_voided", "billing.invoice", str(invoice.pk), CANCELLED_AT)
    ]


def test_the_audit_changelist_shows_who_did_what_when(operator_client, september_closed):
    contract = september_closed.contract
    run_action(operator_client, Organization, "verify", [september_closed.provider])
    run_action(operator_client, Contract, "cancel", [contract], apply="1", reason="Outage <b>now</b>")
    contract_cancel(contract=contract, reason="ignored")

    response = operator_client.get(changelist_url(AuditEvent))
    assert response.status_code == 200
    shown = [
        (event.actor_label, event.action, event.target_repr)
        for event in response.context["cl"].result_list
        if event.action in {"contract_cancelled", "organization_verified"}  # credit notes are audited too
    ]
    assert shown[:2] == [
        (OPERATOR, "contract_cancelled", str(contract)),
        (OPERATOR, "organization_verified", "Colossus"),
    ]
    html = response.content.decode()
    assert "Oct. 1, 2026, 2:20 p.m." in html
    assert "Outage &lt;b&gt;now&lt;/b&gt; (nodes free from 2026-10-01T15:00Z" in html  # escaped
    assert "active -&gt; verified" in html

    mine = operator_client.get(f"{changelist_url(AuditEvent)}?q={OPERATOR}&action=contract_cancelled")
    assert [event.target_id for event in mine.context["cl"].result_list] == [str(contract.pk)]
    event = AuditEvent.objects.get(action="contract_cancelled")
    assert operator_client.get(change_url(event)).status_code == 200
