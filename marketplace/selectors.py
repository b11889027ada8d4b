import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db import connection
from django.db.models import Count, DateTimeField, F, Q, QuerySet, Value
from django.db.models.functions import Greatest
from django.db.models.lookups import GreaterThanOrEqual
from django.utils import timezone

from core.errors import InvalidInput
from core.timeutils import ceil_hour, current_hour
from marketplace.models import ApiKey, Cluster, Listing, Node, Organization

KEY_PREFIX = "gpb"


def hash_api_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_key_prefix_of(raw: str) -> str | None:
    """The public prefix of a raw key (``gpb_ab12cd34``), or None if it is not shaped like one."""
    parts = raw.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 8 or not parts[2]:
        return None
    return f"{parts[0]}_{parts[1]}"


def api_key_lookup(*, raw: str) -> ApiKey | None:
    """Return the active key matching ``raw`` whose organization may trade, else None."""
    prefix = api_key_prefix_of(raw)
    if prefix is None:
        return None
    api_key = (
        ApiKey.objects.active()
        .select_related("organization")
        .filter(prefix=prefix)
        .exclude(organization__status=Organization.Status.SUSPENDED)
        .first()
    )
    if api_key is None or not hmac.compare_digest(api_key.key_hash, hash_api_key(raw)):
        return None
    return api_key


def api_key_from_authorization_header(header: str) -> ApiKey | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return api_key_lookup(raw=token.strip())


def api_key_list(*, organization: Organization) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(organization=organization).order_by("-created_at", "-id")


@dataclass(frozen=True)
class ListingQuery:
    """What a caller asks of the listings. A missing window bound means the listing's own."""

    gpu_model: str | None = None
    region: str | None = None
    interconnect: str | None = None
    billing_mode: str | None = None
    min_gpus: int | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    max_price: Decimal | None = None
    provider_id: int | None = None  # set: that provider's own listings, in every status
    cluster_id: int | None = None
    listing_id: int | None = None
    statuses: tuple[str, ...] = field(default_factory=tuple)
    deliverable_only: bool = True  # drop listings that cannot deliver min_gpus (or one node)


def listing_query_for(
    *, organization: Organization, mine: bool = False, status: str | None = None, cluster: int | None = None, **filters
) -> ListingQuery | None:
    """What a caller's listing search means: a lab (or ``mine=false``) searches other providers'
    active, deliverable capacity; a provider (or ``mine=true``) lists its own listings in every
    status. None when nothing can match (a lab asking for paused or withdrawn listings).

    A search of capacity for a window already begun or over is refused (InvalidInput) rather
    than answered with nothing: hours begun cannot be sold, and an empty page would not say so.
    """
    own = mine or not organization.is_lab
    if not own:
        _refuse_a_window_begun(starts_at=filters.get("starts_at"), ends_at=filters.get("ends_at"))
        if status not in (None, Listing.Status.ACTIVE):
            return None
    return ListingQuery(
        **filters,
        cluster_id=cluster,
        provider_id=organization.pk if own else None,
        statuses=(status,) if status else (() if own else (Listing.Status.ACTIVE,)),
        deliverable_only=not own,
    )


def _refuse_a_window_begun(*, starts_at: datetime | None, ends_at: datetime | None) -> None:
    """Raise InvalidInput, naming the earliest start, when a search window has begun or is over."""
    now = timezone.now()
    fields = {}
    if starts_at is not None and starts_at < now:
        fields["starts_at"] = [f"Already begun: the earliest start is {ceil_hour(now):%Y-%m-%dT%H:%MZ}."]
    if ends_at is not None and ends_at <= now:
        fields["ends_at"] = [f"Already past: it is {now:%Y-%m-%dT%H:%MZ}."]
    if fields:
        over = "is over" if "ends_at" in fields else "has already begun"
        raise InvalidInput(
            f"The search window {over}: only hours not yet begun can be bought, from {ceil_hour(now):%Y-%m-%dT%H:%MZ}.",
            fields=fields,
        )


# A listing covers the window it is judged on, and that window is not empty.
_COVERS_SQL = "(w.starts_at <= w.ws AND w.we <= w.ends_at AND w.ws < w.we)"

# What a lab's search adds: the listing covers the window, allows its length, and has a node free.
_DELIVERABLE_SQL = (
    f"{_COVERS_SQL} AND w.min_duration_hours <= EXTRACT(EPOCH FROM (w.we - w.ws)) / 3600 AND w.available_nodes >= 1"
)

# Free nodes of each candidate listing over the window it is judged on, [ws, we), and the page
# of those that remain, with their total. {candidates} is the SQL of listing_candidates() (with
# its parameters first), {covers} and {deliverable} the fragments above; every value is a
# parameter. The reservation and allocation conditions here are the SQL of
# ListingNode.objects.holding() and Allocation.objects.holding_during(ws, we).
LISTING_AVAILABILITY_SQL = """
    WITH candidates AS (
        {candidates}
    ), out_of_service AS (
        -- The candidates' reserved nodes out of service and not sold in the window (those
        -- sold are counted with the sales). The EXISTS sits in the select list so that it
        -- stays one index probe per node, never an anti-join over all allocations.
        SELECT ln.listing_id, SUM(CASE WHEN EXISTS (
                   SELECT 1 FROM broker_allocation a
                   WHERE a.listing_node_id = ln.id AND a.starts_at < w.we AND a.ends_at > w.ws
                     AND a.ends_at > a.starts_at
               ) THEN 0 ELSE 1 END) AS nodes
        FROM (
            -- Plan fence (OFFSET 0): start from the few nodes out of service, never from every
            -- node the candidates reserved.
            SELECT ln.listing_id, ln.id
            FROM marketplace_node n
            JOIN marketplace_listingnode ln ON ln.node_id = n.id AND NOT ln.released
            WHERE n.status <> %s
            OFFSET 0
        ) ln
        JOIN candidates w ON w.id = ln.listing_id
        GROUP BY ln.listing_id
    ), windows AS MATERIALIZED (
        -- Plan fence (MATERIALIZED): join the candidates to those before the window conditions
        -- apply; pushed into that join, they make the planner expect a handful of candidates
        -- and loop over the out-of-service rows once for each.
        SELECT w.*, COALESCE(oos.nodes, 0) AS out_of_service
        FROM candidates w
        LEFT JOIN out_of_service oos ON oos.listing_id = w.id
    ), counted AS (
        -- A listing's nodes sold for an hour of its window: one range of the allocations' index
        -- (allocation_listing_sold), counted once per listing in a lateral join; a scalar
        -- subquery would be run again by each condition on available_nodes.
        SELECT w.*, CASE WHEN w.status = %s OR NOT {covers} THEN 0
                         ELSE w.node_count - w.out_of_service - sold.nodes END AS available_nodes
        FROM windows w
        CROSS JOIN LATERAL (
            SELECT COUNT(DISTINCT a.listing_node_id) AS nodes FROM broker_allocation a
            WHERE a.listing_id = w.id AND a.ends_at > w.ws AND a.starts_at < w.we AND a.ends_at > a.starts_at
        ) sold
    )
    SELECT w.id, w.available_nodes, COUNT(*) OVER ()
    FROM counted w
    WHERE {deliverable}
    ORDER BY w.price_per_gpu_hour, w.starts_at, w.id
    LIMIT %s OFFSET %s
"""


def listing_candidates(*, query: ListingQuery, now_hour: datetime) -> QuerySet[Listing]:
    """The listings a search judges, as rows of the columns the availability statement reads,
    each with the window it is judged on (ws, we): the one asked for, else the rest of its own.
    """
    lookups = {
        "cluster__gpu_model__slug": query.gpu_model,
        "cluster__region": query.region,
        "cluster__interconnect": query.interconnect,
        "billing_mode": query.billing_mode,
        "cluster_id": query.cluster_id,
        "pk": query.listing_id,
        "price_per_gpu_hour__lte": query.max_price,
        "status__in": query.statuses or None,
    }
    conditions = []
    if query.deliverable_only:
        # Plain, index-friendly bounds; the exact ones are checked on the window (ws, we).
        if query.starts_at is not None:
            lookups |= {"starts_at__lte": query.starts_at, "ends_at__gt": query.starts_at}
        else:
            lookups["ends_at__gt"] = now_hour
        if query.ends_at is not None:
            lookups |= {"ends_at__gte": query.ends_at, "starts_at__lt": query.ends_at}
        if query.min_gpus:
            # A listing too small even when nothing of it is sold needs no availability count.
            conditions.append(GreaterThanOrEqual(F("node_count") * F("cluster__gpus_per_node"), query.min_gpus))
    if query.provider_id is not None:
        listings = Listing.objects.filter(provider_id=query.provider_id)
    else:
        listings = Listing.objects.of_trading_providers()
    window_start = (
        Value(query.starts_at, DateTimeField())
        if query.starts_at is not None
        else Greatest("starts_at", Value(now_hour, DateTimeField()))
    )
    window_end = Value(query.ends_at, DateTimeField()) if query.ends_at is not None else F("ends_at")
    # Named columns: the statement reads them by name (SELECT w.*), never by position.
    return (
        listings.filter(*conditions, **{lookup: value for lookup, value in lookups.items() if value is not None})
        .order_by()
        .values(
            "id",
            "price_per_gpu_hour",
            "starts_at",
            "ends_at",
            "node_count",
            "status",
            "min_duration_hours",
            gpus_per_node=F("cluster__gpus_per_node"),
            ws=window_start,
            we=window_end,
        )
    )


def listing_availability_statement(
    *, query: ListingQuery, now_hour: datetime, limit: int, offset: int
) -> tuple[str, list[object]]:
    """LISTING_AVAILABILITY_SQL for a query, and its parameters."""
    candidates_sql, candidates_params = listing_candidates(query=query, now_hour=now_hour).query.sql_with_params()
    deliverable, deliverable_params = "TRUE", []
    if query.deliverable_only:
        deliverable = _DELIVERABLE_SQL
        if query.min_gpus:
            deliverable += " AND w.available_nodes * w.gpus_per_node >= %s"
            deliverable_params.append(query.min_gpus)
    sql = LISTING_AVAILABILITY_SQL.format(candidates=candidates_sql, covers=_COVERS_SQL, deliverable=deliverable)
    params = [
        *candidates_params,
        Node.Status.IN_SERVICE,
        Listing.Status.WITHDRAWN,
        *deliverable_params,
        limit,
        offset,
    ]
    return sql, params


def listing_search(*, query: ListingQuery, limit: int, offset: int) -> tuple[list[Listing], int]:
    """Listings with ``available_nodes``: nodes free for the entire window after what is sold.

    Each listing is judged on the window asked for, or else on the rest of its own window.
    With ``deliverable_only`` (labs searching) only active listings of non-suspended
    providers that cover that window, allow its length, and can deliver ``min_gpus`` (at
    least one node) in whole nodes remain; sorted by price, then start. A provider's own
    listings (``provider_id``) are all listed, with 0 available where the window is not theirs.

    ``available_nodes`` = ``node_count`` minus the listing's reserved nodes that are out of
    service or sold for an hour of the window. A listing's sold nodes are counted in one range
    of an index of its allocations (they carry their listing), so the work follows what is
    sold in the window, not the size of the clusters. Reserved nodes out of service are found
    from the few nodes out of service; only those not sold in the window are subtracted
    again, so a node both sold and out of service counts once. Two queries whatever the
    number of listings or results: one computes the page and the total together, one loads
    its rows.
    """
    now_hour = current_hour()
    if query.deliverable_only and query.starts_at is not None and query.starts_at < timezone.now():
        return [], 0  # hours already begun or past cannot be delivered
    sql, params = listing_availability_statement(query=query, now_hour=now_hour, limit=limit, offset=offset)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if not rows:
        return [], 0 if offset == 0 else _listing_search_count_past_end(query)
    total = rows[0][2]
    listings = Listing.objects.select_related("cluster__gpu_model", "provider").in_bulk([row[0] for row in rows])
    page = []
    for listing_id, available_nodes, _ in rows:
        listing = listings[listing_id]
        listing.available_nodes = max(available_nodes, 0)
        page.append(listing)
    return page, total


def listing_available_nodes(*, listing: Listing) -> int:
    """Nodes of the listing free for the rest of its own window (0 once withdrawn or over)."""
    rows, _ = listing_search(
        query=ListingQuery(listing_id=listing.pk, provider_id=listing.provider_id, deliverable_only=False),
        limit=1,
        offset=0,
    )
    return rows[0].available_nodes if rows else 0


def _listing_search_count_past_end(query: ListingQuery) -> int:
    """The total when a page past the end was asked for (its query returned no row)."""
    _, total = listing_search(query=query, limit=1, offset=0)
    return total


def cluster_list(*, provider: Organization) -> QuerySet[Cluster]:
    return (
        Cluster.objects.filter(provider=provider)
        .select_related("gpu_model")
        .annotate(
            node_count=Count("nodes"),
            nodes_in_service=Count("nodes", filter=Q(nodes__status=Node.Status.IN_SERVICE)),
        )
        .order_by("id")
    )


def listing_visible_to(*, organization: Organization) -> QuerySet[Listing]:
    """Listings an organization may read one by one: its own, and other providers' active ones."""
    visible = Listing.objects.filter(provider=organization)
    if organization.is_lab:
        visible |= Listing.objects.on_offer()
    return visible.select_related("cluster__gpu_model", "provider")
