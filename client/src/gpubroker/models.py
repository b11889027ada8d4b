"""The API's resources and request bodies as typed models.

Generated from the OpenAPI schema by ``scripts/generate_models.py``: do not edit by hand.
"""

# ruff: noqa: E501 (the schema's descriptions, kept whole)

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ApiModel(BaseModel):
    """A resource or request of the API. Fields the API adds later are kept, not refused."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class AccessKey(ApiModel):
    id: int = Field(description="The id the key had in the lab's keys when it was attached.")
    name: str = Field(description="The key's name.")
    fingerprint: str = Field(description='SHA256:<base64>, as `ssh-keygen -l` prints it.')
    public_key: str = Field(description='The OpenSSH public key line, to install for the lab.')


class ContractNode(ApiModel):
    """A node of a contract, and the hours it serves the contract."""

    id: int = Field(description="The node's id.")
    hostname: str = Field(description="The node's hostname.")
    starts_at: datetime = Field(description='From when the node serves the contract.')
    ends_at: datetime = Field(description="Until when it serves the contract: the contract's end, the hour it was freed early, or the hour a replacement took over from it after a failure (equal to starts_at when that was before it started).")
    replaces: str | None = Field(description='The hostname of the failed node this one replaced (GET /api/v1/incidents); null for a node the contract was sold with.')


class Delivery(ApiModel):
    endpoint: str = Field(description='Where the lab connects, as the provider reported it; empty before.')
    detail: str = Field(description='How to connect, as the provider reported it.')
    delivered_at: datetime | None = Field(description='When the provider first reported access ready; null until then.')
    late: bool = Field(description='Whether the contract was found undelivered DELIVERY_GRACE_MINUTES after its start (the time until delivery is credited).')
    delivery_late_at: datetime | None = Field(description='When it was found undelivered; null if it never was.')


class AccessManifest(ApiModel):
    contract: int = Field(description="The contract's id.")
    status: str = Field(description="The contract's status: scheduled, active, completed, terminated or cancelled.")
    starts_at: datetime = Field(description="The contract's start.")
    ends_at: datetime = Field(description="The contract's end.")
    node_count: int = Field(description='How many (node, hours) the contract has: a node replaced mid-contract counts with its replacement, each for its hours.')
    nodes: list[ContractNode] = Field(description='The first 100 by hostname, each with the hours it serves the contract; `nodes_url` pages them all.')
    nodes_url: str = Field(description='GET it for every node of the contract, a page at a time.')
    ssh_keys: list[AccessKey] = Field(description="The lab's public keys to install on the nodes.")
    note: str = Field(description="The lab's note, e.g. a Kubernetes namespace or a Slurm account.")
    delivery: Delivery = Field(description="The provider's report that access is ready.")


class AccessSetRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    ssh_key_ids: list[int] = Field(description='Your SSH keys to attach (GET /api/v1/ssh-keys), at most 100: they replace the keys attached before. The contract keeps a copy of each: deleting a key later does not remove it here.')
    note: str | None = Field(default=None, description='What else the provider needs to set you up, e.g. a Kubernetes namespace or a Slurm account. Never a secret.')


class ApiIndex(ApiModel):
    resources: dict[str, str] = Field(description='Resource name -> its URL; ids go after the URL.')
    schema_: str = Field(alias='schema', description='The OpenAPI schema.')
    docs: str = Field(description='The interactive documentation.')


class ScopeEnum(StrEnum):
    """* `full` - Full * `read_only` - Read-only"""

    FULL = 'full'
    READ_ONLY = 'read_only'


class ApiKey(ApiModel):
    id: int = Field(description="The key's id.")
    name: str | None = Field(default=None, description='A name to tell your keys apart.')
    scope: ScopeEnum = Field(description='full: reads and writes; read_only: GET requests only.')
    prefix: str = Field(description='Public part of the key, shown in lists.')
    created_at: datetime = Field(description='When the key was created.')
    last_used_at: datetime | None = Field(description='When the key last authenticated a request; null if never.')
    revoked_at: datetime | None = Field(description='When the key was revoked; null while it works.')
    is_active: bool = Field(description='Not revoked: the key works.')


class ApiKeyCreateRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    name: str | None = Field(default=None, description='A name to tell your keys apart.')
    scope: ScopeEnum | None = Field(default=None, description='full: reads and writes; read_only: GET requests only. Fixed at creation.')


class BillingModeEnum(StrEnum):
    """* `committed` - Committed * `metered` - Metered"""

    COMMITTED = 'committed'
    METERED = 'metered'


class Level(ApiModel):
    price_per_gpu_hour: Decimal = Field(description='The price per GPU-hour of this level.')
    gpus: int = Field(description='GPUs at this price: free for the whole window (asks), or wanted (bids).')
    orders: int = Field(description='How many listings (asks) or compute requests (bids) make it up.')


class Book(ApiModel):
    gpu_model: str = Field(description="The GPU model's slug.")
    region: str | None = Field(description='The region asked; null: every region.')
    starts_at: datetime = Field(description="The window's start.")
    ends_at: datetime = Field(description="The window's end.")
    asks: list[Level] = Field(description="Offers by price, cheapest first: GPUs of active listings free for the whole window, in listings that allow its length (a lab's search finds the same).")
    bids: list[Level] = Field(description='Open compute requests by their maximum price, highest first: GPUs wanted for an hour of the window, by requests not yet begun, in the region asked or in any region.')


class BookingRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    gpu_count: int = Field(description="GPUs to buy, a multiple of the cluster's GPUs per node.")
    starts_at: datetime = Field(description="The start: a whole UTC hour not yet begun, inside the listing's window.")
    duration_hours: int = Field(description="Hours from starts_at: at least the listing's minimum, inside its window.")


class InterconnectEnum(StrEnum):
    """* `infiniband` - InfiniBand * `roce` - RoCE * `ethernet` - Ethernet"""

    INFINIBAND = 'infiniband'
    ROCE = 'roce'
    ETHERNET = 'ethernet'


class Cluster(ApiModel):
    id: int = Field(description="The cluster's id.")
    name: str = Field(description="A name unique among its provider's clusters.")
    gpu_model: str = Field(description="The GPU model's slug.")
    region: str = Field(description='Where the cluster is.')
    interconnect: InterconnectEnum = Field(description='The network between nodes.')
    gpus_per_node: int = Field(description='GPUs in each node.')
    node_count: int = Field(description='Nodes registered.')
    nodes_in_service: int = Field(description='Nodes not in maintenance.')
    created_at: datetime = Field(description='When the cluster was registered.')


class ClusterCreateRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    name: str = Field(description='A name unique among your clusters.')
    gpu_model: str = Field(description="A GPU model's slug (GET /api/v1/gpu-models); an unknown one is a 400.")
    region: str = Field(description='Where the cluster is, e.g. us-south-1.')
    interconnect: InterconnectEnum = Field(description='The network between nodes.')
    gpus_per_node: int = Field(description='GPUs in each node.')
    node_count: int = Field(description='How many nodes to register.')
    hostnames: list[str] | None = Field(default=None, description='One per node; generated when omitted.')


class ComputeStatusEnum(StrEnum):
    """* `open` - Open * `filled` - Filled * `expired` - Expired * `cancelled` - Cancelled"""

    OPEN = 'open'
    FILLED = 'filled'
    EXPIRED = 'expired'
    CANCELLED = 'cancelled'


class NotSetEnum(StrEnum):
    """The empty string: not set."""

    NOT_SET = ''


class UnfilledReasonEnum(StrEnum):
    """* `no_offer` - No offer * `no_capacity` - Not enough capacity * `price_too_low` - Maximum price too low * `credit_limit_exceeded` - Credit limit exceeded"""

    NO_OFFER = 'no_offer'
    NO_CAPACITY = 'no_capacity'
    PRICE_TOO_LOW = 'price_too_low'
    CREDIT_LIMIT_EXCEEDED = 'credit_limit_exceeded'


class ComputeRequest(ApiModel):
    id: int = Field(description="The request's id.")
    gpu_model: str = Field(description="The GPU model's slug.")
    gpu_count: int = Field(description='GPUs wanted.')
    starts_at: datetime = Field(description='The start (a whole UTC hour).')
    duration_hours: int = Field(description='Hours from starts_at.')
    ends_at: datetime = Field(description='starts_at plus duration_hours.')
    max_price_per_gpu_hour: Decimal = Field(description='The most it pays per GPU-hour.')
    billing_mode: BillingModeEnum = Field(description='committed or metered.')
    colocated: bool | None = Field(default=None, description='Filled from one cluster only.')
    region: str | None = Field(default=None, description='Only clusters in this region; empty for any.')
    interconnect: InterconnectEnum | NotSetEnum | None = Field(default=None, description='Only this interconnect; empty for any.')
    status: ComputeStatusEnum | None = Field(default=None, description='open (being matched), filled, cancelled or expired (its start passed).')
    unfilled_reason: UnfilledReasonEnum | NotSetEnum | None = Field(default=None, description='Why the last matching run left this open request open: no_offer (no listing on its terms), no_capacity (too few free nodes for the window), price_too_low (it would fill at fill_price_now), credit_limit_exceeded (filling it would take your exposure past your credit limit). Empty until a run has seen it, and once filled. Every run updates it.')
    unfilled_detail: str | None = Field(default=None, description='The reason in words, with the figures.')
    fill_price_now: Decimal | None = Field(default=None, description='The lowest maximum price per GPU-hour at which it would fill now; null when no price would fill it.')
    contracts: list[int] = Field(description='Ids of the contracts that fill it.')
    created_at: datetime = Field(description='When it was posted.')
    filled_at: datetime | None = Field(default=None, description='When it was filled; null until then.')
    closed_at: datetime | None = Field(default=None, description='When it was cancelled or expired; null otherwise.')


class ComputeRequestCreateRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    gpu_model: str = Field(description="A GPU model's slug (GET /api/v1/gpu-models); an unknown one is a 400.")
    gpu_count: int = Field(description='GPUs wanted, in whole nodes of the clusters that fill it.')
    starts_at: datetime = Field(description='The start: a whole UTC hour not yet begun.')
    duration_hours: int = Field(description='How many hours from starts_at.')
    max_price_per_gpu_hour: Decimal = Field(description='The most you will pay per GPU-hour, in whole cents.')
    billing_mode: BillingModeEnum = Field(description='committed (every hour is paid) or metered (GPU-hours used).')
    colocated: bool | None = Field(default=None, description='Fill from one cluster only.')
    region: str | str | None = Field(default=None, description='Only clusters in this region; any when omitted.')
    interconnect: InterconnectEnum | NotSetEnum | None = Field(default=None, description='Only this interconnect; any when omitted or empty.')


class ContractCluster(ApiModel):
    id: int = Field(description="The cluster's id.")
    name: str = Field(description="The cluster's name.")
    gpu_model: str = Field(description="The GPU model's slug.")
    region: str = Field(description='Where the cluster is.')
    interconnect: InterconnectEnum = Field(description='The network between nodes.')
    gpus_per_node: int = Field(description='GPUs in each node.')


class ContractStatusEnum(StrEnum):
    """* `scheduled` - Scheduled * `active` - Active * `completed` - Completed * `terminated` - Terminated * `cancelled` - Cancelled"""

    SCHEDULED = 'scheduled'
    ACTIVE = 'active'
    COMPLETED = 'completed'
    TERMINATED = 'terminated'
    CANCELLED = 'cancelled'


class Contract(ApiModel):
    """A contract as lists show it: its terms, without its nodes (GET /api/v1/contracts/{id}/nodes)."""

    id: int = Field(description="The contract's id.")
    request: int | None = Field(default=None, description='The compute request it fills; null for a booking.')
    listing: int = Field(description='The listing it was sold from.')
    lab: str = Field(description="The buyer's name.")
    provider: str = Field(description="The seller's name.")
    cluster: ContractCluster = Field(description='The cluster the nodes belong to.')
    gpu_count: int = Field(description='GPUs sold.')
    node_count: int = Field(description='Nodes sold.')
    starts_at: datetime = Field(description='The start (a whole UTC hour).')
    ends_at: datetime = Field(description='The end (a whole UTC hour).')
    price_per_gpu_hour: Decimal = Field(description='The price per GPU-hour, fixed for the contract.')
    billing_mode: BillingModeEnum = Field(description='committed or metered.')
    total_amount: Decimal | None = Field(default=None, description='GPUs x hours x price: what a committed contract costs.')
    status: ContractStatusEnum | None = Field(default=None, description='Where the contract is in its life.')
    released_at: datetime | None = Field(default=None, description='When its nodes were freed early; null otherwise.')
    cancel_reason: str | None = Field(default=None, description='Why an operator cancelled it; empty otherwise.')
    created_at: datetime = Field(description='When it was written.')


class ContractDetail(Contract):
    nodes: list[str] = Field(description="Hostnames of the contract's nodes, sorted. GET /api/v1/contracts/{id}/nodes pages them, with each node's window.")


class CreditNote(ApiModel):
    number: str = Field(description="The credit note's number.")
    reason: str = Field(description='Why it was issued.')
    amount: Decimal = Field(description='The amount credited against the invoice.')
    created_at: datetime = Field(description='When it was issued.')


class DeliveredRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    endpoint: str = Field(description='Where the lab connects: an ssh:// or https:// URL, or host:port. Connection details only.')
    detail: str | None = Field(default=None, description='How to connect (user name, bastion, namespace...). Never a password, token or private key.')


class ErrorDetail(ApiModel):
    """``code``, ``message`` and ``fields``: the last is a field name no declared attribute of a serializer may take (``Serializer.fields``), hence ``get_fields``."""

    code: str = Field(description='A stable, machine-readable code, e.g. `invalid` or `capacity_unavailable`.')
    message: str = Field(description='What went wrong, in words, for a person.')
    fields: dict[str, Any] = Field(description='Details by field: for `invalid`, each refused field with its messages; for some conflicts, figures (`limit`, `exposure` and `amount` for `credit_limit_exceeded`); for `all_rejected`, `rejected`, each record refused with why. Empty otherwise.')


class Error(ApiModel):
    """The one shape of every error the API answers (``core.errors.error_body``)."""

    error: ErrorDetail = Field(description='The error.')


class EventTypeEnum(StrEnum):
    """* `contract.created` - Contract created * `contract.activated` - Contract activated * `contract.delivered` - Contract delivered * `contract.delivery_late` - Contract delivery late * `contract.node_replaced` - Contract node replaced * `contract.ending` - Contract ending within 24 hours * `contract.completed` - Contract completed * `contract.terminated` - Contract terminated * `contract.cancelled` - Contract cancelled * `compute_request.filled` - Compute request filled * `compute_request.expired` - Compute request expired * `incident.opened` - Incident opened * `incident.resolved` - Incident resolved * `invoice.issued` - Invoice issued * `credit_note.issued` - Credit note issued * `payout_statement.issued` - Payout statement issued * `webhook_endpoint.disabled` - Webhook endpoint disabled"""

    CONTRACT_CREATED = 'contract.created'
    CONTRACT_ACTIVATED = 'contract.activated'
    CONTRACT_DELIVERED = 'contract.delivered'
    CONTRACT_DELIVERY_LATE = 'contract.delivery_late'
    CONTRACT_NODE_REPLACED = 'contract.node_replaced'
    CONTRACT_ENDING = 'contract.ending'
    CONTRACT_COMPLETED = 'contract.completed'
    CONTRACT_TERMINATED = 'contract.terminated'
    CONTRACT_CANCELLED = 'contract.cancelled'
    COMPUTE_REQUEST_FILLED = 'compute_request.filled'
    COMPUTE_REQUEST_EXPIRED = 'compute_request.expired'
    INCIDENT_OPENED = 'incident.opened'
    INCIDENT_RESOLVED = 'incident.resolved'
    INVOICE_ISSUED = 'invoice.issued'
    CREDIT_NOTE_ISSUED = 'credit_note.issued'
    PAYOUT_STATEMENT_ISSUED = 'payout_statement.issued'
    WEBHOOK_ENDPOINT_DISABLED = 'webhook_endpoint.disabled'


class Event(ApiModel):
    id: int = Field(description="The event's id; webhooks carry it too (`Webhook-Id`): dedupe by it.")
    type: EventTypeEnum = Field(description='What happened, e.g. `contract.created`.')
    created: datetime = Field(description='When it happened (the change committed).')
    data: dict[str, Any] = Field(description='A snapshot of the object concerned (`object` names its kind, `id` its id), plus what the event is about (e.g. `replacement` for `contract.node_replaced`).')


class EventPage(ApiModel):
    next: str | None = Field(description='The URL of the next (older) page; null on the last.')
    previous: str | None = Field(description='The URL of the previous (newer) page; null on the first.')
    results: list[Event] = Field(description="This page's events, newest first.")


class EventTypesEnum(StrEnum):
    """* `*` - Every event type * `contract.created` - Contract created * `contract.activated` - Contract activated * `contract.delivered` - Contract delivered * `contract.delivery_late` - Contract delivery late * `contract.node_replaced` - Contract node replaced * `contract.ending` - Contract ending within 24 hours * `contract.completed` - Contract completed * `contract.terminated` - Contract terminated * `contract.cancelled` - Contract cancelled * `compute_request.filled` - Compute request filled * `compute_request.expired` - Compute request expired * `incident.opened` - Incident opened * `incident.resolved` - Incident resolved * `invoice.issued` - Invoice issued * `credit_note.issued` - Credit note issued * `payout_statement.issued` - Payout statement issued * `webhook_endpoint.disabled` - Webhook endpoint disabled"""

    NOT_SET = '*'
    CONTRACT_CREATED = 'contract.created'
    CONTRACT_ACTIVATED = 'contract.activated'
    CONTRACT_DELIVERED = 'contract.delivered'
    CONTRACT_DELIVERY_LATE = 'contract.delivery_late'
    CONTRACT_NODE_REPLACED = 'contract.node_replaced'
    CONTRACT_ENDING = 'contract.ending'
    CONTRACT_COMPLETED = 'contract.completed'
    CONTRACT_TERMINATED = 'contract.terminated'
    CONTRACT_CANCELLED = 'contract.cancelled'
    COMPUTE_REQUEST_FILLED = 'compute_request.filled'
    COMPUTE_REQUEST_EXPIRED = 'compute_request.expired'
    INCIDENT_OPENED = 'incident.opened'
    INCIDENT_RESOLVED = 'incident.resolved'
    INVOICE_ISSUED = 'invoice.issued'
    CREDIT_NOTE_ISSUED = 'credit_note.issued'
    PAYOUT_STATEMENT_ISSUED = 'payout_statement.issued'
    WEBHOOK_ENDPOINT_DISABLED = 'webhook_endpoint.disabled'


class Exposure(ApiModel):
    committed: Decimal = Field(description='Committed contracts, for their hours not yet invoiced.')
    metered: Decimal = Field(description='Metered contracts at their ceiling: every GPU of every hour not yet invoiced.')
    unpaid: Decimal = Field(description='Issued invoices, less what was paid and credited on them.')
    total: Decimal = Field(description='The exposure: committed + metered + unpaid.')
    available: Decimal | None = Field(description='What you may still buy: the credit limit less the total; null without a limit.')


class GpuModel(ApiModel):
    slug: str = Field(description="The model's identifier in every other call, e.g. h100-sxm-80gb.")
    name: str = Field(description="The model's name, e.g. NVIDIA H100 SXM 80GB.")
    vendor: str = Field(description='Who makes it.')
    memory_gb: int = Field(description='Memory per GPU, in GB.')
    bf16_tflops: int = Field(description='Peak dense BF16 TFLOPS per GPU.')


class IncidentKindEnum(StrEnum):
    """* `failure` - Failure * `degraded` - Degraded"""

    FAILURE = 'failure'
    DEGRADED = 'degraded'


class Replacement(ApiModel):
    contract_id: int = Field(description='The contract whose node was replaced.')
    failed_node: str = Field(description='The hostname of the node that failed.')
    replacement_node: str = Field(description='The hostname of the node serving instead.')
    from_hour: datetime = Field(description='The first hour the replacement serves the contract.')
    created_at: datetime = Field(description='When the replacement was made.')


class Incident(ApiModel):
    id: int = Field(description="The incident's id.")
    kind: IncidentKindEnum = Field(description='failure (cordoned and replaced) or degraded (recorded only).')
    cluster_id: int = Field(description="The node's cluster.")
    node_id: int = Field(description="The node's id.")
    hostname: str = Field(description="The node's hostname.")
    started_at: datetime = Field(description='When the node stopped serving (or degraded), as reported.')
    resolved_at: datetime | None = Field(default=None, description='When it was resolved; null while open.')
    is_open: bool = Field(description='Not yet resolved.')
    detail: str | None = Field(default=None, description='What happened, as reported.')
    replacements: list[Replacement] = Field(description="Replacement nodes given to contracts because of it: a provider sees all of its contracts', a lab those of its own contracts.")
    created_at: datetime = Field(description='When it was reported.')


class IncidentOpenRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    kind: IncidentKindEnum = Field(description='failure: the node cannot serve (it is cordoned and replaced in its contracts from the next whole hour); degraded: it serves with reduced performance (recorded only).')
    started_at: datetime = Field(description='When the node stopped serving (or degraded): not in the future (5 minutes of clock skew allowed), not more than 7 days ago.')
    detail: str | None = Field(default=None, description='What happened, for the record.')


class IncidentResolveRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    resolved_at: datetime | None = Field(default=None, description='When the node was serving again: not before started_at, not in the future. Now when omitted.')


class IndexDay(ApiModel):
    day: date = Field(description='The UTC day.')
    open: Decimal | None = Field(description="The day's first trade's price; null: no trade.")
    high: Decimal | None = Field(description="The day's highest price; null: no trade.")
    low: Decimal | None = Field(description="The day's lowest price; null: no trade.")
    close: Decimal | None = Field(description="The day's last trade's price; null: no trade.")
    vwap: Decimal | None = Field(description='The volume-weighted price per GPU-hour: sum(price x GPU-hours) / sum(GPU-hours), rounded half-up to cents; null: no trade.')
    volume_gpu_hours: int = Field(description='GPU-hours traded that day (GPUs x hours of each trade).')
    trades: int = Field(description='How many trades (contracts) were signed that day.')


class InvoiceLineKindEnum(StrEnum):
    """* `committed` - Committed block * `metered` - Metered usage * `adjustment` - Late usage adjustment * `sla_credit` - SLA credit"""

    COMMITTED = 'committed'
    METERED = 'metered'
    ADJUSTMENT = 'adjustment'
    SLA_CREDIT = 'sla_credit'


class InvoiceLine(ApiModel):
    contract: int = Field(description='The contract billed.')
    kind: InvoiceLineKindEnum = Field(description='What the line bills; sla_credit lines give back lost GPU-hours (a negative amount).')
    service_period: date = Field(description='The month whose service this line bills.')
    description: str = Field(description='The line in words.')
    quantity: Decimal = Field(description='GPU-hours.')
    unit_price: Decimal = Field(description='The price per GPU-hour.')
    amount: Decimal = Field(description='quantity x unit_price, rounded half-up to cents.')


class InvoiceStatusEnum(StrEnum):
    """* `draft` - Draft * `issued` - Issued * `paid` - Paid * `void` - Void"""

    DRAFT = 'draft'
    ISSUED = 'issued'
    PAID = 'paid'
    VOID = 'void'


class Payment(ApiModel):
    amount: Decimal = Field(description='The amount paid.')
    reference: str | None = Field(default=None, description="The payment's reference.")
    received_at: datetime = Field(description='When it was received.')


class Invoice(ApiModel):
    id: int = Field(description="The invoice's id.")
    number: str | None = Field(default=None, description="The invoice's number.")
    period: str = Field(description='The month billed, YYYY-MM.')
    status: InvoiceStatusEnum | None = Field(default=None, description='Where the invoice is: issued, paid, void and so on.')
    total: Decimal | None = Field(default=None, description='The sum of the lines.')
    amount_due: Decimal = Field(description='The total less credits and payments.')
    issued_at: datetime | None = Field(default=None, description='When it was issued.')
    paid_at: datetime | None = Field(default=None, description='When it was paid in full; null until then.')
    voided_at: datetime | None = Field(default=None, description='When it was voided; null otherwise.')
    lines: list[InvoiceLine] = Field(description='What is billed.')
    credit_notes: list[CreditNote] = Field(description='Credits against the invoice.')
    payments: list[Payment] = Field(description='Payments received.')


class InvoicePreview(ApiModel):
    period: str = Field(description='The month previewed, YYYY-MM.')
    total: Decimal = Field(description='The sum of the lines.')
    lines: list[dict[str, Any]] = Field(description='What the invoice would bill, as its lines would.')


class IssuedApiKey(ApiModel):
    id: int = Field(description="The key's id.")
    name: str | None = Field(default=None, description='A name to tell your keys apart.')
    scope: ScopeEnum = Field(description='full: reads and writes; read_only: GET requests only.')
    prefix: str = Field(description='Public part of the key, shown in lists.')
    created_at: datetime = Field(description='When the key was created.')
    last_used_at: datetime | None = Field(description='When the key last authenticated a request; null if never.')
    revoked_at: datetime | None = Field(description='When the key was revoked; null while it works.')
    is_active: bool = Field(description='Not revoked: the key works.')
    secret: str = Field(description='The whole key. Shown once; store it now.')


class WebhookEndpointStatusEnum(StrEnum):
    """* `enabled` - Enabled * `disabled` - Disabled"""

    ENABLED = 'enabled'
    DISABLED = 'disabled'


class WebhookEndpoint(ApiModel):
    id: int = Field(description="The endpoint's id.")
    url: str = Field(description='Where events are POSTed.')
    event_types: list[EventTypesEnum] = Field(description='The event types sent to it; `["*"]` for all.')
    description: str = Field(description='Your note about it.')
    status: WebhookEndpointStatusEnum = Field(description='enabled: events are sent to it; disabled: by you, or by the broker after a delivery kept failing for 3 days (see `disabled_reason`).')
    disabled_reason: str = Field(description='Why it was disabled; empty while enabled.')
    disabled_at: datetime | None = Field(description='When it was disabled; null while enabled.')
    created_at: datetime = Field(description='When it was registered.')


class IssuedWebhookEndpoint(WebhookEndpoint):
    secret: str = Field(description="The signing secret (`whsec_...`): shown this once and stored nowhere. Check each request's `Webhook-Signature` with it.")


class ListingCluster(ApiModel):
    id: int = Field(description="The cluster's id.")
    name: str = Field(description="A name unique among its provider's clusters.")
    gpu_model: str = Field(description="The GPU model's slug.")
    region: str = Field(description='Where the cluster is.')
    interconnect: InterconnectEnum = Field(description='The network between nodes.')
    gpus_per_node: int = Field(description='GPUs in each node.')


class ListingStatusEnum(StrEnum):
    """* `active` - Active * `paused` - Paused * `withdrawn` - Withdrawn"""

    ACTIVE = 'active'
    PAUSED = 'paused'
    WITHDRAWN = 'withdrawn'


class Reliability(ApiModel):
    """A provider's or a cluster's measured reliability over the last 30 days (broker.reliability)."""

    availability_30d: Decimal | None = Field(description='Percent of node-hours not lost to failures over the last 30 days; null until first measured.')
    mean_time_to_replace_seconds: int | None = Field(description="Mean seconds from a failure's start to a replacement node, over the last 30 days; null when no node was replaced.")
    late_deliveries_30d: int = Field(description='Contracts delivered late in the last 30 days.')


class Listing(ApiModel):
    id: int = Field(description="The listing's id.")
    provider: str = Field(description="The provider's name.")
    cluster: ListingCluster = Field(description='The cluster the nodes belong to.')
    node_count: int = Field(description='Nodes offered.')
    starts_at: datetime = Field(description="The window's start (a whole UTC hour).")
    ends_at: datetime = Field(description="The window's end (a whole UTC hour).")
    price_per_gpu_hour: Decimal = Field(description='The price per GPU-hour.')
    min_duration_hours: int | None = Field(default=None, description='The shortest booking accepted, in hours.')
    billing_mode: BillingModeEnum = Field(description='committed (every hour booked is paid) or metered (GPU-hours used).')
    status: ListingStatusEnum | None = Field(default=None, description='active (on offer), paused (not on offer for now) or withdrawn (for good).')
    available_nodes: int | None = Field(description="Nodes still unsold for the whole window asked (a search's, else the listing's own).")
    available_gpus: int | None = Field(description='available_nodes times the GPUs per node.')
    resale: bool = Field(description="true: hours a buyer resells from a committed contract (it is the seller, `provider`); false: the provider's own nodes.")
    sla_availability: Decimal | None = Field(default=None, description="The availability promised, in percent of a contract's GPU-hours; contracts keep the promise of their sale.")
    sla_breach_credit_rate: Decimal | None = Field(default=None, description="The multiple of the price credited per lost GPU-hour once a contract's lost hours pass the promise; below it, lost hours are credited at the price.")
    provider_reliability: Reliability = Field(description="The provider's measured reliability over the last 30 days, all its clusters.")
    cluster_reliability: Reliability = Field(description="The cluster's measured reliability over the last 30 days (what min_availability filters on).")
    created_at: datetime = Field(description='When the listing was created.')


class ListingCreateRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    cluster: int = Field(description='One of your clusters.')
    node_count: int = Field(description='How many of its nodes to offer.')
    starts_at: datetime = Field(description="The window's start: a whole UTC hour not yet begun.")
    ends_at: datetime = Field(description="The window's end: a whole UTC hour after starts_at.")
    price_per_gpu_hour: Decimal = Field(description='The price per GPU-hour, in whole cents.')
    min_duration_hours: int | None = Field(default=None, description='The shortest booking accepted, in hours; at most the window.')
    billing_mode: BillingModeEnum = Field(description='committed: the buyer pays every hour booked; metered: the buyer pays the GPU-hours it reports using, and may terminate early.')
    sla_availability: Decimal | None = Field(default=None, description="The availability promised, in percent of a contract's GPU-hours, 50 to 100; 99.00 when omitted.")
    sla_breach_credit_rate: Decimal | None = Field(default=None, description='The multiple of the price credited per lost GPU-hour past the promise, 1 to 10; 1.50 when omitted.')


class ResaleCreateRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    contract: int = Field(description='A committed contract you bought, scheduled or active, whose unused future hours you resell.')
    node_count: int = Field(description="How many of the contract's nodes to resell (whole nodes).")
    starts_at: datetime = Field(description="The resale's start: a whole UTC hour, the next one at the earliest.")
    ends_at: datetime = Field(description="The resale's end: a whole UTC hour, at the contract's end at the latest.")
    price_per_gpu_hour: Decimal = Field(description='Your price per GPU-hour, in whole cents.')
    min_duration_hours: int | None = Field(default=None, description='The shortest booking accepted, in hours; at most the window.')


ListingCreateRequestRequest = ListingCreateRequest | ResaleCreateRequest


class ListingUpdateStatusEnum(StrEnum):
    """* `active` - active * `paused` - paused"""

    ACTIVE = 'active'
    PAUSED = 'paused'


class NodeStatusEnum(StrEnum):
    """* `in_service` - In service * `maintenance` - Maintenance * `failed` - Failed"""

    IN_SERVICE = 'in_service'
    MAINTENANCE = 'maintenance'
    FAILED = 'failed'


class Node(ApiModel):
    id: int = Field(description="The node's id.")
    hostname: str = Field(description="The node's hostname, unique in its cluster.")
    status: NodeStatusEnum | None = Field(default=None, description='in_service (listed and sold), maintenance (neither) or failed (cordoned by an open failure incident until it is resolved).')


class NodeAddRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    count: int = Field(description='How many nodes to add.')
    hostnames: list[str] | None = Field(default=None, description='One per node, `count` of them; generated when omitted.')


class NodeUpdateStatusEnum(StrEnum):
    """* `in_service` - in_service * `maintenance` - maintenance"""

    IN_SERVICE = 'in_service'
    MAINTENANCE = 'maintenance'


class OrganizationStatusEnum(StrEnum):
    """* `active` - Active * `verified` - Verified * `suspended` - Suspended"""

    ACTIVE = 'active'
    VERIFIED = 'verified'
    SUSPENDED = 'suspended'


class Organization(ApiModel):
    id: int = Field(description="The organization's id.")
    name: str = Field(description="The organization's name, unique in the market.")
    role: str = Field(description='provider, lab or both.')
    is_provider: bool = Field(description='Whether it may list capacity.')
    is_lab: bool = Field(description='Whether it may buy capacity.')
    status: OrganizationStatusEnum = Field(description='active, or suspended by the operators (its keys then stop working).')
    credit_limit: Decimal | None = Field(description="The most your exposure may reach; null for no limit. Set by the broker's operators.")
    exposure: Exposure = Field(description='What you owe and have committed, which the limit bounds.')
    created_at: datetime = Field(description='When it joined.')


class PaginatedApiKeyList(ApiModel):
    count: int = Field(description='How many objects the whole list has.')
    next: str | None = Field(default=None, description='The URL of the next page; null on the last.')
    previous: str | None = Field(default=None, description='The URL of the previous page; null on the first.')
    results: list[ApiKey] = Field(description="This page's objects.")


class PaginatedClusterList(ApiModel):
    count: int = Field(description='How many objects the whole list has.')
    next: str | None = Field(default=None, description='The URL of the next page; null on the last.')
    previous: str | None = Field(default=None, description='The URL of the previous page; null on the first.')
    results: list[Cluster] = Field(description="This page's objects.")


class PaginatedComputeRequestList(ApiModel):
    count: int = Field(description='How many objects the whole list has.')
    next: str | None = Field(default=None, description='The URL of the next page; null on the last.')
    previous: str | None = Field(default=None, description='The URL of the previous page; null on the first.')
    results: list[ComputeRequest] = Field(description="This page's objects.")


class PaginatedContractList(ApiModel):
    count: int = Field(description='How many objects the whole list has.')
    next: str | None = Field(default=None, description='The URL of the next page; null on the last.')
    previous: str | None = Field(default=None, description='The URL of the previous page; null on the first.')
    results: list[Contract] = Field(description="This page's objects.")


class PaginatedContractNodeList(ApiModel):
    count: int = Field(description='How many objects the whole list has.')
    next: str | None = Field(default=None, description='The URL of the next page; null on the last.')
    previous: str | None = Field(default=None, description='The URL of the previous page; null on the first.')
    results: list[ContractNode] = Field(description="This page's objects.")


class PaginatedGpuModelList(ApiModel):
    count: int = Field(description='How many objects the whole list has.')
    next: str | None = Field(default=None, description='The URL of the next page; null on the last.')
    previous: str | None = Field(default=None, description='The URL of the previous page; null on the first.')
    results: list[GpuModel] = Field(description="This page's objects.")


class PaginatedIncidentList(ApiModel):
    count: int = Field(description='How many objects the whole list has.')
    next: str | None = Field(default=None, description='The URL of the next page; null on the last.')
    previous: str | None = Field(default=None, description='The URL of the previous page; null on the first.')
    results: list[Incident] = Field(description="This page's objects.")


class PaginatedInvoiceList(ApiModel):
    count: int = Field(description='How many objects the whole list has.')
    next: str | None = Field(default=None, description='The URL of the next page; null on the last.')
    previous: str | None = Field(default=None, description='The URL of the previous page; null on the first.')
    results: list[Invoice] = Field(description="This page's objects.")


class PaginatedListingList(ApiModel):
    count: int = Field(description='How many objects the whole list has.')
    next: str | None = Field(default=None, description='The URL of the next page; null on the last.')
    previous: str | None = Field(default=None, description='The URL of the previous page; null on the first.')
    results: list[Listing] = Field(description="This page's objects.")


class PaginatedNodeList(ApiModel):
    count: int = Field(description='How many objects the whole list has.')
    next: str | None = Field(default=None, description='The URL of the next page; null on the last.')
    previous: str | None = Field(default=None, description='The URL of the previous page; null on the first.')
    results: list[Node] = Field(description="This page's objects.")


class PayoutStatementStatusEnum(StrEnum):
    """* `issued` - Issued * `paid` - Paid * `carried` - Carried forward"""

    ISSUED = 'issued'
    PAID = 'paid'
    CARRIED = 'carried'


class PayoutStatement(ApiModel):
    id: int = Field(description="The statement's id.")
    number: str = Field(description="The statement's number.")
    period: str = Field(description='The month paid for, YYYY-MM.')
    gross: Decimal = Field(description="What the provider's contracts billed for the month, less its SLA credits.")
    fee: Decimal = Field(description="The platform's fee.")
    carried_in: Decimal | None = Field(default=None, description='Negative nets of earlier statements deducted here.')
    sla_credits: Decimal | None = Field(default=None, description='SLA credits charged back for lost GPU-hours (zero or negative), counted in gross; the fee gives back its share of them.')
    net: Decimal = Field(description='gross - fee + carried_in: what is paid out.')
    status: PayoutStatementStatusEnum | None = Field(default=None, description='Where the statement is.')
    carried_into: str | None = Field(description='The statement a negative net was carried into; null otherwise.')
    created_at: datetime = Field(description='When it was made.')
    paid_at: datetime | None = Field(default=None, description='When it was paid; null until then.')


class PaginatedPayoutStatementList(ApiModel):
    count: int = Field(description='How many objects the whole list has.')
    next: str | None = Field(default=None, description='The URL of the next page; null on the last.')
    previous: str | None = Field(default=None, description='The URL of the previous page; null on the first.')
    results: list[PayoutStatement] = Field(description="This page's objects.")


class QuoteLine(ApiModel):
    listing_id: int = Field(description='The listing (GET /api/v1/listings/{id}).')
    gpu_count: int = Field(description='GPUs of that listing, in whole nodes.')
    price_per_gpu_hour: Decimal = Field(description="The listing's price per GPU-hour when quoted.")


class QuoteStatusEnum(StrEnum):
    OPEN = 'open'
    ACCEPTED = 'accepted'
    EXPIRED = 'expired'


class Quote(ApiModel):
    id: int = Field(description="The quote's id.")
    gpu_model: str = Field(description="The GPU model's slug.")
    gpu_count: int = Field(description='GPUs quoted.')
    starts_at: datetime = Field(description='The start (a whole UTC hour).')
    duration_hours: int = Field(description='Hours from starts_at.')
    ends_at: datetime = Field(description='starts_at plus duration_hours.')
    billing_mode: BillingModeEnum = Field(description='committed or metered.')
    colocated: bool | None = Field(default=None, description='Filled from one cluster only.')
    region: str | None = Field(default=None, description='Only clusters in this region; empty for any.')
    lines: list[QuoteLine] = Field(description='The fill, cheapest first: each listing and the GPUs it gives. Accepting books each at its price.')
    total_amount: Decimal = Field(description="What the whole fill costs: each line's GPUs x hours x price, summed (a metered line's ceiling: every GPU-hour used).")
    average_price_per_gpu_hour: Decimal = Field(description='total_amount per GPU-hour quoted, on average.')
    status: QuoteStatusEnum = Field(description='open (it may be accepted until expires_at), accepted (booked: contract_ids), or expired.')
    expires_at: datetime = Field(description='Until when it may be accepted: QUOTE_TTL_SECONDS after it was made, or its start if sooner. It holds no capacity meanwhile.')
    accepted_at: datetime | None = Field(default=None, description='When it was accepted; null until then.')
    contract_ids: list[int] = Field(description='The contracts its acceptance wrote, one per line (GET /api/v1/contracts/{id}); empty until then.')
    created_at: datetime = Field(description='When it was made.')


class PaginatedQuoteList(ApiModel):
    count: int = Field(description='How many objects the whole list has.')
    next: str | None = Field(default=None, description='The URL of the next page; null on the last.')
    previous: str | None = Field(default=None, description='The URL of the previous page; null on the first.')
    results: list[Quote] = Field(description="This page's objects.")


class SshKey(ApiModel):
    id: int = Field(description="The key's id: attach it to a contract with PUT /api/v1/contracts/{id}/access.")
    name: str = Field(description="The key's name, unique among your keys.")
    public_key: str = Field(description='The public key line, normalised: type, base64, comment.')
    fingerprint: str = Field(description='SHA256:<base64>, as `ssh-keygen -l` prints it.')
    created_at: datetime = Field(description='When it was registered.')


class PaginatedSshKeyList(ApiModel):
    count: int = Field(description='How many objects the whole list has.')
    next: str | None = Field(default=None, description='The URL of the next page; null on the last.')
    previous: str | None = Field(default=None, description='The URL of the previous page; null on the first.')
    results: list[SshKey] = Field(description="This page's objects.")


class Trade(ApiModel):
    signed_at: datetime = Field(description='When the contract was signed.')
    price_per_gpu_hour: Decimal = Field(description='The price per GPU-hour.')
    gpu_count: int = Field(description='GPUs bought.')
    hours: int = Field(description='Hours bought, as signed (an early release does not change them).')
    gpu_hours: int = Field(description='gpu_count x hours.')
    starts_at: datetime = Field(description='When the GPUs are delivered from.')
    billing_mode: BillingModeEnum = Field(description='committed (every hour paid) or metered (GPU-hours used).')
    resale: bool = Field(description="true: a resale of capacity bought earlier; false: a primary sale of a provider's own nodes.")


class PaginatedTradeList(ApiModel):
    count: int = Field(description='How many objects the whole list has.')
    next: str | None = Field(default=None, description='The URL of the next page; null on the last.')
    previous: str | None = Field(default=None, description='The URL of the previous page; null on the first.')
    results: list[Trade] = Field(description="This page's objects.")


class UsageRecord(ApiModel):
    id: str = Field(description="The provider's id of the record, unique per provider.")
    contract: int = Field(description='The contract the GPUs were used under.')
    node: str | None = Field(default=None, description="The node's hostname; null if not given.")
    started_at: datetime = Field(description='The start of the use.')
    ended_at: datetime = Field(description='The end of the use.')
    gpu_seconds: Decimal = Field(description='GPU-seconds used over [started_at, ended_at).')
    period: date = Field(description='First day of the UTC month the usage falls in.')
    received_at: datetime = Field(description='When the record was received.')


class PaginatedUsageRecordList(ApiModel):
    count: int = Field(description='How many objects the whole list has.')
    next: str | None = Field(default=None, description='The URL of the next page; null on the last.')
    previous: str | None = Field(default=None, description='The URL of the previous page; null on the first.')
    results: list[UsageRecord] = Field(description="This page's objects.")


class WebhookDeliveryStatusEnum(StrEnum):
    """* `pending` - Pending * `succeeded` - Succeeded * `failed` - Failed"""

    PENDING = 'pending'
    SUCCEEDED = 'succeeded'
    FAILED = 'failed'


class WebhookDelivery(ApiModel):
    id: int = Field(description="The delivery's id.")
    event: int = Field(description="The event's id (GET /api/v1/events/{id}).")
    event_type: str = Field(description="The event's type.")
    status: WebhookDeliveryStatusEnum = Field(description='pending: to be sent (again) at `next_attempt_at`; succeeded: the endpoint answered 2xx; failed: it kept failing for 3 days, or the endpoint was disabled.')
    attempts: int = Field(description='How many times it was sent.')
    next_attempt_at: datetime | None = Field(description='When it is sent next; null once it succeeded or failed.')
    last_attempt_at: datetime | None = Field(description='When it was last sent; null before the first attempt.')
    last_status_code: int | None = Field(description='The HTTP status of the last answer; null if none came.')
    last_error: str = Field(description='Why the last attempt failed; empty after a success.')
    succeeded_at: datetime | None = Field(description='When the endpoint answered 2xx; null until then.')
    created_at: datetime = Field(description="When it was scheduled: its event's time. It is retried for 3 days from then.")


class PaginatedWebhookDeliveryList(ApiModel):
    count: int = Field(description='How many objects the whole list has.')
    next: str | None = Field(default=None, description='The URL of the next page; null on the last.')
    previous: str | None = Field(default=None, description='The URL of the previous page; null on the first.')
    results: list[WebhookDelivery] = Field(description="This page's objects.")


class PaginatedWebhookEndpointList(ApiModel):
    count: int = Field(description='How many objects the whole list has.')
    next: str | None = Field(default=None, description='The URL of the next page; null on the last.')
    previous: str | None = Field(default=None, description='The URL of the previous page; null on the first.')
    results: list[WebhookEndpoint] = Field(description="This page's objects.")


class PatchedClusterUpdateRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    name: str | None = Field(default=None, description='A new name, unique among your clusters.')


class PatchedListingUpdateRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    price_per_gpu_hour: Decimal | None = Field(default=None, description='A new price per GPU-hour, for new contracts.')
    status: ListingUpdateStatusEnum | None = Field(default=None, description='Pause or resume.')
    sla_availability: Decimal | None = Field(default=None, description='A new availability promise (50 to 100), for new contracts.')
    sla_breach_credit_rate: Decimal | None = Field(default=None, description='A new credit rate past the promise (1 to 10), for new contracts.')


class PatchedNodeUpdateRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    status: NodeUpdateStatusEnum | None = Field(default=None, description='in_service, or maintenance to take the node out. Omitted: no change.')


class PriceIndex(ApiModel):
    gpu_model: str = Field(description="The GPU model's slug.")
    from_: date = Field(alias='from', description='The first UTC day asked.')
    to: date = Field(description='The last UTC day asked.')
    days: list[IndexDay] = Field(description='Each day of [from, to] already computed, oldest first (the index of a day is computed after it ends, within the hour).')


class QuoteCreateRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    gpu_model: str = Field(description="A GPU model's slug (GET /api/v1/gpu-models); an unknown one is a 400.")
    gpu_count: int = Field(description='GPUs wanted, in whole nodes of the clusters that fill it.')
    starts_at: datetime = Field(description='The start: a whole UTC hour not yet begun.')
    duration_hours: int = Field(description='How many hours from starts_at.')
    billing_mode: BillingModeEnum = Field(description='committed (every hour is paid) or metered (GPU-hours used).')
    colocated: bool | None = Field(default=None, description='Fill from one cluster only.')
    region: str | str | None = Field(default=None, description='Only clusters in this region; any when omitted.')


class SshKeyCreateRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    name: str = Field(description='A name for the key, unique among your keys.')
    public_key: str = Field(description='One OpenSSH public key line (the .pub file): ssh-ed25519, ssh-rsa of at least 2048 bits, ecdsa-sha2-nistp256/384/521, sk-ssh-ed25519@openssh.com or sk-ecdsa-sha2-nistp256@openssh.com, then the base64 key and an optional comment. Never a private key: one is refused.')


class UsageBatchRequestRecordsItem(ApiModel):
    id: str = Field(description='Your id of the record, unique among your records: a record sent again is a duplicate.')
    contract: int = Field(description='The contract the GPUs were used under.')
    node: str | None = Field(default=None, description="The hostname of the contract's node that was used; omit for the contract as a whole.")
    started_at: datetime = Field(description='The start of the use, with a zone.')
    ended_at: datetime = Field(description='The end of the use: after started_at, in the past, in the same UTC month.')
    gpu_seconds: Decimal = Field(description='GPU-seconds used over [started_at, ended_at), at most 3 decimals (a JSON number is accepted too).')


class UsageBatchRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    records: list[UsageBatchRequestRecordsItem] = Field(description='Up to 1,000 records.')


class UsageRejection(ApiModel):
    index: int = Field(description="The record's position in `records`.")
    id: str | None = Field(description="The record's `id`; null when it had none.")
    code: str = Field(description='Why it was rejected, e.g. `invalid`, `exceeds_capacity` or `node_failed`.')
    message: str = Field(description='Why, in words.')


class UsageIngestResult(ApiModel):
    accepted: list[str] = Field(description='Ids of the records kept.')
    duplicates: list[str] = Field(description='Ids seen before: nothing was stored again.')
    rejected: list[UsageRejection] = Field(description='Records refused, each with why.')


class WebhookEndpointCreateRequest(ApiModel):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    url: str = Field(description='An https URL on a public address: no credentials, no private, loopback or link-local host (checked again against what its name resolves to at every delivery). Answer 2xx within 10 s; redirects are not followed.')
    event_types: list[EventTypesEnum] = Field(description='The event types to send to it; `["*"]` for all, alone.')
    description: str | None = Field(default=None, description='A note for yourself.')
