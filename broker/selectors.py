from django.db import connection
from django.db.models import Exists, F, OuterRef, Prefetch, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from broker.models import Allocation, ComputeRequest, Contract, Incident, Replacement
from core.timeutils import HORIZON
from marketplace.models import Listing, Organization


def compute_request_list(*, lab: Organization) -> QuerySet[ComputeRequest]:
    return (
        ComputeRequest.objects.filter(lab=lab)
        .select_related("gpu_model")
        .prefetch_related(Prefetch("contracts", queryset=Contract.objects.only("id", "request_id").order_by("id")))
        .order_by("-created_at", "-id")
    )


# A contract's nodes are read in this order everywhere (a hostname is unique in its cluster,
# and a contract's nodes are of one cluster).
_BY_HOSTNAME = ("node__hostname", "node_id")


def contract_list(*, organization: Organization) -> QuerySet[Contract]:
    """Contracts an organization is a party to, as buyer or seller; nobody else sees them.

    Without their nodes: a contract may hold thousands, so lists leave them to
    ``contract_nodes`` and a single contract reads them with ``contract_detail_list``.
    """
    return (
        Contract.objects.filter(Q(lab=organization) | Q(provider=organization))
        .select_related("lab", "provider", "cluster__gpu_model")
        .order_by("-created_at", "-id")
    )


def _serving(allocations: QuerySet[Allocation]) -> QuerySet[Allocation]:
    """Leave out a node replaced before it served the contract an hour (``broker.incidents``
    cuts it to equal bounds); the history keeps it. A contract released before its start
    still lists its nodes."""
    replaced = Replacement.objects.filter(contract_id=OuterRef("contract_id"), failed_node_id=OuterRef("node_id"))
    return allocations.exclude(Q(ends_at=F("starts_at")) & Q(Exists(replaced)))


def contract_detail_list(*, organization: Organization) -> QuerySet[Contract]:
    """``contract_list`` with each contract's serving allocations and their nodes, by hostname."""
    return contract_list(organization=organization).prefetch_related(
        Prefetch("allocations", queryset=_serving(Allocation.objects.select_related("node")).order_by(*_BY_HOSTNAME))
    )


def contract_nodes(*, contract: Contract, history: bool = False) -> QuerySet[Allocation]:
    """A contract's nodes (its allocations, with their node), by hostname, each with the
    hostname of the node it replaced (``replaces``, None for an original node). Without
    ``history``, a node replaced before it served an hour is left out."""
    replaced = Replacement.objects.filter(contract_id=OuterRef("contract_id"), replacement_node_id=OuterRef("node_id"))
    allocations = Allocation.objects.filter(contract=contract)
    if not history:
        allocations = _serving(allocations)
    return (
        allocations.select_related("node")
        .annotate(replaces=Subquery(replaced.values("failed_node__hostname")[:1]))
        .order_by(*_BY_HOSTNAME, "starts_at")
    )


def compute_requests_to_match() -> QuerySet[ComputeRequest]:
    """Open requests the matching engine may fill: not those of a suspended lab.

    Suspension cancels a lab's open requests (``organization_set_status``); this keeps out
    one committed in a race with it. Reactivated, the lab's remaining open requests match.
    """
    return ComputeRequest.objects.filter(status=ComputeRequest.Status.OPEN).exclude(
        lab__status=Organization.Status.SUSPENDED
    )


def segments_with_open_requests() -> list[int]:
    """The market segments (GPU models) with requests to match, for the periodic re-match."""
    return list(compute_requests_to_match().values_list("gpu_model_id", flat=True).distinct().order_by("gpu_model_id"))


def incident_list(*, organization: Organization) -> QuerySet[Incident]:
    """Incidents an organization may see: as a provider, those of its nodes; as a lab, those on
    nodes that served (or serve, or were to serve) its contracts while the incident lasted,
    and those that replaced a node of its contracts. Each with the replacements made for
    contracts it is a party to, and the nodes' hostnames."""
    visible = Q(provider=organization)
    if organization.is_lab:
        overlapping = Allocation.objects.filter(
            node_id=OuterRef("node_id"), contract__lab=organization, ends_at__gte=OuterRef("started_at")
        ).exclude(starts_at__gte=Coalesce(OuterRef("resolved_at"), Value(HORIZON)))
        replaced = Replacement.objects.filter(incident_id=OuterRef("pk"), contract__lab=organization)
        visible |= Q(Exists(overlapping)) | Q(Exists(replaced))
    party = Q(contract__lab=organization) | Q(contract__provider=organization)
    return (
        Incident.objects.filter(visible)
        .select_related("node")
        .prefetch_related(
            Prefetch(
                "replacements",
                queryset=Replacement.objects.filter(party)
                .select_related("failed_node", "replacement_node")
                .order_by("id"),
            )
        )
        .order_by("-started_at", "-id")
    )


# Resale activity per organization (broker.resale), for operators: as a seller, the resale
# listings it made (active now, GPU-hours listed) and what they sold (contracts, GPU-hours,
# proceeds before the resale fee); as a buyer, the GPU-hours it bought on resale. Cancelled
# contracts count for neither side.
RESALE_ACTIVITY = """
WITH sold AS (
    SELECT k.listing_id, k.lab_id, k.gpu_count * EXTRACT(EPOCH FROM k.ends_at - k.starts_at) / 3600 AS gpu_hours,
           k.total_amount
    FROM broker_contract k JOIN marketplace_listing l ON l.id = k.listing_id
    WHERE l.depth > 0 AND k.status <> %(cancelled)s
), selling AS (
    SELECT l.provider_id AS organization_id, COUNT(*) AS listings,
           COUNT(*) FILTER (WHERE l.status = %(active)s) AS active,
           SUM(l.node_count * c.gpus_per_node * EXTRACT(EPOCH FROM l.ends_at - l.starts_at) / 3600) AS listed,
           SUM(s.contracts) AS contracts, SUM(s.gpu_hours) AS sold, SUM(s.proceeds) AS proceeds
    FROM marketplace_listing l
    JOIN marketplace_cluster c ON c.id = l.cluster_id
    LEFT JOIN LATERAL (
        SELECT COUNT(*) AS contracts, SUM(sold.gpu_hours) AS gpu_hours, SUM(sold.total_amount) AS proceeds
        FROM sold WHERE sold.listing_id = l.id
    ) s ON TRUE
    WHERE l.depth > 0
    GROUP BY l.provider_id
), buying AS (
    SELECT lab_id AS organization_id, SUM(gpu_hours) AS bought FROM sold GROUP BY lab_id
)
SELECT o.id, o.name, COALESCE(selling.listings, 0), COALESCE(selling.active, 0), COALESCE(selling.listed, 0),
       COALESCE(selling.contracts, 0), COALESCE(selling.sold, 0), COALESCE(selling.proceeds, 0),
       COALESCE(buying.bought, 0)
FROM marketplace_organization o
LEFT JOIN selling ON selling.organization_id = o.id
LEFT JOIN buying ON buying.organization_id = o.id
WHERE selling.organization_id IS NOT NULL OR buying.organization_id IS NOT NULL
ORDER BY COALESCE(selling.proceeds, 0) DESC, o.name
"""

_RESALE_ACTIVITY_FIELDS = (
    "organization_id",
    "organization",
    "listings",
    "active_listings",
    "gpu_hours_listed",
    "contracts_sold",
    "gpu_hours_sold",
    "proceeds",
    "gpu_hours_bought",
)


def resale_activity() -> list[dict]:
    """Each organization that resold or bought resold capacity, with its figures."""
    with connection.cursor() as cursor:
        cursor.execute(RESALE_ACTIVITY, {"cancelled": Contract.Status.CANCELLED, "active": Listing.Status.ACTIVE})
        return [dict(zip(_RESALE_ACTIVITY_FIELDS, row, strict=True)) for row in cursor.fetchall()]
