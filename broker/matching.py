"""The matching engine: fills open compute requests of one market segment (a GPU model).

It loads the segment's order book (active listings, their reserved nodes, what is sold)
into memory once, then walks open requests oldest first in chunks. Each chunk is one
transaction that first locks the segment's listing rows, refreshes any listing whose
inventory changed since it was loaded (an instant booking, a release, a node taken out),
plans fills in memory and writes them in bulk. The database has the last word: an
exclusion constraint refuses any double sale, in which case the chunk is rolled back and
retried on freshly loaded state.

Only one matcher runs per segment at a time (a PostgreSQL advisory lock), and a request is
written as filled in the same transaction as its contracts, so a task delivered twice finds
nothing left to do.

On Celery workers, runs coalesce (``segment_match_queue`` in ``broker.services`` and
``segment_match_coalesced`` here): a segment has at most one run in flight (the lock) and at
most one pending (a mark in Redis), however many requests arrive.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import redis
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Mod
from django.db.models.lookups import Exact
from django.utils import timezone

from billing.credit import Exposure, credit_limit_exceeded, lab_exposures, lab_exposures_add
from broker.handover import contract_data, contract_notices, request_data
from broker.models import Allocation, ComputeRequest, Contract, FreeSpan
from broker.selectors import compute_requests_to_match
from broker.terms import contract_total
from core import metrics
from core.money import round_money
from core.timeutils import HOUR, iso_utc
from events.models import EventType
from events.services import Notice, events_publish
from marketplace.models import BillingMode, GpuModel, Listing, Node

logger = logging.getLogger(__name__)

CHUNK_SIZE = 2000  # requests per transaction; bookers of the segment's listings wait at most one chunk
ADVISORY_LOCK_NAMESPACE = 0x6D617463  # "matc"
PENDING_KEY = "gpubroker:match-pending:{gpu_model_id}"
# A mark outlives any wait in the queue we expect; one left behind by a lost task only stops
# new runs being queued for the segment until the sweep queues one regardless (30 s).
PENDING_TTL_SECONDS = 600
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _hour(value: datetime) -> int:
    return int((value - _EPOCH) // HOUR)


@dataclass(slots=True)
class BookListing:
    id: int
    provider_id: int
    cluster_id: int
    price: Decimal
    billing_mode: str
    starts: int
    ends: int
    min_duration: int
    gpus_per_node: int
    region: str
    interconnect: str
    version: int
    depth: int = 0  # 0: the provider's own nodes; more: a resale (broker.resale)
    active: bool = True
    bindings: list[tuple[int, int]] = field(default_factory=list)  # (listing node id, node id)


@dataclass(slots=True)
class OpenRequest:
    """An open request as the engine reads it: a row, not a model instance (a chunk reads
    thousands). Attribute names are ``ComputeRequest``'s; ``starts`` and ``ends`` are hours."""

    pk: int
    lab_id: int
    gpu_count: int
    starts_at: datetime
    ends_at: datetime
    duration_hours: int
    max_price_per_gpu_hour: Decimal
    billing_mode: str
    colocated: bool
    region: str
    interconnect: str
    unfilled_reason: str
    unfilled_detail: str
    fill_price_now: Decimal | None
    starts: int = 0
    ends: int = 0

    def __post_init__(self):
        self.starts = _hour(self.starts_at)
        self.ends = _hour(self.ends_at)


_OPEN_REQUEST_FIELDS = [name for name in OpenRequest.__slots__ if name not in {"starts", "ends"}]


def _ids(ids) -> RawSQL:
    """``pk__in=_ids(ids)``: the ids as one array parameter, not one parameter each."""
    return RawSQL("SELECT unnest(%s::bigint[])", [list(ids)])


def could_serve(request: OpenRequest) -> Q:
    """The listings that could serve the request, as a filter: the terms ``OrderBook._candidates``
    holds a listing to that a query can check (its billing mode, a window that holds the
    request's, a minimum it meets, whole nodes, the region and interconnect, not the lab's own).
    Loading only these (``OrderBook.load_for``) plans the request as the whole book would."""
    terms = Q(
        billing_mode=request.billing_mode,
        starts_at__lte=request.starts_at,
        ends_at__gte=request.ends_at,
        min_duration_hours__lte=request.duration_hours,
    ) & Q(Exact(Mod(Value(request.gpu_count), F("cluster__gpus_per_node")), 0))
    if request.region:
        terms &= Q(cluster__region=request.region)
    if request.interconnect:
        terms &= Q(cluster__interconnect=request.interconnect)
    return terms & ~Q(provider_id=request.lab_id)


@dataclass(slots=True)
class Fill:
    request: OpenRequest
    parts: list[tuple[BookListing, list[tuple[int, int]]]]
    starts: int
    ends: int


@dataclass(frozen=True, slots=True)
class Unfilled:
    """Why an open request stays open, in a code and in words, and the price it would fill at now."""

    reason: str
    detail: str
    fill_price: Decimal | None


@dataclass
class MatchResult:
    segment: int
    requests_seen: int = 0
    requests_filled: int = 0
    contracts_created: int = 0
    nodes_allocated: int = 0
    retries: int = 0
    passes: int = 0  # times the segment's open requests were read and matched
    skipped_locked: bool = False  # found another matcher holding the segment, and left


class OrderBook:
    """The segment's listings sorted by price then listing time, and each node's sold hours.

    A node's sold hours are one integer, a bit per hour from ``origin`` (the hour the book was
    loaded; what ended before it is not loaded): a window clashes with them when the two masks
    share a bit. Hours are sold once per depth (a resale sells again, one depth down, hours
    sold at the depth above it: broker.resale), so each depth has its own masks. Holds never
    overlap what they are added to (only free nodes are held), so releasing one clears its bits.
    """

    def __init__(self, gpu_model_id: int):
        self.gpu_model_id = gpu_model_id
        self.gpu_model_slug = ""
        self.listings: dict[int, BookListing] = {}
        self.by_price: list[BookListing] = []
        self.busy: dict[int, dict[int, int]] = {}  # depth -> node -> sold hours
        self.origin = 0
        # (billing mode, start hour) -> the listings on those terms whose window holds that
        # hour, in price order: requests of a segment start at a few hundred distinct hours.
        self._covering: dict[tuple[str, int], list[BookListing]] = {}
        self._resort = False

    def _mask(self, starts: int, ends: int) -> int:
        """The bits of the hours [starts, ends); hours before ``origin`` are not tracked."""
        low = max(starts - self.origin, 0)
        high = ends - self.origin
        return ((1 << (high - low)) - 1) << low if high > low else 0

    # -- loading ---------------------------------------------------------------------------

    _LISTING_COLUMNS = (
        "id",
        "provider_id",
        "cluster_id",
        "price_per_gpu_hour",
        "billing_mode",
        "starts_at",
        "ends_at",
        "min_duration_hours",
        "cluster__gpus_per_node",
        "cluster__region",
        "cluster__interconnect",
        "inventory_version",
        "depth",
    )

    def load(self) -> None:
        self.gpu_model_slug = GpuModel.objects.values_list("slug", flat=True).get(pk=self.gpu_model_id)
        self._load_listings(Q())
        self._load_inventory(list(self.listings))

    def load_for(self, request: OpenRequest) -> None:
        """Load only what planning this one request reads (a quote): the listings that could
        serve it (``could_serve``) and, of each, its reserved nodes free for the whole window.

        ``plan`` fills it as it would on the whole segment's book: it takes only nodes free for
        the window, and a listing with none is no candidate either way. ``explain`` also counts
        the listings' other nodes: call ``load_inventory`` before it.
        """
        self.gpu_model_slug = GpuModel.objects.values_list("slug", flat=True).get(pk=self.gpu_model_id)
        self._load_listings(could_serve(request))
        if not self.listings:
            return
        # A node's free spans are maximal ranges: at most one contains the window.
        free = (
            FreeSpan.objects.filter(
                listing_id__in=_ids(self.listings),
                starts_at__lte=request.starts_at,
                ends_at__gte=request.ends_at,
                node__status=Node.Status.IN_SERVICE,
            )
            .order_by("node_id")
            .values_list("listing_id", "listing_node_id", "node_id")
        )
        for listing_id, listing_node_id, node_id in free:
            self.listings[listing_id].bindings.append((listing_node_id, node_id))

    def load_inventory(self) -> None:
        """(Re)load the whole inventory of the listings loaded (after ``load_for``)."""
        self._load_inventory(list(self.listings))

    def _load_listings(self, terms: Q) -> None:
        now = timezone.now()
        rows = (
            Listing.objects.on_offer()
            .filter(terms, cluster__gpu_model_id=self.gpu_model_id, ends_at__gt=now)
            .order_by("price_per_gpu_hour", "created_at", "id")
            .values_list(*self._LISTING_COLUMNS)
        )
        self.listings = {}
        self.by_price = []
        self._covering = {}
        self.busy = {}
        self.origin = _hour(now)
        for row in rows:
            listing = BookListing(
                id=row[0],
                provider_id=row[1],
                cluster_id=row[2],
                price=row[3],
                billing_mode=row[4],
                starts=_hour(row[5]),
                ends=_hour(row[6]),
                min_duration=row[7],
                gpus_per_node=row[8],
                region=row[9],
                interconnect=row[10],
                version=row[11],
                depth=row[12],
            )
            self.listings[listing.id] = listing
            self.by_price.append(listing)

    def _load_inventory(self, listing_ids: list[int]) -> None:
        """(Re)load reserved nodes of these listings and every sale on those nodes."""
        if not listing_ids:
            return
        for listing_id in listing_ids:
            self.listings[listing_id].bindings = []
        now = timezone.now()
        # The reserved nodes with hours still free (broker.free_spans): a node sold out for the
        # rest of its listing's window has no span, so it is never loaded nor walked.
        bindings = (
            FreeSpan.objects.filter(
                listing_id__in=_ids(listing_ids), ends_at__gt=now, node__status=Node.Status.IN_SERVICE
            )
            .order_by("node_id")
            .values_list("listing_id", "listing_node_id", "node_id")
            .distinct()
        )
        node_ids = []
        listings = self.listings
        for listing_id, listing_node_id, node_id in bindings:
            listings[listing_id].bindings.append((listing_node_id, node_id))
            node_ids.append(node_id)
        for busy in self.busy.values():
            for node_id in node_ids:
                busy.pop(node_id, None)
        sales = Allocation.objects.holding().filter(node_id__in=_ids(node_ids), ends_at__gt=now)
        mask = self._mask
        for node_id, depth, starts_at, ends_at in sales.values_list("node_id", "depth", "starts_at", "ends_at"):
            busy = self._busy(depth)
            busy[node_id] = busy.get(node_id, 0) | mask(_hour(starts_at), _hour(ends_at))

    def _busy(self, depth: int) -> dict[int, int]:
        """The sold hours of nodes at a depth."""
        busy = self.busy.get(depth)
        if busy is None:
            busy = self.busy[depth] = {}
        return busy

    def refresh(self) -> None:
        """Under the listing locks: re-read price and status, reload changed inventories."""
        if not self.listings:
            return
        rows = (
            Listing.objects.select_for_update()
            .filter(pk__in=_ids(self.listings))
            .order_by("pk")
            .values_list("pk", "status", "price_per_gpu_hour", "inventory_version")
        )
        changed = []
        for listing_id, status, price, version in rows:
            listing = self.listings[listing_id]
            listing.active = status == Listing.Status.ACTIVE
            if price != listing.price:
                listing.price = price
                self._resort = True
            if version != listing.version:
                listing.version = version
                changed.append(listing_id)
        if self._resort:
            self.by_price.sort(key=lambda item: (item.price, item.id))
            self._covering = {}
            self._resort = False
        if changed:
            self._load_inventory(changed)

    # -- planning ----------------------------------------------------------------------------

    def _free_nodes(self, listing: BookListing, window: int, limit: int) -> list[tuple[int, int]]:
        """The listing's first ``limit`` nodes (in node order) free for the hours of ``window``
        (``_mask``): first fit."""
        sold = self._busy(listing.depth).get
        bindings = listing.bindings
        if limit >= len(bindings):  # the whole listing is looked at anyway
            return [binding for binding in bindings if not sold(binding[1], 0) & window][:limit]
        found = []
        for binding in bindings:
            if sold(binding[1], 0) & window:
                continue
            found.append(binding)
            if len(found) == limit:
                break
        return found

    def _covering_hour(self, mode: str, hour: int) -> list[BookListing]:
        key = (mode, hour)
        covering = self._covering.get(key)
        if covering is None:
            covering = [
                listing
                for listing in self.by_price
                if listing.billing_mode == mode and listing.starts <= hour < listing.ends
            ]
            self._covering[key] = covering
        return covering

    def _candidates(self, request: OpenRequest, starts: int, ends: int, *, priced: bool = True) -> list[BookListing]:
        """The listings that could serve the request, cheapest first: at or under its maximum
        price, or (``priced=False``) at any price."""
        max_price = request.max_price_per_gpu_hour if priced else None
        gpu_count = request.gpu_count
        duration = ends - starts
        region = request.region
        interconnect = request.interconnect
        lab_id = request.lab_id
        out = []
        for listing in self._covering_hour(request.billing_mode, starts):
            if max_price is not None and listing.price > max_price:
                break
            if (
                listing.active
                and listing.ends >= ends
                and listing.min_duration <= duration
                and gpu_count % listing.gpus_per_node == 0
                and listing.provider_id != lab_id
                and (not region or listing.region == region)
                and (not interconnect or listing.interconnect == interconnect)
                and listing.bindings
            ):
                out.append(listing)
        return out

    def plan(self, request: OpenRequest, *, priced: bool = True) -> Fill | None:
        """The cheapest complete fill of the request now (``priced=False``: whatever its price)."""
        starts = request.starts
        ends = request.ends
        return self._plan_among(request, self._candidates(request, starts, ends, priced=priced), starts, ends)

    def _plan_among(self, request: OpenRequest, candidates: list[BookListing], starts: int, ends: int) -> Fill | None:
        if not candidates:
            return None
        if request.colocated:
            parts = self._plan_colocated(request.gpu_count, candidates, starts, ends)
        else:
            parts = self._plan_spread(request.gpu_count, candidates, starts, ends)
        if parts is None:
            return None
        return Fill(request=request, parts=parts, starts=starts, ends=ends)

    def explain(self, request: OpenRequest) -> Unfilled:
        """Why the request cannot be filled now, and the price at which it would be."""
        starts, ends = request.starts, request.ends
        candidates = self._candidates(request, starts, ends, priced=False)
        whole = self._plan_among(request, candidates, starts, ends)
        if whole is not None:
            price = max(listing.price for listing, _ in whole.parts)
            return Unfilled(
                ComputeRequest.UnfilledReason.PRICE_TOO_LOW,
                f"No offer fills it at or under your maximum of {request.max_price_per_gpu_hour} per GPU-hour; "
                f"it would fill now at {price}.",
                price,
            )
        what = f"{request.gpu_count:,} {self.gpu_model_slug} GPUs{' colocated' if request.colocated else ''}"
        if not candidates:
            return Unfilled(
                ComputeRequest.UnfilledReason.NO_OFFER,
                f"No listing offers {what} for that window on these terms "
                f"({request.billing_mode}, whole nodes, {request.duration_hours} hours"
                f"{', ' + request.region if request.region else ''}"
                f"{', ' + request.interconnect if request.interconnect else ''}).",
                None,
            )
        gpus, price = self._most_deliverable(request, candidates, starts, ends)
        where = "any cluster" if request.colocated else "all listings together"
        at = f", at up to {price} per GPU-hour" if price is not None else ""
        return Unfilled(
            ComputeRequest.UnfilledReason.NO_CAPACITY,
            f"No listing can deliver {what} for that window; the most {where} can deliver is {gpus:,} GPUs{at}.",
            None,
        )

    def _most_deliverable(self, request, candidates, starts, ends) -> tuple[int, Decimal | None]:
        """The most GPUs the free nodes of one cluster (colocated) or of every candidate can
        deliver for the window, and the highest price among the listings that deliver them."""
        window = self._mask(starts, ends)
        groups: dict[int, list[BookListing]] = {}
        for listing in candidates:
            groups.setdefault(listing.cluster_id if request.colocated else 0, []).append(listing)
        best, best_price = 0, None
        for listings in groups.values():
            gpus, price = 0, None
            for listing in listings:
                free = len(self._free_nodes(listing, window, request.gpu_count // listing.gpus_per_node))
                if free:
                    gpus += free * listing.gpus_per_node
                    price = listing.price
            if gpus > best:
                best, best_price = gpus, price
        return best, best_price

    def _plan_colocated(self, gpu_count, candidates, starts, ends):
        """The cheapest complete fill inside one cluster, from its listings cheapest first."""
        window = self._mask(starts, ends)
        by_cluster: dict[int, list[BookListing]] = {}
        for listing in candidates:
            by_cluster.setdefault(listing.cluster_id, []).append(listing)
        best_cost = None
        best_parts = None
        for listings in by_cluster.values():  # clusters in order of their cheapest listing
            if best_cost is not None and listings[0].price * gpu_count >= best_cost:
                break
            needed = gpu_count // listings[0].gpus_per_node
            if sum(len(listing.bindings) for listing in listings) < needed:
                continue  # fewer nodes with free hours than needed, before looking at the hours
            parts = []
            cost = Decimal(0)
            for listing in listings:
                nodes = self._free_nodes(listing, window, needed)
                if nodes:
                    parts.append((listing, nodes))
                    cost += listing.price * len(nodes) * listing.gpus_per_node
                    needed -= len(nodes)
                    if needed == 0:
                        break
            if needed == 0 and (best_cost is None or cost < best_cost):
                best_cost, best_parts = cost, parts
        return best_parts

    def _plan_spread(self, gpu_count, candidates, starts, ends):
        """Cheapest first across clusters and providers, whole nodes from each listing.

        Greedy over all candidates first; if mixed node sizes leave a remainder no listing can
        make up, the cheapest complete fill using one node size only is taken instead.
        """
        parts = self._greedy_spread(gpu_count, candidates, starts, ends)
        sizes = {listing.gpus_per_node for listing in candidates}
        if parts is not None or len(sizes) < 2:
            return parts
        best, best_cost = None, None
        for size in sorted(sizes):
            option = self._greedy_spread(
                gpu_count, [listing for listing in candidates if listing.gpus_per_node == size], starts, ends
            )
            if option is not None:
                cost = sum(listing.price * len(nodes) * listing.gpus_per_node for listing, nodes in option)
                if best_cost is None or cost < best_cost:
                    best, best_cost = option, cost
        return best

    def _greedy_spread(self, gpu_count, candidates, starts, ends):
        if sum(len(listing.bindings) * listing.gpus_per_node for listing in candidates) < gpu_count:
            return None  # fewer GPUs on nodes with free hours than asked, before looking at the hours
        window = self._mask(starts, ends)
        remaining = gpu_count
        parts = []
        for listing in candidates:
            wanted = remaining // listing.gpus_per_node
            if wanted == 0:
                continue
            nodes = self._free_nodes(listing, window, wanted)
            if nodes:
                parts.append((listing, nodes))
                remaining -= len(nodes) * listing.gpus_per_node
                if remaining == 0:
                    return parts
        return None

    def hold(self, fill: Fill) -> None:
        window = self._mask(fill.starts, fill.ends)
        for listing, nodes in fill.parts:
            busy = self._busy(listing.depth)
            for _, node_id in nodes:
                busy[node_id] = busy.get(node_id, 0) | window

    def release(self, fill: Fill) -> None:
        """Undo ``hold``: the fill will not be written."""
        window = self._mask(fill.starts, fill.ends)
        for listing, nodes in fill.parts:
            busy = self._busy(listing.depth)
            for _, node_id in nodes:
                busy[node_id] &= ~window


def _acquire_segment_lock(gpu_model_id: int, wait: bool) -> bool:
    function = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}(%s, %s)", [ADVISORY_LOCK_NAMESPACE, gpu_model_id])
        row = cursor.fetchone()
    return wait or bool(row[0])


def _release_segment_lock(gpu_model_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [ADVISORY_LOCK_NAMESPACE, gpu_model_id])


@metrics.matching_run
def segment_match(*, gpu_model_id: int, wait: bool = False) -> MatchResult:
    """Fill what can be filled of the segment's open requests, oldest first.

    Returns with ``skipped_locked`` when another matcher holds the segment and ``wait`` is
    false.
    """
    result = MatchResult(segment=gpu_model_id)
    if not _acquire_segment_lock(gpu_model_id, wait):
        result.skipped_locked = True
        return result
    try:
        _match_locked(gpu_model_id, result)
    finally:
        _release_segment_lock(gpu_model_id)
    return result


def _pending_marks() -> redis.Redis:
    return _redis_client(settings.REDIS_URL)


@functools.cache
def _redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


def segment_mark_pending(*, gpu_model_id: int, force: bool = False) -> bool:
    """Mark the segment as wanting a matching run; True if the caller must queue one.

    False means a run is already pending: it has not read the open requests yet, so it will
    see whatever the caller committed. ``force`` marks and answers True whatever was there.
    """
    key = PENDING_KEY.format(gpu_model_id=gpu_model_id)
    return bool(_pending_marks().set(key, 1, nx=not force, ex=PENDING_TTL_SECONDS))


def segment_unmark_pending(*, gpu_model_id: int) -> None:
    """Drop the mark of a run that could not be queued, so the next request queues one."""
    _pending_marks().delete(PENDING_KEY.format(gpu_model_id=gpu_model_id))


@metrics.matching_run
def segment_match_coalesced(*, gpu_model_id: int) -> MatchResult:
    """A worker's matching run: one pass, then one more as long as the segment was marked
    pending meanwhile; or none, leaving at once, if another run holds the segment.

    Each pass takes the segment lock, clears the pending mark, and only then reads the open
    requests, so a request committed (and marked) after that read leaves the mark set. After
    releasing the lock the run looks again: the mark set means another pass. A run that finds
    the lock held leaves without retrying, since the holder looks again after its pass. So a
    request is always read by some pass that began after it was marked, or by the sweep.
    """
    result = MatchResult(segment=gpu_model_id)
    marks = _pending_marks()
    key = PENDING_KEY.format(gpu_model_id=gpu_model_id)
    while _acquire_segment_lock(gpu_model_id, wait=False):
        try:
            # The first pass runs even unmarked: the task was queued for it (a mark may have
            # expired, or the task was sent directly). Later passes run only for a new mark.
            if not marks.delete(key) and result.passes:
                return result
            _match_locked(gpu_model_id, result)
        finally:
            _release_segment_lock(gpu_model_id)
    result.skipped_locked = True
    return result


def _match_locked(gpu_model_id: int, result: MatchResult) -> None:
    """One pass over the segment's open requests; the caller holds the segment lock."""
    result.passes += 1
    book = OrderBook(gpu_model_id)
    book.load()
    request_ids = list(
        compute_requests_to_match()
        .filter(gpu_model_id=gpu_model_id, starts_at__gte=timezone.now())
        .order_by("created_at", "id")
        .values_list("id", flat=True)
    )
    result.requests_seen += len(request_ids)
    # With no listing at all the chunks still run: each open request is told there is no offer.
    for offset in range(0, len(request_ids), CHUNK_SIZE):
        chunk = request_ids[offset : offset + CHUNK_SIZE]
        try:
            _match_chunk(book, chunk, result)
        except IntegrityError:
            # Someone sold a node our snapshot thought free: start from the database again.
            logger.warning("matching segment %s: conflict, reloading and retrying a chunk", gpu_model_id)
            result.retries += 1
            book.load()
            _match_chunk(book, chunk, result)


def _match_chunk(book: OrderBook, request_ids: list[int], result: MatchResult) -> None:
    with transaction.atomic():
        # Locks in the order every other writer takes them: listings, requests, and the labs
        # last, only to write (matchers of other segments sell to the same labs).
        book.refresh()
        requests = [
            OpenRequest(*row)
            for row in compute_requests_to_match()
            .select_for_update(of=("self",))
            .filter(pk__in=_ids(request_ids))
            .order_by("created_at", "id")
            .values_list(*_OPEN_REQUEST_FIELDS)
        ]
        credit = _Credit(lab_exposures({request.lab_id for request in requests}))
        fills: list[Fill] = []
        unplanned = []
        for request in requests:
            fill = book.plan(request)
            if fill is None:
                unplanned.append(request)
                continue
            if not credit.take(request, fill):
                continue
            book.hold(fill)
            fills.append(fill)
        if fills:
            # Planned on figures read without a lock: lock the buyers, read again, and keep
            # only the fills their limits still allow (another sale may have come in between).
            kept = credit.confirm(lab_exposures({fill.request.lab_id for fill in fills}, lock=True), fills)
            if len(kept) < len(fills):
                kept_ids = {id(fill) for fill in kept}
                for fill in fills:
                    if id(fill) not in kept_ids:
                        book.release(fill)
            fills = kept
        # Explained once the chunk's fills hold their nodes: what is left now.
        unfilled = {request.pk: book.explain(request) for request in unplanned} | credit.refused
        _record_unfilled(requests, unfilled)
        if not fills:
            return
        try:
            _write_fills(fills, gpu_model_id=book.gpu_model_id)
        except IntegrityError:
            for fill in fills:
                book.release(fill)
            raise
        lab_exposures_add(credit.sold)
    result.requests_filled += len(fills)
    result.contracts_created += sum(len(fill.parts) for fill in fills)
    result.nodes_allocated += sum(len(nodes) for fill in fills for _, nodes in fill.parts)


class _Credit:
    """The chunk's labs' exposures (their rows locked), and what the chunk sells to them."""

    def __init__(self, exposures: dict[int, Exposure]):
        self.exposures = exposures
        self.sold: dict[int, tuple[Decimal, Decimal]] = {}  # lab -> (committed, metered) values
        self.refused: dict[int, Unfilled] = {}  # request id -> why

    def take(self, request: OpenRequest, fill: Fill) -> bool:
        """Sell the fill to the request's lab if its credit limit allows, or note why not."""
        committed, metered = _values(fill)
        exposure = self.exposures[request.lab_id]
        sold_committed, sold_metered = self.sold.get(request.lab_id, (Decimal(0), Decimal(0)))
        sold = sold_committed + sold_metered
        if not exposure.allows(sold + committed + metered):
            refusal = credit_limit_exceeded(
                limit=exposure.credit_limit,
                exposure=round_money(exposure.total + sold),
                amount=committed + metered,
                what="Filling it",
            )
            price = max(listing.price for listing, _ in fill.parts)
            self.refused[request.pk] = Unfilled(
                ComputeRequest.UnfilledReason.CREDIT_LIMIT_EXCEEDED, refusal.message, price
            )
            return False
        self.sold[request.lab_id] = (sold_committed + committed, sold_metered + metered)
        return True

    def confirm(self, exposures: dict[int, Exposure], fills: list[Fill]) -> list[Fill]:
        """Take the fills again, in order, against ``exposures`` read under the labs' locks:
        the fills still allowed, the others noted as refused."""
        self.exposures |= exposures
        self.sold = {}
        return [fill for fill in fills if self.take(fill.request, fill)]


def _values(fill: Fill) -> tuple[Decimal, Decimal]:
    """The fill's committed and metered values: GPU-hours at their price (a committed block's
    total, a metered contract's ceiling: ``billing.credit``)."""
    committed = metered = Decimal(0)
    for listing, nodes in fill.parts:
        value = len(nodes) * listing.gpus_per_node * (fill.ends - fill.starts) * listing.price
        if listing.billing_mode == BillingMode.COMMITTED:
            committed += value
        else:
            metered += value
    return committed, metered


_RECORD_UNFILLED = """
UPDATE broker_computerequest r
SET unfilled_reason = u.reason, unfilled_detail = u.detail, fill_price_now = u.price
FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::numeric[]) AS u (id, reason, detail, price)
WHERE r.id = u.id
"""


def _record_unfilled(requests: list[OpenRequest], unfilled: dict[int, Unfilled]) -> None:
    """Say on each open request why it is still open and the price it would fill at now
    (one statement for the requests whose answer changed)."""
    changed = []
    max_length = ComputeRequest._meta.get_field("unfilled_detail").max_length
    for request in requests:
        why = unfilled.get(request.pk)
        if why is None:
            continue  # filled by this chunk
        detail = why.detail[:max_length]
        if (request.unfilled_reason, request.unfilled_detail, request.fill_price_now) != (
            why.reason,
            detail,
            why.fill_price,
        ):
            changed.append((request.pk, why.reason, detail, why.fill_price))
    if changed:
        with connection.cursor() as cursor:
            cursor.execute(_RECORD_UNFILLED, [list(column) for column in zip(*changed, strict=True)])


_CONTRACT_COPY = (
    "COPY broker_contract (id, request_id, listing_id, lab_id, provider_id, cluster_id, gpu_count, node_count, "
    "starts_at, ends_at, price_per_gpu_hour, billing_mode, total_amount, status, cancel_reason, created_at) FROM STDIN"
)
_ALLOCATION_COPY = (
    "COPY broker_allocation (contract_id, listing_node_id, node_id, listing_id, starts_at, ends_at, depth) FROM STDIN"
)


def _write_fills(fills: list[Fill], *, gpu_model_id: int) -> None:
    """Write the chunk's contracts and allocations, mark its requests filled, bump versions,
    and publish ``contract.created`` and ``compute_request.filled`` (one statement for all).

    The rows go in with COPY from plain tuples: building tens of thousands of model
    instances for bulk_create cost more than the database's own work. Contract ids are
    drawn from the sequence first, so allocations can name them.
    """
    now = timezone.now()
    contracts = []  # (request, listing, nodes, gpu_count, total)
    for fill in fills:
        hours = fill.ends - fill.starts
        for listing, nodes in fill.parts:
            gpu_count = len(nodes) * listing.gpus_per_node
            total = (
                contract_total(gpu_count=gpu_count, hours=hours, price_per_gpu_hour=listing.price)
                if listing.billing_mode == BillingMode.COMMITTED
                else None
            )
            contracts.append((fill.request, listing, nodes, gpu_count, total))
    ids = _copy_contracts(contracts, now)
    ComputeRequest.objects.filter(pk__in=_ids(fill.request.pk for fill in fills)).update(
        status=ComputeRequest.Status.FILLED, filled_at=now, unfilled_reason="", unfilled_detail="", fill_price_now=None
    )
    # Our own writes change these listings' inventory; keep the snapshot's versions in step.
    touched = {listing.id: listing for _, listing, _, _, _ in contracts}
    Listing.objects.filter(pk__in=_ids(touched)).update(inventory_version=F("inventory_version") + 1)
    for listing in touched.values():
        listing.version += 1
    events_publish(_fill_notices(contracts, ids, gpu_model_id=gpu_model_id, now=now))


def _fill_notices(contracts, ids: list[int], *, gpu_model_id: int, now) -> list[Notice]:
    """``contract.created`` to both parties of each contract, ``compute_request.filled`` to each
    request's lab with its contracts' ids. No dedupe keys: the chunk's transaction writes each
    contract and fills each request once, and their events with them."""
    created = []
    by_request: dict[int, tuple[OpenRequest, list[int]]] = {}
    for contract_id, (request, listing, nodes, gpu_count, _) in zip(ids, contracts, strict=True):
        data = contract_data(
            {
                "id": contract_id,
                "status": Contract.Status.SCHEDULED.value,
                "request_id": request.pk,
                "listing_id": listing.id,
                "lab_id": request.lab_id,
                "provider_id": listing.provider_id,
                "cluster_id": listing.cluster_id,
                "gpu_count": gpu_count,
                "node_count": len(nodes),
                "billing_mode": listing.billing_mode,
                "price_per_gpu_hour": listing.price,
                "starts_at": request.starts_at,
                "ends_at": request.ends_at,
            }
        )
        created.append((data, request.lab_id, listing.provider_id))
        by_request.setdefault(request.pk, (request, []))[1].append(contract_id)
    notices = contract_notices(EventType.CONTRACT_CREATED, created, once=False)
    filled = EventType.COMPUTE_REQUEST_FILLED.value
    for request_id, (request, contract_ids) in by_request.items():
        data = request_data(
            {
                "id": request_id,
                "status": ComputeRequest.Status.FILLED.value,
                "lab_id": request.lab_id,
                "gpu_model_id": gpu_model_id,
                "gpu_count": request.gpu_count,
                "starts_at": request.starts_at,
                "ends_at": request.ends_at,
                "duration_hours": request.duration_hours,
                "billing_mode": request.billing_mode,
                "max_price_per_gpu_hour": request.max_price_per_gpu_hour,
                "colocated": request.colocated,
                "unfilled_reason": "",
            },
            filled_at=iso_utc(now),
            contract_ids=contract_ids,
        )
        notices.append(Notice(request.lab_id, filled, data))
    return notices


def _copy_contracts(contracts, now) -> list[int]:
    # cursor.copy() is psycopg's own: wrap it so a refused row raises Django's IntegrityError.
    with connection.cursor() as cursor, connection.wrap_database_errors:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence('broker_contract', 'id')) FROM generate_series(1, %s)",
            [len(contracts)],
        )
        ids = [row[0] for row in cursor.fetchall()]
        allocations = []
        with cursor.copy(_CONTRACT_COPY) as copy:
            for contract_id, (request, listing, nodes, gpu_count, total) in zip(ids, contracts, strict=True):
                copy.write_row(
                    (contract_id, request.pk, listing.id, request.lab_id, listing.provider_id, listing.cluster_id,
                     gpu_count, len(nodes), request.starts_at, request.ends_at, listing.price, listing.billing_mode,
                     total, Contract.Status.SCHEDULED, "", now)
                )  # fmt: skip
                # An allocation is a line of COPY's text format: integers and timestamps only.
                window = (
                    f"\t{listing.id}\t{request.starts_at.isoformat()}\t{request.ends_at.isoformat()}\t{listing.depth}\n"
                )
                allocations.extend(
                    f"{contract_id}\t{listing_node_id}\t{node_id}{window}" for listing_node_id, node_id in nodes
                )
        with cursor.copy(_ALLOCATION_COPY) as copy:
            copy.write("".join(allocations))
        # Deferred foreign keys are checked now, so a violation rolls back this chunk only.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    return ids
