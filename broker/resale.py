"""Resale: a lab lists unused future hours of a committed contract it holds, at its own price.

A contract's nodes are allocated to it at a depth d (0 for a provider's own listing). Its
holder may list whole nodes of it for whole hours inside the contract's, from the next hour
on: a listing at depth d + 1 (``Listing.depth``), which reserves those nodes for those hours
at depth d + 1 and is linked to the contract by a ``Resale`` row. Search, booking and the
matching engine then sell it like any listing: a sale is a contract with the holder as seller,
allocating the nodes at depth d + 1. The deepest sale of an hour is the one that holds it.

What keeps an hour with one buyer is the database's, per depth:

- a node is reserved at most once per depth for any hour, and sold at most once per depth
  (the exclusion constraints of ``marketplace/0014`` and ``broker/0011``), so the same hours
  cannot be listed twice, nor sold twice, by their holder;
- a reservation at depth d + 1 must lie inside hours its resale's contract holds the node at
  depth d, that contract committed, not released and bought by the resale's seller (the
  trigger ``listing_node_resale_held`` of ``broker/0011``), so nobody resells what they do
  not hold.

The resold contract keeps its obligations to its own seller: it is invoiced as before. The
sale's proceeds go to the reseller's payout statement, less ``RESALE_FEE_RATE`` in place of
the platform fee (the rating statement, ``billing.close_sql``). Withdrawing the listing
releases its unsold reservations back to the holder, who may list them again; a buyer of
resold hours may resell them in turn (depth d + 2). Metered contracts cannot be resold: their
hours are paid only when used, so there is nothing committed to sell on.
"""

from datetime import datetime
from decimal import Decimal

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q

from broker.models import Allocation, Contract, Resale
from core.errors import CapacityUnavailable, InvalidInput, InvalidTransition
from core.services import audit_record
from core.timeutils import next_hour
from marketplace.models import BillingMode, Listing, ListingNode, Node, Organization
from marketplace.services import NODE_BATCH_SIZE, listing_withdraw, validate_listing_terms


def _unknown_contract() -> InvalidInput:
    return InvalidInput("Unknown contract.", fields={"contract": ["No such contract of yours."]})


def resale_create(
    *,
    holder: Organization,
    contract_id: int,
    node_count: int,
    starts_at: datetime,
    ends_at: datetime,
    price_per_gpu_hour: Decimal,
    min_duration_hours: int = 1,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
) -> Listing:
    """List ``node_count`` nodes of a committed contract the holder bought, for the whole hours
    [starts_at, ends_at) inside the contract's, from the next hour on, at the holder's price."""
    validate_listing_terms(
        starts_at=starts_at,
        ends_at=ends_at,
        price_per_gpu_hour=price_per_gpu_hour,
        min_duration_hours=min_duration_hours,
    )
    if starts_at < next_hour():
        raise InvalidInput(
            "A resale starts at the next whole hour at the earliest.",
            fields={"starts_at": ["Must be the next whole hour or later."]},
        )
    with transaction.atomic():
        # The contract's row lock: one resale writer per contract at a time (and none while an
        # operator cancels it), so the nodes chosen below stay free to list until written.
        contract = Contract.objects.select_for_update(no_key=True).filter(pk=contract_id, lab=holder).first()
        if contract is None:
            raise _unknown_contract()
        _check_resellable(contract, starts_at=starts_at, ends_at=ends_at)
        depth = Listing.objects.values_list("depth", flat=True).get(pk=contract.listing_id)
        node_ids = _free_to_resell(contract, depth=depth, starts_at=starts_at, ends_at=ends_at, limit=node_count)
        if len(node_ids) < node_count:
            raise InvalidInput(
                f"Only {len(node_ids)} nodes of this contract are held, in service and not already resold or "
                "listed for the whole window.",
                fields={"node_count": [f"At most {len(node_ids)} nodes are free to resell for this window."]},
            )
        listing = Listing.objects.create(
            provider=holder,
            cluster_id=contract.cluster_id,
            node_count=node_count,
            starts_at=starts_at,
            ends_at=ends_at,
            price_per_gpu_hour=price_per_gpu_hour,
            min_duration_hours=min_duration_hours,
            billing_mode=BillingMode.COMMITTED,
            depth=depth + 1,
            # The promise the holder bought is the one it passes on (every contract has one since
            # migration 0009 backfilled and its trigger copies it).
            sla_availability=contract.sla_availability,
            sla_breach_credit_rate=contract.sla_breach_credit_rate,
        )
        Resale.objects.create(listing=listing, contract=contract)
        try:
            with transaction.atomic():
                ListingNode.objects.bulk_create(
                    [
                        ListingNode(
                            listing=listing, node_id=node_id, starts_at=starts_at, ends_at=ends_at, depth=depth + 1
                        )
                        for node_id in node_ids
                    ],
                    batch_size=NODE_BATCH_SIZE,
                )
        except IntegrityError:  # listed at the same moment through another path: nothing written
            raise CapacityUnavailable("Those hours of this contract were just listed or sold.")
        audit_record(
            action="resale_listed",
            target=listing,
            actor=actor,
            actor_label=actor_label,
            message=f"{node_count} nodes of contract {contract.pk}, {starts_at:%Y-%m-%dT%H:%MZ} to "
            f"{ends_at:%Y-%m-%dT%H:%MZ} at {price_per_gpu_hour}",
        )
    return listing


def _check_resellable(contract: Contract, *, starts_at: datetime, ends_at: datetime) -> None:
    if contract.billing_mode != BillingMode.COMMITTED:
        raise InvalidInput(
            "Metered contracts cannot be resold: only committed hours can be sold on.",
            fields={"contract": ["A metered contract cannot be resold."]},
        )
    if contract.released_at is not None or contract.status not in (
        Contract.Status.SCHEDULED,
        Contract.Status.ACTIVE,
    ):
        raise InvalidInput(
            f"This contract is {contract.status}: only a scheduled or active contract can be resold.",
            fields={"contract": [f"The contract is {contract.status}."]},
        )
    outside = [
        name
        for name, out in (("starts_at", starts_at < contract.starts_at), ("ends_at", ends_at > contract.ends_at))
        if out
    ]
    if outside:
        window = f"The contract runs {contract.starts_at:%Y-%m-%dT%H:%MZ} to {contract.ends_at:%Y-%m-%dT%H:%MZ}."
        raise InvalidInput(
            "A resale must fall inside the contract's window.", fields={name: [window] for name in outside}
        )


def _free_to_resell(contract: Contract, *, depth: int, starts_at: datetime, ends_at: datetime, limit: int) -> list[int]:
    """The contract's nodes (in node order) it holds over the whole window, in service, with
    none of those hours already listed or sold on at the next depth: at most ``limit``."""
    listed = ListingNode.objects.holding_during(starts_at, ends_at).filter(node_id=OuterRef("node_id"), depth=depth + 1)
    sold_on = Allocation.objects.holding_during(starts_at, ends_at).filter(node_id=OuterRef("node_id"), depth=depth + 1)
    return list(
        Allocation.objects.filter(
            contract=contract,
            depth=depth,
            starts_at__lte=starts_at,
            ends_at__gte=ends_at,
            node__status=Node.Status.IN_SERVICE,
        )
        .exclude(Exists(listed))
        .exclude(Exists(sold_on))
        .order_by("node_id")
        .values_list("node_id", flat=True)[:limit]
    )


def resales_end_before_release(*, contract: Contract, release_at: datetime, actor_label: str = "") -> None:
    """Before a locked contract is released early (an operator's cancellation): withdraw its
    resales, so nothing more of it is sold on, or refuse if hours after ``release_at`` already
    were, since the contract would no longer hold what their buyers hold.

    Every listing the release touches is locked first (after the contract): its own listing, its
    resales and any other listing reserving its nodes (the free spans' rebuild locks them), in
    id order, the order the matching engine and quote acceptance lock listings in. So a booking
    of a resale either committed before this reads the sales, or finds it withdrawn.
    """
    resales = Resale.objects.filter(contract=contract).values("listing_id")
    reserving = ListingNode.objects.holding().filter(
        node_id__in=Allocation.objects.filter(contract=contract).values("node_id")
    )
    list(
        Listing.objects.select_for_update()
        .filter(Q(pk=contract.listing_id) | Q(pk__in=resales) | Q(pk__in=reserving.values("listing_id")))
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    listing_ids = list(Listing.objects.filter(pk__in=resales).order_by("pk").values_list("pk", flat=True))
    if not listing_ids:
        return
    if Allocation.objects.holding().filter(listing_id__in=listing_ids, ends_at__gt=release_at).exists():
        raise InvalidTransition(
            f"Hours of contract {contract.pk} from {release_at:%Y-%m-%dT%H:%MZ} on are resold to other labs: "
            "cancel those contracts first.",
            code="contract_resold",
        )
    for listing in Listing.objects.filter(pk__in=listing_ids).exclude(status=Listing.Status.WITHDRAWN):
        listing_withdraw(listing=listing, actor_label=actor_label)
