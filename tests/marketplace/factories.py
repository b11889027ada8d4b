"""Factories for organizations, clusters, listings and contracts, and ``sell`` to simulate
sold capacity; the fixed clock the tests run at.

Listings are created through ``listing_create`` so their ListingNode reservations exist, as
they would in production. ``sell`` writes a contract with allocations directly, standing in
for the broker's booking.
"""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import factory
from django.db import transaction
from django.db.models import Exists, OuterRef

from broker.models import Allocation, Contract
from core.timeutils import hours_between, next_hour
from marketplace.models import (
    BillingMode,
    Cluster,
    GpuModel,
    Interconnect,
    Listing,
    ListingNode,
    Organization,
)
from marketplace.services import cluster_create, listing_create, listing_update, listing_withdraw

DEFAULT_GPU_MODEL = "h100-sxm-80gb"


def gpu_model(slug: str = DEFAULT_GPU_MODEL) -> GpuModel:
    return GpuModel.objects.get(slug=slug)


class OrganizationFactory(factory.django.DjangoModelFactory):
    """A provider by default; ``OrganizationFactory(lab=True)`` or ``(both=True)`` for the others."""

    class Meta:
        model = Organization

    class Params:
        lab = factory.Trait(is_provider=False, is_lab=True)
        both = factory.Trait(is_provider=True, is_lab=True)

    name = factory.Sequence(lambda n: f"Organization {n}")
    is_provider = True
    is_lab = False


class ClusterFactory(factory.django.DjangoModelFactory):
    """A cluster registered with ``cluster_create``: ``node_count`` in-service nodes (4 by default)."""

    class Meta:
        model = Cluster

    provider = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"cluster-{n}")
    gpu_model = factory.LazyFunction(gpu_model)
    region = "us-south-1"
    interconnect = Interconnect.INFINIBAND
    gpus_per_node = 8
    node_count = 4

    @classmethod
    def _create(cls, model_class, *args, **kwargs) -> Cluster:
        return cluster_create(**kwargs)


class ListingFactory(factory.django.DjangoModelFactory):
    """A listing made by ``listing_create``, then paused or withdrawn if ``status`` says so."""

    class Meta:
        model = Listing

    cluster = factory.SubFactory(ClusterFactory)
    provider = factory.SelfAttribute("cluster.provider")
    node_count = 2
    starts_at = factory.LazyFunction(next_hour)
    ends_at = factory.LazyAttribute(lambda listing: listing.starts_at + timedelta(hours=24))
    price_per_gpu_hour = Decimal("2.5000")
    min_duration_hours = 1
    billing_mode = BillingMode.COMMITTED
    status = Listing.Status.ACTIVE

    @classmethod
    def _create(cls, model_class, *args, status: str = Listing.Status.ACTIVE, **kwargs) -> Listing:
        listing = listing_create(**kwargs)
        if status == Listing.Status.PAUSED:
            listing = listing_update(listing=listing, status=status)
        elif status == Listing.Status.WITHDRAWN:
            listing = listing_withdraw(listing=listing)
        return listing


def contract_for(
    listing: Listing, node_count: int, starts_at: datetime, ends_at: datetime, lab: Organization
) -> Contract:
    """A scheduled contract on the listing's terms, with no allocation yet."""
    gpu_count = node_count * listing.cluster.gpus_per_node
    price = listing.price_per_gpu_hour
    committed = listing.billing_mode == BillingMode.COMMITTED
    return Contract.objects.create(
        listing=listing,
        lab=lab,
        provider_id=listing.provider_id,
        cluster_id=listing.cluster_id,
        gpu_count=gpu_count,
        node_count=node_count,
        starts_at=starts_at,
        ends_at=ends_at,
        price_per_gpu_hour=price,
        billing_mode=listing.billing_mode,
        total_amount=gpu_count * hours_between(starts_at, ends_at) * price if committed else None,
        status=Contract.Status.SCHEDULED,
    )


def sell(listing: Listing, node_count: int, starts_at: datetime, ends_at: datetime, lab: Organization) -> Contract:
    """Write a scheduled contract for ``node_count`` of the listing's reserved nodes over the window.

    Picks reservations of the listing, not released, whose in-service node has no allocation
    overlapping the window. Stands in for the broker's booking service in tests.
    """
    sold = Allocation.objects.holding_during(starts_at, ends_at).filter(node_id=OuterRef("node_id"))
    free = list(listing.listing_nodes.sellable().exclude(Exists(sold)).order_by("id")[:node_count])
    if len(free) < node_count:
        raise ValueError(f"only {len(free)} free reserved nodes in listing {listing.pk} for that window")
    with transaction.atomic():
        contract = contract_for(listing, node_count, starts_at, ends_at, lab)
        Allocation.objects.bulk_create(
            Allocation(
                contract=contract,
                listing_node=binding,
                node_id=binding.node_id,
                listing=listing,
                starts_at=starts_at,
                ends_at=ends_at,
            )
            for binding in free
        )
    return contract


def reserved_nodes(listing_id: int) -> set[int]:
    """The nodes a listing's reservations hold (released ones left out)."""
    return set(ListingNode.objects.filter(listing_id=listing_id, released=False).values_list("node_id", flat=True))


# A fixed instant in the middle of an hour: the current hour is 09:00 UTC.
NOW = datetime(2031, 3, 10, 9, 17, 23, tzinfo=UTC)
CURRENT_HOUR = datetime(2031, 3, 10, 9, tzinfo=UTC)


def hour(offset: int) -> datetime:
    """The whole UTC hour ``offset`` hours after the current hour of ``NOW``."""
    return CURRENT_HOUR + timedelta(hours=offset)


def iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")
