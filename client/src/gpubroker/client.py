"""The API's operations, grouped by resource: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

    from gpubroker import Client

    with Client() as gpb:                      # GPUBROKER_API_KEY / GPUBROKER_URL, or the config file
        for listing in gpb.listings.search(gpu_model="h100-sxm-80gb", min_gpus=64):
            print(listing.id, listing.price_per_gpu_hour, listing.available_gpus)

Every method of ``AsyncClient`` is the same, awaited; its lists are async iterators. A request
body is given as keyword arguments (checked against the request's model before anything is
sent) or as the model itself (``body=``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from gpubroker import models as m
from gpubroker._http import AsyncTransport, Call, SyncTransport

__all__ = ["AsyncClient", "Client"]


def body_of(model: type[BaseModel], body: BaseModel | None, fields: dict[str, Any]) -> BaseModel:
    if body is not None and fields:
        raise TypeError("pass the request's model or its fields, not both")
    if body is not None:
        return body
    return model.model_validate({key: value for key, value in fields.items() if value is not None})


class Resource:
    def __init__(self, transport: SyncTransport | AsyncTransport):
        self._t = transport

    def _run(self, call: Call) -> Any:
        return self._t.run(call)

    def _list(self, path: str, item: Any, params: dict[str, Any] | None = None) -> Any:
        return self._t.pages(Call("GET", path, params), item)


class GpuModels(Resource):
    def list(self) -> Iterator[m.GpuModel]:
        return self._list("/gpu-models", m.GpuModel)

    def get(self, slug: str) -> m.GpuModel:
        return self._run(Call("GET", f"/gpu-models/{slug}", result=m.GpuModel))


class OrganizationResource(Resource):
    def get(self) -> m.Organization:
        """Your organization: its roles, credit limit and exposure."""
        return self._run(Call("GET", "/organization", result=m.Organization))


class ApiKeys(Resource):
    def list(self) -> Iterator[m.ApiKey]:
        return self._list("/api-keys", m.ApiKey)

    def get(self, key_id: int) -> m.ApiKey:
        return self._run(Call("GET", f"/api-keys/{key_id}", result=m.ApiKey))

    def create(self, *, body: m.ApiKeyCreateRequest | None = None, **fields: Any) -> m.IssuedApiKey:
        """Issue a key; its secret is in the answer, this once."""
        payload = body_of(m.ApiKeyCreateRequest, body, fields)
        return self._run(Call("POST", "/api-keys", body=payload, result=m.IssuedApiKey))

    def revoke(self, key_id: int) -> m.ApiKey:
        return self._run(Call("POST", f"/api-keys/{key_id}/revoke", result=m.ApiKey))


class Clusters(Resource):
    def list(self) -> Iterator[m.Cluster]:
        return self._list("/clusters", m.Cluster)

    def get(self, cluster_id: int) -> m.Cluster:
        return self._run(Call("GET", f"/clusters/{cluster_id}", result=m.Cluster))

    def create(self, *, body: m.ClusterCreateRequest | None = None, **fields: Any) -> m.Cluster:
        payload = body_of(m.ClusterCreateRequest, body, fields)
        return self._run(Call("POST", "/clusters", body=payload, result=m.Cluster))

    def update(self, cluster_id: int, *, body: m.PatchedClusterUpdateRequest | None = None, **fields: Any) -> m.Cluster:
        payload = body_of(m.PatchedClusterUpdateRequest, body, fields)
        return self._run(Call("PATCH", f"/clusters/{cluster_id}", body=payload, result=m.Cluster))

    def nodes(self, cluster_id: int) -> Iterator[m.Node]:
        return self._list(f"/clusters/{cluster_id}/nodes", m.Node)

    def add_nodes(self, cluster_id: int, *, body: m.NodeAddRequest | None = None, **fields: Any) -> m.Cluster:
        payload = body_of(m.NodeAddRequest, body, fields)
        return self._run(Call("POST", f"/clusters/{cluster_id}/nodes", body=payload, result=m.Cluster))

    def set_node_status(self, cluster_id: int, node_id: int, status: str) -> m.Node:
        """Take a node out for maintenance (``maintenance``) or put it back (``in_service``)."""
        payload = m.PatchedNodeUpdateRequest(status=status)
        return self._run(Call("PATCH", f"/clusters/{cluster_id}/nodes/{node_id}", body=payload, result=m.Node))

    def report_incident(
        self, cluster_id: int, node_id: int, *, body: m.IncidentOpenRequest | None = None, **fields: Any
    ) -> m.Incident:
        payload = body_of(m.IncidentOpenRequest, body, fields)
        path = f"/clusters/{cluster_id}/nodes/{node_id}/incidents"
        return self._run(Call("POST", path, body=payload, result=m.Incident))


class Listings(Resource):
    def search(
        self,
        *,
        gpu_model: str | None = None,
        min_gpus: int | None = None,
        starts_at: datetime | str | None = None,
        ends_at: datetime | str | None = None,
        max_price: Decimal | str | None = None,
        region: str | None = None,
        interconnect: str | None = None,
        billing_mode: str | None = None,
        min_availability: Decimal | str | None = None,
        cluster: int | None = None,
        status: str | None = None,
        mine: bool | None = None,
        page_size: int | None = None,
    ) -> Iterator[m.Listing]:
        """Listings on offer that match, cheapest first; with a window, only those that can
        deliver all of it, with what is still available in it."""
        params = {key: value for key, value in locals().items() if key != "self"}
        return self._list("/listings", m.Listing, params)

    def get(self, listing_id: int) -> m.Listing:
        return self._run(Call("GET", f"/listings/{listing_id}", result=m.Listing))

    def create(
        self,
        *,
        body: m.ListingCreateRequest | m.ResaleCreateRequest | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> m.Listing:
        """Offer nodes of a cluster (``cluster=``), or resell unused hours of a committed contract
        you bought (``contract=``)."""
        payload = body_of(m.ResaleCreateRequest if "contract" in fields else m.ListingCreateRequest, body, fields)
        return self._run(Call("POST", "/listings", body=payload, result=m.Listing, idempotency_key=idempotency_key))

    def update(self, listing_id: int, *, body: m.PatchedListingUpdateRequest | None = None, **fields: Any) -> m.Listing:
        payload = body_of(m.PatchedListingUpdateRequest, body, fields)
        return self._run(Call("PATCH", f"/listings/{listing_id}", body=payload, result=m.Listing))

    def withdraw(self, listing_id: int) -> m.Listing:
        return self._run(Call("POST", f"/listings/{listing_id}/withdraw", result=m.Listing))

    def book(
        self,
        listing_id: int,
        *,
        body: m.BookingRequest | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> m.ContractDetail:
        """Book GPUs of a listing for a window: a contract, or ``CapacityUnavailable`` /
        ``CreditLimitExceeded``."""
        payload = body_of(m.BookingRequest, body, fields)
        path = f"/listings/{listing_id}/book"
        return self._run(Call("POST", path, body=payload, result=m.ContractDetail, idempotency_key=idempotency_key))


class ComputeRequests(Resource):
    def list(self, *, status: str | None = None, billing_mode: str | None = None) -> Iterator[m.ComputeRequest]:
        return self._list("/compute-requests", m.ComputeRequest, {"status": status, "billing_mode": billing_mode})

    def get(self, request_id: int) -> m.ComputeRequest:
        return self._run(Call("GET", f"/compute-requests/{request_id}", result=m.ComputeRequest))

    def create(
        self, *, body: m.ComputeRequestCreateRequest | None = None, idempotency_key: str | None = None, **fields: Any
    ) -> m.ComputeRequest:
        """Post a request for the broker to fill from listings, now or as capacity appears."""
        payload = body_of(m.ComputeRequestCreateRequest, body, fields)
        call = Call("POST", "/compute-requests", body=payload, result=m.ComputeRequest, idempotency_key=idempotency_key)
        return self._run(call)

    def cancel(self, request_id: int) -> m.ComputeRequest:
        return self._run(Call("POST", f"/compute-requests/{request_id}/cancel", result=m.ComputeRequest))


class Contracts(Resource):
    def list(self, *, status: str | None = None, billing_mode: str | None = None) -> Iterator[m.Contract]:
        return self._list("/contracts", m.Contract, {"status": status, "billing_mode": billing_mode})

    def get(self, contract_id: int) -> m.ContractDetail:
        return self._run(Call("GET", f"/contracts/{contract_id}", result=m.ContractDetail))

    def nodes(self, contract_id: int, *, history: bool | None = None) -> Iterator[m.ContractNode]:
        return self._list(f"/contracts/{contract_id}/nodes", m.ContractNode, {"history": history})

    def terminate(self, contract_id: int) -> m.ContractDetail:
        return self._run(Call("POST", f"/contracts/{contract_id}/terminate", result=m.ContractDetail))

    def access(self, contract_id: int) -> m.AccessManifest:
        return self._run(Call("GET", f"/contracts/{contract_id}/access", result=m.AccessManifest))

    def set_access(
        self, contract_id: int, *, body: m.AccessSetRequest | None = None, **fields: Any
    ) -> m.AccessManifest:
        payload = body_of(m.AccessSetRequest, body, fields)
        return self._run(Call("PUT", f"/contracts/{contract_id}/access", body=payload, result=m.AccessManifest))

    def delivered(self, contract_id: int, *, body: m.DeliveredRequest | None = None, **fields: Any) -> m.AccessManifest:
        payload = body_of(m.DeliveredRequest, body, fields)
        return self._run(Call("POST", f"/contracts/{contract_id}/delivered", body=payload, result=m.AccessManifest))


class Incidents(Resource):
    def list(
        self, *, cluster: int | None = None, kind: str | None = None, status: str | None = None
    ) -> Iterator[m.Incident]:
        return self._list("/incidents", m.Incident, {"cluster": cluster, "kind": kind, "status": status})

    def get(self, incident_id: int) -> m.Incident:
        return self._run(Call("GET", f"/incidents/{incident_id}", result=m.Incident))

    def resolve(self, incident_id: int, *, body: m.IncidentResolveRequest | None = None, **fields: Any) -> m.Incident:
        payload = body_of(m.IncidentResolveRequest, body, fields)
        return self._run(Call("POST", f"/incidents/{incident_id}/resolve", body=payload, result=m.Incident))


class Invoices(Resource):
    def list(self, *, status: str | None = None) -> Iterator[m.Invoice]:
        return self._list("/invoices", m.Invoice, {"status": status})

    def get(self, invoice_id: int) -> m.Invoice:
        return self._run(Call("GET", f"/invoices/{invoice_id}", result=m.Invoice))

    def preview(self, *, period: str | None = None) -> m.InvoicePreview:
        """What the month's invoice would bill if it closed now (``period``: YYYY-MM, this month when omitted)."""
        return self._run(Call("GET", "/invoices/preview", {"period": period}, result=m.InvoicePreview))


class Payouts(Resource):
    def list(self) -> Iterator[m.PayoutStatement]:
        return self._list("/payouts", m.PayoutStatement)

    def get(self, payout_id: int) -> m.PayoutStatement:
        return self._run(Call("GET", f"/payouts/{payout_id}", result=m.PayoutStatement))


class Usage(Resource):
    BATCH = 1000  # the most records one call takes

    def list(self, *, contract: int | None = None) -> Iterator[m.UsageRecord]:
        return self._list("/usage", m.UsageRecord, {"contract": contract})

    def report(
        self, records: Iterable[dict[str, Any] | m.UsageBatchRequestRecordsItem], *, idempotency_key: str | None = None
    ) -> m.UsageIngestResult:
        """Report up to 1,000 records: each is accepted, a duplicate (its id was seen before) or
        rejected with why. ``AllRejected`` when every record is refused."""
        batch = [record.model_dump(mode="json", exclude_unset=True) if isinstance(record, BaseModel) else record
                 for record in records]  # fmt: skip
        call = Call("POST", "/usage", body={"records": batch}, result=m.UsageIngestResult,
                    idempotency_key=idempotency_key)  # fmt: skip
        return self._run(call)


class Events(Resource):
    def list(self, *, type: str | None = None, page_size: int | None = None) -> Iterator[m.Event]:  # noqa: A002
        """Your events, newest first (kept 90 days)."""
        return self._list("/events", m.Event, {"type": type, "page_size": page_size})

    def get(self, event_id: int) -> m.Event:
        return self._run(Call("GET", f"/events/{event_id}", result=m.Event))


class WebhookEndpoints(Resource):
    def list(self) -> Iterator[m.WebhookEndpoint]:
        return self._list("/webhook-endpoints", m.WebhookEndpoint)

    def get(self, endpoint_id: int) -> m.WebhookEndpoint:
        return self._run(Call("GET", f"/webhook-endpoints/{endpoint_id}", result=m.WebhookEndpoint))

    def create(
        self, *, body: m.WebhookEndpointCreateRequest | None = None, **fields: Any
    ) -> m.IssuedWebhookEndpoint:
        """Register a URL for events; the answer carries its signing secret, this once."""
        payload = body_of(m.WebhookEndpointCreateRequest, body, fields)
        return self._run(Call("POST", "/webhook-endpoints", body=payload, result=m.IssuedWebhookEndpoint))

    def delete(self, endpoint_id: int) -> None:
        return self._run(Call("DELETE", f"/webhook-endpoints/{endpoint_id}"))

    def disable(self, endpoint_id: int) -> m.WebhookEndpoint:
        return self._run(Call("POST", f"/webhook-endpoints/{endpoint_id}/disable", result=m.WebhookEndpoint))

    def enable(self, endpoint_id: int) -> m.WebhookEndpoint:
        return self._run(Call("POST", f"/webhook-endpoints/{endpoint_id}/enable", result=m.WebhookEndpoint))

    def roll_secret(self, endpoint_id: int) -> m.IssuedWebhookEndpoint:
        path = f"/webhook-endpoints/{endpoint_id}/roll-secret"
        return self._run(Call("POST", path, result=m.IssuedWebhookEndpoint))

    def deliveries(self, endpoint_id: int, *, status: str | None = None) -> Iterator[m.WebhookDelivery]:
        return self._list(f"/webhook-endpoints/{endpoint_id}/deliveries", m.WebhookDelivery, {"status": status})


class SshKeys(Resource):
    def list(self) -> Iterator[m.SshKey]:
        return self._list("/ssh-keys", m.SshKey)

    def get(self, key_id: int) -> m.SshKey:
        return self._run(Call("GET", f"/ssh-keys/{key_id}", result=m.SshKey))

    def create(self, *, body: m.SshKeyCreateRequest | None = None, **fields: Any) -> m.SshKey:
        payload = body_of(m.SshKeyCreateRequest, body, fields)
        return self._run(Call("POST", "/ssh-keys", body=payload, result=m.SshKey))

    def delete(self, key_id: int) -> None:
        return self._run(Call("DELETE", f"/ssh-keys/{key_id}"))


class Market(Resource):
    """Market data of a GPU model, for any key: the order book, recent trades, the daily price index."""

    def book(
        self,
        gpu_model: str,
        *,
        starts_at: datetime | str | None = None,
        ends_at: datetime | str | None = None,
        region: str | None = None,
        levels: int | None = None,
    ) -> m.Book:
        params = {"starts_at": starts_at, "ends_at": ends_at, "region": region, "levels": levels}
        return self._run(Call("GET", f"/market/{gpu_model}/book", params, result=m.Book))

    def trades(self, gpu_model: str, *, since: datetime | str | None = None) -> Iterator[m.Trade]:
        return self._list(f"/market/{gpu_model}/trades", m.Trade, {"since": since})

    def index(self, gpu_model: str, *, from_: date | str | None = None, to: date | str | None = None) -> m.PriceIndex:
        return self._run(Call("GET", f"/market/{gpu_model}/index", {"from": from_, "to": to}, result=m.PriceIndex))


class Quotes(Resource):
    """Firm quotes (labs): what the matching engine would fill now, to accept before it expires."""

    def list(self) -> Iterator[m.Quote]:
        return self._list("/quotes", m.Quote)

    def get(self, quote_id: int) -> m.Quote:
        return self._run(Call("GET", f"/quotes/{quote_id}", result=m.Quote))

    def create(self, *, body: m.QuoteCreateRequest | None = None, **fields: Any) -> m.Quote:
        payload = body_of(m.QuoteCreateRequest, body, fields)
        return self._run(Call("POST", "/quotes", body=payload, result=m.Quote))

    def accept(self, quote_id: int) -> m.Quote:
        """Book every line at its quoted price, or nothing (``Conflict`` when it cannot)."""
        return self._run(Call("POST", f"/quotes/{quote_id}/accept", result=m.Quote))


class _Resources:
    def _attach(self, transport: SyncTransport | AsyncTransport) -> None:
        self.gpu_models = GpuModels(transport)
        self.organization = OrganizationResource(transport)
        self.api_keys = ApiKeys(transport)
        self.clusters = Clusters(transport)
        self.listings = Listings(transport)
        self.compute_requests = ComputeRequests(transport)
        self.contracts = Contracts(transport)
        self.incidents = Incidents(transport)
        self.invoices = Invoices(transport)
        self.payouts = Payouts(transport)
        self.usage = Usage(transport)
        self.events = Events(transport)
        self.webhook_endpoints = WebhookEndpoints(transport)
        self.ssh_keys = SshKeys(transport)
        self.market = Market(transport)
        self.quotes = Quotes(transport)


class Client(SyncTransport, _Resources):
    """The API, blocking. ``api_key`` and ``base_url`` default to ``GPUBROKER_API_KEY`` and
    ``GPUBROKER_URL``, then to the config file ``gpb login`` writes."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._attach(self)


class AsyncClient(AsyncTransport, _Resources):
    """The API on asyncio: the same resources and methods as ``Client``, each awaited; lists are
    async iterators (``async for``)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._attach(self)
