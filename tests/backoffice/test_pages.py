"""Every admin page an operator can reach renders; search and filters narrow the lists;
records written only by the business rules stay read-only."""

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.forms.models import model_to_dict
from django.urls import reverse

from backoffice.demo import CLOUD, LAB, PROVIDER
from billing.models import Invoice, LedgerEntry, UsageRecord
from broker.models import Contract
from core.models import AuditEvent
from marketplace.models import GpuModel, Listing, Node, Organization
from tests.backoffice.factories import add_url, change_url, changelist_url, model_admin

pytestmark = pytest.mark.usefixtures("demo_market")

REGISTERED = sorted(admin.site._registry, key=lambda model: model._meta.label)


def test_the_business_models_are_all_registered(db):  # db: ordered with the other demo_market tests
    labels = {model._meta.label for model in REGISTERED}
    assert labels >= {
        "core.AuditEvent", "marketplace.IdempotencyRecord", "admin.LogEntry",
        "marketplace.Organization", "marketplace.ApiKey", "marketplace.Membership", "marketplace.GpuModel",
        "marketplace.Cluster", "marketplace.Node", "marketplace.Listing",
        "broker.ComputeRequest", "broker.Contract", "broker.Allocation",
        "billing.UsageRecord", "billing.BillingPeriod", "billing.DocumentSequence", "billing.Invoice",
        "billing.CreditNote", "billing.Payment", "billing.PayoutStatement", "billing.Account",
        "billing.LedgerTransaction", "billing.LedgerEntry",
    }  # fmt: skip


@pytest.mark.parametrize("model", REGISTERED, ids=lambda model: model._meta.label)
def test_changelist_change_and_add_pages_render(operator_client, model):
    response = operator_client.get(changelist_url(model))
    assert response.status_code == 200, response.content[:500]
    assert response.context["cl"].result_count >= 1

    obj = model._default_manager.order_by("pk").first()
    assert obj is not None, f"the demo market has no {model._meta.label} to open"
    response = operator_client.get(change_url(obj))
    assert response.status_code == 200, response.content[:500]
    assert response.context["original"] == obj

    can_add = model_admin(model).has_add_permission(response.wsgi_request)
    assert operator_client.get(add_url(model)).status_code == (200 if can_add else 403)


def test_the_index_links_to_the_market_overview(operator_client):
    response = operator_client.get(reverse("admin:index"))
    assert response.status_code == 200
    assert reverse("market-overview") in response.content.decode()


def test_market_overview_has_a_row_and_a_bar_per_gpu_model(operator_client, django_assert_max_num_queries):
    with django_assert_max_num_queries(9):  # session, user, and 7 whatever the size of the market (1: the price index)
        response = operator_client.get(reverse("market-overview"))
    assert response.status_code == 200
    assert "admin/market_overview.html" in [template.name for template in response.templates]
    html = response.content.decode()
    models = list(GpuModel.objects.order_by("vendor", "name"))
    segments = response.context["segments"]
    assert [segment.gpu_model for segment in segments] == models
    body = html.split('<table id="overview-table">')[1].split("</table>")[0].split("<tbody>")[1]
    assert body.count("<tr>") == len(models)
    chart = html.split('<svg id="overview-chart"')[1].split("</svg>")[0]
    assert chart.count("<g ") == len(models)
    assert chart.count("<rect ") == 2 * len(models)
    h100 = next(segment for segment in segments if segment.gpu_model.slug == "h100-sxm-80gb")
    assert h100.listed_gpu_hours > h100.sold_gpu_hours > 0  # the demo's listings and the matched requests
    assert h100.open_requests == 0 and h100.avg_price_30d is not None
    b200 = next(segment for segment in segments if segment.gpu_model.slug == "b200")
    assert b200.open_requests == 1  # the demo's request below the ask
    assert f"{h100.listed_gpu_hours:,} listed" in chart


def _results(client, model, query: str):
    response = client.get(f"{changelist_url(model)}?{query}")
    assert response.status_code == 200, response.content[:500]
    assert "errornote" not in response.content.decode()
    return list(response.context["cl"].result_list)


def test_search_and_filter_organizations(operator_client):
    assert [org.name for org in _results(operator_client, Organization, "q=colossus")] == [PROVIDER]
    labs = _results(operator_client, Organization, "is_lab__exact=1")
    assert LAB in {org.name for org in labs} and PROVIDER not in {org.name for org in labs}


def test_search_and_filter_contracts(operator_client):
    found = _results(operator_client, Contract, "q=Nimbus")
    assert found and all(CLOUD in (contract.provider.name, contract.lab.name) for contract in found)
    completed = _results(operator_client, Contract, "status__exact=completed")
    assert {contract.status for contract in completed} == {Contract.Status.COMPLETED}
    assert len(completed) == Contract.objects.filter(status=Contract.Status.COMPLETED).count() == 2
    by_pk = _results(operator_client, Contract, f"q={completed[0].pk}")
    assert completed[0] in by_pk


def test_search_and_filter_nodes_listings_and_invoices(operator_client):
    nodes = _results(operator_client, Node, "q=nimbus-a100&status__exact=in_service")
    assert len(nodes) == 16 and {node.cluster.name for node in nodes} == {"nimbus-a100"}
    assert _results(operator_client, Node, "status__exact=maintenance") == []

    metered = _results(operator_client, Listing, "status__exact=active&billing_mode__exact=metered")
    assert len(metered) == 3 and {listing.billing_mode for listing in metered} == {"metered"}

    invoice = Invoice.objects.get(status=Invoice.Status.ISSUED)
    assert _results(operator_client, Invoice, f"q={invoice.number}") == [invoice]
    assert _results(operator_client, Invoice, "status__exact=void") == []


def test_search_the_audit_trail(operator_client):
    events = _results(operator_client, AuditEvent, "q=demo-seed")
    assert [event.action for event in events] == ["seeded"]
    assert _results(operator_client, AuditEvent, "action=seeded") == events
    assert len(_results(operator_client, LogEntry, "q=seeded")) == 1


# --- Read-only records ------------------------------------------------------------------------

READ_ONLY = {
    "contract": (lambda: Contract.objects.order_by("pk").first(), {"status": "cancelled", "cancel_reason": "x",
                                                                   "price_per_gpu_hour": "0.0100"}),
    "issued invoice": (lambda: Invoice.objects.filter(status=Invoice.Status.ISSUED).first(),
                       {"status": "void", "total": "0.01", "number": "INV-FORGED"}),
    "ledger entry": (lambda: LedgerEntry.objects.order_by("pk").first(), {"amount": "999999.00"}),
    "usage record": (lambda: UsageRecord.objects.order_by("pk").first(), {"gpu_seconds": "0", "event_id": "forged"}),
}  # fmt: skip


@pytest.mark.parametrize("kind", READ_ONLY)
def test_rule_written_records_are_read_only(operator_client, kind):
    get_obj, forged = READ_ONLY[kind]
    obj = get_obj()
    model = type(obj)
    before = model_to_dict(obj)
    count = model.objects.count()

    page = operator_client.get(change_url(obj))
    assert page.status_code == 200
    assert page.context["has_change_permission"] is False and page.context["has_delete_permission"] is False
    assert 'name="_save"' not in page.content.decode()

    as_posted = {key: "" if value is None else value for key, value in {**before, **forged}.items()}
    assert operator_client.post(change_url(obj), as_posted).status_code == 403
    assert operator_client.get(add_url(model)).status_code == 403
    assert operator_client.post(add_url(model), forged).status_code == 403
    delete = change_url(obj).replace("/change/", "/delete/")
    assert operator_client.get(delete).status_code == 403
    assert operator_client.post(delete, {"post": "yes"}).status_code == 403

    # Nor through the changelist: no delete action is offered, and posting one does nothing.
    assert "delete_selected" not in model_admin(model).get_actions(page.wsgi_request)
    operator_client.post(changelist_url(model), {"action": "delete_selected", "_selected_action": [obj.pk],
                                                 "post": "yes"})  # fmt: skip

    obj.refresh_from_db()
    assert model_to_dict(obj) == before
    assert model.objects.count() == count
