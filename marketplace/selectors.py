import hashlib
import hmac
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TypedDict

from django.db import connection
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from core.db import CompiledQuery
from core.errors import InvalidInput
from core.timeutils import ceil_hour, current_hour
from marketplace.models import ApiKey, Cluster, GpuModel, Listing, Node, Organization

KEY_PREFIX = "gpb"
_PREFIX_SHAPE = re.compile(r"[a-z0-9]{8}")  # as issued (services.api_key_create)


def hash_api_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_key_prefix_of(raw: str) -> str | None:
    """The public prefix of a raw key (``gpb_ab12cd34``), or None if it is not shaped like one."""
    parts = raw.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not _PREFIX_SHAPE.fullmatch(parts[1]) or not parts[2]:
        return None
    return f"{parts[0]}_{parts[1]}"


_KEY_FIELDS = tuple(field.attname for field in ApiKey._meta.concrete_fields)
_ORGANIZATION_FIELDS = tuple(field.attname for field in Organization._meta.concrete_fields)
# On every request: compiled once per process, not once per request (core.db.CompiledQuery).
_ACTIVE_KEY = CompiledQuery(
    lambda prefix: (
        ApiKey.objects.active()
        .filter(prefix=prefix)
        .exclude(organization__status=Organization.Status.SUSPENDED)
        .order_by()
        .values_list(*_KEY_FIELDS, *(f"organization__{name}" for name in _ORGANIZATION_FIELDS))
    ),
    prefix=str,
)


def api_key_lookup(*, raw: str) -> ApiKey | None:
    """Return the active key matching ``raw`` whose organization may trade, else None.

    Read afresh on every request: a revoked key or a suspended organization is refused from
    the next request on."""
    prefix = api_key_prefix_of(raw)
    if prefix is None:
        return None
    found = _ACTIVE_KEY.rows(prefix=prefix)
    if not found:
        return None
    row = found[0]
    api_key = ApiKey.from_db("default", _KEY_FIELDS, row[: len(_KEY_FIELDS)])
    if not hmac.compare_digest(api_key.key_hash, hash_api_key(raw)):
        return None
    api_key.organization = Organization.from_db("default", _ORGANIZATION_FIELDS, row[len(_KEY_FIELDS) :])
    return api_key


_GPU_MODEL_FIELDS = tuple(field.attname for field in GpuModel._meta.concrete_fields)
# Read by most searches and every compute request: compiled once (core.db.CompiledQuery).
_GPU_MODEL_BY_SLUG = CompiledQuery(
    lambda slug: GpuModel.objects.filter(slug=slug).order_by().values_list(*_GPU_MODEL_FIELDS), slug=str
)


def gpu_model_by_slug(*, slug: str) -> GpuModel | None:
    """The catalog's GPU model with this slug, or None."""
    found = _GPU_MODEL_BY_SLUG.rows(slug=slug)
    return GpuModel.from_db("default", _GPU_MODEL_FIELDS, found[0]) if found else None


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
    # Only clusters whose measured availability over the last 30 days is at least this
    # percentage; a cluster not yet measured counts as 100 (no failure recorded).
    min_availability: Decimal | None = None


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


# Free nodes of each candidate listing over the window it is judged on, [ws, we), the page of
# those that remain with what the API shows of each, and their total: one statement, the same
# text for every search. A filter left out is NULL and holds for every listing; the values are
# bound into the text (Django's client-side binding), so PostgreSQL plans each search with the
# filters it has, as if those were all it said (a generic plan, prepared once for all searches,
# runs several times slower). Every value is a parameter. The provider and status conditions
# are the SQL of Listing.objects.of_trading_providers() and on_offer(); the reservation and
# allocation conditions those of ListingNode.objects.holding() and
# Allocation.objects.holding_during(ws, we). LISTING_AVAILABILITY_SQL is its first part, the
# listings that remain (``matching``) with their available nodes, which the market's order book
# adds up by price (market.selectors.ASK_LEVELS); LISTING_SEARCH_SQL goes on to the page.
LISTING_AVAILABILITY_SQL = """
    WITH candidates AS (
        -- The listings the search judges, each with the window it is judged on: the one asked
        -- for, else the rest of its own.
        SELECT l.id, l.cluster_id, l.price_per_gpu_hour, l.starts_at, l.ends_at, l.node_count, l.status,
               l.min_duration_hours, c.gpus_per_node,
               COALESCE(%(starts_at)s, GREATEST(l.starts_at, %(now_hour)s)) AS ws,
               COALESCE(%(ends_at)s, l.ends_at) AS we
        FROM marketplace_listing l
        JOIN marketplace_cluster c ON c.id = l.cluster_id
        JOIN marketplace_organization p ON p.id = l.provider_id
        WHERE CASE WHEN %(provider_id)s IS NULL THEN p.status <> %(suspended)s
                   ELSE l.provider_id = %(provider_id)s END
          AND (%(statuses)s IS NULL OR l.status = ANY (%(statuses)s))
          AND (%(listing_id)s IS NULL OR l.id = %(listing_id)s)
          AND (%(cluster_id)s IS NULL OR l.cluster_id = %(cluster_id)s)
          AND (%(gpu_model)s IS NULL
               OR c.gpu_model_id = (SELECT g.id FROM marketplace_gpumodel g WHERE g.slug = %(gpu_model)s))
          AND (%(region)s IS NULL OR c.region = %(region)s)
          AND (%(interconnect)s IS NULL OR c.interconnect = %(interconnect)s)
          AND (%(billing_mode)s IS NULL OR l.billing_mode = %(billing_mode)s)
          AND (%(max_price)s IS NULL OR l.price_per_gpu_hour <= %(max_price)s)
          AND (%(min_availability)s IS NULL OR COALESCE(c.availability_30d, 100) >= %(min_availability)s)
          -- A lab's search: plain, index-friendly bounds (the exact ones are checked on the
          -- window), and no listing too small even were nothing of it sold.
          AND (NOT %(deliverable_only)s OR (
                   l.ends_at > COALESCE(%(starts_at)s, %(now_hour)s)
                   AND (%(starts_at)s IS NULL OR l.starts_at <= %(starts_at)s)
                   AND (%(ends_at)s IS NULL OR (l.ends_at >= %(ends_at)s AND l.starts_at < %(ends_at)s))
                   AND (%(min_gpus)s IS NULL OR l.node_count * c.gpus_per_node >= %(min_gpus)s)))
    ), out_of_service AS (
        -- The candidates' reserved nodes out of service: how many, and which.
        SELECT ln.listing_id, COUNT(*) AS nodes, array_agg(ln.id) AS reservations
        FROM (
            -- Plan fence (OFFSET 0): start from the few nodes out of service in the candidates'
            -- clusters, never from every node the candidates reserved (one scan of
            -- listing_node_holding_by_node).
            SELECT ln.listing_id, ln.id
            FROM marketplace_listingnode ln
            WHERE NOT ln.released
              AND ln.node_id = ANY (ARRAY(
                  SELECT n.id FROM marketplace_node n
                  WHERE n.status <> %(in_service)s AND n.cluster_id IN (SELECT w.cluster_id FROM candidates w)))
            OFFSET 0
        ) ln
        JOIN candidates w ON w.id = ln.listing_id
        GROUP BY ln.listing_id
    ), windows AS MATERIALIZED (
        -- Plan fence (MATERIALIZED): join the candidates to those before the window conditions
        -- apply; pushed into that join, they make the planner expect a handful of candidates
        -- and loop over the out-of-service rows once for each.
        SELECT w.*, COALESCE(oos.nodes, 0) AS out_of_service,
               COALESCE(oos.reservations, '{}') AS out_of_service_reservations,
               (w.starts_at <= w.ws AND w.we <= w.ends_at AND w.ws < w.we) AS covers
        FROM candidates w
        LEFT JOIN out_of_service oos ON oos.listing_id = w.id
    ), counted AS (
        -- The nodes blocked for an hour of the window are those out of service and those sold,
        -- once each: a listing's nodes sold and in service are one range of the allocations'
        -- index (allocation_listing_sold), counted once per listing in a lateral join (a scalar
        -- subquery would be run again by each condition on available_nodes).
        SELECT w.*, CASE WHEN w.status = %(withdrawn)s OR NOT w.covers THEN 0
                         ELSE w.node_count - w.out_of_service - sold.nodes END AS available_nodes
        FROM windows w
        CROSS JOIN LATERAL (
            SELECT COUNT(DISTINCT a.listing_node_id) AS nodes FROM broker_allocation a
            WHERE a.listing_id = w.id AND a.ends_at > w.ws AND a.starts_at < w.we AND a.ends_at > a.starts_at
              AND a.listing_node_id <> ALL (w.out_of_service_reservations)
        ) sold
    ), matching AS (
        -- A lab's search keeps the listings that cover the window, allow its length (in
        -- timestamp arithmetic: an EXTRACT of the hours is numeric, slower on every row), and
        -- can deliver min_gpus (at least one node) in whole nodes.
        SELECT w.id, w.price_per_gpu_hour, w.starts_at, w.gpus_per_node,
               GREATEST(w.available_nodes, 0) AS available_nodes
        FROM counted w
        WHERE NOT %(deliverable_only)s
           OR (w.covers AND w.ws + w.min_duration_hours * INTERVAL '1 hour' <= w.we
               AND w.available_nodes >= 1
               AND (%(min_gpus)s IS NULL OR w.available_nodes * w.gpus_per_node >= %(min_gpus)s))
    )"""
LISTING_SEARCH_SQL = "".join(
    (
        LISTING_AVAILABILITY_SQL,
        """, page AS (
        SELECT m.id, m.available_nodes
        FROM matching m
        ORDER BY m.price_per_gpu_hour, m.starts_at, m.id
        LIMIT %(limit)s OFFSET %(offset)s
    )
    -- The total, and the page's listings (a page past the last: one row, of the total alone),
    -- with the listing's availability promise and its provider's and cluster's measured
    -- reliability (broker.reliability).
    SELECT total.listings AS total, listing.*
    FROM (SELECT COUNT(*) AS listings FROM matching) total
    LEFT JOIN (page CROSS JOIN LATERAL (
        SELECT l.id, p.name AS provider_name,
               l.cluster_id, c.name AS cluster_name,
               (SELECT g.slug FROM marketplace_gpumodel g WHERE g.id = c.gpu_model_id) AS gpu_model,
               c.region, c.interconnect, c.gpus_per_node, l.node_count, l.starts_at, l.ends_at,
               l.price_per_gpu_hour, l.min_duration_hours, l.billing_mode, l.status, page.available_nodes,
               l.created_at, l.sla_availability, l.sla_breach_credit_rate, l.depth > 0 AS resale,
               p.availability_30d AS provider_availability_30d,
               p.mean_time_to_replace_seconds AS provider_mean_time_to_replace_seconds,
               p.late_deliveries_30d AS provider_late_deliveries_30d,
               c.availability_30d AS cluster_availability_30d,
               c.mean_time_to_replace_seconds AS cluster_mean_time_to_replace_seconds,
               c.late_deliveries_30d AS cluster_late_deliveries_30d
        FROM marketplace_listing l
        JOIN marketplace_cluster c ON c.id = l.cluster_id
        JOIN marketplace_organization p ON p.id = l.provider_id
        WHERE l.id = page.id
    ) listing) ON TRUE
    ORDER BY listing.price_per_gpu_hour, listing.starts_at, listing.id
""",
    )
)


class ListingRow(TypedDict):
    """A listing of a search's page: what the API shows of it, with its availability."""

    id: int
    provider_name: str
    cluster_id: int
    cluster_name: str
    gpu_model: str  # the slug
    region: str
    interconnect: str
    gpus_per_node: int
    node_count: int
    starts_at: datetime
    ends_at: datetime
    price_per_gpu_hour: Decimal
    min_duration_hours: int
    billing_mode: str
    status: str
    available_nodes: int
    resale: bool  # a buyer's resale (broker.resale)
    created_at: datetime
    sla_availability: Decimal
    sla_breach_credit_rate: Decimal
    provider_availability_30d: Decimal | None  # None: not yet measured
    provider_mean_time_to_replace_seconds: int | None
    provider_late_deliveries_30d: int
    cluster_availability_30d: Decimal | None
    cluster_mean_time_to_replace_seconds: int | None
    cluster_late_deliveries_30d: int


def listing_search_parameters(*, query: ListingQuery, now_hour: datetime, limit: int, offset: int) -> dict:
    """LISTING_SEARCH_SQL's parameters for a query."""
    return {
        "gpu_model": query.gpu_model,
        "region": query.region,
        "interconnect": query.interconnect,
        "billing_mode": query.billing_mode,
        "min_gpus": query.min_gpus or None,
        "starts_at": query.starts_at,
        "ends_at": query.ends_at,
        "max_price": query.max_price,
        "min_availability": query.min_availability,
        "provider_id": query.provider_id,
        "cluster_id": query.cluster_id,
        "listing_id": query.listing_id,
        "statuses": list(query.statuses) or None,
        "deliverable_only": query.deliverable_only,
        "now_hour": now_hour,
        "suspended": Organization.Status.SUSPENDED,
        "in_service": Node.Status.IN_SERVICE,
        "withdrawn": Listing.Status.WITHDRAWN,
        "limit": limit,
        "offset": offset,
    }


def listing_search(*, query: ListingQuery, limit: int, offset: int) -> tuple[list[ListingRow], int]:
    """A page of listings, each with ``available_nodes``: nodes free for the entire window
    after what is sold; and how many listings there are in all.

    Each listing is judged on the window asked for, or else on the rest of its own window.
    With ``deliverable_only`` (labs searching) only active listings of non-suspended
    providers that cover that window, allow its length, and can deliver ``min_gpus`` (at
    least one node) in whole nodes remain; sorted by price, then start. A provider's own
    listings (``provider_id``) are all listed, with 0 available where the window is not theirs.

    ``available_nodes`` = ``node_count`` minus the listing's reserved nodes that are out of
    service or sold for an hour of the window, each node once. A listing's sold nodes are
    counted in one range of an index of its allocations (they carry their listing), so the
    work follows what is sold in the window, not the size of the clusters; reserved nodes out
    of service are found from the few nodes out of service. One query whatever the number of
    listings or results, and whatever the page: LISTING_SEARCH_SQL computes the availability,
    the total and the page's rows together, and returns plain rows, never model instances.
    """
    now_hour = current_hour()
    if query.deliverable_only and query.starts_at is not None and query.starts_at < timezone.now():
        return [], 0  # hours already begun or past cannot be delivered
    parameters = listing_search_parameters(query=query, now_hour=now_hour, limit=limit, offset=offset)
    with connection.cursor() as cursor:
        cursor.execute(LISTING_SEARCH_SQL, parameters)
        columns = [column.name for column in cursor.description][1:]  # the first is the total
        rows = cursor.fetchall()
    total = rows[0][0]
    page = [dict(zip(columns, row[1:], strict=True)) for row in rows]
    if page[0]["id"] is None:  # no listing on this page: its one row carries the total alone
        return [], total
    return page, total


def listing_available_nodes(*, listing: Listing) -> int:
    """Nodes of the listing free for the rest of its own window (0 once withdrawn or over)."""
    rows, _ = listing_search(
        query=ListingQuery(listing_id=listing.pk, provider_id=listing.provider_id, deliverable_only=False),
        limit=1,
        offset=0,
    )
    return rows[0]["available_nodes"] if rows else 0


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


def _listings_visible(organization_id: int, is_lab: bool) -> QuerySet[Listing]:
    visible = Listing.objects.filter(provider_id=organization_id)
    if is_lab:
        visible |= Listing.objects.on_offer()
    return visible


def listing_visible_to(*, organization: Organization) -> QuerySet[Listing]:
    """Listings an organization may read one by one: its own, and other providers' active ones."""
    return _listings_visible(organization.pk, organization.is_lab).select_related("cluster__gpu_model", "provider")


# A booking's first read (core.db.CompiledQuery): the listing, if the lab may see it.
_LISTING_VISIBLE_TO_LAB = CompiledQuery(
    lambda lab, listing: _listings_visible(lab, True).filter(pk=listing).order_by().values_list("id", "provider_id"),
    lab=int,
    listing=int,
)


def listing_for_booking(*, lab: Organization, pk: int) -> Listing | None:
    """The listing ``pk`` if the lab may see it (listing_visible_to), with only its id and
    provider read: what a booking needs before its statement, which reads the rest itself."""
    found = _LISTING_VISIBLE_TO_LAB.rows(lab=lab.pk, listing=pk)
    return Listing.from_db("default", ["id", "provider_id"], found[0]) if found else None
