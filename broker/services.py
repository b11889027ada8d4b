import weakref
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import IntegrityError, ProgrammingError, connection, transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from broker.models import Allocation, ComputeRequest, Contract
from core.errors import CapacityUnavailable, InvalidInput, InvalidTransition
from core.money import round_money, validate_price
from core.timeutils import HOUR, current_hour, is_whole_hour, next_hour
from marketplace.models import BillingMode, GpuModel, Listing, ListingNode, Node, Organization
from marketplace.services import listing_inventory_changed

MAX_DURATION_HOURS = 24 * 366 * 3


def contract_total(*, gpu_count: int, hours: int, price_per_gpu_hour: Decimal) -> Decimal:
    """The price of a committed block: GPUs x hours x price, to the cent."""
    return round_money(gpu_count * hours * price_per_gpu_hour)


def _validate_start(starts_at: datetime) -> None:
    if not is_whole_hour(starts_at):
        raise InvalidInput("starts_at must be a whole UTC hour.", fields={"starts_at": ["Must be a whole UTC hour."]})
    if starts_at < current_hour():
        raise InvalidInput(
            "starts_at must not be before the current hour.",
            fields={"starts_at": ["Must not be before the current hour."]},
        )


def _enqueue_matching(gpu_model_id: int) -> None:
    from broker.tasks import match_segment

    match_segment.delay_on_commit(gpu_model_id)


# --- Compute requests --------------------------------------------------------------------


def compute_request_create(
    *,
    lab: Organization,
    gpu_model: GpuModel,
    gpu_count: int,
    starts_at: datetime,
    duration_hours: int,
    max_price_per_gpu_hour: Decimal,
    billing_mode: str,
    colocated: bool = True,
    region: str = "",
    interconnect: str = "",
) -> ComputeRequest:
    """Record a lab's order; the matching engine picks it up once it commits."""
    if not lab.is_lab:
        raise InvalidInput("Only labs request compute.")
    _validate_start(starts_at)
    validate_price(max_price_per_gpu_hour, field="max_price_per_gpu_hour")
    if not 1 <= duration_hours <= MAX_DURATION_HOURS:
        raise InvalidInput(
            f"duration_hours must be 1 to {MAX_DURATION_HOURS}.", fields={"duration_hours": ["Out of range."]}
        )
    if billing_mode not in BillingMode.values:
        raise InvalidInput("Unknown billing mode.", fields={"billing_mode": ["Use committed or metered."]})
    with transaction.atomic():
        request = ComputeRequest.objects.create(
            lab=lab,
            gpu_model=gpu_model,
            gpu_count=gpu_count,
            starts_at=starts_at,
            duration_hours=duration_hours,
            ends_at=starts_at + duration_hours * HOUR,
            max_price_per_gpu_hour=max_price_per_gpu_hour,
            billing_mode=billing_mode,
            colocated=colocated,
            region=region,
            interconnect=interconnect,
        )
        _enqueue_matching(gpu_model.pk)
    return request


def compute_request_cancel(*, request: ComputeRequest) -> ComputeRequest:
    """Cancel an open request. A filled one has contracts; it cannot be cancelled."""
    with transaction.atomic():
        request = ComputeRequest.objects.select_for_update().get(pk=request.pk)
        if request.status == ComputeRequest.Status.CANCELLED:
            return request
        if request.status != ComputeRequest.Status.OPEN:
            raise InvalidTransition(f"Only an open request can be cancelled; this one is {request.status}.")
        request.status = ComputeRequest.Status.CANCELLED
        request.closed_at = timezone.now()
        request.save(update_fields=["status", "closed_at"])
    return request


def compute_request_rematch(*, request: ComputeRequest) -> None:
    """Queue the matching of the request's market segment (an operator's nudge)."""
    if request.status != ComputeRequest.Status.OPEN:
        raise InvalidTransition(f"Only an open request is matched; this one is {request.status}.")
    transaction.on_commit(lambda: _enqueue_matching(request.gpu_model_id))


def compute_requests_expire(*, now: datetime | None = None) -> int:
    """Expire open requests whose start hour has passed. One statement; safe to run twice."""
    now = now or timezone.now()
    return ComputeRequest.objects.filter(
        status=ComputeRequest.Status.OPEN, starts_at__lt=now.replace(minute=0, second=0, microsecond=0)
    ).update(status=ComputeRequest.Status.EXPIRED, closed_at=now)


# --- Instant booking -----------------------------------------------------------------------


def free_listing_nodes(*, listing: Listing, starts_at: datetime, ends_at: datetime):
    """The listing's reserved, in-service nodes sold to nobody in [starts_at, ends_at)."""
    sold = Allocation.objects.filter(node_id=OuterRef("node_id"), starts_at__lt=ends_at, ends_at__gt=starts_at)
    sold = sold.filter(ends_at__gt=F("starts_at"))  # a released-before-start (empty) allocation holds nothing
    return (
        ListingNode.objects.filter(listing=listing, released=False, node__status=Node.Status.IN_SERVICE)
        .exclude(Exists(sold))
        .order_by("node_id")
    )


def listing_book(
    *, lab: Organization, listing: Listing, gpu_count: int, starts_at: datetime, duration_hours: int
) -> Contract:
    """Book nodes of a listing at its price, now: a contract, or CapacityUnavailable.

    Bookers of one listing queue on its row lock (the matching engine takes the same lock);
    the database's exclusion constraint has the last word on every node.
    """
    if not lab.is_lab:
        raise InvalidInput("Only labs book capacity.")
    if listing.provider_id == lab.pk:
        raise InvalidInput("You cannot book your own listing.", fields={"listing": ["This is your own listing."]})
    _validate_start(starts_at)
    if not 1 <= duration_hours <= MAX_DURATION_HOURS:
        raise InvalidInput("duration_hours is out of range.", fields={"duration_hours": ["Out of range."]})
    booking = _Booking(lab=lab, listing_id=listing.pk, gpu_count=gpu_count, starts_at=starts_at, hours=duration_hours)
    if connection.vendor == "postgresql":
        return _book_with_sql(booking)
    try:
        with transaction.atomic():
            return _book_with_orm(booking)
    except IntegrityError:
        # The database refused a double sale that slipped past the availability check.
        raise CapacityUnavailable("That capacity was just sold.")


@dataclass(frozen=True)
class _Booking:
    lab: Organization
    listing_id: int
    gpu_count: int
    starts_at: datetime
    hours: int

    @property
    def ends_at(self) -> datetime:
        return self.starts_at + self.hours * HOUR


def _check_booking_terms(booking: _Booking, *, status, provider_status, gpus_per_node, window, min_hours) -> int:
    """The listing's rules for this booking; returns the number of nodes it needs."""
    if status != Listing.Status.ACTIVE or provider_status == Organization.Status.SUSPENDED:
        raise CapacityUnavailable("This listing is not on offer.")
    if booking.gpu_count % gpus_per_node:
        raise InvalidInput(
            f"gpu_count must be a multiple of {gpus_per_node} (whole nodes).",
            fields={"gpu_count": [f"Must be a multiple of {gpus_per_node}."]},
        )
    if booking.starts_at < window[0] or booking.ends_at > window[1]:
        raise InvalidInput(
            "The booking must fall inside the listing's window.",
            fields={"starts_at": [f"The listing runs {window[0]:%Y-%m-%dT%H:%MZ} to {window[1]:%Y-%m-%dT%H:%MZ}."]},
        )
    if booking.hours < min_hours:
        raise InvalidInput(
            f"This listing sells at least {min_hours} hours.", fields={"duration_hours": [f"At least {min_hours}."]}
        )
    return booking.gpu_count // gpus_per_node


def _short(found: int, needed: int, gpus_per_node: int) -> None:
    if found < needed:
        raise CapacityUnavailable(
            f"Only {found * gpus_per_node} GPUs of this listing are free for that window.",
            fields={"gpu_count": [f"At most {found * gpus_per_node} available."]},
        )


def _book_with_orm(booking: _Booking) -> Contract:
    listing = (
        Listing.objects.select_for_update(of=("self",)).select_related("cluster", "provider").get(pk=booking.listing_id)
    )
    gpus_per_node = listing.cluster.gpus_per_node
    node_count = _check_booking_terms(
        booking,
        status=listing.status,
        provider_status=listing.provider.status,
        gpus_per_node=gpus_per_node,
        window=(listing.starts_at, listing.ends_at),
        min_hours=listing.min_duration_hours,
    )
    chosen = list(
        free_listing_nodes(listing=listing, starts_at=booking.starts_at, ends_at=booking.ends_at).values_list(
            "id", "node_id"
        )[:node_count]
    )
    _short(len(chosen), node_count, gpus_per_node)
    contract = Contract.objects.create(
        listing=listing,
        lab=booking.lab,
        provider_id=listing.provider_id,
        cluster_id=listing.cluster_id,
        gpu_count=booking.gpu_count,
        node_count=node_count,
        starts_at=booking.starts_at,
        ends_at=booking.ends_at,
        price_per_gpu_hour=listing.price_per_gpu_hour,
        billing_mode=listing.billing_mode,
        total_amount=_committed_total(listing.billing_mode, booking.gpu_count, booking.hours, listing),
    )
    Allocation.objects.bulk_create(
        Allocation(
            contract=contract,
            listing_node_id=ln_id,
            node_id=node_id,
            listing_id=listing.pk,
            starts_at=booking.starts_at,
            ends_at=booking.ends_at,
        )
        for ln_id, node_id in chosen
    )
    Listing.objects.filter(pk=listing.pk).update(inventory_version=F("inventory_version") + 1)
    return contract


# PostgreSQL: the whole booking is one statement, so on its own it is one round trip. It
# locks the listing row (bookers of a listing, and the matching engine, queue there), reads
# its terms, picks free reserved nodes, and writes the contract, its allocations and the
# listing's inventory-version bump only if the terms allow it and enough nodes are free;
# the row it returns says which case it was. A booker that waited for the lock decided on
# data older than the sale it waited for: the exclusion constraint refuses any node sold in
# between, and the statement runs again on fresh data.
_BOOK = """
WITH terms AS (
    SELECT l.id, l.status, p.status AS provider_status, c.gpus_per_node, l.starts_at, l.ends_at,
           l.min_duration_hours, l.provider_id, l.cluster_id, l.price_per_gpu_hour, l.billing_mode
    FROM marketplace_listing l
    JOIN marketplace_cluster c ON c.id = l.cluster_id
    JOIN marketplace_organization p ON p.id = l.provider_id
    WHERE l.id = %(listing)s
    FOR UPDATE OF l
), allowed AS (
    SELECT * FROM terms
    WHERE status = 'active' AND provider_status <> 'suspended' AND mod(%(gpus)s, gpus_per_node) = 0
      AND starts_at <= %(starts_at)s::timestamptz AND ends_at >= %(ends_at)s::timestamptz
      AND min_duration_hours <= %(hours)s
), free AS (
    SELECT ln.id, ln.node_id FROM allowed
    JOIN marketplace_listingnode ln ON ln.listing_id = allowed.id AND NOT ln.released
    JOIN marketplace_node n ON n.id = ln.node_id AND n.status = 'in_service'
    WHERE NOT EXISTS (SELECT 1 FROM broker_allocation a WHERE a.node_id = ln.node_id
                      AND a.starts_at < %(ends_at)s::timestamptz AND a.ends_at > %(starts_at)s::timestamptz
                      AND a.ends_at > a.starts_at)
    ORDER BY ln.node_id
    LIMIT %(gpus)s / (SELECT gpus_per_node FROM allowed)
), contract AS (
    INSERT INTO broker_contract (listing_id, lab_id, provider_id, cluster_id, gpu_count, node_count, starts_at,
        ends_at, price_per_gpu_hour, billing_mode, total_amount, status, cancel_reason, created_at)
    SELECT id, %(lab)s, provider_id, cluster_id, %(gpus)s, %(gpus)s / gpus_per_node, %(starts_at)s::timestamptz,
           %(ends_at)s::timestamptz, price_per_gpu_hour, billing_mode,
           -- round() is half away from zero: for these positive amounts, contract_total's half-up.
           CASE WHEN billing_mode = 'committed' THEN round(%(gpus)s * %(hours)s * price_per_gpu_hour, 2) END,
           'scheduled', '', %(now)s::timestamptz
    FROM allowed WHERE (SELECT COUNT(*) FROM free) = %(gpus)s / gpus_per_node
    RETURNING id
), allocations AS (
    INSERT INTO broker_allocation (contract_id, listing_node_id, node_id, listing_id, starts_at, ends_at)
    SELECT contract.id, free.id, free.node_id, %(listing)s, %(starts_at)s::timestamptz, %(ends_at)s::timestamptz
    FROM contract, free
), bump AS (
    UPDATE marketplace_listing SET inventory_version = inventory_version + 1
    WHERE id = %(listing)s AND EXISTS (SELECT 1 FROM contract)
)
SELECT terms.status, terms.provider_status, terms.gpus_per_node, terms.starts_at, terms.ends_at,
       terms.min_duration_hours, terms.provider_id, terms.cluster_id, terms.price_per_gpu_hour, terms.billing_mode,
       (SELECT COUNT(*) FROM free), (SELECT id FROM contract)
FROM terms"""
_BOOK_ATTEMPTS = 20

# The statement is prepared once per database session and then run with EXECUTE: planning
# this statement costs the server more CPU than running it, and from the sixth execution
# PostgreSQL keeps one generic plan for the session (every lookup in it is by key, so the
# generic plan is the custom one). Its parameters, in order, with their types:
_BOOK_PARAMETERS = {
    "listing": "bigint",
    "lab": "bigint",
    "gpus": "integer",
    "hours": "integer",
    "starts_at": "timestamptz",
    "ends_at": "timestamptz",
    "now": "timestamptz",
}
_BOOK_NAME = "broker_listing_book"


def _numbered(sql: str, names: Iterable[str]) -> str:
    for number, name in enumerate(names, start=1):
        sql = sql.replace(f"%({name})s", f"${number}")
    return sql


_BOOK_PREPARE = f"PREPARE {_BOOK_NAME} ({', '.join(_BOOK_PARAMETERS.values())}) AS {_numbered(_BOOK, _BOOK_PARAMETERS)}"
_BOOK_EXECUTE = f"EXECUTE {_BOOK_NAME} ({', '.join(['%s'] * len(_BOOK_PARAMETERS))})"
_INVALID_STATEMENT_NAME = "26000"  # the session lost its prepared statement (DISCARD ALL, DEALLOCATE)
# The database sessions (psycopg connections) in which the booking statement is prepared.
# A prepared statement outlives a rolled-back transaction, and dies with its session.
_book_prepared_in: weakref.WeakSet = weakref.WeakSet()


def _execute_book(cursor, params: list) -> None:
    session = connection.connection
    if session not in _book_prepared_in:
        cursor.execute(_BOOK_PREPARE)
        _book_prepared_in.add(session)
    cursor.execute(_BOOK_EXECUTE, params)


def _book_with_sql(booking: _Booking) -> Contract:
    now = timezone.now()
    params = [
        booking.listing_id,
        booking.lab.pk,
        booking.gpu_count,
        booking.hours,
        booking.starts_at,
        booking.ends_at,
        now,
    ]
    for attempt in range(_BOOK_ATTEMPTS):
        try:
            # One statement commits by itself; inside a caller's transaction a savepoint keeps
            # a refused attempt from spoiling that transaction.
            with transaction.atomic() if connection.in_atomic_block else nullcontext(), connection.cursor() as cursor:
                _execute_book(cursor, params)
                row = cursor.fetchone()
                if row is None:
                    raise CapacityUnavailable("This listing is not on offer.")
                status, provider_status, gpus_per_node, starts, ends, min_hours = row[:6]
                provider_id, cluster_id, price, mode, found, contract_id = row[6:]
            break
        except ProgrammingError as error:
            if getattr(error.__cause__, "sqlstate", None) != _INVALID_STATEMENT_NAME or attempt == _BOOK_ATTEMPTS - 1:
                raise
            _book_prepared_in.discard(connection.connection)
        except IntegrityError:
            if attempt == _BOOK_ATTEMPTS - 1:
                raise CapacityUnavailable("That capacity was just sold.")
    node_count = _check_booking_terms(
        booking,
        status=status,
        provider_status=provider_status,
        gpus_per_node=gpus_per_node,
        window=(starts, ends),
        min_hours=min_hours,
    )
    _short(found, node_count, gpus_per_node)
    total = (
        contract_total(gpu_count=booking.gpu_count, hours=booking.hours, price_per_gpu_hour=price)
        if mode == BillingMode.COMMITTED
        else None
    )
    contract = Contract(
        pk=contract_id,
        listing_id=booking.listing_id,
        lab=booking.lab,
        provider_id=provider_id,
        cluster_id=cluster_id,
        gpu_count=booking.gpu_count,
        node_count=node_count,
        starts_at=booking.starts_at,
        ends_at=booking.ends_at,
        price_per_gpu_hour=price,
        billing_mode=mode,
        total_amount=total,
        status=Contract.Status.SCHEDULED,
        created_at=now,
    )
    contract._state.adding = False
    contract._state.db = connection.alias
    return contract


def _committed_total(billing_mode: str, gpu_count: int, hours: int, listing: Listing) -> Decimal | None:
    if billing_mode != BillingMode.COMMITTED:
        return None
    return contract_total(gpu_count=gpu_count, hours=hours, price_per_gpu_hour=listing.price_per_gpu_hour)


# --- Contract lifecycle --------------------------------------------------------------------

LIVE_STATUSES = (Contract.Status.SCHEDULED, Contract.Status.ACTIVE)


def _release_from(contract: Contract) -> datetime:
    """Nodes are freed from the next whole hour (or the start, if it has not begun)."""
    return min(max(next_hour(), contract.starts_at), contract.ends_at)


def _end_early(contract: Contract, status: str, **fields) -> datetime:
    """Close a locked live contract before its end: its nodes are free from the release hour."""
    release_at = _release_from(contract)
    contract.status = status
    contract.released_at = release_at
    for name, value in fields.items():
        setattr(contract, name, value)
    contract.save(update_fields=["status", "released_at", *fields])
    Allocation.objects.filter(contract=contract, ends_at__gt=release_at).update(ends_at=release_at)
    Allocation.objects.filter(contract=contract, starts_at__gt=F("ends_at")).update(ends_at=F("starts_at"))
    listing_inventory_changed(listing_ids=[contract.listing_id])
    return release_at


def contract_terminate(*, contract: Contract, lab: Organization) -> Contract:
    """Release a metered contract early; its nodes are free from the next whole hour."""
    with transaction.atomic():
        contract = Contract.objects.select_for_update().get(pk=contract.pk)
        if contract.lab_id != lab.pk:
            raise InvalidTransition("Only the buying lab may terminate a contract.")
        if contract.billing_mode != BillingMode.METERED:
            raise InvalidTransition(
                "A committed contract is paid in full and cannot be terminated; an operator may cancel it.",
                code="committed_contract",
            )
        if contract.status == Contract.Status.TERMINATED:
            return contract
        if contract.status not in LIVE_STATUSES:
            raise InvalidTransition(f"A {contract.status} contract cannot be terminated.")
        _end_early(contract, Contract.Status.TERMINATED)
    return contract


def contract_cancel(*, contract: Contract, reason: str, actor=None, actor_label: str = "") -> Contract:
    """An operator's cancellation, with a reason.

    Its nodes are free from the next whole hour; whatever of it was invoiced and is unpaid
    is credited by a credit note; later months bill nothing past the release.
    """
    from billing.services import contract_credit_invoiced
    from core.services import audit_record

    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("A cancellation needs a reason.", fields={"reason": ["This field is required."]})
    with transaction.atomic():
        contract = Contract.objects.select_for_update().get(pk=contract.pk)
        if contract.status == Contract.Status.CANCELLED:
            return contract
        if contract.status not in LIVE_STATUSES:
            raise InvalidTransition(f"A {contract.status} contract cannot be cancelled.")
        release_at = _end_early(contract, Contract.Status.CANCELLED, cancel_reason=reason)
        credit_notes = contract_credit_invoiced(
            contract=contract,
            reason=f"Contract {contract.pk} cancelled: {reason}",
            actor=actor,
            actor_label=actor_label,
        )
        credited = ", ".join(note.number for note in credit_notes) or "nothing invoiced"
        audit_record(
            action="contract_cancelled",
            target=contract,
            actor=actor,
            actor_label=actor_label,
            message=f"{reason} (nodes free from {release_at:%Y-%m-%dT%H:%MZ}; credited: {credited})",
        )
    return contract


def contracts_advance(*, now: datetime | None = None) -> dict[str, int]:
    """Start and finish contracts by the clock. Set-based, so running it twice changes nothing."""
    now = now or timezone.now()
    completed = Contract.objects.filter(status__in=LIVE_STATUSES, ends_at__lte=now).update(
        status=Contract.Status.COMPLETED
    )
    activated = Contract.objects.filter(status=Contract.Status.SCHEDULED, starts_at__lte=now, ends_at__gt=now).update(
        status=Contract.Status.ACTIVE
    )
    return {"activated": activated, "completed": completed}
