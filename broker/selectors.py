from django.db.models import Prefetch, Q, QuerySet

from broker.models import Allocation, ComputeRequest, Contract
from marketplace.models import Organization


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


def contract_detail_list(*, organization: Organization) -> QuerySet[Contract]:
    """``contract_list`` with each contract's allocations and their nodes, by hostname."""
    return contract_list(organization=organization).prefetch_related(
        Prefetch("allocations", queryset=Allocation.objects.select_related("node").order_by(*_BY_HOSTNAME))
    )


def contract_nodes(*, contract: Contract) -> QuerySet[Allocation]:
    """A contract's nodes (its allocations, with their node), by hostname."""
    return Allocation.objects.filter(contract=contract).select_related("node").order_by(*_BY_HOSTNAME)


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
