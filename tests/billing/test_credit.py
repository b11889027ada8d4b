"""A lab's exposure, figure by figure, as months close and invoices are paid (billing.credit),
and where a lab sees it: GET /api/v1/organization. (The admin's view: tests/backoffice.)"""

from decimal import Decimal

import pytest
import time_machine
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from billing.credit import lab_exposure, lab_exposures_recomputed
from billing.services import credit_note_create, invoice_record_payment
from broker.models import Contract
from broker.services import contract_cancel, contract_terminate
from core.models import AuditEvent
from marketplace.models import Organization
from marketplace.services import organization_create, organization_set_credit_limit
from tests.billing.factories import OCTOBER, SEPTEMBER, close, ingest, invoice_of, record, utc

pytestmark = pytest.mark.django_db


def figures(lab: Organization) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """The lab's exposure as its row keeps it, once checked against the definition."""
    exposure = lab_exposure(lab.pk)
    kept = (exposure.committed, exposure.metered, exposure.unpaid)
    assert kept == lab_exposures_recomputed([lab.pk])[lab.pk]
    return exposure.committed, exposure.metered, exposure.unpaid, exposure.total


def defined(lab: Organization) -> tuple[Decimal, Decimal, Decimal]:
    return lab_exposures_recomputed([lab.pk])[lab.pk]


def test_exposure_month_by_month(lab_client, provider_client, spanning_contract, metered_contract):
    """Committed: 8 GPUs x 18 h x 2.35, 14 h in September. Metered: 16 GPUs x 48 h x 2.50 in
    October, of which 160 GPU-hours used."""
    lab = lab_client.organization
    assert figures(lab) == (Decimal("338.40"), Decimal("1920.00"), 0, Decimal("2258.40"))

    close(SEPTEMBER)  # invoices 8 x 14 x 2.35 = 263.20
    assert figures(lab) == (Decimal("75.20"), Decimal("1920.00"), Decimal("263.20"), Decimal("2258.40"))

    invoice = invoice_of(lab, SEPTEMBER)
    invoice_record_payment(invoice=invoice, amount=Decimal("100.00"))
    credit_note_create(invoice=invoice, reason="goodwill", amount=Decimal("13.20"))
    assert figures(lab) == (Decimal("75.20"), Decimal("1920.00"), Decimal("150.00"), Decimal("2145.20"))

    ingest(
        provider_client.organization,
        record("m-1", metered_contract, utc(2026, 10, 5), utc(2026, 10, 5, 10), 8 * 10 * 3600, node="gpu-m01"),
        record("m-2", metered_contract, utc(2026, 10, 5), utc(2026, 10, 5, 10), 8 * 10 * 3600, node="gpu-m02"),
    )
    # Usage not yet invoiced changes nothing: the metered contract counts at its ceiling.
    assert figures(lab)[3] == Decimal("2145.20")

    close(OCTOBER)  # 4 x 8 x 2.35 = 75.20 committed, 160 GPU-hours x 2.50 = 400.00 metered
    assert figures(lab) == (0, 0, Decimal("625.20"), Decimal("625.20"))
    invoice_record_payment(invoice=invoice_of(lab, OCTOBER))
    assert figures(lab)[3] == Decimal("150.00")


def test_an_early_release_ends_what_a_contract_counts(lab_client, metered_contract):
    lab = lab_client.organization
    assert defined(lab)[1] == Decimal("1920.00")
    Contract.objects.filter(pk=metered_contract.pk).update(released_at=utc(2026, 10, 5, 10, 30))
    assert defined(lab)[1] == Decimal("400.00")  # 16 GPUs x 10 whole hours x 2.50
    Contract.objects.filter(pk=metered_contract.pk).update(released_at=utc(2026, 10, 4))
    assert defined(lab)[1] == 0


def test_terminating_a_contract_sets_the_figures_again(lab_client, metered_contract):
    lab = lab_client.organization
    with time_machine.travel(utc(2026, 10, 5, 9, 20), tick=False):
        contract_terminate(contract=metered_contract, lab=lab)  # free from 10:00
    assert figures(lab)[1] == Decimal("400.00")


def test_an_operators_cancellation_sets_the_figures_again(lab_client, spanning_contract):
    lab = lab_client.organization
    close(SEPTEMBER)
    assert figures(lab) == (Decimal("75.20"), 0, Decimal("263.20"), Decimal("338.40"))
    with time_machine.travel(utc(2026, 10, 1, 1, 30), tick=False):
        contract_cancel(contract=spanning_contract, reason="cluster lost")  # free from 02:00
    # 2 of its 4 October hours remain; September's invoice is credited in full.
    assert figures(lab) == (Decimal("37.60"), 0, 0, Decimal("37.60"))


def test_the_organization_endpoint_shows_the_limit_and_the_exposure(lab_client, spanning_contract):
    organization_set_credit_limit(organization=lab_client.organization, limit=Decimal("2000.00"))
    close(SEPTEMBER)

    data = lab_client.get("/api/v1/organization").json()

    assert data["credit_limit"] == "2000.00"
    assert data["exposure"] == {
        "committed": "75.20",
        "metered": "0.00",
        "unpaid": "263.20",
        "total": "338.40",
        "available": "1661.60",
    }


def test_the_organization_endpoint_reads_the_callers_row_once_and_afresh(lab_client, spanning_contract):
    """One statement: the key with its organization, whose row carries the exposure; a change
    made since the last request shows in the next one."""
    assert lab_client.get("/api/v1/organization").json()["credit_limit"] != "1234.00"  # the key's use recorded
    organization_set_credit_limit(organization=lab_client.organization, limit=Decimal("1234.00"))
    close(SEPTEMBER)
    with CaptureQueriesContext(connection) as queries:
        data = lab_client.get("/api/v1/organization").json()
    assert [query["sql"].split()[0] for query in queries.captured_queries] == ["SELECT"]
    exposure = lab_exposure(lab_client.organization.pk)
    assert data["credit_limit"] == "1234.00"
    assert (data["exposure"]["unpaid"], data["exposure"]["total"]) == ("263.20", str(exposure.total))


def test_a_provider_has_no_exposure_and_no_limit_means_nothing_is_available_to_count(provider_client, lab_client):
    assert provider_client.get("/api/v1/organization").json()["exposure"]["total"] == "0.00"
    organization_set_credit_limit(organization=lab_client.organization, limit=None)
    data = lab_client.get("/api/v1/organization").json()
    assert (data["credit_limit"], data["exposure"]["available"]) == (None, None)


def test_new_labs_start_at_the_default_credit_limit():
    with override_settings(DEFAULT_CREDIT_LIMIT=Decimal("2500.00")):
        lab, _ = organization_create(name="Fresh Lab", role="lab")
    with override_settings(DEFAULT_CREDIT_LIMIT=None):
        unlimited, _ = organization_create(name="Trusted Lab", role="lab")
    assert Organization.objects.get(pk=lab.pk).credit_limit == Decimal("2500.00")
    assert Organization.objects.get(pk=unlimited.pk).credit_limit is None


def test_setting_a_limit_is_audited_and_refuses_nonsense(lab_client):
    lab = lab_client.organization
    organization_set_credit_limit(organization=lab, limit=Decimal("5000.00"), actor_label="ops")
    event = AuditEvent.objects.filter(action="credit_limit_set").get()
    assert event.message == "100000.00 -> 5000.00"
    for bad in (Decimal("-1"), Decimal("0.001"), Decimal("1e14"), Decimal("NaN")):
        with pytest.raises(Exception) as refused:
            organization_set_credit_limit(organization=lab, limit=bad)
        assert refused.value.fields == {"credit_limit": ["Whole cents, zero or more."]}
