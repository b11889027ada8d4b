"""Builders for market data tests: listings on clusters of their own, contracts signed at a
chosen moment, resale listings and open compute requests, written with the ORM or the
marketplace's services as in production."""

from datetime import datetime
from decimal import Decimal

import time_machine

from broker.models import ComputeRequest, Contract
from marketplace.models import BillingMode, Listing, Organization
from tests.marketplace.factories import (
    DEFAULT_GPU_MODEL,
    ClusterFactory,
    ListingFactory,
    OrganizationFactory,
    contract_for,
    gpu_model,
)


def listing(
    *,
    starts_at: datetime,
    ends_at: datetime,
    price: str,
    nodes: int = 2,
    gpus_per_node: int = 8,
    slug: str = DEFAULT_GPU_MODEL,
    region: str = "us-south-1",
    **kwargs,
) -> Listing:
    cluster = ClusterFactory(node_count=nodes, gpus_per_node=gpus_per_node, gpu_model=gpu_model(slug), region=region)
    return ListingFactory(
        cluster=cluster,
        node_count=nodes,
        starts_at=starts_at,
        ends_at=ends_at,
        price_per_gpu_hour=Decimal(price),
        **kwargs,
    )


def resale_listing(of: Listing, *, price: str) -> Listing:
    """A listing of bought capacity (depth 1) on the same cluster, with no reservation: enough
    for a contract sold from it to be a resale fill."""
    return Listing.objects.create(
        provider=OrganizationFactory(both=True),
        cluster=of.cluster,
        node_count=1,
        starts_at=of.starts_at,
        ends_at=of.ends_at,
        price_per_gpu_hour=Decimal(price),
        billing_mode=BillingMode.COMMITTED,
        depth=1,
    )


def signed(listing: Listing, *, at: datetime, nodes: int, starts_at: datetime, ends_at: datetime, lab=None) -> Contract:
    """A contract of the listing signed at ``at`` (its created_at), with no allocation."""
    with time_machine.travel(at, tick=False):
        return contract_for(listing, nodes, starts_at, ends_at, lab or OrganizationFactory(lab=True))


def open_request(
    *,
    gpus: int,
    price: str,
    starts_at: datetime,
    ends_at: datetime,
    slug: str = DEFAULT_GPU_MODEL,
    region: str = "",
    status: str = ComputeRequest.Status.OPEN,
    lab: Organization | None = None,
) -> ComputeRequest:
    """A compute request written as the service stores it, without queueing a matching run."""
    return ComputeRequest.objects.create(
        lab=lab or OrganizationFactory(lab=True),
        gpu_model=gpu_model(slug),
        gpu_count=gpus,
        starts_at=starts_at,
        duration_hours=int((ends_at - starts_at).total_seconds() // 3600),
        ends_at=ends_at,
        max_price_per_gpu_hour=Decimal(price),
        billing_mode=BillingMode.COMMITTED,
        region=region,
        status=status,
    )
