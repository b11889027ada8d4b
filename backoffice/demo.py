"""The demo market that `make run` serves.

A large provider (a 12,500-node, 100,000-GPU H100 supercluster) and a smaller cloud list
capacity; a lab has open requests that the matching engine fills, a contract running since
yesterday and part of another resold (a day of it bought by the lab-and-provider); last month
is closed, so there is usage, an issued invoice and a payout
statement to look at. Seeding twice changes nothing but the demo API keys, which are
re-issued (the old ones revoked) and printed again with the shell exports of
`demo_exports`, the ones the README's walkthrough starts from.
"""

from datetime import datetime, timedelta
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from billing.models import BillingPeriod
from billing.services import billing_period_close, usage_ingest
from broker.booking import listing_book
from broker.incidents import incident_open, incident_resolve
from broker.models import Allocation, ComputeRequest, Contract, Incident
from broker.resale import resale_create
from broker.services import compute_request_create
from broker.terms import contract_total
from core.timeutils import HOUR, current_hour, month_of, period_bounds, previous_month
from marketplace.models import ApiKey, Cluster, GpuModel, Listing, ListingNode, Organization
from marketplace.services import (
    api_key_create,
    api_key_revoke,
    cluster_create,
    listing_create,
    organization_create,
    organization_set_credit_limit,
)

DEMO_KEY_NAME = "demo"
PROVIDER, CLOUD, LAB, BOTH = "Colossus Compute", "Nimbus GPU Cloud", "Frontier Lab", "Orbital AI"
DEMO_ORGANIZATIONS = [(PROVIDER, "provider"), (CLOUD, "provider"), (LAB, "lab"), (BOTH, "both")]
# The demo's labs buy thousands of GPUs: an operator has raised their credit limits.
DEMO_CREDIT_LIMIT = Decimal("5000000.00")

CLUSTERS = [
    # provider, name, gpu model, region, interconnect, gpus per node, nodes
    (PROVIDER, "colossus-1", "h100-sxm-80gb", "us-south-1", "infiniband", 8, 12_500),
    (CLOUD, "nimbus-h200-a", "h200-sxm-141gb", "eu-west-2", "roce", 8, 64),
    (CLOUD, "nimbus-mi300x", "mi300x", "us-east-1", "infiniband", 8, 32),
    (CLOUD, "nimbus-a100", "a100-sxm-80gb", "us-east-1", "ethernet", 8, 16),
    (BOTH, "orbital-b200", "b200", "us-west-1", "infiniband", 8, 24),
]

LISTINGS = [
    # cluster, nodes, start offset hours, length hours, price, billing mode
    ("colossus-1", 4_000, 1, 30 * 24, "2.1000", "committed"),
    ("colossus-1", 1_000, 1, 14 * 24, "2.4500", "metered"),
    ("nimbus-h200-a", 48, 1, 21 * 24, "3.1000", "committed"),
    ("nimbus-mi300x", 32, 1, 14 * 24, "1.6500", "metered"),
    ("nimbus-a100", 16, 1, 7 * 24, "1.0500", "metered"),
    ("orbital-b200", 16, 24, 10 * 24, "4.2000", "committed"),
]

# cluster, nodes, started hours ago, length hours, price, billing mode
RUNNING_CONTRACT = ("colossus-1", 4, 24, 30 * 24, "2.4500", "metered")

REQUESTS = [
    # gpu model, gpus, start offset hours, duration, max price, billing mode, colocated
    ("h100-sxm-80gb", 2_048, 24, 72, "2.5000", "committed", True),
    ("h100-sxm-80gb", 512, 12, 48, "2.6000", "metered", False),
    ("h200-sxm-141gb", 128, 6, 24, "3.5000", "committed", True),
    ("b200", 64, 48, 24, "3.0000", "committed", True),  # below the ask: stays open
]


def _organization_with_fresh_key(name: str, role: str) -> tuple[Organization, str]:
    """Return the organization and a new demo key; older demo keys are revoked."""
    organization = Organization.objects.filter(name=name).first()
    if organization is None:
        organization, issued = organization_create(name=name, role=role, key_name=DEMO_KEY_NAME)
        if organization.is_lab:
            organization_set_credit_limit(organization=organization, limit=DEMO_CREDIT_LIMIT, actor_label="seed_demo")
        return organization, issued.secret
    for old in ApiKey.objects.active().filter(organization=organization, name=DEMO_KEY_NAME):
        api_key_revoke(api_key=old, actor_label="seed_demo")
    return organization, api_key_create(organization=organization, name=DEMO_KEY_NAME, actor_label="seed_demo").secret


def _contract_written(
    *, cluster: Cluster, lab: Organization, nodes: int, starts_at: datetime, hours: int, price: str, mode: str
) -> Contract:
    """A contract whose window began before now: services refuse such windows, so it is
    written directly here, with the same shape the services write: it bought its whole
    listing, which was then withdrawn (its nodes stay sold: the allocations hold them), and it
    is completed or, while its window lasts, active, and was delivered on time."""
    ends_at = starts_at + hours * HOUR
    listing = Listing.objects.create(
        provider=cluster.provider,
        cluster=cluster,
        node_count=nodes,
        starts_at=starts_at,
        ends_at=ends_at,
        price_per_gpu_hour=Decimal(price),
        billing_mode=mode,
        status=Listing.Status.WITHDRAWN,
    )
    node_ids = list(cluster.nodes.order_by("-id").values_list("id", flat=True)[:nodes])
    bindings = ListingNode.objects.bulk_create(
        ListingNode(listing=listing, node_id=node_id, starts_at=starts_at, ends_at=ends_at, released=True)
        for node_id in node_ids
    )
    gpus = nodes * cluster.gpus_per_node
    contract = Contract.objects.create(
        listing=listing,
        lab=lab,
        provider=cluster.provider,
        cluster=cluster,
        gpu_count=gpus,
        node_count=nodes,
        starts_at=starts_at,
        ends_at=ends_at,
        price_per_gpu_hour=listing.price_per_gpu_hour,
        billing_mode=mode,
        total_amount=contract_total(gpu_count=gpus, hours=hours, price_per_gpu_hour=listing.price_per_gpu_hour)
        if mode == "committed"
        else None,
        status=Contract.Status.ACTIVE if ends_at > timezone.now() else Contract.Status.COMPLETED,
        # handed over on time: its provider reported the access ready a few minutes in
        delivered_at=starts_at + timedelta(minutes=7),
        delivery_endpoint=f"ssh://login.{cluster.name}.example:22",
        delivery_detail="Slurm login node; your attached SSH keys are installed for the user 'lab'.",
    )
    Allocation.objects.bulk_create(
        Allocation(
            contract=contract,
            listing_node=b,
            node_id=b.node_id,
            listing_id=b.listing_id,
            starts_at=starts_at,
            ends_at=ends_at,
        )
        for b in bindings
    )
    return contract


def _seed_market() -> None:
    orgs = {org.name: org for org in Organization.objects.filter(name__in=[n for n, _ in DEMO_ORGANIZATIONS])}
    models = {model.slug: model for model in GpuModel.objects.all()}
    clusters = {}
    for provider, name, model, region, interconnect, gpus_per_node, nodes in CLUSTERS:
        clusters[name] = cluster_create(
            provider=orgs[provider],
            name=name,
            gpu_model=models[model],
            region=region,
            interconnect=interconnect,
            gpus_per_node=gpus_per_node,
            node_count=nodes,
        )
    hour = current_hour()
    # A contract of the lab's that began yesterday, so its provider has usage to report now.
    cluster, nodes, hours_ago, hours, price, mode = RUNNING_CONTRACT
    _contract_written(
        cluster=clusters[cluster],
        lab=orgs[LAB],
        nodes=nodes,
        starts_at=hour - hours_ago * HOUR,
        hours=hours,
        price=price,
        mode=mode,
    )
    listings = {}
    for name, nodes, offset, length, price, mode in LISTINGS:
        cluster = clusters[name]
        listings[name, mode] = listing_create(
            provider=cluster.provider,
            cluster=cluster,
            node_count=nodes,
            starts_at=hour + offset * HOUR,
            ends_at=hour + (offset + length) * HOUR,
            price_per_gpu_hour=Decimal(price),
            billing_mode=mode,
        )
    # History: last month's contracts, their usage, and the month closed.
    last_month = period_bounds(previous_month(month_of(timezone.now())))[0] + timedelta(days=3)
    _contract_written(
        cluster=clusters["colossus-1"],
        lab=orgs[LAB],
        nodes=32,
        starts_at=last_month,
        hours=72,
        price="2.0500",
        mode="committed",
    )
    metered = _contract_written(
        cluster=clusters["nimbus-mi300x"],
        lab=orgs[LAB],
        nodes=4,
        starts_at=last_month,
        hours=48,
        price="1.7000",
        mode="metered",
    )
    records = []
    for hour_index in range(48):
        started = metered.starts_at + hour_index * HOUR
        records.append(
            {
                "id": f"demo-mi300x-{hour_index:03d}",
                "contract": metered.pk,
                "started_at": started.isoformat(),
                "ended_at": (started + HOUR).isoformat(),
                "gpu_seconds": 32 * 3600 * (70 + hour_index % 25) // 100,  # 70-94% busy
            }
        )
    usage_ingest(provider=orgs[CLOUD], records=records)
    # Upcoming: an instant booking, and requests for the matching engine.
    booked = listing_book(
        lab=orgs[BOTH],
        listing=listings["nimbus-a100", "metered"],
        gpu_count=32,
        starts_at=hour + 2 * HOUR,
        duration_hours=24,
    )
    # A node of that booking failed 40 minutes ago: its provider's monitoring reported it, the
    # broker gave the contract a spare of the same listing, and the node is fixed now.
    incident = incident_open(
        provider=booked.provider,
        node=booked.allocations.order_by("node_id").first().node,
        kind=Incident.Kind.FAILURE,
        started_at=timezone.now() - timedelta(minutes=40),
        detail="GPU 5: XID 79 (fallen off the bus); node drained by the provider's monitoring.",
        actor_label="demo",
    ).incident
    incident_resolve(provider=booked.provider, incident=incident, actor_label="demo")
    # The lab bought a week of 64 supercluster nodes and needs only four days of 16 of them: it
    # resells those (broker.resale), and the lab-and-provider buys a day of 4 nodes from it.
    week = listing_book(
        lab=orgs[LAB],
        listing=listings["colossus-1", "committed"],
        gpu_count=64 * 8,
        starts_at=hour + 1 * HOUR,
        duration_hours=7 * 24,
    )
    resale = resale_create(
        holder=orgs[LAB],
        contract_id=week.pk,
        node_count=16,
        starts_at=hour + 73 * HOUR,
        ends_at=week.ends_at,
        price_per_gpu_hour=Decimal("2.3000"),
        min_duration_hours=12,
        actor_label="demo",
    )
    listing_book(lab=orgs[BOTH], listing=resale, gpu_count=4 * 8, starts_at=hour + 97 * HOUR, duration_hours=24)
    for model, gpus, offset, duration, price, mode, colocated in REQUESTS:
        compute_request_create(
            lab=orgs[LAB],
            gpu_model=models[model],
            gpu_count=gpus,
            starts_at=hour + offset * HOUR,
            duration_hours=duration,
            max_price_per_gpu_hour=Decimal(price),
            billing_mode=mode,
            colocated=colocated,
        )


def seed_demo_market() -> dict[str, str]:
    """Create the demo market once; return fresh API keys of its organizations by name."""
    keys = {}
    with transaction.atomic():
        for name, role in DEMO_ORGANIZATIONS:
            _, secret = _organization_with_fresh_key(name, role)
            keys[f"{name} ({role})"] = secret
        if not Cluster.objects.filter(name="colossus-1").exists():
            _seed_market()
    period = previous_month(month_of(timezone.now()))
    if not BillingPeriod.objects.exists():
        billing_period_close(period=period)
    return keys


def demo_exports(*, keys: dict[str, str], base_url: str) -> list[tuple[str, str, str]]:
    """The shell variables a newcomer pastes to call the demo's API: name, value, what it is.

    ``keys`` is what ``seed_demo_market`` returned; ``base_url`` where the server answers.
    """
    running = Contract.objects.get(
        lab__name=LAB, cluster__name=RUNNING_CONTRACT[0], request__isnull=True, billing_mode=RUNNING_CONTRACT[5]
    )
    bookable = (
        Listing.objects.filter(cluster=running.cluster, status=Listing.Status.ACTIVE, billing_mode="metered")
        .order_by("pk")
        .first()
    )
    exports = [
        ("API", f"{base_url.rstrip('/')}/api/v1", "the API"),
        ("P", keys[f"{PROVIDER} (provider)"], f"{PROVIDER}, a provider"),
        ("L", keys[f"{LAB} (lab)"], f"{LAB}, a lab"),
        ("B", keys[f"{BOTH} (both)"], f"{BOTH}, provider and lab"),
        ("P2", keys[f"{CLOUD} (provider)"], f"{CLOUD}, another provider"),
        ("DEMO_CLUSTER", str(running.cluster_id), f"{PROVIDER}'s cluster {running.cluster.name}"),
    ]
    if bookable is not None:
        exports.append(("DEMO_LISTING", str(bookable.pk), f"a metered listing of it that {LAB} may book"))
    exports.append(("DEMO_CONTRACT", str(running.pk), f"{LAB}'s running metered contract on it"))
    return exports


def demo_exports_text(exports: list[tuple[str, str, str]]) -> str:
    """The exports as lines a shell runs as they are."""
    width = max(len(f"{name}={value}") for name, value, _ in exports)
    return "\n".join(f"export {f'{name}={value}':<{width}}  # {what}" for name, value, what in exports)


def demo_summary() -> dict[str, int]:
    return {
        "open_requests": ComputeRequest.objects.filter(status=ComputeRequest.Status.OPEN).count(),
        "contracts": Contract.objects.count(),
        "listings": Listing.objects.filter(status=Listing.Status.ACTIVE).count(),
    }
